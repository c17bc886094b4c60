//! `tenantstream config`: the effective settings as a TOML file `--config` reads back, with
//! passwords redacted.

use std::path::Path;

use crate::config::Settings;

/// Prints the settings the defaults, `file`, the environment and the flags give.
pub fn show_config(settings: &Settings, file: Option<&Path>) {
    print!("{}", render(settings, file));
}

fn render(settings: &Settings, file: Option<&Path>) -> String {
    format!(
        "# tenantstream: the effective configuration, from {}.\n\
         # Passwords are redacted as ***: put them back, or set DATABASE_URL,\n\
         # TENANTSTREAM_ADMIN_DATABASE_URL and REDIS_URL, before using this file with --config.\n\
         {}",
        super::check::config_source(file),
        settings.to_redacted_toml()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_commented_toml_that_reads_back() {
        let mut settings = Settings::default();
        settings.database.admin_url = crate::config::Secret::new("postgres://owner:pw@db/x");
        let text = render(&settings, Some(Path::new("/etc/t.toml")));
        assert!(text.starts_with("# tenantstream: the effective configuration, from defaults, then /etc/t.toml, then environment and flags."), "{text}");
        assert!(!text.contains(":pw@"), "{text}");
        let back: Settings = toml::from_str(&text).unwrap();
        assert_eq!(back, settings.redacted());
    }
}
