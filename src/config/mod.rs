//! Typed settings: defaults, then an optional TOML file, then environment variables, then flags
//! (those two are read by the CLI, which overlays them here).
//!
//! [`Settings::validate`] names the bad field. Connection strings are [`Secret`]s so that
//! passwords never reach logs or `Debug`.

mod rebalance;
mod secret;

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::retry::{Classify, ErrorClass};

pub use rebalance::RebalanceProtocol;
pub use secret::Secret;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub schemas: SchemaSettings,
    pub http: HttpSettings,
    pub tenants: TenantSettings,
    pub limits: LimitSettings,
    pub sla: SlaSettings,
    pub log_format: LogFormat,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// Where detected SLA violations are published.
    pub sla_violations_topic: String,
    /// A partition's batch is written when it holds this many events...
    pub batch_max_events: usize,
    /// ...or when its oldest event has waited this long (0, the default: at once). Either way a
    /// partition has one batch in flight at a time, and the events that arrive meanwhile make
    /// its next batch, so batches grow with the backlog and cost no latency without one.
    pub batch_linger_ms: u64,
    pub session_timeout_ms: u64,
    /// `eager` or `cooperative` (see [`RebalanceProtocol`]); the same for every worker of a
    /// group.
    pub rebalance_protocol: RebalanceProtocol,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// The worker's connection: must be a role without BYPASSRLS (see migrations).
    pub url: Secret,
    /// The owner's connection, used by `migrate` and `demo`.
    pub admin_url: Secret,
    /// Connections of the worker's pool; batches write to Postgres at most one fewer at once.
    pub max_connections: u32,
    /// A statement of the worker that runs longer is cancelled; when one row's data makes it
    /// so, the row is dead-lettered (`rejected_by_postgres`, SQLSTATE 57014). Lock waits end
    /// at a third of it.
    pub statement_timeout_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchemaSettings {
    /// Folder with the reader schemas (`*.avsc`) and `registry.json` (local id -> file map).
    pub dir: PathBuf,
    /// Confluent Schema Registry; when unset, ids resolve through `registry.json`.
    pub registry_url: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address serving /metrics, /healthz, /readyz and the tenant health API.
    pub listen: String,
    /// Tenants per ranking (volume, latency, dead letters, violations) that get their own
    /// `tenant` label on the per-tenant metrics; the rest are `tenant="other"`.
    pub tenant_metrics_top: usize,
    /// Seconds after its last activity that a tenant leaves the per-tenant table.
    pub tenant_idle_seconds: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantSettings {
    /// Dead-letter events of unknown tenants (`unknown_tenant`) instead of registering them
    /// as provisional.
    pub strict: bool,
    /// Dead-letter configuration changes whose Kafka key is not the one the contract gives
    /// them (`tenant_key_mismatch`): the body's tenant id (as a UUID), or `<KIND>:<key>` for a
    /// GLOBAL change. Off, the key only partitions and the body alone names the tenant.
    /// Orders (keyed by order id) are not checked.
    pub key_must_match: bool,
}

/// Bounds on what one message may cost: a producer's message beyond them is dead-lettered as
/// `too_large`, and buffers stay bounded in bytes as well as in messages.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// A message value larger than this is dead-lettered without being decoded.
    pub max_message_bytes: usize,
    /// The most elements of one array or map in a message: line items per order, and any
    /// array a writer schema adds (skipped elements cost time too).
    pub max_items: usize,
    /// The bytes of keys and values that all partitions together may hold, buffered or in
    /// batches being written: beyond it the worker stops receiving, and librdkafka stops
    /// fetching once its prefetch queue holds as much again, and tries again every 10 ms
    /// (`fetch.queue.backoff.ms`; a partition also stops fetching at four batches of messages
    /// of its own). A batch holds at most a quarter of it.
    pub max_buffered_bytes: usize,
}

/// The SLA engine (README "SLA engine").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlaSettings {
    /// The policy of tenants without an SLA_POLICY entry `default`: the same JSON
    /// (`{"lag_threshold_ms": …, "deadlines_ms": {"CREATED->CONFIRMED": …}}`), or `none`.
    pub default_policy: String,
    /// PROCESSING_LAG is aggregated per tenant per window of this length: at most one
    /// violation each, published when the window closes.
    pub lag_window_ms: u64,
    /// How often the deadline timer and the violation publisher look for work when they
    /// found none.
    pub poll_interval_ms: u64,
}

impl SlaSettings {
    /// The global default policy's JSON; `None` for `none`.
    pub fn default_policy_json(&self) -> Option<&str> {
        let text = self.default_policy.trim();
        (!text.eq_ignore_ascii_case("none")).then_some(text)
    }
}

impl Default for SlaSettings {
    fn default() -> Self {
        Self {
            default_policy: "none".into(),
            lag_window_ms: 60_000,
            poll_interval_ms: 1_000,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    /// The names accepted by [`LogFormat::from_str`](std::str::FromStr::from_str).
    pub const NAMES: [&'static str; 2] = ["text", "json"];
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("{other:?} is neither \"text\" nor \"json\"")),
        }
    }
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
            limits: LimitSettings::default(),
            sla: SlaSettings::default(),
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
            sla_violations_topic: "sla-violations".into(),
            batch_max_events: 20_000,
            batch_linger_ms: 0,
            session_timeout_ms: 10_000,
            rebalance_protocol: RebalanceProtocol::Eager,
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: Secret::new("postgres://tenantstream_worker@127.0.0.1:5432/tenantstream"),
            admin_url: Secret::new("postgres://postgres@127.0.0.1:5432/tenantstream"),
            max_connections: 8,
            statement_timeout_ms: 30_000,
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

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_message_bytes: 1024 * 1024,
            max_items: 10_000,
            max_buffered_bytes: 16 * 1024 * 1024,
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9898".into(),
            tenant_metrics_top: 10,
            // Longer than the 15-minute window, so every figure of a tenant in memory is whole.
            tenant_idle_seconds: 30 * 60,
        }
    }
}

/// Ten years.
const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;

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

impl Classify for ConfigError {
    /// Only a change of the configuration can fix it.
    fn class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }
}

impl Settings {
    /// The settings of a TOML file with the same tree (unset fields keep their defaults).
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

    /// A copy that can be printed: the passwords of the database, admin and Redis URLs (and of
    /// a schema registry URL, should it hold one) replaced by `***`.
    pub fn redacted(&self) -> Self {
        let mut redacted = self.clone();
        redacted.database.url = self.database.url.redacted();
        redacted.database.admin_url = self.database.admin_url.redacted();
        redacted.redis.url = self.redis.url.redacted();
        redacted.schemas.registry_url = self
            .schemas
            .registry_url
            .as_ref()
            .map(|url| Secret::new(url.as_str()).to_string());
        redacted
    }

    /// The settings as a file [`Settings::from_file`] reads back, passwords redacted (see
    /// [`Settings::redacted`]).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string(&self.redacted()).expect("settings are plain TOML values")
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
            (
                "kafka.sla_violations_topic",
                &self.kafka.sla_violations_topic,
            ),
        ];
        for (i, (field, topic)) in topics.iter().enumerate() {
            if topic.trim().is_empty() {
                return invalid(field, "topic names must not be empty");
            }
            if let Some((other, _)) = topics[..i].iter().find(|(_, t)| t == topic) {
                return invalid(field, &format!("must differ from {other} ({topic:?})"));
            }
        }
        let ranges: [(&'static str, u64, RangeInclusive<u64>); 14] = [
            (
                "kafka.batch_max_events",
                self.kafka.batch_max_events as u64,
                1..=100_000,
            ),
            (
                "kafka.batch_linger_ms",
                self.kafka.batch_linger_ms,
                0..=60_000,
            ),
            // The broker's default group.min/max.session.timeout.ms.
            (
                "kafka.session_timeout_ms",
                self.kafka.session_timeout_ms,
                6_000..=1_800_000,
            ),
            (
                "database.max_connections",
                self.database.max_connections.into(),
                2..=1_000,
            ),
            (
                "database.statement_timeout_ms",
                self.database.statement_timeout_ms,
                300..=3_600_000,
            ),
            // Ten years: Redis keeps expiries in milliseconds, and a longer TTL is a typo.
            (
                "redis.order_ttl_seconds",
                self.redis.order_ttl_seconds,
                0..=MAX_TTL_SECONDS,
            ),
            (
                "redis.config_ttl_seconds",
                self.redis.config_ttl_seconds,
                0..=MAX_TTL_SECONDS,
            ),
            // librdkafka's largest message.max.bytes.
            (
                "limits.max_message_bytes",
                self.limits.max_message_bytes as u64,
                1_024..=1_000_000_000,
            ),
            (
                "limits.max_items",
                self.limits.max_items as u64,
                1..=10_000_000,
            ),
            (
                "limits.max_buffered_bytes",
                self.limits.max_buffered_bytes as u64,
                1_024..=1 << 40,
            ),
            // A day: windows are aligned to the epoch, so longer ones would straddle days.
            (
                "sla.lag_window_ms",
                self.sla.lag_window_ms,
                1_000..=86_400_000,
            ),
            (
                "sla.poll_interval_ms",
                self.sla.poll_interval_ms,
                10..=60_000,
            ),
            // 1,000 per ranking is already 4,001 series per metric.
            (
                "http.tenant_metrics_top",
                self.http.tenant_metrics_top as u64,
                1..=1_000,
            ),
            // The 15-minute window must stay whole; a week at most.
            (
                "http.tenant_idle_seconds",
                self.http.tenant_idle_seconds,
                900..=604_800,
            ),
        ];
        for (field, value, range) in ranges {
            if !range.contains(&value) {
                let (low, high) = (range.start(), range.end());
                return invalid(field, &format!("{value} is not between {low} and {high}"));
            }
        }
        if !self.database.url.expose().starts_with("postgres") {
            return invalid("database.url", "must be a postgres:// URL");
        }
        if !self.database.admin_url.expose().starts_with("postgres") {
            return invalid("database.admin_url", "must be a postgres:// URL");
        }
        if !self.redis.url.expose().starts_with("redis") {
            return invalid("redis.url", "must be a redis:// or redis-cluster:// URL");
        }
        // host:port, where the host may be a name (localhost:9898) that resolves.
        let resolves = std::net::ToSocketAddrs::to_socket_addrs(self.http.listen.as_str())
            .is_ok_and(|mut addrs| addrs.next().is_some());
        if !resolves {
            return invalid(
                "http.listen",
                "must be host:port, such as 127.0.0.1:9898 or localhost:9898",
            );
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
mod tests;
