//! Metric names (one place, [`catalogue`]), their label values, and the telemetry events that
//! record them together with a log line.
//!
//! Naming: `tenantstream_<noun>_<unit>[_total]`; durations are `_seconds` histograms with explicit
//! buckets; labels are bounded (topic, partition, outcome, error_code, component, stage, kind,
//! state).

mod catalogue;

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use catalogue::*;

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Events (and tenants) per batch: a batch holds at most `kafka.batch_max_events` (default
/// 20,000).
const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 20000.0,
];

/// How often the exporter's histograms are drained into their buckets when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder once per process and returns its handle. A thread of its
/// own drains the histograms' samples into their buckets every [`UPKEEP_EVERY`], so memory stays
/// flat when nothing scrapes (rendering drains them too).
pub fn install_recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(BATCH_SIZE_EVENTS.into()),
                        BATCH_SIZE_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(BATCH_TENANTS.into()),
                        BATCH_SIZE_BUCKETS,
                    )
                })
                .expect("bucket lists are not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            let upkeep = handle.clone();
            // A thread, not a task: the recorder outlives any one runtime (tests run many).
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                })
                .expect("spawn the metrics upkeep thread");
            handle
        })
        .clone()
}

/// Called at each scrape, before rendering: readiness (`/readyz`'s state) into
/// `tenantstream_ready`, and the process metrics read now.
pub fn scraped(ready: bool) {
    static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();
    gauge!(READY).set(if ready { 1.0 } else { 0.0 });
    PROCESS
        .get_or_init(|| {
            let collector = metrics_process::Collector::default();
            collector.describe();
            collector
        })
        .collect();
}

/// `tenantstream_build_info{version, commit} 1`: what is running.
fn build_info() {
    gauge!(
        BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => env!("TENANTSTREAM_COMMIT")
    )
    .set(1.0);
}

/// What readiness is made of, and the `component` label: each dependency the worker needs, and
/// its own startup. In the order `/readyz` lists them (by name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    Kafka,
    Postgres,
    Redis,
    SchemaRegistry,
    /// Connecting to every dependency at start.
    Startup,
}

impl Component {
    /// The name in `/readyz`, in logs and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kafka => "kafka",
            Self::Postgres => "postgres",
            Self::Redis => "redis",
            Self::SchemaRegistry => "schema_registry",
            Self::Startup => "startup",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What became of one consumed event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Written: the newest event of its row in its batch, and newer than the stored row.
    Written,
    /// Older than, or a copy of, another event of the same row in the same batch.
    Superseded,
    /// Not newer than the stored row (a duplicate, or an older version arriving late).
    Stale,
    DeadLettered,
}

impl Outcome {
    pub const ALL: [Self; 4] = [
        Self::Written,
        Self::Superseded,
        Self::Stale,
        Self::DeadLettered,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Written => "written",
            Self::Superseded => "superseded",
            Self::Stale => "stale",
            Self::DeadLettered => "dead_lettered",
        }
    }
}

/// Where in the pipeline something happened: the `stage` of a transient error and of a dead
/// letter (`tenantstream.error.stage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Connecting to the dependencies at start.
    Startup,
    /// Reading the stored offsets of newly assigned partitions.
    Assign,
    /// Receiving messages from Kafka.
    Consume,
    /// Framing, schema lookup and Avro decoding.
    Decode,
    /// The field rules of the event type.
    Validate,
    /// Sending dead letters.
    DeadLetter,
    /// The Postgres transaction of a batch.
    Sink,
    /// Writing a committed batch's cache keys.
    Cache,
    /// The background drainer of queued cache work.
    Drain,
    /// The SLA deadline timer.
    SlaTimer,
    /// Publishing SLA violations (and counting them in Redis).
    SlaPublish,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Startup => "startup",
            Self::Assign => "assign",
            Self::Consume => "consume",
            Self::Decode => "decode",
            Self::Validate => "validate",
            Self::DeadLetter => "dead_letter",
            Self::Sink => "sink",
            Self::Cache => "cache",
            Self::Drain => "drain",
            Self::SlaTimer => "sla_timer",
            Self::SlaPublish => "sla_publish",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A batch of `count` messages of `topic` handed to the writer.
pub fn batch_taken(topic: &str, count: usize) {
    counter!(EVENTS_CONSUMED, "topic" => topic.to_owned()).increment(count as u64);
    histogram!(BATCH_SIZE_EVENTS, "topic" => topic.to_owned()).record(count as f64);
}

/// A committed batch of `topic` held events of `tenants` tenants.
pub fn batch_tenants(topic: &str, tenants: usize) {
    histogram!(BATCH_TENANTS, "topic" => topic.to_owned()).record(tenants as f64);
}

/// One step of a batch (decode, sink or cache) succeeded in `elapsed`.
pub fn stage_finished(stage: Stage, elapsed: Duration) {
    histogram!(STAGE_DURATION_SECONDS, "stage" => stage.as_str()).record(elapsed.as_secs_f64());
}

pub fn events_processed(topic: &str, outcome: Outcome, count: usize) {
    if count > 0 {
        counter!(EVENTS_PROCESSED, "topic" => topic.to_owned(), "outcome" => outcome.label())
            .increment(count as u64);
    }
}

/// A batch committed: its rows and the partition's next offset are durable. Each event's
/// end-to-end latency is `now_ms` minus its `occurred_at`.
pub fn batch_committed(
    topic: &str,
    partition: i32,
    next_offset: i64,
    elapsed: Duration,
    occurred_at_ms: &[i64],
    now_ms: i64,
) {
    histogram!(BATCH_COMMIT_SECONDS, "topic" => topic.to_owned()).record(elapsed.as_secs_f64());
    let e2e = histogram!(END_TO_END_SECONDS, "topic" => topic.to_owned());
    for occurred in occurred_at_ms {
        e2e.record(now_ms.saturating_sub(*occurred).max(0) as f64 / 1000.0);
    }
    tracing::debug!(
        target: "tenantstream::batch",
        topic,
        partition,
        next_offset,
        events = occurred_at_ms.len(),
        ms = elapsed.as_millis() as u64,
        "Batch committed."
    );
}

pub fn message_dead_lettered(topic: &str, partition: i32, offset: i64, code: &str, reason: &str) {
    counter!(DEAD_LETTERS, "topic" => topic.to_owned(), "error_code" => code.to_owned())
        .increment(1);
    events_processed(topic, Outcome::DeadLettered, 1);
    tracing::warn!(
        target: "tenantstream::dead_letter",
        topic,
        partition,
        offset,
        error_code = code,
        reason,
        "Message dead-lettered."
    );
}

/// A partition's next message came after `expected` (Kafka allows gaps: compaction,
/// transaction markers, retention; an unexpected one is lost data).
pub fn offset_gap(topic: &str, partition: i32, expected: i64, received: i64) {
    counter!(OFFSET_GAPS, "topic" => topic.to_owned()).increment(1);
    let skipped = received.saturating_sub(expected).max(0) as u64;
    counter!(OFFSETS_SKIPPED, "topic" => topic.to_owned()).increment(skipped);
    tracing::warn!(
        target: "tenantstream::offsets",
        topic,
        partition,
        expected,
        received,
        skipped,
        "Offsets skipped: the next message of the partition is not the next offset."
    );
}

/// A partition's log ends before its stored offset (the topic was recreated or truncated): it is
/// read again from `restart`, the log's first offset, and the version guards keep effects single.
pub fn offset_reset(topic: &str, partition: i32, stored: i64, restart: i64) {
    counter!(OFFSET_RESETS, "topic" => topic.to_owned()).increment(1);
    tracing::error!(
        target: "tenantstream::offsets",
        topic,
        partition,
        stored,
        restart,
        "The partition's log ends before the stored offset (topic recreated or truncated?); \
         reading it again from its first offset."
    );
}

/// A dependency failed at `stage`: counted (its caller logs it, once per episode).
pub fn transient_error(component: Component, stage: Stage) {
    counter!(TRANSIENT_ERRORS, "component" => component.as_str(), "stage" => stage.as_str())
        .increment(1);
}

pub fn batch_fenced(topic: &str, partition: i32, expected: Option<i64>) {
    counter!(FENCED_BATCHES, "topic" => topic.to_owned()).increment(1);
    tracing::warn!(
        target: "tenantstream::fencing",
        topic,
        partition,
        expected,
        "Stored offset moved under this worker (partition reassigned); batch discarded."
    );
}

pub fn consumer_lag(topic: &str, partition: i32, lag: i64) {
    gauge!(CONSUMER_LAG, "topic" => topic.to_owned(), "partition" => partition.to_string())
        .set(lag.max(0) as f64);
}

pub fn cache_keys_written(written: usize, skipped_older: usize, elapsed: Duration) {
    counter!(CACHE_KEYS_WRITTEN, "outcome" => "written").increment(written as u64);
    counter!(CACHE_KEYS_WRITTEN, "outcome" => "skipped_older").increment(skipped_older as u64);
    histogram!(CACHE_APPLY_SECONDS).record(elapsed.as_secs_f64());
    tracing::debug!(
        target: "tenantstream::cache",
        written,
        skipped_older,
        ms = elapsed.as_millis() as u64,
        "Cache refreshed."
    );
}

/// Bytes of messages the worker's partitions hold, buffered or in batches being written.
pub fn buffered_bytes(held: usize) {
    gauge!(BUFFERED_BYTES).set(held as f64);
}

pub fn cache_backlog(pending_tenants: usize) {
    gauge!(CACHE_OUTBOX_BACKLOG).set(pending_tenants as f64);
}

/// Events of `topic` whose Redis keys their batch has just written: each one's latency from
/// `occurred_at` to `now_ms`.
pub fn cache_visible(topic: &str, occurred_at_ms: impl IntoIterator<Item = i64>, now_ms: i64) {
    let visible = histogram!(CACHE_VISIBLE_SECONDS, "topic" => topic.to_owned());
    for occurred in occurred_at_ms {
        visible.record(now_ms.saturating_sub(occurred).max(0) as f64 / 1000.0);
    }
}

/// The cache outbox: rows queued and the age of the oldest (ms).
pub fn cache_outbox(rows: i64, oldest_ms: i64) {
    gauge!(CACHE_OUTBOX_ROWS).set(rows as f64);
    gauge!(CACHE_OUTBOX_OLDEST_SECONDS).set(oldest_ms.max(0) as f64 / 1000.0);
}

/// A batch of Redis commands failed at `stage` (no answer, or errors for some keys).
pub fn redis_error(stage: Stage) {
    counter!(REDIS_ERRORS, "stage" => stage.as_str()).increment(1);
}

/// The worker's Postgres pool: `size` connections open, `idle` of them idle.
pub fn postgres_pool(size: u32, idle: usize) {
    let idle = idle.min(size as usize);
    gauge!(POSTGRES_POOL_CONNECTIONS, "state" => POOL_STATES[0]).set((size as usize - idle) as f64);
    gauge!(POSTGRES_POOL_CONNECTIONS, "state" => POOL_STATES[1]).set(idle as f64);
}

/// A rebalance gave this worker partitions; `held` is how many it now holds of each topic the
/// rebalance named.
pub fn partitions_assigned(held: &[(&str, usize)]) {
    rebalanced(REBALANCE_KINDS[0], held);
}

/// A rebalance took partitions from this worker; `held` as for [`partitions_assigned`].
pub fn partitions_revoked(held: &[(&str, usize)]) {
    rebalanced(REBALANCE_KINDS[1], held);
}

fn rebalanced(kind: &'static str, held: &[(&str, usize)]) {
    counter!(REBALANCES, "kind" => kind).increment(1);
    for (topic, count) in held {
        gauge!(ASSIGNED_PARTITIONS, "topic" => topic.to_string()).set(*count as f64);
    }
}

/// A replay read one message; `remaining` offsets are left to read up to its end offsets.
pub fn replay_read(remaining: u64) {
    counter!(REPLAY_MESSAGES).increment(1);
    gauge!(REPLAY_REMAINING).set(remaining as f64);
}

/// A replay planned `remaining` offsets to read (0: it has reached its end offsets).
pub fn replay_remaining(remaining: u64) {
    gauge!(REPLAY_REMAINING).set(remaining as f64);
}

/// SLA violations stored for the first time.
pub fn sla_violations_detected(kind: &str, count: u64) {
    if count > 0 {
        counter!(SLA_VIOLATIONS, "kind" => kind.to_owned()).increment(count);
    }
}

/// SLA violations the broker acknowledged.
pub fn sla_violations_published(kind: &str, count: u64) {
    counter!(SLA_VIOLATIONS_PUBLISHED, "kind" => kind.to_owned()).increment(count);
}

/// SLA violations whose publication failed (they are retried).
pub fn sla_publish_failed(count: u64) {
    counter!(SLA_PUBLISH_ERRORS).increment(count);
}

/// The SLA engine's backlog: deadlines pending, how long the earliest has been due, and the
/// violations waiting to be published.
pub fn sla_backlog(deadlines: i64, overdue_ms: i64, outbox: i64, outbox_oldest_ms: i64) {
    gauge!(SLA_DEADLINES_PENDING).set(deadlines as f64);
    gauge!(SLA_OLDEST_OVERDUE_SECONDS).set(overdue_ms as f64 / 1000.0);
    gauge!(SLA_OUTBOX_VIOLATIONS).set(outbox as f64);
    gauge!(SLA_OUTBOX_OLDEST_SECONDS).set(outbox_oldest_ms as f64 / 1000.0);
}
