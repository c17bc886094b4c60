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
use crate::validate::{InvalidField, Validate};

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
    /// Over a bound of [`LimitSettings`](crate::config::LimitSettings).
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(String),
}

impl DecodeError {
    /// Every dead-letter code [`DecodeError::code`] gives (a registry outage is retried, never
    /// dead-lettered).
    pub const DEAD_LETTER_CODES: [&'static str; 5] = [
        "undecodable",
        "unknown_schema",
        "incompatible_schema",
        "invalid_field",
        "too_large",
    ];

    /// The dead-letter error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Undecodable(_) => "undecodable",
            Self::UnknownSchema(_) => "unknown_schema",
            Self::IncompatibleSchema { .. } => "incompatible_schema",
            Self::Invalid(_) => "invalid_field",
            Self::TooLarge(_) => "too_large",
            Self::RegistryUnavailable(_) => "registry_unavailable",
        }
    }

    /// The pipeline stage that failed (dead-letter header).
    pub fn stage(&self) -> Stage {
        match self {
            Self::Invalid(_) => Stage::Validate,
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

/// Decodes and validates one message value (`None`: a message without a value).
pub async fn decode_event<E: Validate>(
    decoder: &Decoder,
    payload: Option<&[u8]>,
) -> Result<E, DecodeError> {
    decode_naming_tenant(decoder, payload)
        .await
        .map_err(|(error, _)| error)
}

/// [`decode_event`], and on failure the tenant the value names when it decoded but did not
/// validate (for the per-tenant dead-letter count).
pub async fn decode_naming_tenant<E: Validate>(
    decoder: &Decoder,
    payload: Option<&[u8]>,
) -> Result<E, (DecodeError, Option<Uuid>)> {
    let Some(payload) = payload else {
        let error = DecodeError::Undecodable("message has no value".into());
        return Err((error, None));
    };
    let wire: E::Wire = decoder.decode(payload).await.map_err(|e| (e, None))?;
    let tenant = E::wire_tenant(&wire);
    E::validate(wire).map_err(|invalid| (invalid.into(), tenant))
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
        ];
        let codes: Vec<&str> = errors.iter().map(DecodeError::code).collect();
        assert_eq!(codes, DecodeError::DEAD_LETTER_CODES);
    }
}
