//! Traffic of a test: encoders for both topics and configuration changes with the test's own
//! category ids.

use tenantstream::testing::decode::Encoder;
use tenantstream::testing::domain::{ValidConfig, ValidOrder};
use tenantstream::testing::traffic::{self, ExpectedConfig, Generated};
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
