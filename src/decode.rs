//! Avro decoding of Kafka message values.
//!
//! Two wire formats are accepted:
//! - Confluent framing: `0x00`, a 4-byte big-endian schema id, the Avro body. The writer schema
//!   comes from the Schema Registry (`GET /schemas/ids/{id}`) or, without one, from the local
//!   id -> file map `registry.json` in the schemas folder.
//! - Avro single-object encoding: `0xC3 0x01`, the 8-byte CRC-64-AVRO (Rabin) fingerprint of the
//!   writer schema, the Avro body; the fingerprint is looked up among the schemas folder's files.
//!
//! Each writer schema is fetched, parsed and checked against the reader schema (Avro's schema
//! resolution rules) once, then cached; the per-message work is a single pass over the bytes
//! with the prepared writer schema (serde_avro_fast), fields matched to the reader by name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use apache_avro::schema_compatibility::SchemaCompatibility;
use serde::de::DeserializeOwned;

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
    Invalid(#[from] crate::events::InvalidField),
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(String),
}

impl DecodeError {
    /// The dead-letter error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Undecodable(_) => "undecodable",
            Self::UnknownSchema(_) => "unknown_schema",
            Self::IncompatibleSchema { .. } => "incompatible_schema",
            Self::Invalid(_) => "invalid_field",
            Self::RegistryUnavailable(_) => "registry_unavailable",
        }
    }

    /// The pipeline stage that failed (dead-letter header).
    pub fn stage(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "validate",
            _ => "decode",
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, Self::RegistryUnavailable(_))
    }
}

/// A writer schema prepared for decoding.
pub struct WriterSchema {
    /// Where it came from, for error messages: `id 3`, `order_event.avsc`.
    pub origin: String,
    pub avro: apache_avro::Schema,
    pub fast: serde_avro_fast::Schema,
}

impl WriterSchema {
    pub fn parse(origin: impl Into<String>, json: &str) -> Result<Self, String> {
        let avro = apache_avro::Schema::parse_str(json).map_err(|e| e.to_string())?;
        let fast = json
            .parse::<serde_avro_fast::Schema>()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            origin: origin.into(),
            avro,
            fast,
        })
    }

    pub fn fingerprint(&self) -> [u8; 8] {
        *self.fast.rabin_fingerprint()
    }

    fn full_name(&self) -> String {
        schema_name(&self.avro)
    }
}

fn schema_name(schema: &apache_avro::Schema) -> String {
    match schema {
        apache_avro::Schema::Record(r) => r.name.fullname(None),
        other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)),
    }
}

/// Every writer schema this process knows, by Confluent id and by fingerprint.
pub struct SchemaStore {
    dir: PathBuf,
    local_ids: HashMap<u32, PathBuf>,
    by_fingerprint: HashMap<[u8; 8], Arc<WriterSchema>>,
    by_id: RwLock<HashMap<u32, Arc<WriterSchema>>>,
    registry: Option<Registry>,
}

struct Registry {
    base_url: String,
    http: reqwest::Client,
}

/// A problem with the schemas folder, found at start.
#[derive(Debug, thiserror::Error)]
pub enum SchemaLoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid schema {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("invalid {path}: {reason}")]
    IdMap { path: PathBuf, reason: String },
}

impl SchemaStore {
    /// Reads every `*.avsc` in `dir` (for single-object fingerprints) and `registry.json`.
    pub fn load(dir: &Path, registry_url: Option<&str>) -> Result<Self, SchemaLoadError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| SchemaLoadError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let entries = std::fs::read_dir(dir).map_err(|source| SchemaLoadError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let mut by_fingerprint = HashMap::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("avsc") {
                continue;
            }
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let schema = WriterSchema::parse(name, &read(&path)?).map_err(|reason| {
                SchemaLoadError::Invalid {
                    path: path.clone(),
                    reason,
                }
            })?;
            by_fingerprint.insert(schema.fingerprint(), Arc::new(schema));
        }
        let local_ids = Self::read_id_map(dir)?;
        let registry = registry_url.map(|url| Registry {
            base_url: url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("HTTP client without TLS always builds"),
        });
        Ok(Self {
            dir: dir.to_owned(),
            local_ids,
            by_fingerprint,
            by_id: RwLock::new(HashMap::new()),
            registry,
        })
    }

    fn read_id_map(dir: &Path) -> Result<HashMap<u32, PathBuf>, SchemaLoadError> {
        let path = dir.join("registry.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
            Err(source) => return Err(SchemaLoadError::Read { path, source }),
        };
        let bad = |reason: String| SchemaLoadError::IdMap {
            path: path.clone(),
            reason,
        };
        let map: HashMap<String, serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mut ids = HashMap::new();
        for (key, value) in map {
            if key.starts_with('_') {
                continue;
            }
            let id: u32 = key
                .parse()
                .map_err(|_| bad(format!("key {key:?} is not a schema id")))?;
            let file = value
                .as_str()
                .ok_or_else(|| bad(format!("id {id}: value must be a file name")))?;
            if !dir.join(file).is_file() {
                return Err(bad(format!(
                    "id {id}: {file} not found in {}",
                    dir.display()
                )));
            }
            ids.insert(id, PathBuf::from(file));
        }
        Ok(ids)
    }

    /// The schema file named `file` in the schemas folder, e.g. the reader schema.
    pub fn local_schema(&self, file: &str) -> Result<WriterSchema, SchemaLoadError> {
        let path = self.dir.join(file);
        let json = std::fs::read_to_string(&path).map_err(|source| SchemaLoadError::Read {
            path: path.clone(),
            source,
        })?;
        WriterSchema::parse(file, &json).map_err(|reason| SchemaLoadError::Invalid { path, reason })
    }

    /// The local id whose file is `file`, for producers that frame with Confluent ids.
    pub fn local_id_of(&self, file: &str) -> Option<u32> {
        self.local_ids
            .iter()
            .find(|(_, f)| f.as_os_str() == file)
            .map(|(id, _)| *id)
    }

    pub fn by_fingerprint(&self, fingerprint: &[u8; 8]) -> Result<Arc<WriterSchema>, DecodeError> {
        self.by_fingerprint
            .get(fingerprint)
            .cloned()
            .ok_or_else(|| {
                DecodeError::UnknownSchema(format!(
                    "no schema in {} has fingerprint {}",
                    self.dir.display(),
                    hex(fingerprint)
                ))
            })
    }

    /// The writer schema with Confluent id `id`, fetched once and cached.
    pub async fn by_id(&self, id: u32) -> Result<Arc<WriterSchema>, DecodeError> {
        if let Some(schema) = self.by_id.read().expect("schema cache lock").get(&id) {
            return Ok(schema.clone());
        }
        let schema = Arc::new(match &self.registry {
            Some(registry) => registry.fetch(id).await?,
            None => self.local_by_id(id)?,
        });
        self.by_id
            .write()
            .expect("schema cache lock")
            .insert(id, schema.clone());
        Ok(schema)
    }

    fn local_by_id(&self, id: u32) -> Result<WriterSchema, DecodeError> {
        let file = self.local_ids.get(&id).ok_or_else(|| {
            DecodeError::UnknownSchema(format!(
                "schema id {id} is not in {}",
                self.dir.join("registry.json").display()
            ))
        })?;
        let json = std::fs::read_to_string(self.dir.join(file))
            .map_err(|e| DecodeError::UnknownSchema(format!("schema id {id}: {e}")))?;
        WriterSchema::parse(format!("id {id}"), &json)
            .map_err(|e| DecodeError::UnknownSchema(format!("schema id {id}: {e}")))
    }
}

impl Registry {
    async fn fetch(&self, id: u32) -> Result<WriterSchema, DecodeError> {
        #[derive(serde::Deserialize)]
        struct Response {
            schema: String,
        }
        let url = format!("{}/schemas/ids/{id}", self.base_url);
        let unavailable = |e: String| DecodeError::RegistryUnavailable(format!("{url}: {e}"));
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(DecodeError::UnknownSchema(format!(
                "schema id {id} not found in the registry"
            )));
        }
        if !status.is_success() {
            return Err(unavailable(format!("HTTP {status}")));
        }
        let body: Response = response
            .json()
            .await
            .map_err(|e| unavailable(format!("unreadable answer: {e}")))?;
        WriterSchema::parse(format!("id {id}"), &body.schema)
            .map_err(|e| DecodeError::UnknownSchema(format!("schema id {id} is not Avro: {e}")))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Magic byte of the Confluent framing.
pub const CONFLUENT_MAGIC: u8 = 0x00;
/// Marker of Avro single-object encoding.
pub const SINGLE_OBJECT_MARKER: [u8; 2] = [0xC3, 0x01];

/// Frames an Avro body with the Confluent header.
pub fn frame_confluent(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(CONFLUENT_MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Frames an Avro body with the single-object header.
pub fn frame_single_object(fingerprint: &[u8; 8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + body.len());
    out.extend_from_slice(&SINGLE_OBJECT_MARKER);
    out.extend_from_slice(fingerprint);
    out.extend_from_slice(body);
    out
}

/// Decodes messages of one event type (one reader schema).
pub struct Decoder {
    store: Arc<SchemaStore>,
    reader: apache_avro::Schema,
    /// Compatibility of each writer schema (by fingerprint) with the reader, checked once.
    compatibility: Mutex<HashMap<[u8; 8], Result<(), String>>>,
}

impl Decoder {
    /// `reader_file` names the reader schema in the schemas folder, e.g. `order_event.avsc`.
    pub fn new(store: Arc<SchemaStore>, reader_file: &str) -> Result<Self, SchemaLoadError> {
        let reader = store.local_schema(reader_file)?.avro;
        Ok(Self {
            store,
            reader,
            compatibility: Mutex::new(HashMap::new()),
        })
    }

    /// Decodes one message value into `T` (whose serde shape follows the reader schema).
    pub async fn decode<T: DeserializeOwned>(&self, payload: &[u8]) -> Result<T, DecodeError> {
        let (writer, body) = match payload {
            [CONFLUENT_MAGIC, a, b, c, d, body @ ..] => {
                let id = u32::from_be_bytes([*a, *b, *c, *d]);
                (self.store.by_id(id).await?, body)
            }
            [0xC3, 0x01, rest @ ..] if rest.len() >= 8 => {
                let fingerprint: [u8; 8] = rest[..8].try_into().expect("8 bytes");
                (self.store.by_fingerprint(&fingerprint)?, &rest[8..])
            }
            [] => return Err(DecodeError::Undecodable("empty message value".into())),
            [CONFLUENT_MAGIC, ..] => {
                return Err(DecodeError::Undecodable(format!(
                    "{} bytes: too short for the 5-byte Confluent header",
                    payload.len()
                )))
            }
            [0xC3, 0x01, ..] => {
                return Err(DecodeError::Undecodable(format!(
                    "{} bytes: too short for the 10-byte single-object header",
                    payload.len()
                )))
            }
            [first, ..] => {
                return Err(DecodeError::Undecodable(format!(
                    "unknown framing: first byte 0x{first:02x} is neither 0x00 (Confluent) nor 0xc3 (single-object)"
                )))
            }
        };
        self.check_compatible(&writer)?;
        let mut state = serde_avro_fast::de::DeserializerState::from_slice(body, &writer.fast);
        let value = T::deserialize(state.deserializer()).map_err(|e| {
            DecodeError::Undecodable(format!("Avro body does not match {}: {e}", writer.origin))
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
            SchemaCompatibility::can_read(&writer.avro, &self.reader).map_err(|e| e.to_string())
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
    use super::*;
    use crate::events::{sample_order, OrderEvent};

    fn store() -> Arc<SchemaStore> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        Arc::new(SchemaStore::load(&dir, None).unwrap())
    }

    fn body(schema: &WriterSchema, event: &OrderEvent) -> Vec<u8> {
        let mut config = serde_avro_fast::ser::SerializerConfig::new(&schema.fast);
        serde_avro_fast::to_datum_vec(event, &mut config).unwrap()
    }

    #[tokio::test]
    async fn both_framings_round_trip() {
        let store = store();
        let decoder = Decoder::new(store.clone(), "order_event.avsc").unwrap();
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
        let decoder = Decoder::new(store(), "order_event.avsc").unwrap();
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
        }
    }
}
