//! Every metric's name (one place), its HELP text, and the series created at zero before the
//! worker does anything, so dashboards and `rate()` work from the first scrape.

use metrics::{counter, gauge, histogram};

use super::{Component, Outcome, Stage};

pub const EVENTS_CONSUMED: &str = "tenantstream_events_consumed_total";
pub const EVENTS_PROCESSED: &str = "tenantstream_events_processed_total";
pub const DEAD_LETTERS: &str = "tenantstream_dead_letters_total";
pub const BATCH_COMMIT_SECONDS: &str = "tenantstream_batch_commit_seconds";
pub const BATCH_SIZE_EVENTS: &str = "tenantstream_batch_size_events";
pub const BATCH_TENANTS: &str = "tenantstream_batch_tenants";
pub const STAGE_DURATION_SECONDS: &str = "tenantstream_stage_duration_seconds";
pub const END_TO_END_SECONDS: &str = "tenantstream_end_to_end_latency_seconds";
pub const CACHE_VISIBLE_SECONDS: &str = "tenantstream_cache_visible_latency_seconds";
pub const CONSUMER_LAG: &str = "tenantstream_consumer_lag_messages";
pub const REBALANCES: &str = "tenantstream_rebalances_total";
pub const ASSIGNED_PARTITIONS: &str = "tenantstream_assigned_partitions";
pub const BUFFERED_BYTES: &str = "tenantstream_buffered_bytes";
pub const POSTGRES_POOL_CONNECTIONS: &str = "tenantstream_postgres_pool_connections";
pub const CACHE_KEYS_WRITTEN: &str = "tenantstream_cache_keys_written_total";
pub const CACHE_APPLY_SECONDS: &str = "tenantstream_cache_apply_seconds";
pub const CACHE_OUTBOX_BACKLOG: &str = "tenantstream_cache_outbox_backlog";
pub const CACHE_OUTBOX_ROWS: &str = "tenantstream_cache_outbox_rows";
pub const CACHE_OUTBOX_OLDEST_SECONDS: &str = "tenantstream_cache_outbox_oldest_seconds";
pub const REDIS_ERRORS: &str = "tenantstream_redis_errors_total";
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
pub const REPLAY_MESSAGES: &str = "tenantstream_replay_messages_total";
pub const REPLAY_REMAINING: &str = "tenantstream_replay_remaining_messages";
pub const READY: &str = "tenantstream_ready";
pub const BUILD_INFO: &str = "tenantstream_build_info";

/// The process metrics of the `metrics-process` crate, read at each scrape (not
/// `tenantstream_` names, so not in [`CATALOGUE`]; the crate describes them). Those every
/// Linux process has; `process_max_fds`, `process_virtual_memory_max_bytes` and
/// `process_start_time_seconds` are rendered too.
#[cfg_attr(not(feature = "test-support"), allow(dead_code))] // for the tests
pub const PROCESS_METRICS: &[&str] = &[
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_threads",
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
    (BATCH_SIZE_EVENTS, Kind::Histogram, "Messages per batch handed to the writer, by topic (its sum is the messages consumed)."),
    (BATCH_TENANTS, Kind::Histogram, "Tenants with events in a committed batch, by topic: each costs the batch's transaction work under that tenant's context (for orders, a turn of the per-tenant loop in each of its two calls), so with many tenants this, more than the events, sets Postgres's work."),
    (STAGE_DURATION_SECONDS, Kind::Histogram, "Seconds one step of a batch took, by stage: decode (framing, schemas, Avro, validation), sink (the Postgres write), cache (the inline Redis refresh). Only the attempt that succeeded: the time spent retrying a failing dependency is not in it."),
    (END_TO_END_SECONDS, Kind::Histogram, "Seconds from an event's occurred_at to the commit of its batch."),
    (CACHE_VISIBLE_SECONDS, Kind::Histogram, "Seconds from an event's occurred_at to its Redis key written by its own batch, by topic (keys written later by the drainer, after a Redis outage or a crash, are not in it)."),
    (CONSUMER_LAG, Kind::Gauge, "Messages between the stored offset and the end of each partition of this worker (librdkafka statistics, every 5 s; 0 once revoked, the new owner reports it)."),
    (REBALANCES, Kind::Counter, "Partition rebalances that moved partitions of this worker, by kind: assign (partitions received, at their stored offsets), revoke (partitions released; under the cooperative protocol only those that move)."),
    (ASSIGNED_PARTITIONS, Kind::Gauge, "Partitions this worker holds now, by topic."),
    (BUFFERED_BYTES, Kind::Gauge, "Bytes of message keys and values the partitions this worker owns hold, buffered or in batches being written, against limits.max_buffered_bytes."),
    (POSTGRES_POOL_CONNECTIONS, Kind::Gauge, "Connections of the worker's Postgres pool, by state: in_use, idle (every 5 s)."),
    (CACHE_KEYS_WRITTEN, Kind::Counter, "Redis writes of committed rows: written, or skipped_older (Redis held a newer version)."),
    (CACHE_APPLY_SECONDS, Kind::Histogram, "Seconds one Redis refresh of a batch's (or the drainer's) cache work took."),
    (CACHE_OUTBOX_BACKLOG, Kind::Gauge, "Tenants with cache work queued for the drainer, at its last pass."),
    (CACHE_OUTBOX_ROWS, Kind::Gauge, "Cache outbox rows of this consumer group (tenants' and shared): Redis work committed and not yet deleted; rows a batch applied are deleted by the drainer's next sweep, within about a second (every 5 s)."),
    (CACHE_OUTBOX_OLDEST_SECONDS, Kind::Gauge, "Age of the oldest of those rows, by Postgres's clock from the start of the transaction that queued it (every 5 s; 0 when none)."),
    (REDIS_ERRORS, Kind::Counter, "Redis command batches that failed (no answer, or an error answer for some keys), by stage: cache (a batch's refresh), drain (the drainer), sla_publish (counting violations)."),
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
    (REPLAY_MESSAGES, Kind::Counter, "Messages a replay has read (0 in the worker)."),
    (REPLAY_REMAINING, Kind::Gauge, "Offsets a replay has still to read up to the end offsets it planned (0 once it ends, and in the worker)."),
    (READY, Kind::Gauge, "1 while /readyz answers 200, 0 otherwise (set at each scrape)."),
    (BUILD_INFO, Kind::Gauge, "Always 1; its labels name the version and the git commit the binary was built from."),
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

/// The steps of a batch that `tenantstream_stage_duration_seconds` times.
pub(super) const TIMED_STAGES: [Stage; 3] = [Stage::Decode, Stage::Sink, Stage::Cache];

/// The kinds of `tenantstream_rebalances_total`.
pub(super) const REBALANCE_KINDS: [&str; 2] = ["assign", "revoke"];

/// The states of `tenantstream_postgres_pool_connections`.
pub(super) const POOL_STATES: [&str; 2] = ["in_use", "idle"];

/// Describes every metric (HELP, unit) and creates every series the worker can know in advance
/// at zero, so dashboards and `rate()` work from the first scrape: per topic, each outcome and
/// each dead-letter code, the batch histograms and the partitions held; each retried
/// (component, stage) pair and each Redis stage; each kind of SLA violation and of rebalance;
/// the gauges; the build.
pub fn register_at_zero(topics: &[&str], dead_letter_codes: &[&str], violation_kinds: &[&str]) {
    describe();
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
        for name in [
            BATCH_COMMIT_SECONDS,
            BATCH_SIZE_EVENTS,
            BATCH_TENANTS,
            END_TO_END_SECONDS,
            CACHE_VISIBLE_SECONDS,
        ] {
            let _ = histogram!(name, "topic" => topic.clone());
        }
        gauge!(ASSIGNED_PARTITIONS, "topic" => topic).increment(0.0);
    }
    for stage in TIMED_STAGES {
        let _ = histogram!(STAGE_DURATION_SECONDS, "stage" => stage.as_str());
    }
    let _ = histogram!(CACHE_APPLY_SECONDS);
    for (component, stage) in TRANSIENT_PAIRS {
        counter!(TRANSIENT_ERRORS, "component" => component.as_str(), "stage" => stage.as_str())
            .increment(0);
        if *component == Component::Redis {
            counter!(REDIS_ERRORS, "stage" => stage.as_str()).increment(0);
        }
    }
    for outcome in ["written", "skipped_older"] {
        counter!(CACHE_KEYS_WRITTEN, "outcome" => outcome).increment(0);
    }
    for kind in REBALANCE_KINDS {
        counter!(REBALANCES, "kind" => kind).increment(0);
    }
    for state in POOL_STATES {
        gauge!(POSTGRES_POOL_CONNECTIONS, "state" => state).increment(0.0);
    }
    for kind in violation_kinds {
        counter!(SLA_VIOLATIONS, "kind" => kind.to_string()).increment(0);
        counter!(SLA_VIOLATIONS_PUBLISHED, "kind" => kind.to_string()).increment(0);
    }
    counter!(SLA_PUBLISH_ERRORS).increment(0);
    counter!(REPLAY_MESSAGES).increment(0);
    for name in [
        BUFFERED_BYTES,
        CACHE_OUTBOX_BACKLOG,
        CACHE_OUTBOX_ROWS,
        CACHE_OUTBOX_OLDEST_SECONDS,
        SLA_DEADLINES_PENDING,
        SLA_OLDEST_OVERDUE_SECONDS,
        SLA_OUTBOX_VIOLATIONS,
        SLA_OUTBOX_OLDEST_SECONDS,
        REPLAY_REMAINING,
        READY,
    ] {
        gauge!(name).increment(0.0);
    }
    super::build_info();
}

/// Describes every catalogued metric: its HELP text, and the unit of the `_seconds` ones.
pub(super) fn describe() {
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
}
