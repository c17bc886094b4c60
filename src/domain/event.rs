//! What every event type of a topic has in common, and what happens to tenants nobody
//! registered.

use std::collections::HashSet;

use uuid::Uuid;

use super::cached::CacheRef;

/// An event type of one topic, in its valid form: its wire shape (following its reader schema)
/// and what the pipeline needs to know of each event.
pub trait Event: Sized + Send + Sync {
    /// The serde shape of the reader schema.
    type Wire: serde::de::DeserializeOwned + Send;
    /// The reader schema's file in the schemas folder.
    const SCHEMA_FILE: &'static str;

    /// The tenant whose rows the event writes (`None`: shared data).
    fn tenant(&self) -> Option<Uuid>;

    /// Whether the event itself makes its tenant a registered one (a profile does).
    fn registers_tenant(&self) -> bool;

    /// When the event happened (ms since the Unix epoch), for end-to-end latency.
    fn occurred_at(&self) -> i64;

    /// The cached value the event changes.
    fn cache_ref(&self) -> CacheRef;
}

/// What happens to the events of a tenant that is not registered in `tenants`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantPolicy {
    /// The tenant is registered as `provisional` by the write of its first event.
    RegisterUnknown,
    /// Strict tenants: the events are dead-lettered as `unknown_tenant`.
    RequireKnown,
}

impl TenantPolicy {
    /// The policy of the `tenants.strict` setting.
    pub fn strict(strict: bool) -> Self {
        if strict {
            Self::RequireKnown
        } else {
            Self::RegisterUnknown
        }
    }

    pub fn registers_unknown(self) -> bool {
        self == Self::RegisterUnknown
    }
}

/// The tenants of `events` that must already be registered (strict tenants): those that no
/// event among them registers itself. Sorted, each once.
pub fn unregistered_tenants<'a, E: Event + 'a>(
    events: impl IntoIterator<Item = &'a E>,
) -> Vec<Uuid> {
    let events: Vec<&E> = events.into_iter().collect();
    let registering: HashSet<Uuid> = events
        .iter()
        .filter(|e| e.registers_tenant())
        .filter_map(|e| e.tenant())
        .collect();
    let mut tenants: Vec<Uuid> = events
        .iter()
        .filter_map(|e| e.tenant())
        .filter(|t| !registering.contains(t))
        .collect();
    tenants.sort();
    tenants.dedup();
    tenants
}
