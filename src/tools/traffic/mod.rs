//! Realistic traffic for the topics, with the end state a correct worker must reach: order
//! lifecycles ([`generate`]) and configuration changes ([`generate_config`]), deterministic for a
//! seed, with duplicates, out-of-order versions and an optional share of malformed messages;
//! and the producer loop that sends them ([`send()`]).

mod config;
mod orders;
mod send;

use rand::rngs::StdRng;
use rand::Rng;
use uuid::Uuid;

pub use config::{generate_config, generate_config_sized, ConfigSpec, ExpectedConfig};
pub use orders::{generate, Expected, TrafficSpec};
pub use send::{send, EndOffsets, Sent};

/// How values are framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireFormat {
    /// 0x00 + 4-byte schema id + Avro body.
    Confluent,
    /// 0xC3 0x01 + 8-byte schema fingerprint + Avro body.
    SingleObject,
    /// Alternate between both.
    Mixed,
}

impl WireFormat {
    /// The names accepted by [`WireFormat::from_str`](std::str::FromStr::from_str).
    pub const NAMES: [&'static str; 3] = ["confluent", "single-object", "mixed"];
}

impl std::str::FromStr for WireFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "confluent" => Ok(Self::Confluent),
            "single-object" => Ok(Self::SingleObject),
            "mixed" => Ok(Self::Mixed),
            other => Err(format!(
                "{other:?} is not one of {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// One message to send.
#[derive(Clone, Debug)]
pub struct Generated {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The dead-letter code a correct worker gives it, for malformed ones.
    pub malformed: Option<&'static str>,
}

fn uuid_from(rng: &mut StdRng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.gen()).into_uuid()
}

/// The encoder of `E` over the crate's own schemas folder, for the generators' tests.
#[cfg(test)]
fn test_encoder<E: crate::domain::Event>() -> crate::decode::Encoder {
    let schemas = crate::config::SchemaSettings {
        dir: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas"),
        registry_url: None,
    };
    crate::decode::Encoder::for_event::<E>(&schemas).unwrap()
}
