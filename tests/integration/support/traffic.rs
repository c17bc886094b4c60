//! Traffic of a test: encoders for both topics and configuration changes with the test's own
//! category ids.

use std::collections::HashMap;
use tenantstream::testing::decode::Encoder;

use tenantstream::testing::domain::{OrderEvent, ValidConfig, ValidOrder};
use tenantstream::testing::traffic::{self, ExpectedConfig, Generated, Sent};
use tenantstream::Settings;
use uuid::Uuid;

/// The encoder of the orders topic, framed with its id from `registry.json`.
pub fn order_encoder(settings: &Settings) -> Encoder {
    Encoder::for_event::<ValidOrder>(&settings.schemas).expect("order schema encodes")
}

/// The encoder of the configuration topic, framed with its id from `registry.json`.
pub fn config_encoder(settings: &Settings) -> Encoder {
    Encoder::for_event::<ValidConfig>(&settings.schemas).expect("config schema encodes")
}

/// Inserts `events` evenly spread among `messages` (each keyed by its order id), marked with
/// the dead-letter `code` a correct worker gives them, so each lands in a batch of valid rows.
pub fn spread_among(
    messages: &mut Vec<Generated>,
    events: &[OrderEvent],
    encoder: &Encoder,
    code: &'static str,
) {
    for (i, event) in events.iter().enumerate() {
        let at = (i + 1) * messages.len() / (events.len() + 1);
        let message = Generated {
            key: event.order_id.clone().into_bytes(),
            value: encoder.encode(event, false),
            malformed: Some(code),
        };
        messages.insert(at, message);
    }
}

/// The marked messages of `messages` by the (partition, offset) `sent` gave them.
pub fn malformed_by_position<'a>(
    messages: &'a [Generated],
    sent: &Sent,
) -> HashMap<(i32, i64), &'a Generated> {
    messages
        .iter()
        .zip(&sent.positions)
        .filter(|(m, _)| m.malformed.is_some())
        .map(|(m, p)| (*p, m))
        .collect()
}

/// Configuration traffic for `tenants` with this test's own category ids.
pub fn config_traffic(
    settings: &Settings,
    tenants: &[Uuid],
    suspended: f64,
) -> (Vec<Generated>, ExpectedConfig) {
    let spec = traffic::ConfigSpec {
        tenants: tenants.to_vec(),
        changes_per_tenant: 12,
        categories: 6,
        category_prefix: format!("{}-cat-", settings.kafka.group_id),
        suspended,
        seed: rand::random(),
        start_ms: None,
    };
    traffic::generate_config(&spec, &config_encoder(settings))
}
