//! The producing side of the wire format, for the traffic generator and tests: an event's Avro
//! body, framed either way.

use super::framing::{frame_confluent, frame_single_object, unframe, WriterRef};
use super::schema_store::{SchemaLoadError, SchemaStore, WriterSchema};
use super::DecodeError;
use crate::config::SchemaSettings;
use crate::domain::Event;

/// Encodes the events of one schema in one wire format.
pub struct Encoder {
    schema: WriterSchema,
    schema_id: u32,
}

impl Encoder {
    /// `schema_id` is the Confluent id of `schema` (see schemas/registry.json).
    pub fn new(schema: WriterSchema, schema_id: u32) -> Self {
        Self { schema, schema_id }
    }

    /// The encoder for `E`'s reader schema, framed with its id from `registry.json`.
    pub fn for_event<E: Event>(schemas: &SchemaSettings) -> Result<Self, SchemaLoadError> {
        Self::for_file(schemas, E::SCHEMA_FILE)
    }

    /// The encoder for the schema in `file` of the schemas folder, framed with its id from
    /// `registry.json` (for what the worker itself publishes: `sla_violation.avsc`).
    pub fn for_file(schemas: &SchemaSettings, file: &str) -> Result<Self, SchemaLoadError> {
        let store = SchemaStore::load(&schemas.dir, None)?;
        let id = store
            .local_id_of(file)
            .ok_or_else(|| SchemaLoadError::NoLocalId {
                file: file.to_owned(),
                dir: store.dir().to_owned(),
            })?;
        Ok(Self::new(store.local_schema(file)?, id))
    }

    /// The Avro body of `event`, whose serde shape must follow the schema.
    pub fn body<T: serde::Serialize>(&self, event: &T) -> Vec<u8> {
        let mut config = serde_avro_fast::ser::SerializerConfig::new(&self.schema.fast);
        serde_avro_fast::to_datum_vec(event, &mut config).expect("events fit their schema")
    }

    pub fn encode<T: serde::Serialize>(&self, event: &T, single_object: bool) -> Vec<u8> {
        let body = self.body(event);
        if single_object {
            frame_single_object(&self.schema.fingerprint(), &body)
        } else {
            frame_confluent(self.schema_id, &body)
        }
    }

    /// Reads back a value framed with this encoder's schema id (Confluent): how tools and tests
    /// read what the worker publishes (`sla-violations`).
    pub fn decode<T: serde::de::DeserializeOwned>(&self, framed: &[u8]) -> Result<T, DecodeError> {
        match unframe(framed)? {
            (WriterRef::Id(id), body) if id == self.schema_id => {
                serde_avro_fast::from_datum_slice(body, &self.schema.fast)
                    .map_err(|e| DecodeError::Undecodable(e.to_string()))
            }
            (other, _) => Err(DecodeError::UnknownSchema(format!(
                "{other:?} is not schema id {}",
                self.schema_id
            ))),
        }
    }
}
