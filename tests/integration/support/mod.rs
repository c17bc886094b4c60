//! Shared test support, by concern: real Postgres (database `tenantstream_test`), real Redis,
//! and a real Kafka-protocol broker (tansu, started by scripts/test.sh) or librdkafka's mock
//! cluster; a real Prometheus where a test checks what a scrape sees. Each test isolates itself
//! with its own topics, consumer group and tenants.
#![allow(dead_code)]

mod kafka;
mod metrics;
mod postgres;
mod postgres_server;
mod process;
mod prometheus;
mod redis;
mod services;
mod silent_broker;
mod sla;
mod traffic;
mod worker;

pub use kafka::*;
pub use metrics::*;
pub use postgres::*;
pub use postgres_server::*;
pub use process::*;
pub use prometheus::*;
pub use redis::*;
pub use services::*;
pub use silent_broker::*;
pub use sla::*;
pub use traffic::*;
pub use worker::*;
