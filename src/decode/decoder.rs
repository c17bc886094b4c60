//! Decodes the values of one event type (one reader schema): the writer schema named by the
//! framing is checked against the reader once (Avro's resolution rules), then each value is a
//! single pass over its bytes with the prepared writer schema (serde_avro_fast), fields matched
//! to the reader by name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use apache_avro::schema_compatibility::SchemaCompatibility;
use serde::de::DeserializeOwned;
use serde_avro_fast::de::read::SliceRead;
use serde_avro_fast::de::{DeserializerConfig, DeserializerState};

use super::cost::zero_width_array;
use super::framing::{unframe, WriterRef};
use super::schema_store::{schema_name, SchemaLoadError, SchemaStore, WriterSchema};
use super::DecodeError;
use crate::config::LimitSettings;

/// Decodes messages of one event type (one reader schema).
pub struct Decoder {
    store: Arc<SchemaStore>,
    reader: apache_avro::Schema,
    limits: LimitSettings,
    /// Compatibility of each writer schema (by fingerprint) with the reader, checked once.
    compatibility: Mutex<HashMap<[u8; 8], Result<(), String>>>,
}

impl Decoder {
    /// `reader_file` names the reader schema in the schemas folder, e.g. `order_event.avsc`;
    /// `limits` bound the size of a value and of each array or map in it.
    pub fn new(
        store: Arc<SchemaStore>,
        reader_file: &str,
        limits: &LimitSettings,
    ) -> Result<Self, SchemaLoadError> {
        let reader = store.local_schema(reader_file)?.avro;
        Ok(Self {
            store,
            reader,
            limits: *limits,
            compatibility: Mutex::new(HashMap::new()),
        })
    }

    /// Decodes one message value into `T` (whose serde shape follows the reader schema).
    pub async fn decode<T: DeserializeOwned>(&self, payload: &[u8]) -> Result<T, DecodeError> {
        let max_bytes = self.limits.max_message_bytes;
        if payload.len() > max_bytes {
            return Err(DecodeError::TooLarge(format!(
                "the value is {} bytes, over limits.max_message_bytes ({max_bytes})",
                payload.len()
            )));
        }
        let (writer, body) = match unframe(payload)? {
            (WriterRef::Id(id), body) => (self.store.by_id(id).await?, body),
            (WriterRef::Fingerprint(fingerprint), body) => {
                (self.store.by_fingerprint(&fingerprint)?, body)
            }
        };
        self.check_compatible(&writer)?;
        let mut config = DeserializerConfig::new(&writer.fast);
        // Also bounds the time spent skipping a long array the reader does not know.
        config.max_seq_size = self.limits.max_items;
        let mut state = DeserializerState::with_config(SliceRead::new(body), config);
        let value = T::deserialize(state.deserializer()).map_err(|e| {
            if e.to_string().contains("max sequence size") {
                DecodeError::TooLarge(format!(
                    "an array or map holds more than limits.max_items ({}) elements",
                    self.limits.max_items
                ))
            } else {
                DecodeError::Undecodable(format!("Avro body does not match {}: {e}", writer.origin))
            }
        })?;
        // Bytes left over mean the body was not written with this schema (e.g. a wrong id).
        let rest = std::io::BufRead::fill_buf(&mut state.into_reader()).map_or(0, |r| r.len());
        if rest > 0 {
            return Err(DecodeError::Undecodable(format!(
                "{rest} bytes left after the Avro body of {}",
                writer.origin
            )));
        }
        Ok(value)
    }

    fn check_compatible(&self, writer: &WriterSchema) -> Result<(), DecodeError> {
        let mut checked = self.compatibility.lock().expect("compatibility lock");
        let verdict = checked.entry(writer.fingerprint()).or_insert_with(|| {
            SchemaCompatibility::can_read(&writer.avro, &self.reader).map_err(|e| e.to_string())?;
            match zero_width_array(&writer.avro) {
                None => Ok(()),
                Some(path) => Err(format!(
                    "array {path} has items that take no bytes, so one message could claim \
                     billions of them (decoding time unbounded by its size)"
                )),
            }
        });
        verdict
            .clone()
            .map_err(|reason| DecodeError::IncompatibleSchema {
                writer: format!("{} ({})", writer.full_name(), writer.origin),
                reader: schema_name(&self.reader),
                reason,
            })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::decode::{frame_confluent, frame_single_object};
    use crate::domain::{sample_order, OrderEvent};
    use crate::retry::Classify;

    fn store() -> Arc<SchemaStore> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        Arc::new(SchemaStore::load(&dir, None).unwrap())
    }

    fn limits() -> LimitSettings {
        LimitSettings::default()
    }

    fn body(schema: &WriterSchema, event: &OrderEvent) -> Vec<u8> {
        let mut config = serde_avro_fast::ser::SerializerConfig::new(&schema.fast);
        serde_avro_fast::to_datum_vec(event, &mut config).unwrap()
    }

    #[tokio::test]
    async fn both_framings_round_trip() {
        let store = store();
        let decoder = Decoder::new(store.clone(), "order_event.avsc", &limits()).unwrap();
        let schema = store.local_schema("order_event.avsc").unwrap();
        let body = body(&schema, &sample_order());
        let confluent = frame_confluent(1, &body);
        let single = frame_single_object(&schema.fingerprint(), &body);
        assert_eq!(
            decoder.decode::<OrderEvent>(&confluent).await.unwrap(),
            sample_order()
        );
        assert_eq!(
            decoder.decode::<OrderEvent>(&single).await.unwrap(),
            sample_order()
        );
    }

    #[tokio::test]
    async fn bad_framings_are_permanent_errors() {
        let decoder = Decoder::new(store(), "order_event.avsc", &limits()).unwrap();
        for (bytes, code) in [
            (vec![], "undecodable"),
            (b"{\"json\":1}".to_vec(), "undecodable"),
            (vec![0, 0, 0, 0, 99, 1, 2], "unknown_schema"),
            (
                vec![0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0],
                "unknown_schema",
            ),
            (vec![0, 0, 0, 0, 1, 0xff, 0xff], "undecodable"),
        ] {
            let err = decoder.decode::<OrderEvent>(&bytes).await.unwrap_err();
            assert_eq!(err.code(), code, "{bytes:?}: {err}");
            assert!(!err.is_transient());
            assert!(err.is_permanent());
        }
    }

    #[tokio::test]
    async fn values_and_arrays_over_the_limits_are_too_large() {
        let store = store();
        let schema = store.local_schema("order_event.avsc").unwrap();
        let mut order = sample_order();
        let item = order.items[0].clone();
        order.items = vec![item; 11];
        let framed = frame_confluent(1, &body(&schema, &order));
        let limits = LimitSettings {
            max_items: 10,
            ..limits()
        };
        let decoder = Decoder::new(store.clone(), "order_event.avsc", &limits).unwrap();
        let err = decoder.decode::<OrderEvent>(&framed).await.unwrap_err();
        assert_eq!(err.code(), "too_large", "{err}");
        assert!(err.to_string().contains("limits.max_items (10)"), "{err}");
        let limits = LimitSettings {
            max_message_bytes: framed.len() - 1,
            ..limits
        };
        let decoder = Decoder::new(store.clone(), "order_event.avsc", &limits).unwrap();
        let err = decoder.decode::<OrderEvent>(&framed).await.unwrap_err();
        assert_eq!(err.code(), "too_large", "{err}");
        assert!(
            err.to_string().contains("limits.max_message_bytes"),
            "{err}"
        );
        let limits = LimitSettings {
            max_items: 11,
            max_message_bytes: framed.len(),
            ..limits
        };
        let decoder = Decoder::new(store, "order_event.avsc", &limits).unwrap();
        assert_eq!(decoder.decode::<OrderEvent>(&framed).await.unwrap(), order);
    }
}
