//! Typed settings: defaults, then an optional TOML file, then environment variables, then flags.
//!
//! `Settings::load` is the one place configuration is read; `Settings::validate` names the bad
//! field. Connection strings are [`Secret`]s so that passwords never reach logs or `Debug`.

use std::fmt;
use std::path::{Path, PathBuf};

use clap::Args;
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

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub schemas: SchemaSettings,
    pub http: HttpSettings,
    pub tenants: TenantSettings,
    pub log_format: LogFormat,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap servers, comma-separated.
    pub brokers: String,
    /// Consumer group; also the key of this worker's progress in the `consumer_offsets` table.
    pub group_id: String,
    pub orders_topic: String,
    /// Topic of configuration-change events.
    pub config_topic: String,
    pub dead_letter_topic: String,
    /// A partition's batch is written when it holds this many events...
    pub batch_max_events: usize,
    /// ...or when its oldest event has waited this long.
    pub batch_linger_ms: u64,
    pub session_timeout_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// The worker's connection: must be a role without BYPASSRLS (see migrations).
    pub url: Secret,
    /// The owner's connection, used by `migrate` and `demo`.
    pub admin_url: Secret,
    pub max_connections: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://host:port` for one server, `redis-cluster://host:port` for a cluster.
    pub url: Secret,
    /// Time to live of cached order keys; 0 keeps them without expiry.
    pub order_ttl_seconds: u64,
    /// Time to live of cached profiles, settings, SLA policies and categories (set again on each
    /// write of the key). Keys of a retired generation disappear after this long; 0 keeps them
    /// until Redis evicts them.
    pub config_ttl_seconds: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchemaSettings {
    /// Folder with the reader schemas (`*.avsc`) and `registry.json` (local id -> file map).
    pub dir: PathBuf,
    /// Confluent Schema Registry; when unset, ids resolve through `registry.json`.
    pub registry_url: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address serving /metrics, /healthz and /readyz.
    pub listen: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantSettings {
    /// Dead-letter events of unknown tenants (`unknown_tenant`) instead of registering them
    /// as provisional.
    pub strict: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            kafka: KafkaSettings::default(),
            database: DatabaseSettings::default(),
            redis: RedisSettings::default(),
            schemas: SchemaSettings::default(),
            http: HttpSettings::default(),
            tenants: TenantSettings::default(),
            log_format: LogFormat::Text,
        }
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group_id: "tenantstream".into(),
            orders_topic: "orders".into(),
            config_topic: "config-changes".into(),
            dead_letter_topic: "dead-letters".into(),
            batch_max_events: 1000,
            batch_linger_ms: 50,
            session_timeout_ms: 10_000,
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: Secret::new("postgres://tenantstream_worker@127.0.0.1:5432/tenantstream"),
            admin_url: Secret::new("postgres://postgres@127.0.0.1:5432/tenantstream"),
            max_connections: 8,
        }
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: Secret::new("redis://127.0.0.1:6379"),
            order_ttl_seconds: 86_400,
            config_ttl_seconds: 604_800,
        }
    }
}

impl Default for SchemaSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("schemas"),
            registry_url: None,
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9898".into(),
        }
    }
}

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
    /// Max wait (ms) before a partial batch is written.
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
    /// Log format.
    #[arg(long, env = "TENANTSTREAM_LOG_FORMAT", global = true, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// A configuration problem, naming the field or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid setting {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl Settings {
    /// Defaults, overlaid by the TOML file (if any), overlaid by environment and flags.
    pub fn load(overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut settings = match &overrides.config {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        settings.apply(overrides);
        settings.validate()?;
        Ok(settings)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    fn apply(&mut self, o: &Overrides) {
        fn set<T: Clone>(target: &mut T, value: &Option<T>) {
            if let Some(value) = value {
                *target = value.clone();
            }
        }
        set(&mut self.kafka.brokers, &o.brokers);
        set(&mut self.kafka.group_id, &o.group_id);
        set(&mut self.kafka.orders_topic, &o.orders_topic);
        set(&mut self.kafka.config_topic, &o.config_topic);
        set(&mut self.kafka.dead_letter_topic, &o.dead_letter_topic);
        set(&mut self.kafka.batch_max_events, &o.batch_max_events);
        set(&mut self.kafka.batch_linger_ms, &o.batch_linger_ms);
        set(&mut self.kafka.session_timeout_ms, &o.session_timeout_ms);
        set(&mut self.schemas.dir, &o.schemas_dir);
        set(&mut self.http.listen, &o.http_listen);
        set(&mut self.redis.order_ttl_seconds, &o.order_ttl_seconds);
        set(&mut self.redis.config_ttl_seconds, &o.config_ttl_seconds);
        set(&mut self.tenants.strict, &o.strict_tenants);
        set(&mut self.log_format, &o.log_format);
        if let Some(url) = &o.database_url {
            self.database.url = Secret::new(url);
        }
        if let Some(url) = &o.admin_database_url {
            self.database.admin_url = Secret::new(url);
        }
        if let Some(url) = &o.redis_url {
            self.redis.url = Secret::new(url);
        }
        if let Some(url) = &o.schema_registry_url {
            self.schemas.registry_url = (!url.is_empty()).then(|| url.clone());
        }
    }

    /// Checks every field that could fail later in a less obvious way.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.kafka.brokers.trim().is_empty() {
            return invalid("kafka.brokers", "must name at least one host:port");
        }
        if self.kafka.group_id.trim().is_empty() {
            return invalid("kafka.group_id", "must not be empty");
        }
        let topics = [
            ("kafka.orders_topic", &self.kafka.orders_topic),
            ("kafka.config_topic", &self.kafka.config_topic),
            ("kafka.dead_letter_topic", &self.kafka.dead_letter_topic),
        ];
        for (i, (field, topic)) in topics.iter().enumerate() {
            if topic.trim().is_empty() {
                return invalid(field, "topic names must not be empty");
            }
            if let Some((other, _)) = topics[..i].iter().find(|(_, t)| t == topic) {
                return invalid(field, &format!("must differ from {other} ({topic:?})"));
            }
        }
        if !(1..=100_000).contains(&self.kafka.batch_max_events) {
            return invalid("kafka.batch_max_events", "must be between 1 and 100000");
        }
        if !self.database.url.expose().starts_with("postgres") {
            return invalid("database.url", "must be a postgres:// URL");
        }
        if !self.database.admin_url.expose().starts_with("postgres") {
            return invalid("database.admin_url", "must be a postgres:// URL");
        }
        if self.database.max_connections < 2 {
            return invalid("database.max_connections", "must be at least 2");
        }
        if !self.redis.url.expose().starts_with("redis") {
            return invalid("redis.url", "must be a redis:// or redis-cluster:// URL");
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return invalid("http.listen", "must be an address such as 127.0.0.1:9898");
        }
        if let Some(url) = &self.schemas.registry_url {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return invalid("schemas.registry_url", "must be an http:// or https:// URL");
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
    }

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
        let s = Settings::load(&overrides).unwrap();
        assert_eq!(s.kafka.group_id, "from-flag");
        assert_eq!(s.kafka.orders_topic, "o");
    }

    #[test]
    fn bad_field_is_named() {
        let mut s = Settings::default();
        s.kafka.batch_max_events = 0;
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("kafka.batch_max_events"), "{err}");
    }

    #[test]
    fn unknown_file_key_is_an_error() {
        let err = toml::from_str::<Settings>("[kafka]\nbrokerz = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("brokerz"));
    }
}
