//! The flags that set the settings, each also read from its environment variable, grouped by
//! what they configure so that each command takes (and its `--help` lists) only the groups it
//! uses; and how they overlay the settings: defaults, then the TOML file, then environment and
//! flags.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;

use crate::config::{ConfigError, LogFormat, RebalanceProtocol, Secret, Settings};

/// Flags every command takes, before or after its name.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Configuration and logs")]
pub struct FileFlags {
    /// Optional TOML file with the same tree as the defaults (see README; `tenantstream config`
    /// prints one).
    #[arg(long, env = "TENANTSTREAM_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Log format (text is coloured only on a terminal; RUST_LOG filters).
    #[arg(
        long,
        env = "TENANTSTREAM_LOG_FORMAT",
        global = true,
        value_parser = PossibleValuesParser::new(LogFormat::NAMES).map(|s| s.parse::<LogFormat>().expect("a listed name"))
    )]
    pub log_format: Option<LogFormat>,
}

/// The broker, the consumer group and the topics.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Kafka")]
pub struct KafkaFlags {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub brokers: Option<String>,
    /// Consumer group id (and key of stored offsets).
    #[arg(long, env = "TENANTSTREAM_GROUP_ID")]
    pub group_id: Option<String>,
    /// Topic of order events.
    #[arg(long, env = "TENANTSTREAM_ORDERS_TOPIC")]
    pub orders_topic: Option<String>,
    /// Topic of configuration-change events.
    #[arg(long, env = "TENANTSTREAM_CONFIG_TOPIC")]
    pub config_topic: Option<String>,
    /// Dead-letter topic.
    #[arg(long, env = "TENANTSTREAM_DEAD_LETTER_TOPIC")]
    pub dead_letter_topic: Option<String>,
    /// Topic the SLA violations are published to.
    #[arg(long, env = "TENANTSTREAM_SLA_VIOLATIONS_TOPIC")]
    pub sla_violations_topic: Option<String>,
}

/// Where rows and progress are stored, as the worker.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Postgres")]
pub struct PostgresFlags {
    /// Worker's Postgres URL (a role without BYPASSRLS).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Postgres statement timeout (ms) of the worker; a row that alone runs past it is
    /// dead-lettered.
    #[arg(long, env = "TENANTSTREAM_STATEMENT_TIMEOUT_MS")]
    pub statement_timeout_ms: Option<u64>,
}

/// The owner's connection, for migrations.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Postgres")]
pub struct AdminFlags {
    /// Owner's Postgres URL, for migrations.
    #[arg(long, env = "TENANTSTREAM_ADMIN_DATABASE_URL", hide_env_values = true)]
    pub admin_database_url: Option<String>,
}

/// The cache.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Redis")]
pub struct RedisFlags {
    /// Redis URL (redis:// or redis-cluster://).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// TTL of cached order keys in seconds (0 = no expiry).
    #[arg(long, env = "TENANTSTREAM_ORDER_TTL_SECONDS")]
    pub order_ttl_seconds: Option<u64>,
    /// TTL of cached profiles, settings, SLA policies and categories in seconds (0 = no expiry).
    #[arg(long, env = "TENANTSTREAM_CONFIG_TTL_SECONDS")]
    pub config_ttl_seconds: Option<u64>,
}

/// The Avro schemas.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Schemas")]
pub struct SchemaFlags {
    /// Folder of Avro schemas and registry.json.
    #[arg(long, env = "TENANTSTREAM_SCHEMAS_DIR")]
    pub schemas_dir: Option<PathBuf>,
    /// Confluent Schema Registry URL.
    #[arg(long, env = "SCHEMA_REGISTRY_URL", hide_env_values = true)]
    pub schema_registry_url: Option<String>,
}

/// How the worker consumes, batches and bounds its work.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Worker")]
pub struct WorkerFlags {
    /// Address of the HTTP port (/metrics, /healthz, /readyz).
    #[arg(long, env = "TENANTSTREAM_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// Tenants per ranking (volume, latency, dead letters, SLA violations) given their own
    /// `tenant` label on /metrics; the rest are folded into tenant="other" (at most 4K+1
    /// series per per-tenant metric).
    #[arg(long, env = "TENANTSTREAM_TENANT_METRICS_TOP")]
    pub tenant_metrics_top: Option<usize>,
    /// Seconds after its last event that a tenant leaves the in-memory per-tenant table
    /// (/tenants, /tenants/{id}/health; at least 900: the longest window is 15 minutes).
    #[arg(long, env = "TENANTSTREAM_TENANT_IDLE_SECONDS")]
    pub tenant_idle_seconds: Option<u64>,
    /// Max events per partition batch.
    #[arg(long, env = "TENANTSTREAM_BATCH_MAX_EVENTS")]
    pub batch_max_events: Option<usize>,
    /// Max wait (ms) before a partial batch is written (0: at once; events that arrive while a
    /// partition's batch is in flight make its next batch).
    #[arg(long, env = "TENANTSTREAM_BATCH_LINGER_MS")]
    pub batch_linger_ms: Option<u64>,
    /// Kafka consumer session timeout (ms): how soon a dead worker's partitions move on.
    #[arg(long, env = "TENANTSTREAM_SESSION_TIMEOUT_MS")]
    pub session_timeout_ms: Option<u64>,
    /// How partitions move when a worker joins or leaves: eager (every partition of every
    /// worker is revoked) or cooperative (cooperative-sticky: only the partitions that move
    /// stop). The same for every worker of the group; switch with all of them stopped.
    #[arg(
        long,
        env = "TENANTSTREAM_REBALANCE_PROTOCOL",
        value_parser = PossibleValuesParser::new(RebalanceProtocol::NAMES).map(|s| s.parse::<RebalanceProtocol>().expect("a listed name"))
    )]
    pub rebalance_protocol: Option<RebalanceProtocol>,
    /// Dead-letter events of unknown tenants instead of registering them as provisional.
    #[arg(long, env = "TENANTSTREAM_STRICT_TENANTS")]
    pub strict_tenants: Option<bool>,
    /// Dead-letter configuration changes whose Kafka key is not their tenant id (GLOBAL:
    /// KIND:key) as tenant_key_mismatch; orders are not checked.
    #[arg(long, env = "TENANTSTREAM_TENANT_KEY_MUST_MATCH")]
    pub tenant_key_must_match: Option<bool>,
    /// Largest message value decoded, in bytes; larger ones are dead-lettered as too_large.
    #[arg(long, env = "TENANTSTREAM_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Most elements of one array or map in a message (line items per order).
    #[arg(long, env = "TENANTSTREAM_MAX_ITEMS")]
    pub max_items: Option<usize>,
    /// Bytes of messages that all partitions together may hold (buffered or being written)
    /// before the worker stops receiving.
    #[arg(long, env = "TENANTSTREAM_MAX_BUFFERED_BYTES")]
    pub max_buffered_bytes: Option<usize>,
}

/// The SLA engine.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "SLA")]
pub struct SlaFlags {
    /// Policy of tenants without an SLA_POLICY entry `default`: its JSON, e.g.
    /// '{"lag_threshold_ms": 60000, "deadlines_ms": {"CREATED->CONFIRMED": 3600000}}', or none.
    #[arg(long, env = "TENANTSTREAM_SLA_DEFAULT_POLICY")]
    pub sla_default_policy: Option<String>,
    /// Window (ms) of PROCESSING_LAG: at most one violation per tenant per window.
    #[arg(long, env = "TENANTSTREAM_SLA_LAG_WINDOW_MS")]
    pub sla_lag_window_ms: Option<u64>,
    /// How often (ms) the deadline timer and the violation publisher look for work when idle.
    #[arg(long, env = "TENANTSTREAM_SLA_POLL_INTERVAL_MS")]
    pub sla_poll_interval_ms: Option<u64>,
}

/// Every group: the commands that run the pipeline or report on all of it.
#[derive(Args, Debug, Clone, Default)]
pub struct AllFlags {
    #[command(flatten)]
    pub kafka: KafkaFlags,
    #[command(flatten)]
    pub postgres: PostgresFlags,
    #[command(flatten)]
    pub admin: AdminFlags,
    #[command(flatten)]
    pub redis: RedisFlags,
    #[command(flatten)]
    pub schemas: SchemaFlags,
    #[command(flatten)]
    pub worker: WorkerFlags,
    #[command(flatten)]
    pub sla: SlaFlags,
}

impl AllFlags {
    pub fn overrides(&self, file: &FileFlags) -> Overrides {
        Overrides {
            file: file.clone(),
            all: self.clone(),
        }
    }
}

/// What the command line and the environment set, over the file and the defaults. A command
/// fills the groups it takes; the others stay empty.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub file: FileFlags,
    pub all: AllFlags,
}

impl Overrides {
    /// Defaults, overlaid by the TOML file (if any), overlaid by environment and flags;
    /// validated.
    pub fn load(&self) -> Result<Settings, ConfigError> {
        let mut settings = match &self.file.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        self.apply_to(&mut settings);
        settings.validate()?;
        Ok(settings)
    }

    fn apply_to(&self, settings: &mut Settings) {
        fn set<T: Clone>(target: &mut T, value: &Option<T>) {
            if let Some(value) = value {
                *target = value.clone();
            }
        }
        fn secret(target: &mut Secret, value: &Option<String>) {
            if let Some(value) = value {
                *target = Secret::new(value);
            }
        }
        let AllFlags {
            kafka,
            postgres,
            admin,
            redis,
            schemas,
            worker,
            sla,
        } = &self.all;
        set(&mut settings.log_format, &self.file.log_format);
        set(&mut settings.kafka.brokers, &kafka.brokers);
        set(&mut settings.kafka.group_id, &kafka.group_id);
        set(&mut settings.kafka.orders_topic, &kafka.orders_topic);
        set(&mut settings.kafka.config_topic, &kafka.config_topic);
        set(
            &mut settings.kafka.dead_letter_topic,
            &kafka.dead_letter_topic,
        );
        set(
            &mut settings.kafka.sla_violations_topic,
            &kafka.sla_violations_topic,
        );
        secret(&mut settings.database.url, &postgres.database_url);
        set(
            &mut settings.database.statement_timeout_ms,
            &postgres.statement_timeout_ms,
        );
        secret(&mut settings.database.admin_url, &admin.admin_database_url);
        secret(&mut settings.redis.url, &redis.redis_url);
        set(
            &mut settings.redis.order_ttl_seconds,
            &redis.order_ttl_seconds,
        );
        set(
            &mut settings.redis.config_ttl_seconds,
            &redis.config_ttl_seconds,
        );
        set(&mut settings.schemas.dir, &schemas.schemas_dir);
        if let Some(url) = &schemas.schema_registry_url {
            settings.schemas.registry_url = (!url.is_empty()).then(|| url.clone());
        }
        set(&mut settings.http.listen, &worker.http_listen);
        set(
            &mut settings.http.tenant_metrics_top,
            &worker.tenant_metrics_top,
        );
        set(
            &mut settings.http.tenant_idle_seconds,
            &worker.tenant_idle_seconds,
        );
        set(
            &mut settings.kafka.batch_max_events,
            &worker.batch_max_events,
        );
        set(&mut settings.kafka.batch_linger_ms, &worker.batch_linger_ms);
        set(
            &mut settings.kafka.session_timeout_ms,
            &worker.session_timeout_ms,
        );
        set(
            &mut settings.kafka.rebalance_protocol,
            &worker.rebalance_protocol,
        );
        set(&mut settings.tenants.strict, &worker.strict_tenants);
        set(
            &mut settings.tenants.key_must_match,
            &worker.tenant_key_must_match,
        );
        set(
            &mut settings.limits.max_message_bytes,
            &worker.max_message_bytes,
        );
        set(&mut settings.limits.max_items, &worker.max_items);
        set(
            &mut settings.limits.max_buffered_bytes,
            &worker.max_buffered_bytes,
        );
        set(&mut settings.sla.default_policy, &sla.sla_default_policy);
        set(&mut settings.sla.lag_window_ms, &sla.sla_lag_window_ms);
        set(
            &mut settings.sla.poll_interval_ms,
            &sla.sla_poll_interval_ms,
        );
    }
}

/// The default of the setting a flag (by its id) overrides, as `--help` shows it: read from
/// [`Settings::default`], so help and behaviour cannot disagree. `None` for a flag without one.
pub fn default_of(id: &str, d: &Settings) -> Option<String> {
    let text = match id {
        "config" => return None,
        "log_format" => d.log_format.to_string(),
        "brokers" => d.kafka.brokers.clone(),
        "group_id" => d.kafka.group_id.clone(),
        "orders_topic" => d.kafka.orders_topic.clone(),
        "config_topic" => d.kafka.config_topic.clone(),
        "dead_letter_topic" => d.kafka.dead_letter_topic.clone(),
        "sla_violations_topic" => d.kafka.sla_violations_topic.clone(),
        "database_url" => d.database.url.to_string(),
        "statement_timeout_ms" => d.database.statement_timeout_ms.to_string(),
        "admin_database_url" => d.database.admin_url.to_string(),
        "redis_url" => d.redis.url.to_string(),
        "order_ttl_seconds" => d.redis.order_ttl_seconds.to_string(),
        "config_ttl_seconds" => d.redis.config_ttl_seconds.to_string(),
        "schemas_dir" => d.schemas.dir.display().to_string(),
        "schema_registry_url" => return d.schemas.registry_url.clone(),
        "http_listen" => d.http.listen.clone(),
        "tenant_metrics_top" => d.http.tenant_metrics_top.to_string(),
        "tenant_idle_seconds" => d.http.tenant_idle_seconds.to_string(),
        "batch_max_events" => d.kafka.batch_max_events.to_string(),
        "batch_linger_ms" => d.kafka.batch_linger_ms.to_string(),
        "session_timeout_ms" => d.kafka.session_timeout_ms.to_string(),
        "rebalance_protocol" => d.kafka.rebalance_protocol.to_string(),
        "strict_tenants" => d.tenants.strict.to_string(),
        "tenant_key_must_match" => d.tenants.key_must_match.to_string(),
        "max_message_bytes" => d.limits.max_message_bytes.to_string(),
        "max_items" => d.limits.max_items.to_string(),
        "max_buffered_bytes" => d.limits.max_buffered_bytes.to_string(),
        "sla_default_policy" => d.sla.default_policy.clone(),
        "sla_lag_window_ms" => d.sla.lag_window_ms.to_string(),
        "sla_poll_interval_ms" => d.sla.poll_interval_ms.to_string(),
        _ => return None,
    };
    Some(text)
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
            file: FileFlags {
                config: Some(path),
                ..Default::default()
            },
            all: AllFlags {
                kafka: KafkaFlags {
                    group_id: Some("from-flag".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        };
        let s = overrides.load().unwrap();
        assert_eq!(s.kafka.group_id, "from-flag");
        assert_eq!(s.kafka.orders_topic, "o");
    }

    #[test]
    fn the_worker_and_replay_take_the_key_rule() {
        use clap::Parser;
        assert!(!Settings::default().tenants.key_must_match);
        for command in ["run", "replay"] {
            let args = ["tenantstream", command, "--tenant-key-must-match", "true"];
            let cli = crate::cli::Cli::try_parse_from(args).unwrap();
            assert!(cli.settings().unwrap().tenants.key_must_match, "{command}");
        }
    }
}
