//! Order traffic: lifecycles per order (CREATED → … → DELIVERED, some CANCELLED), duplicates,
//! out-of-order versions and an optional share of malformed messages.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use super::{uuid_from, Generated, WireFormat};
use crate::clock::Clock;
use crate::decode::{frame_confluent, Encoder};
use crate::domain::{LineItem, OrderEvent, OrderEventType};

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
    /// The tenants to use; empty: `tenants` tenant ids drawn from the seed.
    pub tenant_ids: Vec<Uuid>,
    /// The number of the first order (`ord-0000000` by default), so that traffic generated for
    /// the same tenants in several parts names new orders.
    pub first_order: usize,
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
            tenant_ids: Vec::new(),
            first_order: 0,
        }
    }
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

const CURRENCIES: &[&str] = &["EUR", "USD", "GBP", "JPY", "CHF"];

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
    let drawn: Vec<Uuid> = (0..spec.tenants.max(1))
        .map(|_| uuid_from(&mut rng))
        .collect();
    let tenants = if spec.tenant_ids.is_empty() {
        drawn
    } else {
        spec.tenant_ids.clone()
    };
    let malformed_count = (spec.count as f64 * spec.malformed).round() as usize;
    let valid_target = spec.count.saturating_sub(malformed_count);
    // Duplicates are extra copies, so the distinct events are fewer than the valid messages.
    let duplicate_count =
        (valid_target as f64 * spec.duplicates / (1.0 + spec.duplicates)).round() as usize;
    let event_target = valid_target - duplicate_count;
    let start_ms = spec.start_ms.unwrap_or_else(|| Clock::system().now_ms());

    // Each order's events in version order, then interleaved across orders.
    let mut per_order: Vec<Vec<OrderEvent>> = Vec::new();
    let mut planned = 0usize;
    while planned < event_target {
        let tenant = tenants[per_order.len() % tenants.len()];
        let order_no = spec.first_order + per_order.len();
        let mut events = order_events(&mut rng, tenant, order_no, start_ms);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn encoder() -> Encoder {
        super::super::test_encoder::<crate::domain::ValidOrder>()
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
