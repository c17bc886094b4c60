//! The integration tests, one binary (one link of rdkafka, sqlx and fred instead of one per
//! file), against real Postgres and Redis and a real Kafka-protocol broker: tansu (started by
//! scripts/test.sh) or, where end offsets must be exact, librdkafka's in-process mock cluster.
//! Each module names the broker it uses.

mod support;

mod cli;
mod cli_commands;
mod config_pipeline;
mod crash;
mod decoding;
mod fencing;
mod fuzz_decode;
mod hostile_inputs;
mod isolation;
mod layout;
mod mock_pipeline;
mod monitoring_files;
mod offset_gaps;
mod pipeline_tansu;
mod prometheus_scrape;
mod rebalance;
mod redis_cluster;
mod rejected_rows;
mod replay;
mod rls;
mod sla;
mod sla_faults;
mod slow_rows;
mod soak;
mod startup;
mod tenant_cost;
mod tenant_health;
mod worker_metrics;
