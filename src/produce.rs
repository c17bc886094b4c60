//! Realistic order traffic: lifecycles per order (CREATED → … → DELIVERED, some CANCELLED),
//! duplicates, out-of-order versions and an optional share of malformed messages.
//!
//! [`generate`] is deterministic for a seed and returns, beside the messages, what a correct
//! consumer must end with ([`Expected`]), so tests and the demo can check the outcome.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

use crate::decode::{frame_confluent, frame_single_object, WriterSchema};
use crate::events::{
    ConfigChangeEvent, ConfigKind, ConfigScope, LineItem, OrderEvent, OrderEventType, TenantMap,
};

/// How values are framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WireFormat {
    /// 0x00 + 4-byte schema id + Avro body.
    Confluent,
    /// 0xC3 0x01 + 8-byte schema fingerprint + Avro body.
    SingleObject,
    /// Alternate between both.
    Mixed,
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct TrafficSpec {
    /// Messages in all (valid, duplicate and malformed).
    pub count: usize,
    pub tenants: usize,
    /// Share of malformed messages, 0.0 to 1.0.
    pub malformed: f64,
    /// Share of events sent twice.
    pub duplicates: f64,
    /// Share of orders whose two newest versions arrive swapped.
    pub reorder: f64,
    pub format: WireFormat,
    pub seed: u64,
    /// occurred_at of the first events (ms since epoch); `None`: now.
    pub start_ms: Option<i64>,
}

impl Default for TrafficSpec {
    fn default() -> Self {
        Self {
            count: 10_000,
            tenants: 10,
            malformed: 0.01,
            duplicates: 0.05,
            reorder: 0.05,
            format: WireFormat::Confluent,
            seed: 42,
            start_ms: None,
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

/// The end state a correct worker reaches.
#[derive(Clone, Debug, Default)]
pub struct Expected {
    /// (tenant, order_id) → the newest event.
    pub orders: HashMap<(Uuid, String), OrderEvent>,
    pub tenants: Vec<Uuid>,
    /// Malformed messages by dead-letter code.
    pub dead_letters: HashMap<&'static str, usize>,
}

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
}

const CURRENCIES: &[&str] = &["EUR", "USD", "GBP", "JPY", "CHF"];

fn uuid_from(rng: &mut StdRng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.gen()).into_uuid()
}

/// The versions of one order's life: CREATED, maybe UPDATED, CONFIRMED, SHIPPED, DELIVERED, or
/// CANCELLED at some point before shipping.
fn lifecycle(rng: &mut StdRng) -> Vec<OrderEventType> {
    use OrderEventType::*;
    let mut steps = vec![Created];
    if rng.gen_bool(0.3) {
        steps.push(Updated);
    }
    steps.push(Confirmed);
    if rng.gen_bool(0.15) {
        steps.push(Cancelled);
        return steps;
    }
    steps.extend([Shipped, Delivered]);
    steps
}

fn order_events(rng: &mut StdRng, tenant: Uuid, order_no: usize, start_ms: i64) -> Vec<OrderEvent> {
    let order_id = format!("ord-{order_no:07}");
    let customer_id = format!("cust-{}", rng.gen_range(1..5000));
    let currency = CURRENCIES[rng.gen_range(0..CURRENCIES.len())].to_owned();
    let items: Vec<LineItem> = (0..rng.gen_range(1..4))
        .map(|i| LineItem {
            sku: format!("sku-{}", rng.gen_range(1..2000)),
            category_id: format!("cat-{}", rng.gen_range(1..40)),
            quantity: rng.gen_range(1..5),
            unit_price_cents: rng.gen_range(100..20_000) + i,
        })
        .collect();
    let total_cents = items
        .iter()
        .map(|i| i.unit_price_cents * i64::from(i.quantity))
        .sum();
    lifecycle(rng)
        .into_iter()
        .enumerate()
        .map(|(i, event_type)| OrderEvent {
            event_id: uuid_from(rng).to_string(),
            tenant_id: tenant.to_string(),
            order_id: order_id.clone(),
            version: i as i64 + 1,
            event_type,
            occurred_at: start_ms + i as i64,
            customer_id: customer_id.clone(),
            currency: currency.clone(),
            total_cents,
            items: items.clone(),
        })
        .collect()
}

/// A malformed message and the dead-letter code it must get.
fn malformed(rng: &mut StdRng, encoder: &Encoder, sample: &OrderEvent) -> (Vec<u8>, &'static str) {
    let mut bad = sample.clone();
    bad.event_id = uuid_from(rng).to_string();
    match rng.gen_range(0..6) {
        0 => (garbage(rng), "undecodable"),
        1 => {
            let mut v = encoder.encode(&bad, false);
            v.truncate(v.len() / 2);
            (v, "undecodable")
        }
        2 => (
            frame_confluent(9_999, &encoder.body(&bad)),
            "unknown_schema",
        ),
        3 => {
            bad.tenant_id = "not-a-tenant".into();
            (encoder.encode(&bad, false), "invalid_field")
        }
        4 => {
            bad.items[0].quantity = -3;
            (encoder.encode(&bad, false), "invalid_field")
        }
        _ => {
            bad.currency = "XXY".into();
            (encoder.encode(&bad, false), "invalid_field")
        }
    }
}

/// Random bytes that do not start like either frame.
fn garbage(rng: &mut StdRng) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..rng.gen_range(1..40)).map(|_| rng.gen()).collect();
    if matches!(bytes[0], 0x00 | 0xC3) {
        bytes[0] = b'{';
    }
    bytes
}

/// Builds the traffic and the end state a correct worker must reach.
pub fn generate(spec: &TrafficSpec, encoder: &Encoder) -> (Vec<Generated>, Expected) {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let tenants: Vec<Uuid> = (0..spec.tenants.max(1))
        .map(|_| uuid_from(&mut rng))
        .collect();
    let malformed_count = (spec.count as f64 * spec.malformed).round() as usize;
    let valid_target = spec.count.saturating_sub(malformed_count);
    // Duplicates are extra copies, so the distinct events are fewer than the valid messages.
    let duplicate_count =
        (valid_target as f64 * spec.duplicates / (1.0 + spec.duplicates)).round() as usize;
    let event_target = valid_target - duplicate_count;
    let start_ms = spec.start_ms.unwrap_or_else(crate::metrics::now_millis);

    // Each order's events in version order, then interleaved across orders.
    let mut per_order: Vec<Vec<OrderEvent>> = Vec::new();
    let mut planned = 0usize;
    while planned < event_target {
        let tenant = tenants[per_order.len() % tenants.len()];
        let mut events = order_events(&mut rng, tenant, per_order.len(), start_ms);
        let room = event_target - planned;
        events.truncate(room.max(1));
        planned += events.len();
        if events.len() >= 2 && rng.gen_bool(spec.reorder) {
            let n = events.len();
            events.swap(n - 1, n - 2);
        }
        per_order.push(events);
    }

    let mut expected = Expected {
        tenants: tenants.clone(),
        ..Default::default()
    };
    for events in &per_order {
        let newest = events.iter().max_by_key(|e| e.version).expect("non-empty");
        let tenant = Uuid::parse_str(&newest.tenant_id).expect("generated uuid");
        expected
            .orders
            .insert((tenant, newest.order_id.clone()), newest.clone());
    }

    let sample = per_order.first().and_then(|events| events.first()).cloned();
    let mut cursors: Vec<std::collections::VecDeque<OrderEvent>> =
        per_order.into_iter().map(Into::into).collect();
    let mut duplicated: Vec<bool> = (0..planned).map(|i| i < duplicate_count).collect();
    duplicated.shuffle(&mut rng);
    let mut messages = Vec::with_capacity(spec.count);
    let mut single_object = false;
    let mut open: Vec<usize> = (0..cursors.len()).collect();
    for duplicate in duplicated {
        let pick = rng.gen_range(0..open.len());
        let i = open[pick];
        let event = cursors[i].pop_front().expect("open cursor");
        if cursors[i].is_empty() {
            open.swap_remove(pick);
        }
        if spec.format == WireFormat::Mixed {
            single_object = !single_object;
        }
        let framed = encoder.encode(
            &event,
            single_object || spec.format == WireFormat::SingleObject,
        );
        let key = event.order_id.clone().into_bytes();
        if duplicate {
            messages.push(Generated {
                key: key.clone(),
                value: framed.clone(),
                malformed: None,
            });
        }
        messages.push(Generated {
            key,
            value: framed,
            malformed: None,
        });
    }

    if let Some(sample) = sample {
        for _ in 0..malformed_count {
            let (value, code) = malformed(&mut rng, encoder, &sample);
            *expected.dead_letters.entry(code).or_default() += 1;
            let at = rng.gen_range(0..=messages.len());
            messages.insert(
                at,
                Generated {
                    key: sample.order_id.clone().into_bytes(),
                    value,
                    malformed: Some(code),
                },
            );
        }
    }
    (messages, expected)
}

/// Configuration traffic for a set of tenants: each tenant gets a profile (some end
/// suspended), settings and SLA policies (some deleted, some updates arriving out of order), and
/// the shared categories change too.
#[derive(Clone, Debug)]
pub struct ConfigSpec {
    pub tenants: Vec<Uuid>,
    /// Changes per tenant (profile, settings, SLA policies).
    pub changes_per_tenant: usize,
    pub categories: usize,
    /// Category ids are `<prefix><n>`.
    pub category_prefix: String,
    /// Share of tenants whose newest profile is suspended (rounded to a whole count).
    pub suspended: f64,
    pub seed: u64,
    /// occurred_at of the first events (ms since epoch); `None`: now.
    pub start_ms: Option<i64>,
}

/// The newest value of each configuration entry a correct worker ends with (`None`: deleted).
#[derive(Clone, Debug, Default)]
pub struct ExpectedConfig {
    /// tenant → (version, profile JSON).
    pub profiles: HashMap<Uuid, (i64, serde_json::Value)>,
    pub entries: HashMap<(Uuid, TenantMap, String), (i64, Option<serde_json::Value>)>,
    pub categories: HashMap<String, (i64, Option<serde_json::Value>)>,
}

impl ExpectedConfig {
    fn record(&mut self, event: &ConfigChangeEvent) {
        let value = event
            .value
            .as_deref()
            .map(|v| serde_json::from_str(v).expect("generated JSON"));
        let tenant = event
            .tenant_id
            .as_deref()
            .map(|t| Uuid::parse_str(t).expect("generated uuid"));
        let newer = |kept: Option<i64>| kept.is_none_or(|v| v < event.version);
        match (event.kind, tenant) {
            (ConfigKind::TenantProfile, Some(t)) => {
                if newer(self.profiles.get(&t).map(|p| p.0)) {
                    self.profiles
                        .insert(t, (event.version, value.expect("profiles have values")));
                }
            }
            (ConfigKind::Category, None) => {
                if newer(self.categories.get(&event.key).map(|c| c.0)) {
                    self.categories
                        .insert(event.key.clone(), (event.version, value));
                }
            }
            (kind, Some(t)) => {
                let map = if kind == ConfigKind::Setting {
                    TenantMap::Settings
                } else {
                    TenantMap::SlaPolicies
                };
                let key = (t, map, event.key.clone());
                if newer(self.entries.get(&key).map(|e| e.0)) {
                    self.entries.insert(key, (event.version, value));
                }
            }
            _ => unreachable!("generated scopes match kinds"),
        }
    }
}

const TIERS: &[&str] = &["free", "pro", "enterprise"];
const SETTING_KEYS: &[&str] = &["checkout.max_items", "locale", "webhooks.url", "currency"];

/// Builds configuration traffic and the end state a correct worker must reach. Messages are
/// keyed by tenant id (categories: by `CATEGORY:<id>`), as producers must key them.
pub fn generate_config(spec: &ConfigSpec, encoder: &Encoder) -> (Vec<Generated>, ExpectedConfig) {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let start_ms = spec.start_ms.unwrap_or_else(crate::metrics::now_millis);
    let mut streams: Vec<(Vec<u8>, Vec<ConfigChangeEvent>)> = Vec::new();
    let change = |rng: &mut StdRng, tenant: Option<Uuid>, kind, key: &str, version, value| {
        ConfigChangeEvent {
            event_id: uuid_from(rng).to_string(),
            scope: if tenant.is_some() {
                ConfigScope::Tenant
            } else {
                ConfigScope::Global
            },
            tenant_id: tenant.map(|t| t.to_string()),
            kind,
            key: key.to_owned(),
            value,
            version,
            occurred_at: start_ms + version,
        }
    };
    // Exactly this many tenants end suspended (the first ones; their ids are random).
    let suspended = (spec.tenants.len() as f64 * spec.suspended).round() as usize;
    for (index, tenant) in spec.tenants.iter().enumerate() {
        let mut events = Vec::new();
        let mut versions: HashMap<(ConfigKind, String), i64> = HashMap::new();
        let mut next_version = |kind, key: &str| {
            let v = versions.entry((kind, key.to_owned())).or_insert(0);
            *v += 1;
            *v
        };
        let tier = TIERS[rng.gen_range(0..TIERS.len())];
        let profile = |status: &str, tier: &str| {
            Some(serde_json::json!({"name": format!("Tenant {tenant}"), "tier": tier, "status": status}).to_string())
        };
        let v = next_version(ConfigKind::TenantProfile, "profile");
        events.push(change(
            &mut rng,
            Some(*tenant),
            ConfigKind::TenantProfile,
            "profile",
            v,
            profile("active", tier),
        ));
        for _ in 1..spec.changes_per_tenant.max(1) {
            let (kind, key, value) = match rng.gen_range(0..10) {
                0..=5 => {
                    let key = SETTING_KEYS[rng.gen_range(0..SETTING_KEYS.len())];
                    let value = (!rng.gen_bool(0.15))
                        .then(|| serde_json::json!({"value": rng.gen_range(0..1000)}).to_string());
                    (ConfigKind::Setting, key, value)
                }
                6..=8 => {
                    let value = serde_json::json!({
                        "lag_threshold_ms": rng.gen_range(1..600) * 1000,
                        "deadlines_ms": {"CREATED->CONFIRMED": rng.gen_range(1..48) * 3_600_000_u64},
                    });
                    (ConfigKind::SlaPolicy, "default", Some(value.to_string()))
                }
                _ => {
                    let tier = TIERS[rng.gen_range(0..TIERS.len())];
                    (
                        ConfigKind::TenantProfile,
                        "profile",
                        profile("active", tier),
                    )
                }
            };
            let v = next_version(kind, key);
            events.push(change(&mut rng, Some(*tenant), kind, key, v, value));
        }
        if index < suspended {
            let v = next_version(ConfigKind::TenantProfile, "profile");
            events.push(change(
                &mut rng,
                Some(*tenant),
                ConfigKind::TenantProfile,
                "profile",
                v,
                profile("suspended", tier),
            ));
        }
        // An update overtaken by the next one of the same entry: the older must not win.
        if events.len() >= 3 && rng.gen_bool(0.5) {
            let n = events.len();
            events.swap(n - 2, n - 1);
        }
        streams.push((tenant.to_string().into_bytes(), events));
    }
    for c in 0..spec.categories {
        let id = format!("{}{c}", spec.category_prefix);
        let mut events: Vec<ConfigChangeEvent> = (1..=rng.gen_range(1..4))
            .map(|v| {
                let value = serde_json::json!({"name": format!("Category {c} v{v}")}).to_string();
                change(&mut rng, None, ConfigKind::Category, &id, v, Some(value))
            })
            .collect();
        if rng.gen_bool(0.2) {
            let v = events.len() as i64 + 1;
            events.push(change(&mut rng, None, ConfigKind::Category, &id, v, None));
        }
        streams.push((format!("CATEGORY:{id}").into_bytes(), events));
    }
    let mut expected = ExpectedConfig::default();
    let mut messages = Vec::new();
    // Interleave the streams, keeping each stream's order.
    let mut cursors: Vec<(Vec<u8>, std::collections::VecDeque<ConfigChangeEvent>)> = streams
        .into_iter()
        .map(|(key, events)| (key, events.into()))
        .collect();
    while !cursors.is_empty() {
        let pick = rng.gen_range(0..cursors.len());
        let event = cursors[pick].1.pop_front().expect("non-empty cursor");
        expected.record(&event);
        messages.push(Generated {
            key: cursors[pick].0.clone(),
            value: encoder.encode(&event, false),
            malformed: None,
        });
        if cursors[pick].1.is_empty() {
            cursors.swap_remove(pick);
        }
    }
    (messages, expected)
}

/// Where each partition's messages ended: partition → next offset after the last one sent.
pub type EndOffsets = HashMap<i32, i64>;

/// Where the broker put each message.
#[derive(Debug, Default, Clone)]
pub struct Sent {
    /// (partition, offset) of each message, in the order given.
    pub positions: Vec<(i32, i64)>,
    pub ends: EndOffsets,
}

/// Sends `messages` to `topic` at up to `rate` messages/s (0: as fast as possible), printing
/// progress to stderr every `progress_every` (if set).
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    messages: &[Generated],
    rate: u32,
    progress_every: Option<Duration>,
) -> Result<Sent, rdkafka::error::KafkaError> {
    use futures::StreamExt;
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut sent = Sent::default();
    let mut in_flight = futures::stream::FuturesOrdered::new();
    for (i, message) in messages.iter().enumerate() {
        if rate > 0 {
            let due = started + Duration::from_secs_f64(i as f64 / f64::from(rate));
            tokio::time::sleep_until(due.into()).await;
        }
        in_flight.push_back(
            producer.send(
                FutureRecord::to(topic)
                    .key(&message.key)
                    .payload(&message.value),
                Duration::from_secs(30),
            ),
        );
        if in_flight.len() >= 10_000 {
            record_delivery(in_flight.next().await, &mut sent)?;
        }
        if progress_every.is_some_and(|every| last_report.elapsed() >= every) {
            last_report = Instant::now();
            eprintln!(
                "produced {}/{} ({:.0} msg/s)",
                i + 1,
                messages.len(),
                (i + 1) as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    while let Some(delivery) = in_flight.next().await {
        record_delivery(Some(delivery), &mut sent)?;
    }
    Ok(sent)
}

type Delivery = Result<
    rdkafka::producer::future_producer::Delivery,
    (rdkafka::error::KafkaError, rdkafka::message::OwnedMessage),
>;

fn record_delivery(
    delivery: Option<Delivery>,
    sent: &mut Sent,
) -> Result<(), rdkafka::error::KafkaError> {
    match delivery {
        Some(Ok(d)) => {
            sent.positions.push((d.partition, d.offset));
            let end = sent.ends.entry(d.partition).or_insert(0);
            *end = (*end).max(d.offset + 1);
            Ok(())
        }
        Some(Err((error, _))) => Err(error),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::SchemaStore;

    fn encoder() -> Encoder {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let store = SchemaStore::load(&dir, None).unwrap();
        Encoder::new(store.local_schema("order_event.avsc").unwrap(), 1)
    }

    #[test]
    fn traffic_has_the_requested_size_and_a_consistent_oracle() {
        let spec = TrafficSpec {
            count: 2_000,
            tenants: 5,
            malformed: 0.05,
            ..Default::default()
        };
        let (messages, expected) = generate(&spec, &encoder());
        assert_eq!(messages.len(), 2_000);
        let bad = messages.iter().filter(|m| m.malformed.is_some()).count();
        assert_eq!(bad, 100);
        assert_eq!(expected.dead_letters.values().sum::<usize>(), 100);
        assert_eq!(expected.tenants.len(), 5);
        assert!(expected
            .orders
            .values()
            .any(|o| o.event_type == OrderEventType::Cancelled));
        assert!(expected
            .orders
            .values()
            .any(|o| o.event_type == OrderEventType::Delivered));
    }

    #[test]
    fn same_seed_same_traffic() {
        let spec = TrafficSpec {
            count: 300,
            start_ms: Some(1_700_000_000_000),
            ..Default::default()
        };
        let (a, _) = generate(&spec, &encoder());
        let (b, _) = generate(&spec, &encoder());
        assert!(a
            .iter()
            .zip(&b)
            .all(|(x, y)| x.value == y.value && x.key == y.key));
    }
}
