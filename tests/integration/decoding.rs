//! Decoding of Avro order events, without Kafka, Postgres or Redis: both wire formats, schema
//! evolution (older and newer writers), incompatible writers, a Schema Registry over HTTP and a
//! checked-in corpus of bad inputs (tests/data/bad, see MANIFEST.tsv and make_corpus.py).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::Path as UrlPath;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use serde::Serialize;
use tenantstream::testing::decode::{
    frame_confluent, frame_single_object, DecodeError, Decoder, Encoder, SchemaStore, WriterSchema,
};
use tenantstream::testing::domain::{self, LineItem, OrderEvent, OrderEventType};
use tenantstream::testing::retry::Classify;
use uuid::Uuid;

/// The reader schema, in the schemas folder.
const READER: &str = "order_event.avsc";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A schema fixture of tests/data/schemas.
fn fixture_schema(file: &str) -> String {
    read_text(&repo_path("tests/data/schemas").join(file))
}

/// The store of the repository's schemas folder (reader schema, local id 1).
fn repo_store() -> Arc<SchemaStore> {
    Arc::new(SchemaStore::load(&repo_path("schemas"), None).expect("schemas/ loads"))
}

fn decoder(store: &Arc<SchemaStore>) -> Decoder {
    Decoder::new(store.clone(), READER, &Default::default()).expect("reader schema loads")
}

fn sample() -> OrderEvent {
    domain::sample_order()
}

const ALL_TYPES: [OrderEventType; 6] = [
    OrderEventType::Created,
    OrderEventType::Updated,
    OrderEventType::Confirmed,
    OrderEventType::Shipped,
    OrderEventType::Delivered,
    OrderEventType::Cancelled,
];

/// Distinct valid events: every event type, 0 to 3 items, varied ids and amounts.
fn order(n: usize) -> OrderEvent {
    let items = (0..n % 4)
        .map(|i| LineItem {
            sku: format!("sku-{n}-{i}"),
            category_id: format!("cat-{}", (n + i) % 7),
            quantity: (i as i32 + 1) * 3,
            unit_price_cents: 100 + (n * 37 + i) as i64,
        })
        .collect::<Vec<_>>();
    OrderEvent {
        event_id: Uuid::from_u128(0x1000 + n as u128).to_string(),
        tenant_id: Uuid::from_u128(0xabcd_0000 + (n % 5) as u128).to_string(),
        order_id: format!("ord-{n:05}"),
        version: n as i64 + 1,
        event_type: ALL_TYPES[n % ALL_TYPES.len()],
        occurred_at: 1_700_000_000_000 + n as i64 * 1_000,
        customer_id: format!("cust-{}", n % 13),
        currency: ["EUR", "USD", "JPY", "CHF"][n % 4].into(),
        total_cents: items
            .iter()
            .map(|i| i.unit_price_cents * i64::from(i.quantity))
            .sum(),
        items,
    }
}

/// Decodes and validates, as the worker does; `invalid_field` comes from `validate()`.
async fn decode_valid(decoder: &Decoder, bytes: &[u8]) -> Result<OrderEvent, DecodeError> {
    let event: OrderEvent = decoder.decode(bytes).await?;
    let valid = event.clone().validate()?;
    assert_eq!(valid.event, event);
    assert_eq!(valid.event_id.to_string(), event.event_id);
    assert_eq!(valid.tenant_id.to_string(), event.tenant_id);
    Ok(event)
}

async fn decode_err(decoder: &Decoder, bytes: &[u8]) -> DecodeError {
    match decoder.decode::<OrderEvent>(bytes).await {
        Ok(event) => panic!("expected an error, decoded {event:?} from {bytes:02x?}"),
        Err(e) => e,
    }
}

/// An Avro body of `value` written with `writer`.
fn avro_body<T: Serialize>(writer: &WriterSchema, value: &T) -> Vec<u8> {
    let mut config = serde_avro_fast::ser::SerializerConfig::new(&writer.fast);
    serde_avro_fast::to_datum_vec(value, &mut config).expect("value fits the writer schema")
}

// ---------------------------------------------------------------------------------------------
// 1. Both wire formats
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn confluent_and_single_object_framings_round_trip() {
    let store = repo_store();
    let decoder = decoder(&store);
    let schema = store.local_schema(READER).unwrap();
    let fingerprint = schema.fingerprint();
    assert_eq!(store.local_id_of(READER), Some(1), "schemas/registry.json");
    let encoder = Encoder::new(store.local_schema(READER).unwrap(), 1);

    let mut edge = sample();
    edge.order_id = "commande-été-№7 ✓".into();
    edge.version = domain::MAX_VERSION; // the largest version accepted
    edge.occurred_at = 0;
    edge.total_cents = i64::MAX;
    edge.items[0].quantity = i32::MAX;
    edge.items[0].unit_price_cents = 0;
    let events: Vec<OrderEvent> = [sample(), edge]
        .into_iter()
        .chain((0..12).map(order))
        .collect();

    for event in &events {
        let body = encoder.body(event);
        let confluent = encoder.encode(event, false);
        let single = encoder.encode(event, true);
        assert_eq!(confluent, frame_confluent(1, &body));
        assert_eq!(&confluent[..5], &[0x00, 0, 0, 0, 1]);
        assert_eq!(&confluent[5..], &body[..]);
        assert_eq!(single, frame_single_object(&fingerprint, &body));
        assert_eq!(&single[..2], &[0xC3, 0x01]);
        assert_eq!(&single[2..10], &fingerprint);
        assert_eq!(&single[10..], &body[..]);

        assert_eq!(&decode_valid(&decoder, &confluent).await.unwrap(), event);
        assert_eq!(&decode_valid(&decoder, &single).await.unwrap(), event);
    }
}

/// CRC-64-AVRO (Rabin), as in the Avro specification, for an independent check of fingerprints.
fn crc64_avro(bytes: &[u8]) -> [u8; 8] {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    let mut fp = EMPTY;
    for &b in bytes {
        let mut x = (fp ^ u64::from(b)) & 0xff;
        for _ in 0..8 {
            x = (x >> 1) ^ (EMPTY & (x & 1).wrapping_neg());
        }
        fp = (fp >> 8) ^ x;
    }
    fp.to_le_bytes()
}

/// Single-object fingerprints are the little-endian CRC-64-AVRO of the Parsing Canonical Form,
/// which strips logical types, docs and defaults (checked against the Avro project's published
/// vectors, share/test/data/schema-tests.txt). Producers in other languages depend on it.
#[test]
fn single_object_fingerprint_is_crc64_avro_of_the_canonical_form() {
    let fingerprint = |json: &str| WriterSchema::parse("vector", json).unwrap().fingerprint();
    // (schema, its canonical form, published fingerprint as a signed 64-bit integer)
    let vectors: [(&str, &str, i64); 6] = [
        (r#""null""#, r#""null""#, 7195948357588979594),
        (r#"{"type": "int"}"#, r#""int""#, 8247732601305521295),
        (r#""string""#, r#""string""#, -8142146995180207161),
        (
            r#"{"type": "string", "logicalType": "uuid"}"#,
            r#""string""#,
            -8142146995180207161,
        ),
        (
            r#"{"type":"fixed","name":"foo","size":15}"#,
            r#"{"name":"foo","type":"fixed","size":15}"#,
            1756455273707447556,
        ),
        (
            r#"{"type":"record","name":"foo","doc":"d","fields":[{"name":"f1","type":"boolean","default":true}]}"#,
            r#"{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"}]}"#,
            7843277075252814651,
        ),
    ];
    for (json, canonical, published) in vectors {
        assert_eq!(
            crc64_avro(canonical.as_bytes()),
            published.to_le_bytes(),
            "{canonical}"
        );
        assert_eq!(fingerprint(json), published.to_le_bytes(), "{json}");
    }

    // The newer writer fixture: logical types, docs and defaults gone, names fully qualified.
    let canonical = concat!(
        r#"{"name":"io.tenantstream.OrderEvent","type":"record","fields":["#,
        r#"{"name":"event_id","type":"string"},{"name":"tenant_id","type":"string"},"#,
        r#"{"name":"order_id","type":"string"},{"name":"version","type":"long"},"#,
        r#"{"name":"type","type":{"name":"io.tenantstream.OrderEventType","type":"enum","#,
        r#""symbols":["CREATED","UPDATED","CONFIRMED","SHIPPED","DELIVERED","CANCELLED"]}},"#,
        r#"{"name":"occurred_at","type":"long"},{"name":"customer_id","type":"string"},"#,
        r#"{"name":"currency","type":"string"},{"name":"total_cents","type":"long"},"#,
        r#"{"name":"items","type":{"type":"array","items":{"name":"io.tenantstream.LineItem","#,
        r#""type":"record","fields":[{"name":"sku","type":"string"},"#,
        r#"{"name":"category_id","type":"string"},{"name":"quantity","type":"int"},"#,
        r#"{"name":"unit_price_cents","type":"long"},{"name":"discount_cents","type":"long"}]}}},"#,
        r#"{"name":"sales_channel","type":["null","string"]}]}"#,
    );
    assert_eq!(
        fingerprint(&fixture_schema("order_event_v2.avsc")),
        crc64_avro(canonical.as_bytes())
    );
}

/// An Avro body written by apache-avro (independent of serde_avro_fast, which the crate's
/// encoder and decoder both use) decodes, in both framings.
#[tokio::test]
async fn bodies_written_by_apache_avro_decode() {
    use apache_avro::types::Value;

    let store = repo_store();
    let decoder = decoder(&store);
    let schema = store.local_schema(READER).unwrap();
    let mut event = order(7);
    event.order_id = "ordre-ø-7".into();
    assert_eq!(event.items.len(), 3);
    assert_eq!(event.event_type, OrderEventType::Updated);

    let string = |s: &str| Value::String(s.to_owned());
    let items = event
        .items
        .iter()
        .map(|i| {
            Value::Record(vec![
                ("sku".into(), string(&i.sku)),
                ("category_id".into(), string(&i.category_id)),
                ("quantity".into(), Value::Int(i.quantity)),
                ("unit_price_cents".into(), Value::Long(i.unit_price_cents)),
            ])
        })
        .collect();
    let value = Value::Record(vec![
        (
            "event_id".into(),
            Value::Uuid(event.event_id.parse().unwrap()),
        ),
        (
            "tenant_id".into(),
            Value::Uuid(event.tenant_id.parse().unwrap()),
        ),
        ("order_id".into(), string(&event.order_id)),
        ("version".into(), Value::Long(event.version)),
        ("type".into(), Value::Enum(1, "UPDATED".into())),
        (
            "occurred_at".into(),
            Value::TimestampMillis(event.occurred_at),
        ),
        ("customer_id".into(), string(&event.customer_id)),
        ("currency".into(), string(&event.currency)),
        ("total_cents".into(), Value::Long(event.total_cents)),
        ("items".into(), Value::Array(items)),
    ]);
    let body = apache_avro::to_avro_datum(&schema.avro, value).unwrap();
    for bytes in [
        frame_confluent(1, &body),
        frame_single_object(&schema.fingerprint(), &body),
    ] {
        assert_eq!(decode_valid(&decoder, &bytes).await.unwrap(), event);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Schema evolution
// ---------------------------------------------------------------------------------------------

/// A schemas folder with the reader and the writer fixtures: ids 1 (reader), 2 (v0), 3 (v2),
/// 4 (incompatible), plus `extra` (id, file, schema json) written into it.
fn evolution_store(extra: &[(u32, &str, String)]) -> (tempfile::TempDir, Arc<SchemaStore>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo_path("schemas").join(READER), dir.path().join(READER)).unwrap();
    let mut ids = serde_json::Map::new();
    ids.insert("_doc".into(), "test fixture".into());
    ids.insert("1".into(), READER.into());
    for (id, file) in [
        (2, "order_event_v0.avsc"),
        (3, "order_event_v2.avsc"),
        (4, "order_event_incompatible.avsc"),
    ] {
        std::fs::write(dir.path().join(file), fixture_schema(file)).unwrap();
        ids.insert(id.to_string(), file.into());
    }
    for (id, file, json) in extra {
        std::fs::write(dir.path().join(file), json).unwrap();
        ids.insert(id.to_string(), (*file).into());
    }
    std::fs::write(
        dir.path().join("registry.json"),
        serde_json::Value::Object(ids).to_string(),
    )
    .unwrap();
    let store = SchemaStore::load(dir.path(), None).expect("evolution schemas load");
    (dir, Arc::new(store))
}

/// An event as the older writer (order_event_v0.avsc) knows it: amounts are Avro ints.
#[derive(Serialize)]
struct V0Event {
    event_id: String,
    tenant_id: String,
    order_id: String,
    version: i64,
    #[serde(rename = "type")]
    event_type: OrderEventType,
    occurred_at: i64,
    customer_id: String,
    currency: String,
    total_cents: i32,
    items: Vec<V0LineItem>,
}

#[derive(Serialize)]
struct V0LineItem {
    sku: String,
    category_id: String,
    quantity: i32,
    unit_price_cents: i32,
}

impl V0Event {
    fn from_event(e: &OrderEvent) -> Self {
        Self {
            event_id: e.event_id.clone(),
            tenant_id: e.tenant_id.clone(),
            order_id: e.order_id.clone(),
            version: e.version,
            event_type: e.event_type,
            occurred_at: e.occurred_at,
            customer_id: e.customer_id.clone(),
            currency: e.currency.clone(),
            total_cents: e.total_cents.try_into().unwrap(),
            items: e
                .items
                .iter()
                .map(|i| V0LineItem {
                    sku: i.sku.clone(),
                    category_id: i.category_id.clone(),
                    quantity: i.quantity,
                    unit_price_cents: i.unit_price_cents.try_into().unwrap(),
                })
                .collect(),
        }
    }
}

/// An event as the newer writer (order_event_v2.avsc) knows it: two trailing fields more.
#[derive(Serialize)]
struct V2Event {
    event_id: String,
    tenant_id: String,
    order_id: String,
    version: i64,
    #[serde(rename = "type")]
    event_type: OrderEventType,
    occurred_at: i64,
    customer_id: String,
    currency: String,
    total_cents: i64,
    items: Vec<V2LineItem>,
    sales_channel: Option<String>,
}

#[derive(Serialize)]
struct V2LineItem {
    sku: String,
    category_id: String,
    quantity: i32,
    unit_price_cents: i64,
    discount_cents: i64,
}

impl V2Event {
    fn from_event(e: &OrderEvent, sales_channel: Option<&str>) -> Self {
        Self {
            event_id: e.event_id.clone(),
            tenant_id: e.tenant_id.clone(),
            order_id: e.order_id.clone(),
            version: e.version,
            event_type: e.event_type,
            occurred_at: e.occurred_at,
            customer_id: e.customer_id.clone(),
            currency: e.currency.clone(),
            total_cents: e.total_cents,
            items: e
                .items
                .iter()
                .enumerate()
                .map(|(n, i)| V2LineItem {
                    sku: i.sku.clone(),
                    category_id: i.category_id.clone(),
                    quantity: i.quantity,
                    unit_price_cents: i.unit_price_cents,
                    // Multi-byte varints, so that a wrong skip would shift the next item.
                    discount_cents: 1_000_003 * (n as i64 + 1),
                })
                .collect(),
            sales_channel: sales_channel.map(str::to_owned),
        }
    }
}

#[tokio::test]
async fn older_writer_v0_is_read_with_int_to_long_promotion() {
    let (_dir, store) = evolution_store(&[]);
    let decoder = decoder(&store);
    let v0 = WriterSchema::parse("v0", &fixture_schema("order_event_v0.avsc")).unwrap();
    assert!(matches!(
        v0.avro,
        apache_avro::Schema::Record(ref r) if r.name.fullname(None) == "io.tenantstream.OrderEvent"
    ));

    let mut big = sample();
    big.total_cents = i64::from(i32::MAX);
    big.items[0].unit_price_cents = 2_000_000_000;
    big.items[0].quantity = 1;
    let events: Vec<OrderEvent> = [sample(), big]
        .into_iter()
        .chain((0..10).map(order))
        .filter(|e| e.event_type != OrderEventType::Cancelled)
        .collect();
    assert!(events.len() >= 10);

    for event in &events {
        let body = avro_body(&v0, &V0Event::from_event(event));
        for bytes in [
            frame_confluent(2, &body),
            frame_single_object(&v0.fingerprint(), &body),
        ] {
            assert_eq!(&decode_valid(&decoder, &bytes).await.unwrap(), event);
        }
    }

    // Negative ints keep their sign when promoted (decode only: validate() rejects them).
    let mut negative = sample();
    negative.total_cents = i64::from(i32::MIN);
    negative.items[0].unit_price_cents = -1;
    let body = avro_body(&v0, &V0Event::from_event(&negative));
    let decoded: OrderEvent = decoder.decode(&frame_confluent(2, &body)).await.unwrap();
    assert_eq!(decoded, negative);

    // The v0 writer cannot express CANCELLED: the fixture really is the older enum.
    let mut cancelled = sample();
    cancelled.event_type = OrderEventType::Cancelled;
    let mut config = serde_avro_fast::ser::SerializerConfig::new(&v0.fast);
    assert!(serde_avro_fast::to_datum_vec(&V0Event::from_event(&cancelled), &mut config).is_err());

    // Id 2 really selects the v0 writer: a long beyond the int range, framed as v0, is not an int.
    let mut huge = sample();
    huge.total_cents = 1 << 40;
    let current = Encoder::new(store.local_schema(READER).unwrap(), 1);
    let err = decode_err(&decoder, &frame_confluent(2, &current.body(&huge))).await;
    assert_eq!(err.code(), "undecodable", "{err}");
    // ...while under id 1 (the reader schema itself) it is fine.
    assert_eq!(
        decode_valid(&decoder, &current.encode(&huge, false))
            .await
            .unwrap(),
        huge
    );
}

#[tokio::test]
async fn newer_writer_v2_fields_unknown_to_the_reader_are_skipped() {
    let (_dir, store) = evolution_store(&[]);
    let decoder = decoder(&store);
    let v2 = WriterSchema::parse("v2", &fixture_schema("order_event_v2.avsc")).unwrap();
    let current = store.local_schema(READER).unwrap();
    assert_ne!(v2.fingerprint(), current.fingerprint());

    let events: Vec<OrderEvent> = [sample()].into_iter().chain((0..12).map(order)).collect();
    assert!(events.iter().any(|e| e.items.len() == 3));
    for (n, event) in events.iter().enumerate() {
        let channel = ["web", "", "point-of-sale ✓"].get(n % 4).copied();
        let v2_event = V2Event::from_event(event, channel);
        let body = avro_body(&v2, &v2_event);
        // The v2 body really carries more than the reader knows.
        let v1_body = Encoder::new(store.local_schema(READER).unwrap(), 1).body(event);
        assert!(body.len() > v1_body.len());

        for bytes in [
            frame_confluent(3, &body),
            frame_single_object(&v2.fingerprint(), &body),
        ] {
            assert_eq!(
                &decode_valid(&decoder, &bytes).await.unwrap(),
                event,
                "sales_channel {channel:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Incompatible writers
// ---------------------------------------------------------------------------------------------

/// The reader schema with one change applied to its JSON.
fn reader_variant(change: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut json: serde_json::Value =
        serde_json::from_str(&read_text(&repo_path("schemas").join(READER))).unwrap();
    change(&mut json);
    json.to_string()
}

fn field_mut<'a>(record: &'a mut serde_json::Value, name: &str) -> &'a mut serde_json::Value {
    record["fields"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no field {name}"))
}

#[tokio::test]
async fn incompatible_writer_schemas_are_rejected() {
    // version: "string" (fixture, id 4); the others are derived from the reader here.
    let extra_symbol = reader_variant(|s| {
        field_mut(s, "type")["type"]["symbols"]
            .as_array_mut()
            .unwrap()
            .push("RETURNED".into())
    });
    let long_quantity = reader_variant(|s| {
        let line_item = &mut field_mut(s, "items")["type"]["items"];
        field_mut(line_item, "quantity")["type"] = "long".into();
    });
    let no_currency = reader_variant(|s| {
        s["fields"]
            .as_array_mut()
            .unwrap()
            .retain(|f| f["name"] != "currency")
    });
    let renamed = reader_variant(|s| s["name"] = "PurchaseEvent".into());
    let (_dir, store) = evolution_store(&[
        (5, "extra_symbol.avsc", extra_symbol),
        (6, "long_quantity.avsc", long_quantity),
        (7, "no_currency.avsc", no_currency),
        (8, "renamed.avsc", renamed),
    ]);
    let decoder = decoder(&store);

    #[derive(Serialize)]
    struct StringVersion {
        event_id: String,
        tenant_id: String,
        order_id: String,
        version: String,
        #[serde(rename = "type")]
        event_type: OrderEventType,
        occurred_at: i64,
        customer_id: String,
        currency: String,
        total_cents: i64,
        items: Vec<LineItem>,
    }
    let e = sample();
    let incompatible = store.local_schema("order_event_incompatible.avsc").unwrap();
    let string_version = avro_body(
        &incompatible,
        &StringVersion {
            event_id: e.event_id.clone(),
            tenant_id: e.tenant_id.clone(),
            order_id: e.order_id.clone(),
            version: "1".into(),
            event_type: e.event_type,
            occurred_at: e.occurred_at,
            customer_id: e.customer_id.clone(),
            currency: e.currency.clone(),
            total_cents: e.total_cents,
            items: e.items.clone(),
        },
    );

    // Bodies of 5, 6 and 8 would decode into an OrderEvent field by field (CREATED, quantity
    // 2, same fields): only the compatibility check can refuse them.
    let same_shape = |file: &str| avro_body(&store.local_schema(file).unwrap(), &sample());
    let cases = [
        (
            4,
            "order_event_incompatible.avsc",
            string_version,
            "version",
        ),
        (
            5,
            "extra_symbol.avsc",
            same_shape("extra_symbol.avsc"),
            "type",
        ),
        (
            6,
            "long_quantity.avsc",
            same_shape("long_quantity.avsc"),
            "items",
        ),
        (7, "no_currency.avsc", Vec::new(), "currency"),
        (
            8,
            "renamed.avsc",
            same_shape("renamed.avsc"),
            "PurchaseEvent",
        ),
    ];
    for (id, file, body, mentioned) in cases {
        let fingerprint = store.local_schema(file).unwrap().fingerprint();
        for (framing, bytes) in [
            ("confluent", frame_confluent(id, &body)),
            ("single-object", frame_single_object(&fingerprint, &body)),
        ] {
            // Twice: the verdict is cached per writer schema and must stay the same.
            for _ in 0..2 {
                let err = decode_err(&decoder, &bytes).await;
                assert_eq!(err.code(), "incompatible_schema", "{file} {framing}: {err}");
                assert!(!err.is_transient());
                assert_eq!(err.stage().as_str(), "decode");
                let DecodeError::IncompatibleSchema { reason, reader, .. } = &err else {
                    panic!("{file}: {err:?}");
                };
                assert_eq!(reader, "io.tenantstream.OrderEvent");
                let text = format!("{err} {reason}");
                assert!(
                    text.contains(mentioned),
                    "{file}: {text:?} lacks {mentioned:?}"
                );
            }
        }
    }

    // Compatible writers of the same folder still decode after the rejections.
    let ok = Encoder::new(store.local_schema(READER).unwrap(), 1).encode(&sample(), false);
    assert_eq!(decode_valid(&decoder, &ok).await.unwrap(), sample());
}

// ---------------------------------------------------------------------------------------------
// 4. Schema Registry over HTTP
// ---------------------------------------------------------------------------------------------

/// A minimal Confluent Schema Registry: `GET /schemas/ids/{id}` → `{"schema": "..."}`, 404 for
/// unknown ids, 503 while `down` is set. Counts every request.
struct FakeRegistry {
    url: String,
    requests: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

async fn fake_registry(schemas: HashMap<u32, String>) -> FakeRegistry {
    let requests = Arc::new(AtomicUsize::new(0));
    let down = Arc::new(AtomicBool::new(false));
    let schemas = Arc::new(schemas);
    let handler = {
        let (requests, down) = (requests.clone(), down.clone());
        move |UrlPath(id): UrlPath<String>| async move {
            requests.fetch_add(1, Ordering::SeqCst);
            if down.load(Ordering::SeqCst) {
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
            match id.parse().ok().and_then(|id: u32| schemas.get(&id)) {
                Some(schema) => (
                    [(
                        header::CONTENT_TYPE,
                        "application/vnd.schemaregistry.v1+json",
                    )],
                    serde_json::json!({ "schema": schema }).to_string(),
                )
                    .into_response(),
                None => (
                    StatusCode::NOT_FOUND,
                    r#"{"error_code":40403,"message":"Schema not found"}"#,
                )
                    .into_response(),
            }
        }
    };
    let app = axum::Router::new().route("/schemas/ids/{id}", axum::routing::get(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    FakeRegistry {
        url: format!("http://{addr}"),
        requests,
        down,
    }
}

fn registry_store(url: &str) -> Arc<SchemaStore> {
    Arc::new(SchemaStore::load(&repo_path("schemas"), Some(url)).unwrap())
}

#[tokio::test]
async fn registry_schema_is_fetched_once_and_cached() {
    let v2_json = fixture_schema("order_event_v2.avsc");
    let registry = fake_registry(HashMap::from([(11, v2_json.clone())])).await;
    let store = registry_store(&registry.url);
    let decoder = decoder(&store);
    let v2 = WriterSchema::parse("v2", &v2_json).unwrap();

    for n in 0..100 {
        let event = order(n);
        let body = avro_body(&v2, &V2Event::from_event(&event, Some("web")));
        let decoded = decode_valid(&decoder, &frame_confluent(11, &body))
            .await
            .unwrap_or_else(|e| panic!("message {n}: {e}"));
        assert_eq!(decoded, event);
    }
    assert_eq!(registry.requests.load(Ordering::SeqCst), 1);

    // An id the registry does not know: permanent, not transient.
    let body = avro_body(&v2, &V2Event::from_event(&sample(), None));
    let err = decode_err(&decoder, &frame_confluent(12, &body)).await;
    assert_eq!(err.code(), "unknown_schema", "{err}");
    assert!(!err.is_transient());
    assert_eq!(registry.requests.load(Ordering::SeqCst), 2);

    // With a registry, local ids of registry.json are not consulted: id 1 is the registry's.
    let err = decode_err(&decoder, &frame_confluent(1, &body)).await;
    assert_eq!(err.code(), "unknown_schema", "{err}");

    // Id 11 is still served from the cache.
    let requests = registry.requests.load(Ordering::SeqCst);
    assert_eq!(
        decode_valid(&decoder, &frame_confluent(11, &body))
            .await
            .unwrap(),
        sample()
    );
    assert_eq!(registry.requests.load(Ordering::SeqCst), requests);
}

#[tokio::test]
async fn registry_down_is_a_transient_error() {
    // A port nobody listens on: bind one, then let it go.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let store = registry_store(&format!("http://{addr}"));
    let decoder = decoder(&store);
    let body = Encoder::new(store.local_schema(READER).unwrap(), 1).body(&sample());

    let err = decode_err(&decoder, &frame_confluent(11, &body)).await;
    assert_eq!(err.code(), "registry_unavailable", "{err}");
    assert!(err.is_transient());
    assert_eq!(err.stage().as_str(), "decode");
    assert!(matches!(err, DecodeError::RegistryUnavailable(_)));

    // Single-object messages do not need the registry.
    let fingerprint = store.local_schema(READER).unwrap().fingerprint();
    assert_eq!(
        decode_valid(&decoder, &frame_single_object(&fingerprint, &body))
            .await
            .unwrap(),
        sample()
    );
}

#[tokio::test]
async fn registry_failure_is_transient_and_not_cached() {
    let registry =
        fake_registry(HashMap::from([(11, fixture_schema("order_event_v2.avsc"))])).await;
    let store = registry_store(&registry.url);
    let decoder = decoder(&store);
    let v2 = WriterSchema::parse("v2", &fixture_schema("order_event_v2.avsc")).unwrap();
    let message = frame_confluent(11, &avro_body(&v2, &V2Event::from_event(&sample(), None)));

    registry.down.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        let err = decode_err(&decoder, &message).await;
        assert_eq!(err.code(), "registry_unavailable", "{err}");
        assert!(err.is_transient());
    }
    assert_eq!(registry.requests.load(Ordering::SeqCst), 2);

    registry.down.store(false, Ordering::SeqCst);
    assert_eq!(decode_valid(&decoder, &message).await.unwrap(), sample());
    assert_eq!(decode_valid(&decoder, &message).await.unwrap(), sample());
    assert_eq!(registry.requests.load(Ordering::SeqCst), 3);
}

// ---------------------------------------------------------------------------------------------
// 5. Bad-input corpus
// ---------------------------------------------------------------------------------------------

struct CorpusCase {
    file: String,
    code: String,
    /// For `invalid_field`: the field `InvalidField` names.
    field: Option<String>,
}

fn corpus_dir() -> PathBuf {
    repo_path("tests/data/bad")
}

fn corpus_manifest() -> Vec<CorpusCase> {
    read_text(&corpus_dir().join("MANIFEST.tsv"))
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| {
            let columns: Vec<&str> = line.split('\t').collect();
            assert!(
                (2..=3).contains(&columns.len()),
                "MANIFEST.tsv line {line:?}"
            );
            CorpusCase {
                file: columns[0].to_owned(),
                code: columns[1].to_owned(),
                field: columns.get(2).map(|f| (*f).to_owned()),
            }
        })
        .collect()
}

#[tokio::test]
async fn bad_input_corpus_gets_the_expected_codes() {
    let cases = corpus_manifest();
    let decoder = decoder(&repo_store());

    // Every file is listed, every listed file exists, every code is a permanent decode code.
    let listed: BTreeSet<&str> = cases.iter().map(|c| c.file.as_str()).collect();
    assert_eq!(listed.len(), cases.len(), "a file is listed twice");
    let on_disk: BTreeSet<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "MANIFEST.tsv" && name != "make_corpus.py")
        .collect();
    assert_eq!(
        on_disk.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        listed,
        "tests/data/bad and MANIFEST.tsv disagree"
    );
    for code in ["undecodable", "unknown_schema", "invalid_field"] {
        assert!(cases.iter().any(|c| c.code == code), "no {code} case");
    }

    let mut failures = Vec::new();
    for case in &cases {
        let bytes = std::fs::read(corpus_dir().join(&case.file)).unwrap();
        let outcome = match decoder.decode::<OrderEvent>(&bytes).await {
            Ok(event) => match event.validate() {
                Ok(valid) => Err(format!("accepted as {:?}", valid.event)),
                Err(invalid) => {
                    let field = invalid.field.clone();
                    let err = DecodeError::from(invalid);
                    assert_eq!(err.stage().as_str(), "validate");
                    Ok((err, Some(field)))
                }
            },
            Err(err) => Ok((err, None)),
        };
        match outcome {
            Err(problem) => failures.push(format!("{}: {problem}", case.file)),
            Ok((err, field)) => {
                if err.code() != case.code || err.is_transient() {
                    failures.push(format!(
                        "{}: expected {}, got {} ({err})",
                        case.file,
                        case.code,
                        err.code()
                    ));
                } else if case.code == "invalid_field" && field != case.field {
                    failures.push(format!(
                        "{}: expected field {:?}, got {field:?} ({err})",
                        case.file, case.field
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus files:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The hand-encoded (Python) corpus is byte for byte what the crate's encoder writes, so its
/// `invalid_field` cases are well-formed Avro that fails validation only.
#[test]
fn corpus_bodies_match_the_crate_encoder() {
    let store = repo_store();
    let encoder = Encoder::new(store.local_schema(READER).unwrap(), 1);
    type Mutation = fn(&mut OrderEvent);
    let cases: [(&str, Mutation); 5] = [
        ("tenant_id_not_uuid.bin", |e| {
            e.tenant_id = "not-a-tenant".into()
        }),
        ("quantity_negative.bin", |e| e.items[0].quantity = -3),
        ("currency_unknown_xxy.bin", |e| e.currency = "XXY".into()),
        ("order_id_nul.bin", |e| e.order_id = "o-\u{0}1".into()),
        ("version_negative.bin", |e| e.version = -1),
    ];
    for (file, mutate) in cases {
        let mut event = sample();
        mutate(&mut event);
        let bytes = std::fs::read(corpus_dir().join(file)).unwrap();
        assert_eq!(bytes, encoder.encode(&event, false), "{file}");
    }
}

/// A registered writer schema whose extra field is an array of arrays of `null` lets 400 kB
/// claim a billion elements for the decoder to skip (each within `max_items`): the schema is
/// refused when first seen, as `incompatible_schema` naming the array, before any element is
/// skipped.
#[tokio::test]
async fn a_writer_schema_that_lets_a_small_message_claim_billions_of_elements_is_refused() {
    let reader_json = read_text(&repo_path("schemas").join(READER));
    let pad = r#"{"name": "pad", "type": {"type": "array", "items": {"type": "array", "items": "null"}}, "default": []}"#;
    let crafted = reader_json.replacen(r#""fields": ["#, &format!(r#""fields": [{pad},"#), 1);
    assert_ne!(crafted, reader_json, "the reader schema lists its fields");
    let registry = fake_registry(HashMap::from([(21, crafted)])).await;
    let store = registry_store(&registry.url);
    let decoder = decoder(&store);
    // The pad first: 100,000 arrays of 10,000 nulls, then the event as the reader writes it.
    let zigzag = |n: i64| -> Vec<u8> {
        let mut v = ((n << 1) ^ (n >> 63)) as u64;
        let mut out = Vec::new();
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    };
    let mut body = zigzag(100_000);
    for _ in 0..100_000 {
        body.extend(zigzag(10_000));
        body.push(0);
    }
    body.push(0);
    let reader = store.local_schema(READER).unwrap();
    body.extend(avro_body(&reader, &sample()));
    assert!(body.len() < 500_000, "{} bytes", body.len());
    let err = decode_err(&decoder, &frame_confluent(21, &body)).await;
    assert_eq!(err.code(), "incompatible_schema", "{err}");
    assert!(err.to_string().contains("$.pad[][]"), "{err}");
}
