//! [`Secret`]: a connection string whose password never reaches logs or `Debug`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A value that must not be printed: `Debug` and `Display` show it with any password removed.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The real value, for the one call that needs it (a connect).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The value as [`Display`](fmt::Display) shows it (the password of a URL as `***`), for
    /// settings that are printed.
    pub fn redacted(&self) -> Self {
        Self(self.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Secret {
    /// Shows a URL without its password (`postgres://user:***@host/db`, and
    /// `?password=***` in its query); anything else as `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return f.write_str("***");
        };
        let host = match rest.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or("");
                if userinfo.contains(':') {
                    write!(f, "{scheme}://{user}:***@")?;
                } else {
                    write!(f, "{scheme}://{user}@")?;
                }
                host
            }
            None => {
                write!(f, "{scheme}://")?;
                rest
            }
        };
        let Some((path, query)) = host.split_once('?') else {
            return f.write_str(host);
        };
        write!(f, "{path}?")?;
        for (i, parameter) in query.split('&').enumerate() {
            let separator = if i == 0 { "" } else { "&" };
            match parameter.split_once('=') {
                Some((name, _)) if name.eq_ignore_ascii_case("password") => {
                    write!(f, "{separator}{name}=***")?
                }
                _ => write!(f, "{separator}{parameter}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_hides_password() {
        let s = Secret::new("postgres://worker:hunter2@db:5432/x");
        assert_eq!(format!("{s:?}"), "postgres://worker:***@db:5432/x");
        assert_eq!(Secret::new("plain").to_string(), "***");
        let redis = Secret::new("redis://:p@ss:w0rd@cache:6379").redacted();
        assert_eq!(redis.expose(), "redis://:***@cache:6379");
        assert_eq!(redis.redacted(), redis, "redacting twice changes nothing");
        let query = Secret::new("postgres://worker@db/x?sslmode=require&password=hunter2&a=b");
        assert_eq!(
            query.to_string(),
            "postgres://worker@db/x?sslmode=require&password=***&a=b"
        );
        let no_password = Secret::new("postgres://worker@db/x");
        assert_eq!(no_password.redacted(), no_password);
    }
}
