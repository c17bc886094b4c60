//! The field rules the schemas cannot say, per event type. Validation happens once, right
//! after decoding; an event that fails it is dead-lettered with code `invalid_field` and the
//! field named in the reason. With `tenants.key_must_match`, the message's Kafka key is
//! checked against the body too ([`key`]).

mod iso4217;
mod key;
mod order;
mod tenant_config;

use uuid::Uuid;

use crate::domain::{ConfigChangeEvent, ConfigTarget, Event, OrderEvent, ValidConfig, ValidOrder};
use crate::retry::{Classify, ErrorClass};

use iso4217::is_iso4217;
pub use key::{ContractKey, KeyMismatch, KeyPolicy, TENANT_KEY_MISMATCH};
pub use tenant_config::parse_sla_policy;

/// Versions above 2^53 lose precision in Redis' Lua numbers, where cache writes are compared.
pub const MAX_VERSION: i64 = 1 << 53;

/// 9999-12-31T23:59:59.999Z: Postgres timestamps hold no later time.
const MAX_OCCURRED_AT_MS: i64 = 253_402_300_799_999;

/// An event type whose wire form can be checked into its valid form.
pub trait Validate: Event {
    fn validate(wire: Self::Wire) -> Result<Self, InvalidField>;

    /// The tenant a wire event names, if it names a valid one (read even when other fields
    /// are invalid, to count the dead letter against its tenant).
    fn wire_tenant(wire: &Self::Wire) -> Option<Uuid>;

    /// The Kafka key the contract gives the event when that key names its tenant or its
    /// shared entry (what `tenants.key_must_match` checks); `None` when the key names neither.
    fn contract_key(&self) -> Option<ContractKey>;
}

impl Validate for ValidOrder {
    fn validate(wire: OrderEvent) -> Result<Self, InvalidField> {
        wire.validate()
    }

    fn wire_tenant(wire: &OrderEvent) -> Option<Uuid> {
        Uuid::parse_str(&wire.tenant_id).ok()
    }

    /// Orders are keyed by `order_id`, which names no tenant.
    fn contract_key(&self) -> Option<ContractKey> {
        None
    }
}

impl Validate for ValidConfig {
    fn validate(wire: ConfigChangeEvent) -> Result<Self, InvalidField> {
        wire.validate()
    }

    fn wire_tenant(wire: &ConfigChangeEvent) -> Option<Uuid> {
        wire.tenant_id
            .as_deref()
            .and_then(|id| Uuid::parse_str(id).ok())
    }

    /// TENANT scope: the tenant id; GLOBAL scope: kind and key (`CATEGORY:books`).
    fn contract_key(&self) -> Option<ContractKey> {
        Some(match &self.target {
            ConfigTarget::Profile { tenant } | ConfigTarget::Entry { tenant, .. } => {
                ContractKey::Tenant(*tenant)
            }
            ConfigTarget::Category { id } => ContractKey::Shared(format!("CATEGORY:{id}")),
        })
    }
}

/// Why a decoded event is unusable: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field {field}: {reason}")]
pub struct InvalidField {
    pub field: String,
    pub reason: String,
}

impl Classify for InvalidField {
    /// The event itself is at fault.
    fn class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

fn parse_uuid(field: &str, value: &str) -> Result<Uuid, InvalidField> {
    Uuid::parse_str(value).map_err(|_| invalid(field, format!("{value:?} is not a UUID")))
}

fn check_version_and_time(version: i64, occurred_at: i64) -> Result<(), InvalidField> {
    if !(0..=MAX_VERSION).contains(&version) {
        return Err(invalid(
            "version",
            format!(
                "{version} is outside 0..=2^53 (cache version checks compare exactly only up to 2^53)"
            ),
        ));
    }
    if !(0..=MAX_OCCURRED_AT_MS).contains(&occurred_at) {
        return Err(invalid(
            "occurred_at",
            format!("{occurred_at} ms is not between 1970 and 9999"),
        ));
    }
    Ok(())
}
