//! Configuration-change events (`schemas/config_change.avsc`): the wire shape, what a change
//! targets, and its valid form.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::cached::CacheRef;
use super::event::Event;

/// `io.tenantstream.ConfigChangeEvent` (schemas/config_change.avsc).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigChangeEvent {
    pub event_id: String,
    pub scope: ConfigScope,
    pub tenant_id: Option<String>,
    pub kind: ConfigKind,
    pub key: String,
    /// JSON text; `None` deletes the entry.
    pub value: Option<String>,
    pub version: i64,
    /// Milliseconds since the Unix epoch (timestamp-millis).
    pub occurred_at: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConfigScope {
    Tenant,
    Global,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConfigKind {
    TenantProfile,
    Setting,
    SlaPolicy,
    Category,
}

/// What a configuration change is about, with its ids parsed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConfigTarget {
    /// The tenant's profile (one per tenant).
    Profile { tenant: Uuid },
    /// One per-tenant key/value entry (a setting or an SLA policy).
    Entry {
        tenant: Uuid,
        map: TenantMap,
        key: String,
    },
    /// One category of the shared reference data.
    Category { id: String },
}

impl ConfigTarget {
    pub fn tenant(&self) -> Option<Uuid> {
        match self {
            Self::Profile { tenant } | Self::Entry { tenant, .. } => Some(*tenant),
            Self::Category { .. } => None,
        }
    }
}

/// The per-tenant key/value maps: each is a Postgres table and a Redis hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TenantMap {
    Settings,
    SlaPolicies,
}

impl TenantMap {
    /// Both maps, for code that visits each.
    pub const ALL: [Self; 2] = [Self::Settings, Self::SlaPolicies];

    /// The map's name: its kind in the cache outbox and the suffix of its Redis hash.
    pub fn name(self) -> &'static str {
        match self {
            Self::Settings => "config",
            Self::SlaPolicies => "sla",
        }
    }
}

/// A configuration change whose fields passed validation.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidConfig {
    pub event_id: Uuid,
    pub target: ConfigTarget,
    pub version: i64,
    pub occurred_at: i64,
    /// Normalised JSON text; `None` deletes the entry.
    pub value: Option<String>,
}

/// The JSON of a TENANT_PROFILE value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantProfile {
    pub name: String,
    pub tier: String,
    pub status: TenantStatus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    Active,
    Suspended,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
        }
    }
}

impl Event for ValidConfig {
    type Wire = ConfigChangeEvent;
    const SCHEMA_FILE: &'static str = "config_change.avsc";

    fn tenant(&self) -> Option<Uuid> {
        self.target.tenant()
    }

    fn registers_tenant(&self) -> bool {
        matches!(self.target, ConfigTarget::Profile { .. })
    }

    fn occurred_at(&self) -> i64 {
        self.occurred_at
    }

    fn cache_ref(&self) -> CacheRef {
        CacheRef::Config(self.target.clone())
    }
}
