//! Rebalances: each assigned partition starts at the next offset stored in Postgres.
//!
//! Under the eager protocol a rebalance revokes the whole assignment and assigns a new one;
//! under the cooperative one (`cooperative-sticky`) it revokes only the partitions that move
//! (`incremental_unassign`) and adds the ones that arrive (`incremental_assign`), and the
//! pipeline keeps the buffers and batches of the others.
//!
//! Guarantee: the stored offsets are read inside the rebalance callback, before the partitions
//! are assigned, so no message from an older position is ever handed to the pipeline (Kafka's
//! committed offset is written afterwards, for lag monitoring only).
//!
//! The callback blocks the task that also drives the in-flight batches, so it reads through its
//! own small pool: it never waits for a connection held by a batch it is blocking.
//!
//! Besides the assign or unassign answer librdkafka requires (served, because the group waits
//! for it), the callback asks librdkafka nothing that waits for its group thread: after that
//! answer, inside the revocation that closing the consumer delivers, such a question (the
//! assignment, the rebalance protocol) can wait forever (librdkafka issue #4041), and a worker
//! told to stop hung there once in CI. The protocol comes from the settings, and the partitions
//! held are counted from the callback's own assignments and revocations. An assignment that
//! arrives once the worker is stopping is not answered (issue #4884: answering it can hang).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, Statistics, TopicPartitionList};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{AssignedPartition, Assignment};
use crate::config::{KafkaSettings, RebalanceProtocol};
use crate::domain::TopicPartition;
use crate::health::{Component, Health};
use crate::metrics::{self, Stage};
use crate::retry::{self, RetryPolicy};
use crate::sink::load_stored_offsets;

/// The consumer's context: rebalance handling, broker health and lag from statistics.
pub struct SourceContext {
    /// Used only by the rebalance callback (see the module doc).
    offsets_pool: PgPool,
    group: String,
    runtime: tokio::runtime::Handle,
    health: Health,
    shutdown: CancellationToken,
    changes: Mutex<Vec<Assignment>>,
    /// The group uses the cooperative protocol (assignments change incrementally), as
    /// configured.
    cooperative: bool,
    /// The partitions this consumer holds, as its own assignments and revocations left them
    /// (for the counts of held partitions).
    held: Mutex<HashSet<TopicPartition>>,
    /// librdkafka reported every broker down, and no broker has been seen up since.
    all_brokers_down: AtomicBool,
}

impl SourceContext {
    pub(super) fn new(
        offsets_pool: PgPool,
        settings: &KafkaSettings,
        health: Health,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            offsets_pool,
            group: settings.group_id.clone(),
            runtime: tokio::runtime::Handle::current(),
            health,
            shutdown,
            changes: Mutex::new(Vec::new()),
            cooperative: settings.rebalance_protocol == RebalanceProtocol::Cooperative,
            held: Mutex::new(HashSet::new()),
            all_brokers_down: AtomicBool::new(false),
        }
    }

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
            let mut backoff = RetryPolicy::ASSIGN.backoff();
            let offsets = retry::until_ok(
                &mut backoff,
                &self.shutdown,
                |error, retry_in| {
                    self.health
                        .transient(Component::Postgres, Stage::Assign, error, retry_in);
                },
                || load_stored_offsets(&self.offsets_pool, &self.group, topic, partitions),
            )
            .await?;
            self.health.recovered(Component::Postgres);
            Some(offsets)
        };
        // The callback runs inside the consumer's poll on a runtime worker thread (during the
        // close, on the close thread, but an assignment then returns before this).
        match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(|| self.runtime.block_on(load)),
            Err(_) => self.runtime.block_on(load),
        }
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        if self.shutdown.is_cancelled() {
            // An assignment delivered while the consumer closes is left unanswered: answering
            // it then can wait forever (librdkafka issue #4884), and closing unassigns anyway.
            tracing::info!("Stopping: an assignment during the close is left unanswered.");
            return;
        }
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
                assigned.push(AssignedPartition {
                    partition: TopicPartition::new(topic.clone(), partition),
                    stored: start,
                });
            }
        }
        let cooperative = self.cooperative;
        let result = if cooperative {
            consumer.incremental_assign(tpl)
        } else {
            consumer.assign(tpl)
        };
        if let Err(error) = result {
            tracing::error!(%error, "Partition assignment failed.");
            return;
        }
        {
            let mut held = self.held.lock().expect("held lock");
            if !cooperative {
                held.clear();
            }
            held.extend(
                tpl.elements()
                    .iter()
                    .map(|e| TopicPartition::new(e.topic(), e.partition())),
            );
        }
        // librdkafka keeps an application pause across revoke and assign; a partition paused
        // for backpressure before a rebalance would otherwise never fetch again. Only the
        // partitions just assigned: a kept one stays paused until its batch is written.
        if tpl.count() > 0 {
            if let Err(error) = consumer.resume(tpl) {
                tracing::error!(%error, "Resuming assigned partitions failed.");
            }
        }
        for (topic, partitions) in by_topic_text(assigned.iter().map(|a| {
            let start = a.stored.map_or("start".to_owned(), |o| o.to_string());
            (&a.partition, format!("{}@{start}", a.partition.partition))
        })) {
            tracing::info!(topic, partitions, "Partitions assigned at stored offsets.");
        }
        // A cooperative rebalance ends with an assignment call on every member, empty for
        // those that get nothing new: counted only when partitions arrive.
        if !assigned.is_empty() {
            let topics: BTreeSet<&str> = assigned
                .iter()
                .map(|a| a.partition.topic.as_str())
                .collect();
            metrics::partitions_assigned(&self.held(&topics));
        }
        self.health.recovered(Component::Kafka);
        self.push(Assignment::Assigned(assigned));
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let revoked: Vec<TopicPartition> = tpl
            .elements()
            .iter()
            .map(|e| TopicPartition::new(e.topic(), e.partition()))
            .collect();
        for (topic, partitions) in
            by_topic_text(revoked.iter().map(|p| (p, p.partition.to_string())))
        {
            tracing::info!(topic, partitions, "Partitions revoked.");
        }
        // Their lag is the new owner's to report: summed over the workers, a stale value left
        // here would count twice.
        for p in &revoked {
            metrics::consumer_lag(&p.topic, p.partition, 0);
        }
        let cooperative = self.cooperative;
        let result = if cooperative {
            consumer.incremental_unassign(tpl)
        } else {
            consumer.unassign()
        };
        match result {
            Err(error) => tracing::error!(%error, "Unassign failed."),
            Ok(()) => {
                let mut held = self.held.lock().expect("held lock");
                if cooperative {
                    for p in &revoked {
                        held.remove(p);
                    }
                } else {
                    held.clear();
                }
            }
        }
        self.push(Assignment::Revoked(revoked));
        let elements = tpl.elements();
        if !elements.is_empty() {
            let topics: BTreeSet<&str> = elements.iter().map(|e| e.topic()).collect();
            metrics::partitions_revoked(&self.held(&topics));
        }
    }

    /// How many partitions the consumer holds now of each of `topics`.
    fn held<'a>(&self, topics: &BTreeSet<&'a str>) -> Vec<(&'a str, usize)> {
        let held = self.held.lock().expect("held lock");
        topics
            .iter()
            .map(|topic| (*topic, held.iter().filter(|p| p.topic == *topic).count()))
            .collect()
    }

    fn push(&self, change: Assignment) {
        self.changes.lock().expect("assignment lock").push(change);
    }
}

/// Per topic, its partitions as one plain text field (`0@1481,1@start`: partition, and where it
/// starts), so a JSON log holds strings, not Rust debug text.
fn by_topic_text<'a>(
    items: impl Iterator<Item = (&'a TopicPartition, String)>,
) -> std::collections::BTreeMap<&'a str, String> {
    let mut by_topic: std::collections::BTreeMap<&str, String> = Default::default();
    for (partition, text) in items {
        let line = by_topic.entry(partition.topic.as_str()).or_default();
        if !line.is_empty() {
            line.push(',');
        }
        line.push_str(&text);
    }
    by_topic
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        // An idle worker sees no message after a broker outage: a broker up again is its sign
        // of recovery.
        let up = statistics
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP");
        if up && self.all_brokers_down.swap(false, Ordering::Relaxed) {
            self.health.recovered(Component::Kafka);
        }
        for (topic, stats) in &statistics.topics {
            for (partition, p) in &stats.partitions {
                if *partition >= 0 && p.consumer_lag_stored >= 0 {
                    metrics::consumer_lag(topic, *partition, p.consumer_lag_stored);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode;
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.all_brokers_down.store(true, Ordering::Relaxed);
        }
        super::report_client_error(&self.health, error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        super::log_client_message(level, fac, log_message);
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
                let error = KafkaError::Global(other.into()).to_string();
                tracing::error!(error, "Rebalance error; releasing partitions.");
                self.revoke(consumer, tpl);
            }
        }
    }
}
