//! Kafka consumer and rebalances.
//!
//! Guarantee: on assignment each partition starts at the next offset stored in Postgres (not
//! Kafka's committed offset, which is written afterwards for lag monitoring only). The stored
//! offsets are read inside the rebalance callback, before the partitions are assigned, so no
//! message from an older position is ever handed to the pipeline.
//!
//! The callback blocks the task that also drives the in-flight batches, so it reads through its
//! own small pool: it never waits for a connection held by a batch it is blocking.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, Statistics, TopicPartitionList};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaSettings;
use crate::http::Health;
use crate::sink::load_stored_offsets;

/// A change of assignment, seen by the pipeline after the consumer's next poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// Partitions now owned, each with the stored next offset it starts from (`None`: nothing
    /// stored, starts at the earliest offset).
    Assigned(Vec<(String, i32, Option<i64>)>),
    Revoked(Vec<(String, i32)>),
}

/// The consumer's context: rebalance handling, broker health and lag from statistics.
pub struct SourceContext {
    /// Used only by the rebalance callback (see the module doc).
    offsets_pool: PgPool,
    group: String,
    runtime: tokio::runtime::Handle,
    health: Health,
    shutdown: CancellationToken,
    changes: Mutex<Vec<Assignment>>,
}

pub type Source = StreamConsumer<SourceContext>;

impl SourceContext {
    /// Assignment changes since the last call, oldest first.
    pub fn take_changes(&self) -> Vec<Assignment> {
        std::mem::take(&mut *self.changes.lock().expect("assignment lock"))
    }

    /// Reads the stored offsets, retrying while Postgres is down: the partitions must not start
    /// anywhere else. `None` when stopped first.
    fn stored_offsets_blocking(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Option<HashMap<i32, i64>> {
        let load = async {
            let mut backoff = Duration::from_millis(100);
            loop {
                match load_stored_offsets(&self.offsets_pool, &self.group, topic, partitions).await
                {
                    Ok(offsets) => {
                        self.health.recovered("postgres");
                        return Some(offsets);
                    }
                    Err(error) => {
                        self.health.failed("postgres", &error);
                        crate::metrics::transient_error("assign", &error, backoff);
                    }
                }
                tokio::select! {
                    _ = self.shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        };
        // The callback runs inside the consumer's poll on a runtime worker thread.
        match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(|| self.runtime.block_on(load)),
            Err(_) => self.runtime.block_on(load),
        }
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let mut by_topic: HashMap<String, Vec<i32>> = HashMap::new();
        for elem in tpl.elements() {
            by_topic
                .entry(elem.topic().to_owned())
                .or_default()
                .push(elem.partition());
        }
        let mut assigned = Vec::new();
        for (topic, partitions) in by_topic {
            let Some(stored) = self.stored_offsets_blocking(&topic, &partitions) else {
                tracing::info!("Stopping during assignment; partitions left unassigned.");
                return;
            };
            for partition in partitions {
                let start = stored.get(&partition).copied();
                let offset = start.map_or(Offset::Beginning, Offset::Offset);
                if let Err(error) = tpl.set_partition_offset(&topic, partition, offset) {
                    tracing::error!(%error, topic, partition, "Cannot set start offset.");
                }
                assigned.push((topic.clone(), partition, start));
            }
        }
        if let Err(error) = consumer.assign(tpl) {
            tracing::error!(%error, "Partition assignment failed.");
            return;
        }
        // librdkafka keeps an application pause across revoke and assign; a partition paused
        // for backpressure before a rebalance would otherwise never fetch again.
        if let Err(error) = consumer.resume(tpl) {
            tracing::error!(%error, "Resuming assigned partitions failed.");
        }
        tracing::info!(partitions = ?assigned, "Partitions assigned at stored offsets.");
        self.health.recovered("kafka");
        self.changes
            .lock()
            .expect("assignment lock")
            .push(Assignment::Assigned(assigned));
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let revoked: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        tracing::info!(partitions = ?revoked, "Partitions revoked.");
        self.changes
            .lock()
            .expect("assignment lock")
            .push(Assignment::Revoked(revoked));
        if let Err(error) = consumer.unassign() {
            tracing::error!(%error, "Unassign failed.");
        }
    }
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, stats) in &statistics.topics {
            for (partition, p) in &stats.partitions {
                if *partition >= 0 && p.consumer_lag_stored >= 0 {
                    crate::metrics::consumer_lag(topic, *partition, p.consumer_lag_stored);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode;
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown)
        ) {
            self.health.failed("kafka", reason);
        }
        tracing::warn!(%error, reason, "Kafka client error.");
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, tpl),
            other => {
                tracing::error!(error = ?other, "Rebalance error; releasing partitions.");
                self.revoke(consumer, tpl);
            }
        }
    }
}

/// The common client settings (bootstrap servers, logging).
pub fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set_log_level(RDKafkaLogLevel::Warning);
    config
}

/// A consumer subscribed to `topics`, starting each partition at its stored offset.
pub fn subscribe(
    settings: &KafkaSettings,
    topics: &[&str],
    offsets_pool: PgPool,
    health: Health,
    shutdown: CancellationToken,
) -> Result<Source, KafkaError> {
    let context = SourceContext {
        offsets_pool,
        group: settings.group_id.clone(),
        runtime: tokio::runtime::Handle::current(),
        health,
        shutdown,
        changes: Mutex::new(Vec::new()),
    };
    let consumer: Source = client_config(settings)
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set(
            "session.timeout.ms",
            settings.session_timeout_ms.to_string(),
        )
        .set("statistics.interval.ms", "5000")
        // An idle partition's fetch returns after this long at most (librdkafka's default is
        // 500 ms, which would dominate end-to-end latency at low rates).
        .set("fetch.wait.max.ms", "50")
        .create_with_context(context)?;
    consumer.subscribe(topics)?;
    Ok(consumer)
}

/// A producer for dead letters (and `produce`): acks from all replicas, retried by librdkafka.
pub fn producer(settings: &KafkaSettings) -> Result<FutureProducer, KafkaError> {
    client_config(settings)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
}
