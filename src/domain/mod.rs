//! Pure types at the bottom of the tree: the events of each topic, what they target, what the
//! cache holds, Kafka positions. No I/O, and no imports from other layers.

mod cached;
mod event;
mod order;
mod partition;
#[cfg(any(test, feature = "test-support"))]
mod sample;
mod sla;
mod tenant_config;

pub use cached::{CacheItem, CacheRef, Keyspace, QueuedCache};
pub use event::{unregistered_tenants, Event, TenantPolicy};
pub use order::{LineItem, OrderEvent, OrderEventType, ValidOrder};
pub use partition::{PartitionRange, TopicPartition};
#[cfg(any(test, feature = "test-support"))]
pub use sample::{sample_config, sample_order};
#[cfg(any(test, feature = "test-support"))]
pub use sla::lag_violation_id;
pub use sla::{
    deadline_violation_id, sla_rank, utc_day, SlaPolicy, SlaViolation, Transition, ViolationKind,
};
pub use tenant_config::{
    ConfigChangeEvent, ConfigKind, ConfigScope, ConfigTarget, TenantMap, TenantProfile,
    TenantStatus, ValidConfig,
};
