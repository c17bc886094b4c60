//! The live worker: Kafka partitions in, batches through `decode → dead letters → write →
//! cache`, acknowledged in Postgres; and the drainer that finishes cache work left behind.

mod batch;
mod cache_drainer;
pub mod dead_letter;
mod decoded;
mod partitions;
mod tenants;
mod worker;

pub use worker::{Worker, WorkerError};
