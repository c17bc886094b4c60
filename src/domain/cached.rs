//! What the cache holds, named independently of Redis: which cached value a row stands behind
//! ([`CacheRef`]), the value itself as committed ([`CacheItem`]), and the set of keys it belongs
//! to ([`Keyspace`]). The Redis layer turns these into keys and scripts; the Postgres layer
//! records and reads them.

use uuid::Uuid;

use super::tenant_config::{ConfigTarget, TenantMap};

/// A set of cached values retired together: one tenant's, or the shared reference data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Keyspace {
    Tenant(Uuid),
    Reference,
}

/// Which cached value a row stands behind: what the outbox records and what a replay reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CacheRef {
    Order { tenant: Uuid, order_id: String },
    Config(ConfigTarget),
}

impl CacheRef {
    pub fn tenant(&self) -> Option<Uuid> {
        match self {
            Self::Order { tenant, .. } => Some(*tenant),
            Self::Config(target) => target.tenant(),
        }
    }

    /// The keyspace of the value the ref names.
    pub fn keyspace(&self) -> Keyspace {
        self.tenant().map_or(Keyspace::Reference, Keyspace::Tenant)
    }
}

/// One cache change, derived from a committed row (its current value and version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheItem {
    Order {
        tenant: Uuid,
        order_id: String,
        version: i64,
        json: String,
    },
    /// The tenant profile; a suspended one first retires the tenant's keyspace.
    Profile {
        tenant: Uuid,
        version: i64,
        json: String,
        suspended: bool,
    },
    /// A setting or an SLA policy; `None` deletes it.
    Entry {
        tenant: Uuid,
        map: TenantMap,
        key: String,
        version: i64,
        value: Option<String>,
    },
    /// A category of the shared reference data; `None` deletes it.
    Category {
        id: String,
        version: i64,
        value: Option<String>,
    },
}

impl CacheItem {
    pub fn keyspace(&self) -> Keyspace {
        match self {
            Self::Order { tenant, .. }
            | Self::Profile { tenant, .. }
            | Self::Entry { tenant, .. } => Keyspace::Tenant(*tenant),
            Self::Category { .. } => Keyspace::Reference,
        }
    }

    /// The row this item was read from.
    pub fn cache_ref(&self) -> CacheRef {
        match self {
            Self::Order {
                tenant, order_id, ..
            } => CacheRef::Order {
                tenant: *tenant,
                order_id: order_id.clone(),
            },
            Self::Profile { tenant, .. } => {
                CacheRef::Config(ConfigTarget::Profile { tenant: *tenant })
            }
            Self::Entry {
                tenant, map, key, ..
            } => CacheRef::Config(ConfigTarget::Entry {
                tenant: *tenant,
                map: *map,
                key: key.clone(),
            }),
            Self::Category { id, .. } => {
                CacheRef::Config(ConfigTarget::Category { id: id.clone() })
            }
        }
    }

    /// Bytes of the value written (what a Redis pipeline carries for it).
    pub fn value_len(&self) -> usize {
        match self {
            Self::Order { json, .. } | Self::Profile { json, .. } => json.len(),
            Self::Entry { value, .. } | Self::Category { value, .. } => {
                value.as_ref().map_or(0, String::len)
            }
        }
    }

    pub fn version(&self) -> i64 {
        match self {
            Self::Order { version, .. }
            | Self::Profile { version, .. }
            | Self::Entry { version, .. }
            | Self::Category { version, .. } => *version,
        }
    }
}

/// One cache change recorded in the cache outbox by a committed batch: the outbox row's id (to
/// delete once Redis has it) and the committed row's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedCache {
    pub outbox_id: i64,
    pub item: CacheItem,
}
