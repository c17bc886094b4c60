//! The worker: consume, buffer per partition, write batches, acknowledge.
//!
//! Per partition, messages are buffered in order and written as one batch when the batch is
//! full or has lingered long enough; partitions are written concurrently, at most one batch per
//! partition at a time ([`BatchPath`]). Kafka's committed offset mirrors the one stored in
//! Postgres, for lag monitoring only.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::Offset;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::batch::{BatchPath, Processed};
use super::cache_drainer::CacheDrainer;
use super::dead_letter::DeadLetterSink;
use super::partitions::{sleep_until, Bounds, PartitionState, Partitions, ReadyBatch};
use super::tenants::refresh_statuses;
use crate::cache::{self, CacheError};
use crate::clock::Clock;
use crate::config::{ConfigError, Settings};
use crate::decode::{Decoder, Encoder, SchemaLoadError, SchemaStore};
use crate::domain::{
    Event, SlaViolation, TenantPolicy, TopicPartition, ValidConfig, ValidOrder, ViolationKind,
};
use crate::health::{Component, Health};
use crate::metrics::{self, Stage};
use crate::monitor::TenantMonitor;
use crate::retry::{self, Classify, ErrorClass, RetryPolicy};
use crate::sink::sla::SlaTracking;
use crate::sink::{self, SinkError};
use crate::sla::{DeadlineTimer, ViolationPublisher};
use crate::source::{self, Source, WorkerProducer};
use crate::validate::{parse_sla_policy, KeyPolicy};

/// A partition stops fetching when this many batches wait behind the one being written: enough
/// to start the next batch at once. This bounds messages; their bytes are bounded by the budget
/// all partitions share (`limits.max_buffered_bytes`), beyond which the worker stops receiving.
const PAUSE_AT_BATCHES: usize = 4;

/// How long the partitions may hold the byte budget before the worker receives again, pausing
/// each partition that delivers a message (see `run_until_stopped`).
const STALLED_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Settings(#[from] ConfigError),
    #[error("schemas: {0}")]
    Schemas(#[from] SchemaLoadError),
    #[error("Kafka at {brokers}: {error}")]
    Kafka { brokers: String, error: KafkaError },
    #[error(transparent)]
    Postgres(#[from] SinkError),
    #[error(transparent)]
    Redis(#[from] CacheError),
}

impl WorkerError {
    fn kafka(settings: &Settings, error: KafkaError) -> Self {
        Self::Kafka {
            brokers: settings.kafka.brokers.clone(),
            error,
        }
    }
}

impl Classify for WorkerError {
    /// Permanent: a setting, the schemas folder, or the Postgres setup (an invalid URL, a role that
    /// bypasses RLS), must be fixed. Anything else at startup is waited for: Kafka, Postgres
    /// and Redis may still be starting.
    fn class(&self) -> ErrorClass {
        match self {
            Self::Settings(_) | Self::Schemas(_) | Self::Postgres(SinkError::Setup(_)) => {
                ErrorClass::Permanent
            }
            Self::Redis(error) => error.class(),
            Self::Kafka { .. }
            | Self::Postgres(SinkError::Database(_) | SinkError::Unreachable { .. }) => {
                ErrorClass::Transient
            }
        }
    }
}

/// Everything a running worker holds.
pub struct Worker {
    settings: Settings,
    health: Health,
    path: BatchPath,
    producer: WorkerProducer,
    violations: Arc<Encoder>,
}

impl Worker {
    /// Connects to Postgres, Redis and Kafka, and loads the schemas. Fails with the name of
    /// what is missing; callers that should wait for dependencies use [`Worker::connect_retrying`].
    pub async fn connect(settings: Settings, health: Health) -> Result<Self, WorkerError> {
        let default_policy = match settings.sla.default_policy_json() {
            None => None,
            Some(text) => Some(
                parse_sla_policy(text).map_err(|reason| ConfigError::Invalid {
                    field: "sla.default_policy",
                    reason,
                })?,
            ),
        };
        let violations = Arc::new(Encoder::for_file(
            &settings.schemas,
            SlaViolation::SCHEMA_FILE,
        )?);
        let store = Arc::new(SchemaStore::load(
            &settings.schemas.dir,
            settings.schemas.registry_url.as_deref(),
        )?);
        let orders = Decoder::new(store.clone(), ValidOrder::SCHEMA_FILE, &settings.limits)?;
        let config = Decoder::new(store, ValidConfig::SCHEMA_FILE, &settings.limits)?;
        let pool = sink::connect_worker_checked(&settings.database).await?;
        let errors = health.clone();
        let redis = cache::connect_in_background(settings.redis.url.expose(), move |error| {
            errors.failure_without_readiness(Component::Redis, Stage::Cache, &error, None);
        })?;
        let producer = source::worker_producer(&settings.kafka, health.clone())
            .map_err(|error| WorkerError::kafka(&settings, error))?;
        let dead_letters =
            DeadLetterSink::new(producer.clone(), settings.kafka.dead_letter_topic.clone());
        // Not ready until `run` has joined the group and been assigned its partitions.
        health.failed(Component::Kafka, "not yet assigned partitions");
        let path = BatchPath {
            pool,
            redis,
            group: settings.kafka.group_id.clone(),
            config_topic: settings.kafka.config_topic.clone(),
            orders,
            config,
            dead_letters,
            tenant_policy: TenantPolicy::strict(settings.tenants.strict),
            key_policy: KeyPolicy::key_must_match(settings.tenants.key_must_match),
            ttl: (&settings.redis).into(),
            health: health.clone(),
            sla: SlaTracking {
                default_policy,
                lag_window_ms: settings.sla.lag_window_ms as i64,
                clock: Clock::system(),
            },
            cache_ledger: Arc::default(),
            cache_wake: Arc::new(Notify::new()),
            tenants: TenantMonitor::for_settings(&settings.http, Clock::system()),
            writers: Arc::new(Semaphore::new(
                (settings.database.max_connections as usize)
                    .saturating_sub(1)
                    .max(1),
            )),
        };
        Ok(Self {
            settings,
            health,
            path,
            producer,
            violations,
        })
    }

    /// [`Worker::connect`], retried with backoff while a dependency is unreachable. Returns
    /// `None` when stopped first. Permanent errors (configuration) are not retried.
    pub async fn connect_retrying(
        settings: Settings,
        health: Health,
        shutdown: &CancellationToken,
    ) -> Result<Option<Self>, WorkerError> {
        let mut backoff = RetryPolicy::STARTUP.backoff();
        let connect = || async {
            match Self::connect(settings.clone(), health.clone()).await {
                Err(error) if error.is_permanent() => Ok(Err(error)),
                result => result.map(Ok),
            }
        };
        let report = |error: &WorkerError, retry_in| {
            health.transient(Component::Startup, Stage::Startup, error, retry_in);
        };
        match retry::until_ok(&mut backoff, shutdown, report, connect).await {
            None => Ok(None),
            Some(Err(error)) => Err(error),
            Some(Ok(worker)) => {
                health.recovered(Component::Startup);
                Ok(Some(worker))
            }
        }
    }

    /// The clock the pipeline and the SLA engine read "now" from (the system clock unless
    /// replaced).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.path.tenants = self.path.tenants.with_clock(clock.clone());
        self.path.sla.clock = clock;
        self
    }

    /// Records per-tenant figures in `tenants` (the table the HTTP port serves) rather than in
    /// a table of its own.
    pub fn with_tenant_monitor(mut self, tenants: TenantMonitor) -> Self {
        self.path.tenants = tenants.with_clock(self.path.sla.clock.clone());
        self
    }

    /// Describes every metric and creates the series known in advance at zero (see
    /// `metrics::register_at_zero`), before the worker connects: the first scrape has them.
    pub fn register_metrics(settings: &Settings) {
        let kafka = &settings.kafka;
        let codes: Vec<&str> = super::dead_letter::codes().collect();
        let kinds = ViolationKind::ALL.map(ViolationKind::as_str);
        metrics::register_at_zero(&[&kafka.orders_topic, &kafka.config_topic], &codes, &kinds);
    }

    /// Consumes until `shutdown`, then abandons unwritten buffers and leaves the group.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let kafka = &self.settings.kafka;
        Self::register_metrics(&self.settings);
        let consumer = source::subscribe(
            kafka,
            &self.settings.limits,
            &[kafka.orders_topic.as_str(), kafka.config_topic.as_str()],
            sink::connect_worker_sized(&self.settings.database, 1)?,
            self.health.clone(),
            shutdown.clone(),
        )
        .map_err(|error| WorkerError::kafka(&self.settings, error))?;
        let drainer = tokio::spawn(
            CacheDrainer {
                pool: self.path.pool.clone(),
                redis: self.path.redis.clone(),
                group: kafka.group_id.clone(),
                ttl: self.path.ttl,
                ledger: self.path.cache_ledger.clone(),
                health: self.health.clone(),
                wake: self.path.cache_wake.clone(),
            }
            .run(shutdown.child_token()),
        );
        let (timer, publisher) = self.start_sla(&shutdown);
        let statuses = tokio::spawn(refresh_statuses(
            self.path.tenants.clone(),
            self.path.pool.clone(),
            shutdown.child_token(),
        ));
        self.run_until_stopped(&consumer, &shutdown).await;
        tracing::info!("Stopping: leaving the consumer group.");
        source::leave_group(consumer, source::LEAVE_GROUP_WITHIN).await;
        let _ = tokio::join!(drainer, timer, publisher, statuses);
        Ok(())
    }

    /// Starts the deadline timer and the violation publisher, which run until `shutdown`.
    fn start_sla(
        &self,
        shutdown: &CancellationToken,
    ) -> (tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>) {
        let interval = Duration::from_millis(self.settings.sla.poll_interval_ms);
        let clock = self.path.sla.clock.clone();
        let timer = DeadlineTimer {
            pool: self.path.pool.clone(),
            clock: clock.clone(),
            health: self.health.clone(),
            interval,
        };
        let publisher = ViolationPublisher {
            pool: self.path.pool.clone(),
            redis: self.path.redis.clone(),
            producer: self.producer.clone(),
            topic: self.settings.kafka.sla_violations_topic.clone(),
            encoder: self.violations.clone(),
            clock,
            health: self.health.clone(),
            interval,
            tenants: self.path.tenants.clone(),
        };
        (
            tokio::spawn(timer.run(shutdown.child_token())),
            tokio::spawn(publisher.run(shutdown.child_token())),
        )
    }

    async fn run_until_stopped(&self, consumer: &Source, shutdown: &CancellationToken) {
        let linger = Duration::from_millis(self.settings.kafka.batch_linger_ms);
        let max_events = self.settings.kafka.batch_max_events;
        let max_bytes = self.settings.limits.max_buffered_bytes;
        let batch = Bounds {
            messages: max_events,
            bytes: max_bytes / PAUSE_AT_BATCHES,
        };
        let pause_at = PAUSE_AT_BATCHES * max_events;
        let mut partitions = Partitions::default();
        // At most one batch per partition is being written; partitions write concurrently.
        let mut in_flight: FuturesUnordered<BatchFuture<'_>> = FuturesUnordered::new();
        let mut consume_backoff = RetryPolicy::CONSUME.backoff();
        // After a receive error, receiving waits (with backoff) while batches go on.
        let mut receive_after: Option<Instant> = None;
        // Since when the partitions have held the byte budget (no receiving meanwhile).
        let mut full_since: Option<Instant> = None;
        let mut published_bytes = None;
        loop {
            let next_due = partitions.next_due(linger);
            let room = partitions.has_room(max_bytes);
            let held = partitions.held_bytes();
            if published_bytes != Some(held) {
                metrics::buffered_bytes(held);
                published_bytes = Some(held);
            }
            full_since = if room {
                None
            } else {
                full_since.or_else(|| Some(Instant::now()))
            };
            // Batches that free no room for a while (a dependency is down, say) must not stop
            // librdkafka's callbacks (rebalances, statistics, its poll interval): receiving
            // goes on then, and each partition that delivers pauses until its batch is done.
            let stalled_at = full_since.map(|t| t + STALLED_AFTER);
            let stalled = stalled_at.is_some_and(|t| t <= Instant::now());
            let receive = receive_after.is_none() && (room || stalled);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    self.finish_batch(consumer, &mut partitions, done).await;
                }
                _ = sleep_until(next_due) => {}
                _ = sleep_until(receive_after) => receive_after = None,
                _ = sleep_until(stalled_at), if !stalled => {}
                received = consumer.recv(), if receive => {
                    partitions.apply(consumer.context().take_changes());
                    match received {
                        Ok(message) => {
                            self.health.recovered(Component::Kafka);
                            consume_backoff.reset();
                            let pause = !room;
                            partitions.accept(consumer, message.detach(), pause_at, pause);
                        }
                        Err(error) => {
                            let retry_in = consume_backoff.advance();
                            let error = self.explain(error);
                            self.health.transient(Component::Kafka, Stage::Consume, &error, retry_in);
                            receive_after = Some(Instant::now() + retry_in);
                        }
                    }
                }
            }
            for batch in partitions.take_ready(batch, linger) {
                metrics::batch_taken(&batch.partition.topic, batch.messages.len());
                let path = &self.path;
                in_flight.push(Box::pin(async move {
                    let processed = path.process(&batch, shutdown).await;
                    BatchDone { batch, processed }
                }));
            }
        }
        // Stopping: batches being written finish, or are abandoned if they are retrying.
        while let Some(done) = in_flight.next().await {
            self.finish_batch(consumer, &mut partitions, done).await;
        }
        // What is still buffered goes with the consumer.
        metrics::buffered_bytes(0);
    }

    /// A receive error in words an operator can act on: a missing topic names the subscribed
    /// topics and how to find which one is missing.
    fn explain(&self, error: KafkaError) -> String {
        let kafka = &self.settings.kafka;
        if source::is_missing_topic(&error) {
            format!(
                "{error}: a subscribed topic ({} or {}) does not exist on {}{}",
                kafka.orders_topic,
                kafka.config_topic,
                kafka.brokers,
                source::MISSING_TOPIC_HINT
            )
        } else {
            format!("{error} (brokers {})", kafka.brokers)
        }
    }

    /// Records what became of a batch, unless its partition was reassigned meanwhile.
    async fn finish_batch(&self, consumer: &Source, partitions: &mut Partitions, done: BatchDone) {
        let BatchDone { batch, processed } = done;
        let Some(mut state) = partitions.current(&batch.partition, batch.epoch) else {
            return;
        };
        state.batch_done();
        match processed {
            Processed::Committed { next_offset } => {
                state.committed = Some(next_offset);
                // Kafka's committed offset mirrors Postgres for lag monitoring only;
                // librdkafka stores offset + 1.
                let p = &batch.partition;
                let _ = consumer.store_offset(&p.topic, p.partition, next_offset - 1);
            }
            Processed::Fenced => self.reseek(consumer, &batch.partition, &mut state).await,
            Processed::Abandoned => {}
        }
        // The bytes the batch held (and, after a fence, what was dropped) are counted off.
        drop(state);
        partitions.resume_if_drained(consumer, &batch.partition);
    }

    /// After a fence: start again from whatever offset the new writer stored.
    async fn reseek(
        &self,
        consumer: &Source,
        partition: &TopicPartition,
        state: &mut PartitionState,
    ) {
        let group = &self.settings.kafka.group_id;
        let topic = &partition.topic;
        let number = partition.partition;
        match sink::load_stored_offsets(&self.path.pool, group, topic, &[number]).await {
            Ok(stored) => {
                let stored = stored.get(&number).copied();
                state.restart_at(stored);
                let offset = stored.map_or(Offset::Beginning, Offset::Offset);
                if let Err(error) = consumer.seek(topic, number, offset, Duration::from_secs(5)) {
                    tracing::warn!(%error, %partition, "Seek after fence failed.");
                }
            }
            Err(error) => {
                // Its next batch, once a message arrives, is fenced again (it expects the
                // same stored offset) and tries the read again; until then the dropped
                // messages show as lag.
                tracing::warn!(%error, %partition, "Cannot read the stored offset after a fence; its buffered messages are dropped.");
                state.clear();
            }
        }
    }
}

/// A batch handed to the writer, and what became of it.
struct BatchDone {
    batch: ReadyBatch,
    processed: Processed,
}

type BatchFuture<'a> = Pin<Box<dyn Future<Output = BatchDone> + Send + 'a>>;
