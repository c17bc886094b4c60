//! What the integration tests and the benchmarks reach inside the crate, grouped by layer.
//! Only with the feature `test-support` (enabled for `cargo test` and `cargo bench` by the
//! crate's dev-dependency on itself), never in the release binary.

/// Events, what they target, and valid samples.
pub mod domain {
    pub use crate::domain::*;
    pub use crate::validate::{InvalidField, MAX_VERSION};
}

/// Framing, schemas, decoding and encoding.
pub mod decode {
    pub use crate::decode::{
        decode_event, frame_confluent, frame_single_object, DecodeError, Decoder, Encoder,
        SchemaStore, WriterSchema,
    };
}

/// Postgres: connections, tenant context, offsets and batch writes.
pub mod sink {
    pub use crate::sink::cache_outbox::{outbox_state, OutboxState};
    pub use crate::sink::sla::{self, SlaTracking};
    pub use crate::sink::{
        connect_worker, ensure_rls_applies, known_tenants, latest_per_order, load_stored_offsets,
        migrate, read_current, set_tenant, write_batch, write_each, Batch, BatchOutcome,
        BatchWrite, Isolated, PartitionKey, RejectedRow, Rows, SinkError,
    };
}

/// The SLA engine's background work.
pub mod sla {
    pub use crate::sla::{DeadlineTimer, ViolationPublisher};
}

/// Redis: connection, key layout, generations and key scans.
pub mod cache {
    pub use crate::cache::inspect::{count_keys, scan_keys};
    pub use crate::cache::{category_key, connect, order_key, read_generations, violations_key};
}

/// Kafka clients with the crate's settings.
pub mod kafka {
    pub use crate::source::{client_config, consumer_config, producer, LEAVE_GROUP_WITHIN};
}

/// The dead-letter contract: header names and error codes.
pub mod dead_letter {
    pub use crate::pipeline::dead_letter::{
        header_text, HEADER_ERROR_CODE, HEADER_ERROR_REASON, HEADER_ERROR_SQLSTATE,
        HEADER_ERROR_STAGE, HEADER_PAYLOAD_DROPPED, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION,
        HEADER_SOURCE_TOPIC, MAX_REASON_BYTES, REJECTED_BY_POSTGRES, UNKNOWN_TENANT,
    };
}

/// The field rules of each event type.
pub mod validate {
    pub use crate::validate::Validate;
}

/// Which errors heal by themselves.
pub mod retry {
    pub use crate::retry::{Classify, ErrorClass};
}

/// Metric names and the recorder.
pub mod metrics {
    pub use crate::metrics::{
        install_recorder, Kind, ASSIGNED_PARTITIONS, BATCH_SIZE_EVENTS, BATCH_TENANTS,
        BUFFERED_BYTES, BUILD_INFO, CACHE_OUTBOX_OLDEST_SECONDS, CACHE_OUTBOX_ROWS,
        CACHE_VISIBLE_SECONDS, CATALOGUE, CONSUMER_LAG, DEAD_LETTERS, EVENTS_CONSUMED,
        EVENTS_PROCESSED, OFFSETS_SKIPPED, OFFSET_GAPS, OFFSET_RESETS, POSTGRES_POOL_CONNECTIONS,
        PROCESS_METRICS, READY, REBALANCES, REDIS_ERRORS, REPLAY_MESSAGES, REPLAY_REMAINING,
        SLA_PUBLISH_ERRORS, SLA_VIOLATIONS, SLA_VIOLATIONS_PUBLISHED, STAGE_DURATION_SECONDS,
    };
}

/// The per-tenant table and its metrics.
pub mod monitor {
    pub use crate::monitor::{TenantMonitor, TENANT_METRICS};
}

/// Generated traffic and its oracle.
pub mod traffic {
    pub use crate::tools::traffic::*;
}

/// Waits and counts on an end state.
pub mod probe {
    pub use crate::tools::probe::*;
}
