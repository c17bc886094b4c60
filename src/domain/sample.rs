//! Valid example events with fixed ids, for tests (never in the release binary).

use super::order::{LineItem, OrderEvent, OrderEventType};
use super::tenant_config::{ConfigChangeEvent, ConfigKind, ConfigScope};

/// A valid order event.
pub fn sample_order() -> OrderEvent {
    OrderEvent {
        event_id: "0b7c6f4e-8f7a-4c61-9d0e-2f3b1a0c9d11".into(),
        tenant_id: "6f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b".into(),
        order_id: "o-1".into(),
        version: 1,
        event_type: OrderEventType::Created,
        occurred_at: 1_700_000_000_000,
        customer_id: "c-1".into(),
        currency: "EUR".into(),
        total_cents: 1200,
        items: vec![LineItem {
            sku: "sku-1".into(),
            category_id: "cat-1".into(),
            quantity: 2,
            unit_price_cents: 600,
        }],
    }
}

/// A valid configuration change (a setting of the sample order's tenant).
pub fn sample_config() -> ConfigChangeEvent {
    ConfigChangeEvent {
        event_id: "5a0e3c1d-2b4f-4d6a-9e8f-7a6b5c4d3e2f".into(),
        scope: ConfigScope::Tenant,
        tenant_id: Some(sample_order().tenant_id),
        kind: ConfigKind::Setting,
        key: "checkout.max_items".into(),
        value: Some("{\"limit\": 50}".into()),
        version: 1,
        occurred_at: 1_700_000_000_000,
    }
}
