//! Every writer schema this process knows: the schemas folder's `*.avsc` files (by
//! fingerprint), its `registry.json` (local id -> file) and, when configured, a Confluent
//! Schema Registry (by id, fetched once and cached).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::registry::Registry;
use super::DecodeError;
use crate::retry::{Classify, ErrorClass};

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

    pub(super) fn full_name(&self) -> String {
        schema_name(&self.avro)
    }
}

pub(super) fn schema_name(schema: &apache_avro::Schema) -> String {
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

/// A problem with the schemas folder, found at start.
#[derive(Debug, thiserror::Error)]
pub enum SchemaLoadError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The schemas folder itself is missing or unreadable.
    #[error(
        "cannot read the schemas folder {dir}: {error}; point --schemas-dir \
         (TENANTSTREAM_SCHEMAS_DIR) at the folder holding the .avsc files and registry.json"
    )]
    Folder { dir: PathBuf, error: std::io::Error },
    #[error("invalid schema {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("invalid {path}: {reason}")]
    IdMap { path: PathBuf, reason: String },
    #[error("{file} in {dir} has no schema id in registry.json")]
    NoLocalId { file: String, dir: PathBuf },
}

impl Classify for SchemaLoadError {
    /// The schemas folder must be fixed.
    fn class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }
}

impl SchemaStore {
    /// Reads every `*.avsc` in `dir` (for single-object fingerprints) and `registry.json`.
    pub fn load(dir: &Path, registry_url: Option<&str>) -> Result<Self, SchemaLoadError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|error| SchemaLoadError::Read {
                path: path.to_owned(),
                error,
            })
        };
        let entries = std::fs::read_dir(dir).map_err(|error| SchemaLoadError::Folder {
            dir: dir.to_owned(),
            error,
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
        let registry = registry_url.map(Registry::new);
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
            Err(error) => return Err(SchemaLoadError::Read { path, error }),
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
        let json = std::fs::read_to_string(&path).map_err(|error| SchemaLoadError::Read {
            path: path.clone(),
            error,
        })?;
        WriterSchema::parse(file, &json).map_err(|reason| SchemaLoadError::Invalid { path, reason })
    }

    /// The schemas folder.
    pub fn dir(&self) -> &Path {
        &self.dir
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
