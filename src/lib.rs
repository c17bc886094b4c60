//! tenantstream: a Kafka-native worker for multi-tenant SaaS platforms.
//!
//! Order and configuration events (Avro) flow `source → decode → sink (Postgres, under tenant RLS) → cache
//! (Redis)`, with permanent failures sent to the dead-letter topic. See README.md and
//! DESIGN.md for the contract.

pub mod cache;
pub mod commands;
pub mod config;
pub mod deadletter;
pub mod decode;
pub mod demo;
pub mod events;
pub mod http;
pub mod metrics;
pub mod produce;
pub mod replay;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod worker;

pub use config::Settings;
pub use worker::Worker;
