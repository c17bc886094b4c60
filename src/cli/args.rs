//! The flags every command shares, each also read from its environment variable, and how
//! they overlay the settings: defaults, then the TOML file, then environment and flags.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;

use crate::config::{ConfigError, LogFormat, Secret, Settings};

/// Flags shared by every command; each also reads its environment variable.
#[derive(Args, Debug, Clone, Default)]
pub struct Overrides {
    /// Optional TOML file with the same tree as the defaults (see README).
    #[arg(long, env = "TENANTSTREAM_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", global = true)]
    pub brokers: Option<String>,
    /// Consumer group id (and key of stored offsets).
    #[arg(long, env = "TENANTSTREAM_GROUP_ID", global = true)]
    pub group_id: Option<String>,
    /// Topic of order events.
    #[arg(long, env = "TENANTSTREAM_ORDERS_TOPIC", global = true)]
    pub orders_topic: Option<String>,
    /// Topic of configuration-change events.
    #[arg(long, env = "TENANTSTREAM_CONFIG_TOPIC", global = true)]
    pub config_topic: Option<String>,
    /// Dead-letter topic.
    #[arg(long, env = "TENANTSTREAM_DEAD_LETTER_TOPIC", global = true)]
    pub dead_letter_topic: Option<String>,
    /// Worker's Postgres URL (a role without BYPASSRLS).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Owner's Postgres URL, for migrations.
    #[arg(
        long,
        env = "TENANTSTREAM_ADMIN_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub admin_database_url: Option<String>,
    /// Postgres statement timeout (ms) of the worker; a row that alone runs past it is
    /// dead-lettered.
    #[arg(long, env = "TENANTSTREAM_STATEMENT_TIMEOUT_MS", global = true)]
    pub statement_timeout_ms: Option<u64>,
    /// Redis URL (redis:// or redis-cluster://).
    #[arg(long, env = "REDIS_URL", global = true, hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Folder of Avro schemas and registry.json.
    #[arg(long, env = "TENANTSTREAM_SCHEMAS_DIR", global = true)]
    pub schemas_dir: Option<PathBuf>,
    /// Confluent Schema Registry URL.
    #[arg(long, env = "SCHEMA_REGISTRY_URL", global = true)]
    pub schema_registry_url: Option<String>,
    /// Address of the HTTP port (/metrics, /healthz, /readyz).
    #[arg(long, env = "TENANTSTREAM_HTTP_LISTEN", global = true)]
    pub http_listen: Option<String>,
    /// Max events per partition batch.
    #[arg(long, env = "TENANTSTREAM_BATCH_MAX_EVENTS", global = true)]
    pub batch_max_events: Option<usize>,
    /// Max wait (ms) before a partial batch is written (0: at once; events that arrive while a
    /// partition's batch is in flight make its next batch).
    #[arg(long, env = "TENANTSTREAM_BATCH_LINGER_MS", global = true)]
    pub batch_linger_ms: Option<u64>,
    /// Kafka consumer session timeout (ms): how soon a dead worker's partitions move on.
    #[arg(long, env = "TENANTSTREAM_SESSION_TIMEOUT_MS", global = true)]
    pub session_timeout_ms: Option<u64>,
    /// TTL of cached order keys in seconds (0 = no expiry).
    #[arg(long, env = "TENANTSTREAM_ORDER_TTL_SECONDS", global = true)]
    pub order_ttl_seconds: Option<u64>,
    /// TTL of cached profiles, settings, SLA policies and categories in seconds (0 = no expiry).
    #[arg(long, env = "TENANTSTREAM_CONFIG_TTL_SECONDS", global = true)]
    pub config_ttl_seconds: Option<u64>,
    /// Dead-letter events of unknown tenants instead of registering them as provisional.
    #[arg(long, env = "TENANTSTREAM_STRICT_TENANTS", global = true)]
    pub strict_tenants: Option<bool>,
    /// Largest message value decoded, in bytes; larger ones are dead-lettered as too_large.
    #[arg(long, env = "TENANTSTREAM_MAX_MESSAGE_BYTES", global = true)]
    pub max_message_bytes: Option<usize>,
    /// Most elements of one array or map in a message (line items per order).
    #[arg(long, env = "TENANTSTREAM_MAX_ITEMS", global = true)]
    pub max_items: Option<usize>,
    /// Bytes of buffered messages at which a partition stops fetching.
    #[arg(long, env = "TENANTSTREAM_MAX_BUFFERED_BYTES", global = true)]
    pub max_buffered_bytes: Option<usize>,
    /// Log format.
    #[arg(
        long,
        env = "TENANTSTREAM_LOG_FORMAT",
        global = true,
        value_parser = PossibleValuesParser::new(LogFormat::NAMES).map(|s| s.parse::<LogFormat>().expect("a listed name"))
    )]
    pub log_format: Option<LogFormat>,
}

impl Overrides {
    /// Defaults, overlaid by the TOML file (if any), overlaid by environment and flags;
    /// validated.
    pub fn load(&self) -> Result<Settings, ConfigError> {
        let mut settings = match &self.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        self.apply_to(&mut settings);
        settings.validate()?;
        Ok(settings)
    }

    fn apply_to(&self, settings: &mut Settings) {
        let o = self;
        fn set<T: Clone>(target: &mut T, value: &Option<T>) {
            if let Some(value) = value {
                *target = value.clone();
            }
        }
        set(&mut settings.kafka.brokers, &o.brokers);
        set(&mut settings.kafka.group_id, &o.group_id);
        set(&mut settings.kafka.orders_topic, &o.orders_topic);
        set(&mut settings.kafka.config_topic, &o.config_topic);
        set(&mut settings.kafka.dead_letter_topic, &o.dead_letter_topic);
        set(&mut settings.kafka.batch_max_events, &o.batch_max_events);
        set(&mut settings.kafka.batch_linger_ms, &o.batch_linger_ms);
        set(
            &mut settings.kafka.session_timeout_ms,
            &o.session_timeout_ms,
        );
        set(&mut settings.schemas.dir, &o.schemas_dir);
        set(&mut settings.http.listen, &o.http_listen);
        set(&mut settings.redis.order_ttl_seconds, &o.order_ttl_seconds);
        set(
            &mut settings.redis.config_ttl_seconds,
            &o.config_ttl_seconds,
        );
        set(&mut settings.tenants.strict, &o.strict_tenants);
        set(
            &mut settings.database.statement_timeout_ms,
            &o.statement_timeout_ms,
        );
        set(&mut settings.limits.max_message_bytes, &o.max_message_bytes);
        set(&mut settings.limits.max_items, &o.max_items);
        set(
            &mut settings.limits.max_buffered_bytes,
            &o.max_buffered_bytes,
        );
        set(&mut settings.log_format, &o.log_format);
        if let Some(url) = &o.database_url {
            settings.database.url = Secret::new(url);
        }
        if let Some(url) = &o.admin_database_url {
            settings.database.admin_url = Secret::new(url);
        }
        if let Some(url) = &o.redis_url {
            settings.redis.url = Secret::new(url);
        }
        if let Some(url) = &o.schema_registry_url {
            settings.schemas.registry_url = (!url.is_empty()).then(|| url.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            "[kafka]\ngroup_id = \"from-file\"\norders_topic = \"o\"\n",
        )
        .unwrap();
        let overrides = Overrides {
            config: Some(path),
            group_id: Some("from-flag".into()),
            ..Default::default()
        };
        let s = overrides.load().unwrap();
        assert_eq!(s.kafka.group_id, "from-flag");
        assert_eq!(s.kafka.orders_topic, "o");
    }
}
