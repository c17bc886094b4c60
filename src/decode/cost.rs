//! The decoding cost a writer schema allows. Every Avro value takes at least one byte, except
//! `null`, an empty `fixed` and records made only of those: an array of such items can claim a
//! billion elements in a few bytes, and arrays of arrays multiply that, so skipping a field the
//! reader does not know could take minutes. A writer schema with such an array is refused once,
//! when first seen; without one, decoding a value costs time in proportion to its bytes, which
//! `limits.max_message_bytes` bounds.

use std::collections::HashSet;

use apache_avro::schema::{Name, NamesRef, ResolvedSchema};
use apache_avro::Schema;

/// The path of the first array whose items take no bytes, if `schema` has one.
pub(super) fn zero_width_array(schema: &Schema) -> Option<String> {
    let resolved = ResolvedSchema::try_from(schema).ok()?;
    let mut walk = Walk {
        names: resolved.get_names(),
        seen: HashSet::new(),
    };
    walk.find(schema, "$")
}

struct Walk<'a, 's> {
    names: &'a NamesRef<'s>,
    /// Named types already walked (a recursive type is walked once).
    seen: HashSet<Name>,
}

impl Walk<'_, '_> {
    fn find(&mut self, schema: &Schema, path: &str) -> Option<String> {
        match schema {
            Schema::Array(array) => {
                if self.takes_no_bytes(&array.items, &mut HashSet::new()) {
                    return Some(format!("{path}[]"));
                }
                self.find(&array.items, &format!("{path}[]"))
            }
            Schema::Map(map) => self.find(&map.types, &format!("{path}{{}}")),
            Schema::Union(union) => union
                .variants()
                .iter()
                .find_map(|variant| self.find(variant, path)),
            Schema::Record(record) => {
                if !self.seen.insert(record.name.clone()) {
                    return None;
                }
                record
                    .fields
                    .iter()
                    .find_map(|field| self.find(&field.schema, &format!("{path}.{}", field.name)))
            }
            Schema::Ref { name } => {
                let target = *self.names.get(name)?;
                self.find(target, path)
            }
            _ => None,
        }
    }

    /// Whether a value of `schema` can be encoded in zero bytes.
    fn takes_no_bytes(&self, schema: &Schema, visiting: &mut HashSet<Name>) -> bool {
        match schema {
            Schema::Null => true,
            Schema::Fixed(fixed) => fixed.size == 0,
            Schema::Record(record) => {
                // A record that contains itself again holds at least a union index or an array
                // length on the way, so it takes bytes.
                if !visiting.insert(record.name.clone()) {
                    return false;
                }
                let empty = record
                    .fields
                    .iter()
                    .all(|field| self.takes_no_bytes(&field.schema, visiting));
                visiting.remove(&record.name);
                empty
            }
            Schema::Ref { name } => self
                .names
                .get(name)
                .is_some_and(|target| self.takes_no_bytes(target, visiting)),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_with(field_type: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type": "record", "name": "T", "namespace": "n", "fields": [
                {{"name": "id", "type": "string"}},
                {{"name": "pad", "type": {field_type}}}]}}"#
        ))
        .unwrap()
    }

    #[test]
    fn arrays_of_zero_byte_items_are_found_however_deep() {
        let cases = [
            (r#"{"type": "array", "items": "null"}"#, Some("$.pad[]")),
            (
                r#"{"type": "map", "values": {"type": "array", "items": {"type": "array", "items": "null"}}}"#,
                Some("$.pad{}[][]"),
            ),
            (
                r#"{"type": "array", "items": {"type": "record", "name": "E", "fields": [{"name": "z", "type": {"type": "fixed", "name": "Z", "size": 0}}]}}"#,
                Some("$.pad[]"),
            ),
            (r#"["null", {"type": "array", "items": "n.T"}]"#, None),
            (r#"{"type": "array", "items": "int"}"#, None),
            (r#"{"type": "array", "items": ["null", "int"]}"#, None),
            (
                r#"{"type": "array", "items": {"type": "array", "items": "boolean"}}"#,
                None,
            ),
        ];
        for (field_type, expected) in cases {
            let found = zero_width_array(&record_with(field_type));
            assert_eq!(found.as_deref(), expected, "{field_type}");
        }
    }

    #[test]
    fn the_repository_schemas_have_none() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        for file in ["order_event.avsc", "config_change.avsc"] {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            assert_eq!(zero_width_array(&Schema::parse_str(&text).unwrap()), None);
        }
    }
}
