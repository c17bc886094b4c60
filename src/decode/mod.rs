//! Avro decoding of Kafka message values, then validation: the first step of every event.
//!
//! Two wire formats are accepted ([`framing`]): Confluent (`0x00` + schema id, the writer schema
//! from the Schema Registry or `registry.json`) and Avro single-object encoding (`0xC3 0x01` +
//! fingerprint, looked up among the schemas folder's files). Each writer schema is fetched,
//! parsed and checked against the reader schema once ([`SchemaStore`], [`Decoder`]). Every
//! failure but an unreachable registry is permanent: the message is dead-lettered.
//!
//! Decoding time is linear in a value's bytes: a writer schema whose arrays cost nothing per
//! element is refused ([`cost`]), each array holds at most `limits.max_items` elements, and a
//! value over `limits.max_message_bytes` is not decoded at all.

mod cost;
mod decoder;
mod encoder;
mod framing;
mod registry;
mod schema_store;

use uuid::Uuid;

use crate::metrics::Stage;
use crate::retry::{Classify, ErrorClass};
use crate::validate::{InvalidField, KeyMismatch, KeyPolicy, Validate, TENANT_KEY_MISMATCH};

pub use decoder::Decoder;
pub use encoder::Encoder;
pub use framing::frame_confluent;
#[cfg(feature = "test-support")]
pub use framing::frame_single_object;
#[cfg(feature = "test-support")]
pub use schema_store::WriterSchema;
pub use schema_store::{SchemaLoadError, SchemaStore};

/// Why a message could not be decoded. Everything but `RegistryUnavailable` is permanent.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DecodeError {
    #[error("undecodable: {0}")]
    Undecodable(String),
    #[error("unknown schema: {0}")]
    UnknownSchema(String),
    #[error("writer schema {writer} cannot be read as {reader}: {reason}")]
    IncompatibleSchema {
        writer: String,
        reader: String,
        reason: String,
    },
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// The Kafka key is not the one the body's contract gives it (`tenants.key_must_match`).
    #[error(transparent)]
    KeyMismatch(#[from] KeyMismatch),
    /// Over a bound of [`LimitSettings`](crate::config::LimitSettings).
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(String),
}

impl DecodeError {
    /// Every dead-letter code [`DecodeError::code`] gives (a registry outage is retried, never
    /// dead-lettered).
    pub const DEAD_LETTER_CODES: [&'static str; 6] = [
        "undecodable",
        "unknown_schema",
        "incompatible_schema",
        "invalid_field",
        "too_large",
        TENANT_KEY_MISMATCH,
    ];

    /// The dead-letter error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Undecodable(_) => "undecodable",
            Self::UnknownSchema(_) => "unknown_schema",
            Self::IncompatibleSchema { .. } => "incompatible_schema",
            Self::Invalid(_) => "invalid_field",
            Self::TooLarge(_) => "too_large",
            Self::KeyMismatch(_) => TENANT_KEY_MISMATCH,
            Self::RegistryUnavailable(_) => "registry_unavailable",
        }
    }

    /// The pipeline stage that failed (dead-letter header).
    pub fn stage(&self) -> Stage {
        match self {
            Self::Invalid(_) | Self::KeyMismatch(_) => Stage::Validate,
            _ => Stage::Decode,
        }
    }
}

impl Classify for DecodeError {
    fn class(&self) -> ErrorClass {
        match self {
            Self::RegistryUnavailable(_) => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        }
    }
}

/// Decodes and validates one message value (`None`: a message without a value), whatever its
/// key.
#[cfg(feature = "test-support")]
pub async fn decode_event<E: Validate>(
    decoder: &Decoder,
    payload: Option<&[u8]>,
) -> Result<E, DecodeError> {
    decode_message(decoder, payload, None, KeyPolicy::Partitioning)
        .await
        .map_err(|(error, _)| error)
}

/// Decodes and validates one message (its value, `None` for a message without one), then
/// checks its Kafka `key` by `keys`: what decides, for the worker and for replay alike, whether
/// a message is an event or a dead letter. On failure also the tenant the body names when it
/// decoded far enough to tell (for the per-tenant dead-letter count: a key mismatch counts
/// against the body's tenant, never the key's).
pub async fn decode_message<E: Validate>(
    decoder: &Decoder,
    payload: Option<&[u8]>,
    key: Option<&[u8]>,
    keys: KeyPolicy,
) -> Result<E, (DecodeError, Option<Uuid>)> {
    let Some(payload) = payload else {
        let error = DecodeError::Undecodable("message has no value".into());
        return Err((error, None));
    };
    let wire: E::Wire = decoder.decode(payload).await.map_err(|e| (e, None))?;
    let tenant = E::wire_tenant(&wire);
    let event = E::validate(wire).map_err(|invalid| (invalid.into(), tenant))?;
    match keys.check(event.contract_key(), key) {
        Ok(()) => Ok(event),
        Err(mismatch) => Err((mismatch.into(), event.tenant())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_permanent_error_has_a_listed_dead_letter_code() {
        let s = String::new;
        let errors = [
            DecodeError::Undecodable(s()),
            DecodeError::UnknownSchema(s()),
            DecodeError::IncompatibleSchema {
                writer: s(),
                reader: s(),
                reason: s(),
            },
            DecodeError::Invalid(InvalidField {
                field: s(),
                reason: s(),
            }),
            DecodeError::TooLarge(s()),
            DecodeError::KeyMismatch(KeyMismatch {
                key: None,
                expected: crate::validate::ContractKey::Shared(s()),
            }),
        ];
        let codes: Vec<&str> = errors.iter().map(DecodeError::code).collect();
        assert_eq!(codes, DecodeError::DEAD_LETTER_CODES);
    }
}
