//! The Kafka key against the body. The body's `tenant_id` alone decides an event's tenant; the
//! key only partitions and orders. Producers that key by tenant can ask for more
//! (`tenants.key_must_match`): a configuration change must then be keyed as the contract says
//! (README "Events and wire formats"), its tenant id (compared as UUIDs) or, for shared data,
//! `<KIND>:<key>`; a change keyed otherwise is dead-lettered as `tenant_key_mismatch`.
//! Orders are keyed by `order_id`, which names no tenant: the rule does not apply to them.

use std::fmt;

use uuid::Uuid;

use crate::retry::{Classify, ErrorClass};

/// The dead-letter code of a message whose key does not say what its body says.
pub const TENANT_KEY_MISMATCH: &str = "tenant_key_mismatch";

/// What a message's Kafka key must say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyPolicy {
    /// The key only partitions and orders; the body alone names the tenant.
    #[default]
    Partitioning,
    /// `tenants.key_must_match`: an event whose contract key names its tenant (or its shared
    /// entry) must carry exactly that key.
    MustMatch,
}

impl KeyPolicy {
    /// The policy of the `tenants.key_must_match` setting.
    pub fn key_must_match(on: bool) -> Self {
        if on {
            Self::MustMatch
        } else {
            Self::Partitioning
        }
    }

    /// Checks `key` against the key the contract gives `expected` (`None`: the event's key
    /// names no tenant, nothing to check).
    pub fn check(
        self,
        expected: Option<ContractKey>,
        key: Option<&[u8]>,
    ) -> Result<(), KeyMismatch> {
        match (self, expected) {
            (Self::MustMatch, Some(expected)) if !expected.admits(key) => Err(KeyMismatch {
                key: key.map(<[u8]>::to_vec),
                expected,
            }),
            _ => Ok(()),
        }
    }
}

/// The Kafka key the contract gives an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContractKey {
    /// The body's tenant id (any spelling of the same UUID).
    Tenant(Uuid),
    /// Shared data: `<KIND>:<key>`, byte for byte (e.g. `CATEGORY:books`).
    Shared(String),
}

impl ContractKey {
    fn admits(&self, key: Option<&[u8]>) -> bool {
        let Some(key) = key else {
            return false;
        };
        match self {
            Self::Tenant(tenant) => std::str::from_utf8(key)
                .ok()
                .and_then(|text| Uuid::parse_str(text).ok())
                .is_some_and(|keyed| keyed == *tenant),
            Self::Shared(expected) => key == expected.as_bytes(),
        }
    }
}

/// A message whose Kafka key is not the key its body's contract gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyMismatch {
    /// The message's key as sent.
    pub key: Option<Vec<u8>>,
    pub expected: ContractKey,
}

impl std::error::Error for KeyMismatch {}

impl fmt::Display for KeyMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            None => write!(f, "the message has no Kafka key")?,
            Some(key) => write!(f, "Kafka key {:?}", String::from_utf8_lossy(key))?,
        }
        match &self.expected {
            ContractKey::Tenant(tenant) => write!(f, " does not name the body's tenant {tenant}")?,
            ContractKey::Shared(expected) => write!(
                f,
                " is not {expected:?}, the key of the body's GLOBAL change"
            )?,
        }
        write!(f, " (tenants.key_must_match)")
    }
}

impl Classify for KeyMismatch {
    /// The producer keyed the message wrongly; sending it again changes nothing.
    fn class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "6f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b";

    fn tenant() -> ContractKey {
        ContractKey::Tenant(Uuid::parse_str(A).unwrap())
    }

    #[test]
    fn a_tenant_key_is_compared_as_a_uuid() {
        let must = KeyPolicy::MustMatch;
        let simple = A.replace('-', "");
        for key in [
            A.to_owned(),
            A.to_uppercase(),
            simple,
            format!("urn:uuid:{A}"),
        ] {
            assert_eq!(
                must.check(Some(tenant()), Some(key.as_bytes())),
                Ok(()),
                "{key}"
            );
        }
        let other = Uuid::new_v4().to_string();
        for key in [
            Some(other.as_bytes()),
            Some(b"not-a-uuid".as_slice()),
            Some(b"\xff\xfe".as_slice()),
            Some(b"".as_slice()),
            None,
        ] {
            let err = must.check(Some(tenant()), key).unwrap_err();
            assert_eq!(err.key.as_deref(), key);
            let reason = err.to_string();
            assert!(reason.contains(&format!("tenant {A}")), "{reason}");
        }
        let err = must
            .check(Some(tenant()), Some(other.as_bytes()))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "Kafka key \"{other}\" does not name the body's tenant {A} (tenants.key_must_match)"
            )
        );
        let none = must.check(Some(tenant()), None).unwrap_err().to_string();
        assert!(none.starts_with("the message has no Kafka key"), "{none}");
    }

    #[test]
    fn a_shared_key_is_kind_and_key_byte_for_byte() {
        let shared = || Some(ContractKey::Shared("CATEGORY:books".into()));
        let must = KeyPolicy::MustMatch;
        assert_eq!(must.check(shared(), Some(b"CATEGORY:books")), Ok(()));
        for key in [
            Some(b"category:books".as_slice()),
            Some(b"books".as_slice()),
            Some(A.as_bytes()),
            None,
        ] {
            let err = must.check(shared(), key).unwrap_err().to_string();
            assert!(err.contains("is not \"CATEGORY:books\""), "{err}");
        }
    }

    #[test]
    fn changes_are_keyed_by_tenant_or_kind_and_key_and_orders_by_nothing_checked() {
        use crate::domain::{sample_config, sample_order, ConfigKind, ConfigScope, ValidOrder};
        use crate::validate::Validate;
        let change = sample_config();
        let tenant = Uuid::parse_str(change.tenant_id.as_deref().unwrap()).unwrap();
        let valid = change.validate().unwrap();
        assert_eq!(valid.contract_key(), Some(ContractKey::Tenant(tenant)));
        let mut category = sample_config();
        category.scope = ConfigScope::Global;
        category.tenant_id = None;
        category.kind = ConfigKind::Category;
        category.key = "books".into();
        let valid = category.validate().unwrap();
        let books = ContractKey::Shared("CATEGORY:books".into());
        assert_eq!(valid.contract_key(), Some(books));
        let order = ValidOrder::validate(sample_order()).unwrap();
        assert_eq!(order.contract_key(), None);
    }

    #[test]
    fn without_the_setting_or_a_contract_key_nothing_is_checked() {
        let partitioning = KeyPolicy::key_must_match(false);
        assert_eq!(partitioning, KeyPolicy::Partitioning);
        assert_eq!(partitioning.check(Some(tenant()), Some(b"x")), Ok(()));
        assert_eq!(partitioning.check(Some(tenant()), None), Ok(()));
        let must = KeyPolicy::key_must_match(true);
        assert_eq!(must.check(None, Some(b"order-1")), Ok(()));
        assert_eq!(must.check(None, None), Ok(()));
    }
}
