//! Property tests of decode + validate, the code every producer's bytes reach first: on
//! arbitrary bytes, mutated valid messages and arbitrary configuration values, nothing panics,
//! every failure is permanent (a dead letter, never a retry: no registry is involved), and an
//! event that passes validates again to itself. No broker. `PROPTEST_CASES` sets the number of
//! cases (256 per property in the suite; `scripts/fuzz.sh` runs many more).

use std::sync::{Arc, LazyLock};

use proptest::prelude::*;
use tenantstream::testing::decode::{decode_event, Decoder, Encoder, SchemaStore};
use tenantstream::testing::domain::{
    self, ConfigChangeEvent, ConfigKind, ConfigScope, LineItem, OrderEvent, ValidConfig, ValidOrder,
};
use tenantstream::testing::retry::Classify;
use tenantstream::testing::validate::Validate;

use crate::support;

struct Fixture {
    orders: Decoder,
    config: Decoder,
    order_encoder: Encoder,
    config_encoder: Encoder,
    runtime: tokio::runtime::Runtime,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let settings = support::settings("127.0.0.1:1", "fuzz");
    let store = Arc::new(SchemaStore::load(&settings.schemas.dir, None).unwrap());
    let limits = &settings.limits;
    Fixture {
        orders: Decoder::new(store.clone(), "order_event.avsc", limits).unwrap(),
        config: Decoder::new(store, "config_change.avsc", limits).unwrap(),
        order_encoder: support::order_encoder(&settings),
        config_encoder: support::config_encoder(&settings),
        runtime: tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap(),
    }
});

/// Decodes `value` as both event types: each either passes and validates again to itself, or
/// fails permanently.
fn decodes_cleanly(value: &[u8]) -> Result<(), TestCaseError> {
    let f = &*FIXTURE;
    match f
        .runtime
        .block_on(decode_event::<ValidOrder>(&f.orders, Some(value)))
    {
        Ok(order) => prop_assert_eq!(ValidOrder::validate(order.event.clone()), Ok(order)),
        Err(error) => prop_assert!(error.is_permanent(), "{}", error),
    }
    match f
        .runtime
        .block_on(decode_event::<ValidConfig>(&f.config, Some(value)))
    {
        Ok(change) => {
            let wire = f
                .runtime
                .block_on(f.config.decode::<ConfigChangeEvent>(value));
            prop_assert_eq!(ValidConfig::validate(wire.unwrap()), Ok(change));
        }
        Err(error) => prop_assert!(error.is_permanent(), "{}", error),
    }
    Ok(())
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9-]{1,12}",
        any::<String>(),
        Just("\0".to_owned()),
        Just(uuid::Uuid::new_v4().to_string()),
    ]
}

/// Mostly in range, sometimes anything.
fn number() -> impl Strategy<Value = i64> {
    prop_oneof![3 => 0..2_000_000_000_000i64, 1 => any::<i64>()]
}

fn currency() -> impl Strategy<Value = String> {
    prop_oneof![Just("EUR".to_owned()), Just("JPY".to_owned()), text()]
}

fn order() -> impl Strategy<Value = OrderEvent> {
    let item = (text(), text(), any::<i32>(), number()).prop_map(
        |(sku, category_id, quantity, unit_price_cents)| LineItem {
            sku,
            category_id,
            quantity,
            unit_price_cents,
        },
    );
    (
        text(),
        text(),
        number(),
        number(),
        currency(),
        number(),
        prop::collection::vec(item, 0..4),
    )
        .prop_map(
            |(tenant_id, order_id, version, occurred_at, currency, total_cents, items)| {
                OrderEvent {
                    tenant_id,
                    order_id,
                    version,
                    occurred_at,
                    currency,
                    total_cents,
                    items,
                    ..domain::sample_order()
                }
            },
        )
}

/// JSON-ish text: real JSON of every shape, numbers with large exponents, and broken text.
fn config_value() -> impl Strategy<Value = Option<String>> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        (any::<i32>(), -400i32..400).prop_map(|(m, e)| format!("{m}e{e}")),
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
    ];
    let json = leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..4).prop_map(|kv| {
                let fields: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    });
    prop_oneof![
        Just(None),
        json.prop_map(Some),
        any::<String>().prop_map(Some)
    ]
}

fn config_change() -> impl Strategy<Value = ConfigChangeEvent> {
    let kind = prop_oneof![
        Just(ConfigKind::TenantProfile),
        Just(ConfigKind::Setting),
        Just(ConfigKind::SlaPolicy),
        Just(ConfigKind::Category),
    ];
    let scope = prop_oneof![Just(ConfigScope::Tenant), Just(ConfigScope::Global)];
    (
        kind,
        scope,
        prop::option::of(text()),
        text(),
        config_value(),
        number(),
    )
        .prop_map(
            |(kind, scope, tenant_id, key, value, version)| ConfigChangeEvent {
                kind,
                scope,
                tenant_id,
                key,
                value,
                version,
                ..domain::sample_config()
            },
        )
}

proptest! {
    #[test]
    fn arbitrary_bytes_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..256), framing in 0u8..3) {
        let value = match framing {
            0 => bytes,
            1 => tenantstream::testing::decode::frame_confluent(1, &bytes),
            _ => tenantstream::testing::decode::frame_confluent(2, &bytes),
        };
        decodes_cleanly(&value)?;
    }

    #[test]
    fn orders_and_their_mutations_decode_cleanly(
        event in order(),
        single_object in any::<bool>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut value = FIXTURE.order_encoder.encode(&event, single_object);
        decodes_cleanly(&value)?;
        for (at, byte) in flips {
            let at = at.index(value.len());
            value[at] ^= byte;
        }
        if let Some(cut) = cut {
            value.truncate(cut.index(value.len()));
        }
        decodes_cleanly(&value)?;
    }

    #[test]
    fn configuration_changes_decode_cleanly(change in config_change(), single_object in any::<bool>()) {
        decodes_cleanly(&FIXTURE.config_encoder.encode(&change, single_object))?;
    }
}
