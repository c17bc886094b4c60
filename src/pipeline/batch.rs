//! One partition batch: `decode → dead letters → write → cache`, then the caller acknowledges.
//!
//! Each step runs until it succeeds; a transient failure retries that step only (so dead
//! letters are not sent again while Postgres is down), marks readiness false and waits with the
//! batch's backoff. Nothing after a failing step happens, so no offset passes unwritten data.
//! A row Postgres rejects for its data is found, dead-lettered as `rejected_by_postgres` with
//! its SQLSTATE, and the rest of the batch commits: poison never blocks a partition.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::Client;
use rdkafka::Message;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::dead_letter::{DeadLetter, DeadLetterError, DeadLetterSink};
use super::decoded::Decoded;
use super::partitions::ReadyBatch;
use super::tenants::tenant_shares;
use crate::cache::{self, CacheLedger, Ttl};
use crate::decode::{DecodeError, Decoder};
use crate::domain::{
    CacheRef, Event, QueuedCache, TenantPolicy, ValidConfig, ValidOrder, ViolationKind,
};
use crate::health::{Component, Health};
use crate::metrics::{self, Outcome, Stage};
use crate::monitor::TenantMonitor;
use crate::retry::{self, Backoff, RetryPolicy};
use crate::sink::sla::SlaTracking;
use crate::sink::{self, Batch, BatchOutcome, Isolated, PartitionKey, Rows, SinkError};
use crate::validate::{KeyPolicy, Validate};

/// A failure of one batch step that waits and retries: a dependency is down, or (Postgres)
/// something only an operator can fix. Never dead-lettered.
#[derive(Debug, thiserror::Error)]
pub(super) enum BatchError {
    #[error(transparent)]
    Registry(#[from] DecodeError),
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    #[error(transparent)]
    Postgres(#[from] SinkError),
}

impl BatchError {
    fn component(&self) -> Component {
        match self {
            Self::Registry(_) => Component::SchemaRegistry,
            Self::DeadLetter(_) => Component::Kafka,
            Self::Postgres(_) => Component::Postgres,
        }
    }
}

/// What became of a batch.
pub(super) enum Processed {
    Committed {
        next_offset: i64,
    },
    Fenced,
    /// Stopped while retrying; nothing was committed.
    Abandoned,
}

/// Everything a batch needs, shared by the batches of every partition.
pub(super) struct BatchPath {
    pub pool: PgPool,
    pub redis: Client,
    pub group: String,
    pub config_topic: String,
    /// Reader of the orders topic.
    pub orders: Decoder,
    /// Reader of the configuration topic.
    pub config: Decoder,
    pub dead_letters: DeadLetterSink,
    pub tenant_policy: TenantPolicy,
    /// Whether a message's key must agree with its body (`tenants.key_must_match`).
    pub key_policy: KeyPolicy,
    pub ttl: Ttl,
    pub health: Health,
    /// The SLA policy settings and the clock the pipeline reads "now" from: batches keep
    /// deadlines and lag, and time end-to-end latency by it.
    pub sla: SlaTracking,
    pub cache_ledger: Arc<CacheLedger>,
    /// Wakes the drainer when the batch could not write its cache keys.
    pub cache_wake: Arc<Notify>,
    /// Per-tenant figures of committed batches and dead letters.
    pub tenants: TenantMonitor,
    /// Batches writing to Postgres at once: one fewer than the pool's connections, which keeps
    /// one for the timer, the publisher and the drainer. The others wait here for a batch to
    /// finish its write, not for the pool, whose acquire timeout would count the wait as a
    /// failure. Decoding, dead letters and Redis go on meanwhile.
    pub writers: Arc<Semaphore>,
}

impl BatchPath {
    /// Routes a batch to the path of its topic's event type.
    pub async fn process(&self, batch: &ReadyBatch, shutdown: &CancellationToken) -> Processed {
        if batch.partition.topic == self.config_topic {
            self.process_as::<ValidConfig>(&self.config, batch, shutdown)
                .await
        } else {
            self.process_as::<ValidOrder>(&self.orders, batch, shutdown)
                .await
        }
    }

    async fn process_as<E>(
        &self,
        decoder: &Decoder,
        batch: &ReadyBatch,
        shutdown: &CancellationToken,
    ) -> Processed
    where
        E: Validate,
        for<'a> Rows<'a>: From<&'a [E]>,
    {
        let Some(last) = batch.messages.last() else {
            return Processed::Abandoned;
        };
        let started = Instant::now();
        let mut backoff = RetryPolicy::BATCH.backoff();
        let decode = || {
            timed(
                Stage::Decode,
                Decoded::<E>::decode(decoder, self.key_policy, &batch.messages),
            )
        };
        let Some(mut decoded) = self
            .retrying(Stage::Decode, &mut backoff, shutdown, decode)
            .await
        else {
            return Processed::Abandoned;
        };
        self.health.recovered(Component::SchemaRegistry);
        if !self
            .reject_unknown_tenants(&mut decoded, &mut backoff, shutdown)
            .await
        {
            return Processed::Abandoned;
        }
        let dead = decoded.take_dead();
        if !self.send_dead_letters(&dead, &mut backoff, shutdown).await {
            return Processed::Abandoned;
        }
        let key = PartitionKey {
            group: self.group.clone(),
            topic: batch.partition.topic.clone(),
            partition: batch.partition.partition,
        };
        // Outbox rows of these tenants already applied to Redis: the batch's statements delete
        // them (taken once: if the batch is not written they are only applied again later).
        let applied = self.cache_ledger.take_for(decoded.tenants());
        let position = Position {
            key: &key,
            expected: batch.committed,
            next_offset: last.offset() + 1,
            tenant_policy: self.tenant_policy,
            applied: &applied,
            sla: &self.sla,
        };
        let Some((outcome, postgres)) = self
            .write(&position, &mut decoded, &mut backoff, shutdown)
            .await
        else {
            return Processed::Abandoned;
        };
        self.health.recovered(Component::Postgres);
        self.health.recovered(Component::Kafka);
        let (topic, partition) = (key.topic.as_str(), key.partition);
        let written = match outcome {
            BatchOutcome::Fenced => {
                metrics::batch_fenced(topic, partition, batch.committed);
                return Processed::Fenced;
            }
            BatchOutcome::Committed(written) => written,
        };
        let occurred: Vec<i64> = decoded.events().iter().map(|e| e.occurred_at()).collect();
        metrics::events_processed(topic, Outcome::Written, written.written);
        metrics::events_processed(topic, Outcome::Superseded, written.superseded);
        metrics::events_processed(topic, Outcome::Stale, written.stale);
        let lag = ViolationKind::ProcessingLag.as_str();
        metrics::sla_violations_detected(lag, written.lag_violations as u64);
        let elapsed = started.elapsed();
        let now = self.sla.clock.now_ms();
        let next_offset = position.next_offset;
        metrics::batch_committed(topic, partition, next_offset, elapsed, &occurred, now);
        let events = decoded.events();
        let shares = tenant_shares(events, &written.cache, now, postgres);
        metrics::batch_tenants(topic, shares.len());
        self.tenants.batch_committed(&shares);
        for (tenant, code) in decoded.dead_letters_by_tenant() {
            self.tenants.dead_lettered(*tenant, code);
        }
        let profiles = events.iter().filter(|e| e.registers_tenant());
        for tenant in profiles.filter_map(Event::tenant) {
            self.tenants.forget_status(tenant);
        }
        self.apply_cache(topic, &written.cache, events).await;
        Processed::Committed { next_offset }
    }

    /// Writes the batch. When Postgres rejects it for the data of some rows, the rejected rows
    /// are found ([`sink::write_each`]), dead-lettered as `rejected_by_postgres` and removed, and
    /// the rest is written. Returns what became of it and how long the write that succeeded
    /// took; `None` when stopped while retrying.
    ///
    /// A failure that no single row explains (a deferred constraint at commit, say) is retried
    /// like a transient one, with readiness false: it needs an operator.
    async fn write<E>(
        &self,
        position: &Position<'_>,
        decoded: &mut Decoded<'_, E>,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Option<(BatchOutcome, Duration)>
    where
        E: Event,
        for<'a> Rows<'a>: From<&'a [E]>,
    {
        loop {
            let events: &[E] = decoded.events();
            let attempt = || async move {
                let _writing = self.writers.acquire().await.expect("never closed");
                let batch = position.batch(events.into());
                match timed_for(Stage::Sink, sink::write_batch(&self.pool, &batch)).await {
                    // Not retried: the rejected rows are isolated below.
                    Err(error) if error.rejects_row() => Ok(Err(error)),
                    result => result.map(Ok),
                }
            };
            let error = match self
                .retrying(Stage::Sink, backoff, shutdown, attempt)
                .await?
            {
                Ok(outcome) => return Some(outcome),
                Err(error) => error,
            };
            tracing::warn!(
                %error,
                topic = position.key.topic,
                partition = position.key.partition,
                "Postgres rejected the batch for its data; writing its rows one by one."
            );
            let attempt = || async move {
                let _writing = self.writers.acquire().await.expect("never closed");
                let batch = position.batch(events.into());
                timed_for(Stage::Sink, sink::write_each(&self.pool, &batch)).await
            };
            match self
                .retrying(Stage::Sink, backoff, shutdown, attempt)
                .await?
            {
                (Isolated::Written(outcome), took) => return Some((outcome, took)),
                (Isolated::Rejected(rejected), _) => {
                    decoded.reject_rows(rejected, self.tenant_policy);
                    // A rejected profile leaves its tenant unregistered: strict tenants
                    // dead-letter the tenant's other events as unknown_tenant.
                    if !self
                        .reject_unknown_tenants(decoded, backoff, shutdown)
                        .await
                    {
                        return None;
                    }
                    let letters = decoded.take_dead();
                    if !self.send_dead_letters(&letters, backoff, shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Strict tenants: the events of tenants neither registered in Postgres nor by an event of
    /// the batch become `unknown_tenant` dead letters (nothing to do when unknown tenants are
    /// registered). False when stopped first.
    async fn reject_unknown_tenants<E: Event>(
        &self,
        decoded: &mut Decoded<'_, E>,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> bool {
        if self.tenant_policy == TenantPolicy::RegisterUnknown {
            return true;
        }
        let required = decoded.unregistered_tenants();
        let check = || sink::known_tenants(&self.pool, &required);
        let Some(known) = self.retrying(Stage::Sink, backoff, shutdown, check).await else {
            return false;
        };
        decoded.reject_unknown_tenants(&known);
        true
    }

    /// Sends dead letters until the broker has them all: a dead letter is the last place a
    /// message can go, so even a permanent refusal is retried, never dropped. False when
    /// stopped first.
    async fn send_dead_letters(
        &self,
        letters: &[DeadLetter],
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> bool {
        letters.is_empty()
            || self
                .retrying(Stage::DeadLetter, backoff, shutdown, || {
                    self.dead_letters.send_all(letters)
                })
                .await
                .is_some()
    }

    /// Runs one step until it succeeds, reporting each failure (readiness, metric, log) before
    /// the backoff waits. `None` when stopped while waiting.
    async fn retrying<T, E, Fut>(
        &self,
        stage: Stage,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
        mut attempt: impl FnMut() -> Fut,
    ) -> Option<T>
    where
        Fut: Future<Output = Result<T, E>>,
        E: Into<BatchError>,
    {
        let report = |error: &BatchError, retry_in| {
            self.health
                .transient(error.component(), stage, error, retry_in);
        };
        let attempt = || {
            let step = attempt();
            async move { step.await.map_err(Into::into) }
        };
        retry::until_ok(backoff, shutdown, report, attempt).await
    }

    /// Refreshes the batch's cache keys now; on failure the drainer applies them later. While
    /// Redis is known to be down the batch leaves the work to the drainer at once, so Postgres
    /// progress goes on at full speed. A key Redis refuses (of the wrong type, say) is left
    /// queued alone: Redis answered, so the cache writes of other keys go on. The events whose
    /// keys were written are timed from their `occurred_at` (cache-visible latency).
    async fn apply_cache<E: Event>(&self, topic: &str, queued: &[QueuedCache], events: &[E]) {
        if queued.is_empty() {
            return;
        }
        if self.health.is_failing(Component::Redis) {
            self.cache_wake.notify_one();
            return;
        }
        let apply = cache::apply_queued(&self.redis, &self.cache_ledger, queued, &self.ttl);
        match timed(Stage::Cache, apply).await {
            Ok(refused) => {
                self.health.recovered(Component::Redis);
                if !refused.is_empty() {
                    metrics::redis_error(Stage::Cache);
                }
                let written: HashSet<CacheRef> = queued
                    .iter()
                    .map(|q| q.item.cache_ref())
                    .filter(|r| !refused.contains(r))
                    .collect();
                let visible = events.iter().filter(|e| written.contains(&e.cache_ref()));
                let now = self.sla.clock.now_ms();
                metrics::cache_visible(topic, visible.map(Event::occurred_at), now);
            }
            Err(error) => {
                metrics::redis_error(Stage::Cache);
                let retry_in = Duration::ZERO;
                self.health
                    .transient(Component::Redis, Stage::Cache, &error, retry_in);
                self.cache_wake.notify_one();
            }
        }
    }
}

/// Runs one attempt of a batch step and, when it succeeds, records how long it took as the
/// duration of `stage` (failed attempts and the waits between them are not counted).
async fn timed<T, E>(stage: Stage, step: impl Future<Output = Result<T, E>>) -> Result<T, E> {
    timed_for(stage, step).await.map(|(value, _)| value)
}

/// [`timed`], returning the duration with the value.
async fn timed_for<T, E>(
    stage: Stage,
    step: impl Future<Output = Result<T, E>>,
) -> Result<(T, Duration), E> {
    let started = Instant::now();
    let value = step.await?;
    let took = started.elapsed();
    metrics::stage_finished(stage, took);
    Ok((value, took))
}

/// Everything of a [`Batch`] but its rows, which shrink when rows are rejected.
struct Position<'a> {
    key: &'a PartitionKey,
    expected: Option<i64>,
    next_offset: i64,
    tenant_policy: TenantPolicy,
    applied: &'a HashMap<Uuid, Vec<i64>>,
    sla: &'a SlaTracking,
}

impl Position<'_> {
    fn batch<'b>(&'b self, rows: Rows<'b>) -> Batch<'b> {
        Batch {
            key: self.key,
            expected: self.expected,
            next_offset: self.next_offset,
            rows,
            tenant_policy: self.tenant_policy,
            applied: self.applied,
            sla: Some(self.sla),
        }
    }
}
