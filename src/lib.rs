//! tenantstream: a Kafka-native worker for multi-tenant SaaS platforms.
//!
//! Order and configuration events (Avro) flow `source → decode → validate → sink (Postgres,
//! under tenant RLS) → cache (Redis)`, with permanent failures sent to the dead-letter topic.
//! See README.md for the contract.
//!
//! Layers import downward only: `domain` at the bottom; above it `validate` (then `decode`,
//! which validates what it decodes), `sink` (then `source`, which reads stored offsets) and
//! `cache`; `sla` (the deadline timer and the violation publisher) above those, then
//! `pipeline`; `tools` and `cli` on top. `config`, `clock`, `retry`,
//! `health`, `metrics`, `monitor` (per-tenant figures), `telemetry` and `http` are leaves
//! anything may use.
//! `tests/integration/layout.rs` checks it.

mod cache;
mod cli;
mod clock;
mod config;
mod decode;
mod domain;
mod health;
mod http;
mod metrics;
mod monitor;
mod pipeline;
mod retry;
mod sink;
mod sla;
mod source;
pub mod telemetry;
#[cfg(feature = "test-support")]
pub mod testing;
mod tools;
mod validate;

pub use cli::{describe_error, Cli};
pub use clock::Clock;
pub use config::{
    ConfigError, DatabaseSettings, HttpSettings, KafkaSettings, LogFormat, RebalanceProtocol,
    RedisSettings, SchemaSettings, Secret, Settings, SlaSettings, TenantSettings,
};
pub use domain::PartitionRange;
pub use health::{Component, Health};
pub use pipeline::{Worker, WorkerError};
pub use tools::replay::{self as replay, ReplayOptions, ReplaySummary, StartFrom};
