//! The worker: consume, decode, write, refresh the cache, acknowledge.
//!
//! Per partition, messages are buffered in order and written as one batch when the batch is
//! full or has lingered long enough; partitions are written concurrently. The per-batch path is
//! `decode → dead_letter → write_batch → apply_cache → acknowledge`. A transient failure
//! (Postgres, Redis, broker, registry) retries the same batch with backoff and marks readiness
//! false; nothing after the failed step happens, so no offset passes unwritten data.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::Consumer;
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::cache::{self, CacheDrainer};
use crate::config::Settings;
use crate::deadletter::{DeadLetter, DeadLetterError, DeadLetterSink};
use crate::decode::{DecodeError, Decoder, SchemaStore};
use crate::events::{unregistered_tenants, Event, ValidConfig, ValidOrder};
use crate::http::Health;
use crate::metrics::{self, Outcome};
use crate::sink::{self, BatchOutcome, PartitionKey, SinkError};
use crate::source::{self, Assignment, Source};

/// A partition stops fetching when this many batches wait behind the one being written: enough
/// to start the next batch at once, bounded so a slow Postgres cannot fill memory.
const PAUSE_AT_BATCHES: usize = 4;

const RETRY_START: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Awaits `$attempt` until it succeeds; after each failure, waits with backoff. Returns
/// `Processed::Abandoned` from the enclosing function when stopped while waiting.
macro_rules! until_ok {
    ($worker:expr, $backoff:expr, $shutdown:expr, $attempt:expr) => {
        loop {
            match $attempt.await {
                Ok(value) => break value,
                Err(error) => {
                    let error = BatchError::from(error);
                    if !$worker.wait_to_retry(error, &mut $backoff, $shutdown).await {
                        return Processed::Abandoned;
                    }
                }
            }
        }
    };
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("schemas: {0}")]
    Schemas(#[from] crate::decode::SchemaLoadError),
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("Postgres: {0}")]
    Postgres(#[from] SinkError),
    #[error("Redis: {0}")]
    Redis(#[from] cache::CacheError),
    #[error("HTTP port {addr}: {source}")]
    Http {
        addr: String,
        source: std::io::Error,
    },
}

/// A transient failure of one batch: retried, never dead-lettered.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error(transparent)]
    Registry(DecodeError),
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    #[error(transparent)]
    Postgres(#[from] SinkError),
}

impl BatchError {
    fn component(&self) -> &'static str {
        match self {
            Self::Registry(_) => "schema_registry",
            Self::DeadLetter(_) => "kafka",
            Self::Postgres(_) => "postgres",
        }
    }
}

enum Processed {
    Committed { next_offset: i64 },
    Fenced,
    Abandoned,
}

/// A partition this worker owns: its stored offset and the messages not yet written.
struct PartitionState {
    /// Which assignment this state belongs to; a batch of an older one is ignored.
    epoch: u64,
    /// A batch of this partition is being written.
    in_flight: bool,
    /// Fetching is paused because the buffer is full while a batch is being written.
    paused: bool,
    /// The next offset stored in Postgres, as this worker last saw it.
    committed: Option<i64>,
    /// The next offset to accept into the buffer (drops anything already buffered or written).
    position: Option<i64>,
    buffer: Vec<OwnedMessage>,
    oldest: Option<Instant>,
}

impl PartitionState {
    fn starting_at(stored: Option<i64>, epoch: u64) -> Self {
        Self {
            epoch,
            in_flight: false,
            paused: false,
            committed: stored,
            position: stored,
            buffer: Vec::new(),
            oldest: None,
        }
    }

    fn accept(&mut self, message: OwnedMessage) -> bool {
        if self.position.is_some_and(|p| message.offset() < p) {
            return false;
        }
        self.position = Some(message.offset() + 1);
        self.oldest.get_or_insert_with(Instant::now);
        self.buffer.push(message);
        true
    }

    fn due_at(&self, linger: Duration) -> Option<Instant> {
        self.oldest.map(|t| t + linger)
    }

    fn restart_at(&mut self, stored: Option<i64>) {
        let paused = self.paused;
        *self = Self::starting_at(stored, self.epoch);
        self.paused = paused;
    }

    fn is_ready(&self, max_events: usize, linger: Duration, now: Instant) -> bool {
        !self.in_flight
            && (self.buffer.len() >= max_events || self.due_at(linger).is_some_and(|t| t <= now))
    }

    fn take_batch(&mut self) -> Vec<OwnedMessage> {
        self.oldest = None;
        std::mem::take(&mut self.buffer)
    }
}

/// Everything a running worker holds.
pub struct Worker {
    settings: Settings,
    pool: PgPool,
    redis: fred::prelude::Client,
    /// Reader of the orders topic.
    orders: Decoder,
    /// Reader of the configuration topic.
    config: Decoder,
    dead_letters: DeadLetterSink,
    health: Health,
    cache_wake: Arc<Notify>,
    cache_ledger: Arc<cache::CacheLedger>,
}

impl Worker {
    /// Connects to Postgres, Redis and Kafka, and loads the schemas. Fails with the name of
    /// what is missing; callers that should wait for dependencies use [`Worker::connect_retrying`].
    pub async fn connect(settings: Settings, health: Health) -> Result<Self, WorkerError> {
        let store = Arc::new(SchemaStore::load(
            &settings.schemas.dir,
            settings.schemas.registry_url.as_deref(),
        )?);
        let orders = Decoder::new(store.clone(), ValidOrder::SCHEMA_FILE)?;
        let config = Decoder::new(store, ValidConfig::SCHEMA_FILE)?;
        let pool = sink::connect_worker(&settings.database).await?;
        sink::ensure_rls_applies(&pool).await?;
        let redis = cache::connect(settings.redis.url.expose()).await?;
        let dead_letters = DeadLetterSink::new(
            source::producer(&settings.kafka)?,
            settings.kafka.dead_letter_topic.clone(),
        );
        // Not ready until `run` has joined the group and been assigned its partitions.
        health.failed("kafka", "not yet assigned partitions");
        Ok(Self {
            settings,
            pool,
            redis,
            orders,
            config,
            dead_letters,
            health,
            cache_wake: Arc::new(Notify::new()),
            cache_ledger: Arc::default(),
        })
    }

    /// [`Worker::connect`], retried with backoff while a dependency is unreachable. Returns
    /// `None` when stopped first. Configuration errors are not retried.
    pub async fn connect_retrying(
        settings: Settings,
        health: Health,
        shutdown: &CancellationToken,
    ) -> Result<Option<Self>, WorkerError> {
        let mut backoff = Duration::from_millis(250);
        loop {
            match Self::connect(settings.clone(), health.clone()).await {
                Ok(worker) => {
                    health.recovered("startup");
                    return Ok(Some(worker));
                }
                Err(e @ (WorkerError::Schemas(_) | WorkerError::Postgres(SinkError::Setup(_)))) => {
                    return Err(e)
                }
                Err(error) => {
                    health.failed("startup", &error);
                    metrics::transient_error("startup", &error, backoff);
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    /// Consumes until `shutdown`, then abandons unwritten buffers and leaves the group.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let consumer = source::subscribe(
            &self.settings.kafka,
            &[
                self.settings.kafka.orders_topic.as_str(),
                self.settings.kafka.config_topic.as_str(),
            ],
            sink::connect_worker_sized(&self.settings.database, 1)?,
            self.health.clone(),
            shutdown.clone(),
        )?;
        let drainer = tokio::spawn(
            CacheDrainer {
                pool: self.pool.clone(),
                redis: self.redis.clone(),
                group: self.settings.kafka.group_id.clone(),
                ttl: (&self.settings.redis).into(),
                ledger: self.cache_ledger.clone(),
                health: self.health.clone(),
                wake: self.cache_wake.clone(),
            }
            .run(shutdown.child_token()),
        );
        self.run_until_stopped(&consumer, &shutdown).await;
        tracing::info!("Stopping: leaving the consumer group.");
        consumer.unsubscribe();
        drop(consumer);
        let _ = drainer.await;
        Ok(())
    }

    async fn run_until_stopped(&self, consumer: &Source, shutdown: &CancellationToken) {
        let linger = Duration::from_millis(self.settings.kafka.batch_linger_ms);
        let max_events = self.settings.kafka.batch_max_events;
        let mut partitions = Partitions::default();
        // At most one batch per partition is being written; partitions write concurrently.
        let mut in_flight: FuturesUnordered<BatchFuture<'_>> = FuturesUnordered::new();
        loop {
            let next_due = partitions.next_due(linger);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    self.finish_batch(consumer, &mut partitions, done).await;
                }
                _ = sleep_until(next_due) => {}
                received = consumer.recv() => {
                    partitions.apply(consumer.context().take_changes());
                    match received {
                        Ok(message) => {
                            self.health.recovered("kafka");
                            partitions.accept(consumer, message.detach(), PAUSE_AT_BATCHES * max_events);
                        }
                        Err(error) => {
                            self.health.failed("kafka", &error);
                            metrics::transient_error("consume", &error, Duration::from_millis(100));
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
            for (key, epoch, committed, batch) in partitions.take_ready(max_events, linger) {
                metrics::events_consumed(&key.0, batch.len());
                in_flight.push(Box::pin(async move {
                    let processed = self
                        .process_batch(&key.0, key.1, committed, &batch, shutdown)
                        .await;
                    BatchDone {
                        key,
                        epoch,
                        processed,
                    }
                }));
            }
        }
        // Stopping: batches being written finish, or are abandoned if they are retrying.
        while let Some(done) = in_flight.next().await {
            self.finish_batch(consumer, &mut partitions, done).await;
        }
    }

    /// Records what became of a batch, unless its partition was reassigned meanwhile.
    async fn finish_batch(&self, consumer: &Source, partitions: &mut Partitions, done: BatchDone) {
        let BatchDone {
            key,
            epoch,
            processed,
        } = done;
        let Some(state) = partitions.current(&key, epoch) else {
            return;
        };
        state.in_flight = false;
        match processed {
            Processed::Committed { next_offset } => {
                state.committed = Some(next_offset);
                // Kafka's committed offset mirrors Postgres for lag monitoring only;
                // librdkafka stores offset + 1.
                let _ = consumer.store_offset(&key.0, key.1, next_offset - 1);
            }
            Processed::Fenced => self.reseek(consumer, &key, state).await,
            Processed::Abandoned => {}
        }
        partitions.resume_if_drained(consumer, &key);
    }

    /// After a fence: start again from whatever offset the new writer stored.
    async fn reseek(&self, consumer: &Source, key: &(String, i32), state: &mut PartitionState) {
        let group = &self.settings.kafka.group_id;
        match sink::load_stored_offsets(&self.pool, group, &key.0, &[key.1]).await {
            Ok(stored) => {
                let stored = stored.get(&key.1).copied();
                state.restart_at(stored);
                let offset = stored.map_or(Offset::Beginning, Offset::Offset);
                if let Err(error) = consumer.seek(&key.0, key.1, offset, Duration::from_secs(5)) {
                    tracing::warn!(%error, topic = key.0, partition = key.1, "Seek after fence failed.");
                }
            }
            Err(error) => {
                tracing::warn!(%error, "Cannot read stored offset after fence; partition paused until reassigned.");
                state.buffer.clear();
            }
        }
    }

    /// Routes a batch to the pipeline of its topic's event type.
    async fn process_batch(
        &self,
        topic: &str,
        partition: i32,
        committed: Option<i64>,
        batch: &[OwnedMessage],
        shutdown: &CancellationToken,
    ) -> Processed {
        if topic == self.settings.kafka.config_topic {
            self.process::<ValidConfig>(&self.config, topic, partition, committed, batch, shutdown)
                .await
        } else {
            self.process::<ValidOrder>(&self.orders, topic, partition, committed, batch, shutdown)
                .await
        }
    }

    /// `decode → dead_letter → write_batch → apply_cache`. Each step runs until it succeeds; a
    /// transient failure retries that step only (so dead letters are not sent again while
    /// Postgres is down). Abandoned when stopped during a retry.
    async fn process<E>(
        &self,
        decoder: &Decoder,
        topic: &str,
        partition: i32,
        committed: Option<i64>,
        batch: &[OwnedMessage],
        shutdown: &CancellationToken,
    ) -> Processed
    where
        E: Event,
        for<'a> sink::Rows<'a>: From<&'a [E]>,
    {
        let Some(last) = batch.last() else {
            return Processed::Abandoned;
        };
        let started = Instant::now();
        let mut backoff = RETRY_START;
        let (mut events, mut dead) =
            until_ok!(self, backoff, shutdown, decode_batch::<E>(decoder, batch));
        self.health.recovered("schema_registry");
        if self.settings.tenants.strict {
            let tenants = unregistered_tenants(events.iter().map(|(_, e)| e));
            let known = until_ok!(
                self,
                backoff,
                shutdown,
                sink::known_tenants(&self.pool, &tenants)
            );
            reject_unknown_tenants(&known, &mut events, &mut dead);
        }
        until_ok!(self, backoff, shutdown, self.dead_letters.send_all(&dead));

        let key = PartitionKey {
            group: self.settings.kafka.group_id.clone(),
            topic: topic.to_owned(),
            partition,
        };
        let next_offset = last.offset() + 1;
        let valid: Vec<E> = events.into_iter().map(|(_, e)| e).collect();
        let register = !self.settings.tenants.strict;
        let outcome = until_ok!(self, backoff, shutdown, async {
            let applied = self
                .cache_ledger
                .take_for(valid.iter().filter_map(|e| e.tenant()));
            sink::write_batch(
                &self.pool,
                &key,
                committed,
                next_offset,
                valid.as_slice().into(),
                register,
                &applied,
            )
            .await
        });
        self.health.recovered("postgres");
        self.health.recovered("kafka");
        let written = match outcome {
            BatchOutcome::Fenced => {
                metrics::batch_fenced(topic, partition, committed);
                return Processed::Fenced;
            }
            BatchOutcome::Committed(written) => written,
        };
        let occurred: Vec<i64> = valid.iter().map(|e| e.occurred_at()).collect();
        metrics::events_processed(topic, Outcome::Written, written.written);
        metrics::events_processed(topic, Outcome::Stale, written.stale);
        metrics::batch_committed(topic, partition, next_offset, started.elapsed(), &occurred);
        self.apply_cache(&written.cache).await;
        Processed::Committed { next_offset }
    }

    /// Marks the failing dependency, then waits `backoff` (doubled for next time). False when
    /// stopped first.
    async fn wait_to_retry(
        &self,
        error: BatchError,
        backoff: &mut Duration,
        shutdown: &CancellationToken,
    ) -> bool {
        self.health.failed(error.component(), &error);
        metrics::transient_error(error.component(), &error, *backoff);
        let waited = tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(*backoff) => true,
        };
        *backoff = (*backoff * 2).min(RETRY_MAX);
        waited
    }

    /// Refreshes the batch's cache keys now; on failure the drainer applies them later. While
    /// Redis is known to be down the batch leaves the work to the drainer at once, so Postgres
    /// progress goes on at full speed.
    async fn apply_cache(&self, queued: &[sink::QueuedCache]) {
        if queued.is_empty() {
            return;
        }
        if self.health.is_failing("redis") {
            self.cache_wake.notify_one();
            return;
        }
        let ttl = (&self.settings.redis).into();
        match cache::apply_queued(&self.redis, &self.cache_ledger, queued, &ttl).await {
            Ok(()) => self.health.recovered("redis"),
            Err(error) => {
                self.health.failed("redis", &error);
                metrics::transient_error("cache", &error, Duration::ZERO);
                self.cache_wake.notify_one();
            }
        }
    }
}

/// Decodes and validates each message; permanent failures become dead letters.
async fn decode_batch<'m, E: Event>(
    decoder: &Decoder,
    batch: &'m [OwnedMessage],
) -> Result<(Vec<(&'m OwnedMessage, E)>, Vec<DeadLetter>), BatchError> {
    let mut events = Vec::with_capacity(batch.len());
    let mut dead = Vec::new();
    for message in batch {
        match decode_event::<E>(decoder, message).await {
            Ok(event) => events.push((message, event)),
            Err(error) if error.is_transient() => return Err(BatchError::Registry(error)),
            Err(error) => dead.push(DeadLetter {
                message: message.clone(),
                code: error.code(),
                stage: error.stage(),
                reason: error.to_string(),
            }),
        }
    }
    Ok((events, dead))
}

/// Decodes and validates one message value.
pub async fn decode_event<E: Event>(
    decoder: &Decoder,
    message: &OwnedMessage,
) -> Result<E, DecodeError> {
    let payload = message
        .payload()
        .ok_or_else(|| DecodeError::Undecodable("message has no value".into()))?;
    let wire: E::Wire = decoder.decode(payload).await?;
    Ok(E::validate(wire)?)
}

/// Strict tenants: events of tenants neither in `known` nor registered by the batch become
/// `unknown_tenant` dead letters.
fn reject_unknown_tenants<E: Event>(
    known: &std::collections::HashSet<uuid::Uuid>,
    events: &mut Vec<(&OwnedMessage, E)>,
    dead: &mut Vec<DeadLetter>,
) {
    let required: std::collections::HashSet<_> =
        unregistered_tenants(events.iter().map(|(_, e)| e))
            .into_iter()
            .collect();
    events.retain(|(message, event)| {
        let Some(tenant) = event.tenant().filter(|t| required.contains(t)) else {
            return true;
        };
        if known.contains(&tenant) {
            return true;
        }
        dead.push(DeadLetter {
            message: (*message).clone(),
            code: "unknown_tenant",
            stage: "sink",
            reason: format!("tenant {tenant} is not registered"),
        });
        false
    });
}

type PartitionKeyOf = (String, i32);

/// A batch handed to the writer, and what became of it.
struct BatchDone {
    key: PartitionKeyOf,
    epoch: u64,
    processed: Processed,
}

type BatchFuture<'a> = Pin<Box<dyn Future<Output = BatchDone> + Send + 'a>>;

/// The partitions this worker owns.
#[derive(Default)]
struct Partitions {
    states: HashMap<PartitionKeyOf, PartitionState>,
    next_epoch: u64,
}

impl Partitions {
    fn apply(&mut self, changes: Vec<Assignment>) {
        for change in changes {
            match change {
                Assignment::Assigned(assigned) => {
                    for (topic, partition, stored) in assigned {
                        self.next_epoch += 1;
                        let state = PartitionState::starting_at(stored, self.next_epoch);
                        self.states.insert((topic, partition), state);
                    }
                }
                Assignment::Revoked(revoked) => {
                    for key in revoked {
                        self.states.remove(&key);
                    }
                }
            }
        }
    }

    /// Buffers a message of an owned partition; pauses the partition when its buffer is full.
    fn accept(&mut self, consumer: &Source, message: OwnedMessage, pause_at: usize) {
        let key = (message.topic().to_owned(), message.partition());
        let Some(state) = self.states.get_mut(&key) else {
            return;
        };
        state.accept(message);
        if state.buffer.len() >= pause_at && !state.paused {
            state.paused = set_paused(consumer, &key, true);
        }
    }

    fn resume_if_drained(&mut self, consumer: &Source, key: &PartitionKeyOf) {
        if let Some(state) = self.states.get_mut(key) {
            if state.paused && !state.in_flight {
                state.paused = !set_paused(consumer, key, false);
            }
        }
    }

    fn current(&mut self, key: &PartitionKeyOf, epoch: u64) -> Option<&mut PartitionState> {
        self.states.get_mut(key).filter(|s| s.epoch == epoch)
    }

    fn next_due(&self, linger: Duration) -> Option<Instant> {
        self.states
            .values()
            .filter(|p| !p.in_flight)
            .filter_map(|p| p.due_at(linger))
            .min()
    }

    /// Takes the batches that are full or have lingered long enough, marking them in flight.
    fn take_ready(
        &mut self,
        max_events: usize,
        linger: Duration,
    ) -> Vec<(PartitionKeyOf, u64, Option<i64>, Vec<OwnedMessage>)> {
        let now = Instant::now();
        self.states
            .iter_mut()
            .filter(|(_, state)| state.is_ready(max_events, linger, now))
            .map(|(key, state)| {
                state.in_flight = true;
                let mut batch = state.take_batch();
                if batch.len() > max_events {
                    // Keep the rest (arrived while the previous batch was written) for the next.
                    state.buffer = batch.split_off(max_events);
                    state.oldest = Some(now);
                }
                (key.clone(), state.epoch, state.committed, batch)
            })
            .collect()
    }
}

/// Pauses or resumes fetching one partition; true when librdkafka accepted it.
fn set_paused(consumer: &Source, key: &PartitionKeyOf, pause: bool) -> bool {
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(&key.0, key.1);
    let result = if pause {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    if let Err(error) = &result {
        tracing::warn!(%error, topic = key.0, partition = key.1, pause, "Pause/resume failed.");
    }
    result.is_ok()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Timestamp;

    fn message(offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            None,
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            offset,
            None,
        )
    }

    #[test]
    fn partition_accepts_each_offset_once_from_the_stored_one() {
        let mut state = PartitionState::starting_at(Some(10), 1);
        assert!(!state.accept(message(9)));
        assert!(state.accept(message(10)));
        assert!(!state.accept(message(10)));
        assert!(state.accept(message(12)));
        let batch = state.take_batch();
        assert_eq!(
            batch.iter().map(|m| m.offset()).collect::<Vec<_>>(),
            vec![10, 12]
        );
        assert!(state.due_at(Duration::from_millis(5)).is_none());
    }
}
