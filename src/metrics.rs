//! Metric names (one place), their label values, and the telemetry events that record them
//! together with a log line.
//!
//! Naming: `tenantstream_<noun>_<unit>[_total]`; durations are `_seconds` histograms with explicit
//! buckets; labels are bounded (topic, partition, outcome, error_code, component, stage).

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const EVENTS_CONSUMED: &str = "tenantstream_events_consumed_total";
pub const EVENTS_PROCESSED: &str = "tenantstream_events_processed_total";
pub const DEAD_LETTERS: &str = "tenantstream_dead_letters_total";
pub const BATCH_COMMIT_SECONDS: &str = "tenantstream_batch_commit_seconds";
pub const END_TO_END_SECONDS: &str = "tenantstream_end_to_end_latency_seconds";
pub const CONSUMER_LAG: &str = "tenantstream_consumer_lag_messages";
pub const CACHE_KEYS_WRITTEN: &str = "tenantstream_cache_keys_written_total";
pub const CACHE_APPLY_SECONDS: &str = "tenantstream_cache_apply_seconds";
pub const CACHE_OUTBOX_BACKLOG: &str = "tenantstream_cache_outbox_backlog";
pub const TRANSIENT_ERRORS: &str = "tenantstream_transient_errors_total";
pub const FENCED_BATCHES: &str = "tenantstream_fenced_batches_total";
pub const OFFSET_GAPS: &str = "tenantstream_offset_gaps_total";
pub const OFFSETS_SKIPPED: &str = "tenantstream_offsets_skipped_total";
pub const OFFSET_RESETS: &str = "tenantstream_offset_resets_total";
pub const SLA_VIOLATIONS: &str = "tenantstream_sla_violations_total";
pub const SLA_VIOLATIONS_PUBLISHED: &str = "tenantstream_sla_violations_published_total";
pub const SLA_PUBLISH_ERRORS: &str = "tenantstream_sla_publish_errors_total";
pub const SLA_DEADLINES_PENDING: &str = "tenantstream_sla_deadlines_pending";
pub const SLA_OLDEST_OVERDUE_SECONDS: &str = "tenantstream_sla_oldest_overdue_seconds";
pub const SLA_OUTBOX_VIOLATIONS: &str = "tenantstream_sla_outbox_violations";
pub const SLA_OUTBOX_OLDEST_SECONDS: &str = "tenantstream_sla_outbox_oldest_seconds";

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Every metric with its HELP text and unit, for the exporter and the README catalogue.
pub const CATALOGUE: &[(&str, Kind, &str)] = &[
    (EVENTS_CONSUMED, Kind::Counter, "Messages received from Kafka, by topic."),
    (
        EVENTS_PROCESSED,
        Kind::Counter,
        "Consumed events by what became of them: written, superseded (an older version or a \
         copy of another event of the same row in the same batch), stale (not newer than the \
         stored row), dead_lettered.",
    ),
    (DEAD_LETTERS, Kind::Counter, "Messages sent to the dead-letter topic, by source topic and error code."),
    (BATCH_COMMIT_SECONDS, Kind::Histogram, "Seconds from a batch's first step (decode) to its Postgres commit."),
    (END_TO_END_SECONDS, Kind::Histogram, "Seconds from an event's occurred_at to the commit of its batch."),
    (CONSUMER_LAG, Kind::Gauge, "Messages between the stored offset and the end of each partition (librdkafka statistics, every 5 s)."),
    (CACHE_KEYS_WRITTEN, Kind::Counter, "Redis writes of committed rows: written, or skipped_older (Redis held a newer version)."),
    (CACHE_APPLY_SECONDS, Kind::Histogram, "Seconds one Redis refresh of a batch's (or the drainer's) cache work took."),
    (CACHE_OUTBOX_BACKLOG, Kind::Gauge, "Tenants with cache work queued for the drainer, at its last pass."),
    (TRANSIENT_ERRORS, Kind::Counter, "Failures of a dependency that are retried, by component and stage."),
    (FENCED_BATCHES, Kind::Counter, "Batches discarded because another worker now owns their partition."),
    (OFFSET_GAPS, Kind::Counter, "Times a partition's next message was not at the next offset."),
    (OFFSETS_SKIPPED, Kind::Counter, "Offsets those gaps skipped."),
    (OFFSET_RESETS, Kind::Counter, "Times a partition's log ended before its stored offset (recreated or truncated topic); it is read again from the start."),
    (SLA_VIOLATIONS, Kind::Counter, "SLA violations detected and stored (each violation id once), by kind."),
    (SLA_VIOLATIONS_PUBLISHED, Kind::Counter, "SLA violations the broker acknowledged on the violations topic, by kind (at least once: after a crash one can be published again)."),
    (SLA_PUBLISH_ERRORS, Kind::Counter, "SLA violations whose publication failed; they stay queued and are retried."),
    (SLA_DEADLINES_PENDING, Kind::Gauge, "Order deadlines registered and neither met nor fired (every 5 s)."),
    (SLA_OLDEST_OVERDUE_SECONDS, Kind::Gauge, "How long the earliest unfired deadline has been due: the deadline timer's health, near 0 while it keeps up (every 5 s)."),
    (SLA_OUTBOX_VIOLATIONS, Kind::Gauge, "SLA violations stored and not yet published and counted (lag violations wait for their window to close; every 5 s)."),
    (SLA_OUTBOX_OLDEST_SECONDS, Kind::Gauge, "How long the oldest publishable SLA violation has waited to be published (every 5 s)."),
];

/// The kind of a catalogued metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The (component, stage) pairs at which the worker retries a dependency.
const TRANSIENT_PAIRS: &[(Component, Stage)] = &[
    (Component::Startup, Stage::Startup),
    (Component::Postgres, Stage::Assign),
    (Component::Kafka, Stage::Consume),
    (Component::SchemaRegistry, Stage::Decode),
    (Component::Kafka, Stage::DeadLetter),
    (Component::Postgres, Stage::Sink),
    (Component::Redis, Stage::Cache),
    (Component::Redis, Stage::Drain),
    (Component::Postgres, Stage::Drain),
    (Component::Postgres, Stage::SlaTimer),
    (Component::Postgres, Stage::SlaPublish),
    (Component::Kafka, Stage::SlaPublish),
    (Component::Redis, Stage::SlaPublish),
];

/// Describes every metric (HELP, unit) and creates every counter and gauge series the worker
/// can know in advance at zero, so dashboards and `rate()` work from the first scrape: per
/// topic, each outcome and each dead-letter code; each retried (component, stage) pair; each
/// kind of SLA violation.
pub fn register_at_zero(topics: &[&str], dead_letter_codes: &[&str], violation_kinds: &[&str]) {
    for (name, kind, help) in CATALOGUE {
        let unit = if name.ends_with("_seconds") {
            Some(metrics::Unit::Seconds)
        } else {
            None
        };
        match (kind, unit) {
            (Kind::Counter, _) => metrics::describe_counter!(*name, *help),
            (Kind::Gauge, _) => metrics::describe_gauge!(*name, *help),
            (Kind::Histogram, Some(unit)) => metrics::describe_histogram!(*name, unit, *help),
            (Kind::Histogram, None) => metrics::describe_histogram!(*name, *help),
        }
    }
    for topic in topics {
        let topic = topic.to_string();
        counter!(EVENTS_CONSUMED, "topic" => topic.clone()).increment(0);
        for outcome in Outcome::ALL {
            counter!(EVENTS_PROCESSED, "topic" => topic.clone(), "outcome" => outcome.label())
                .increment(0);
        }
        for code in dead_letter_codes {
            counter!(DEAD_LETTERS, "topic" => topic.clone(), "error_code" => code.to_string())
                .increment(0);
        }
        for name in [FENCED_BATCHES, OFFSET_GAPS, OFFSETS_SKIPPED, OFFSET_RESETS] {
            counter!(name, "topic" => topic.clone()).increment(0);
        }
        // A histogram handle alone registers the series (all buckets at 0).
        let _ = histogram!(BATCH_COMMIT_SECONDS, "topic" => topic.clone());
        let _ = histogram!(END_TO_END_SECONDS, "topic" => topic.clone());
    }
    let _ = histogram!(CACHE_APPLY_SECONDS);
    for (component, stage) in TRANSIENT_PAIRS {
        counter!(TRANSIENT_ERRORS, "component" => component.as_str(), "stage" => stage.as_str())
            .increment(0);
    }
    for outcome in ["written", "skipped_older"] {
        counter!(CACHE_KEYS_WRITTEN, "outcome" => outcome).increment(0);
    }
    gauge!(CACHE_OUTBOX_BACKLOG).increment(0.0);
    for kind in violation_kinds {
        counter!(SLA_VIOLATIONS, "kind" => kind.to_string()).increment(0);
        counter!(SLA_VIOLATIONS_PUBLISHED, "kind" => kind.to_string()).increment(0);
    }
    counter!(SLA_PUBLISH_ERRORS).increment(0);
    for name in [
        SLA_DEADLINES_PENDING,
        SLA_OLDEST_OVERDUE_SECONDS,
        SLA_OUTBOX_VIOLATIONS,
        SLA_OUTBOX_OLDEST_SECONDS,
    ] {
        gauge!(name).increment(0.0);
    }
}

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn install_recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed")
        })
        .clone()
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

pub fn events_consumed(topic: &str, count: usize) {
    counter!(EVENTS_CONSUMED, "topic" => topic.to_owned()).increment(count as u64);
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

pub fn cache_backlog(pending_tenants: usize) {
    gauge!(CACHE_OUTBOX_BACKLOG).set(pending_tenants as f64);
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
