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
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Secret {
    /// Shows a URL without its password (`postgres://user:***@host/db`); anything else as `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split(':').next().unwrap_or("");
                    if userinfo.contains(':') {
                        write!(f, "{scheme}://{user}:***@{host}")
                    } else {
                        write!(f, "{scheme}://{user}@{host}")
                    }
                }
                None => write!(f, "{scheme}://{rest}"),
            },
            None => f.write_str("***"),
        }
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
    }
}
