//! A row Postgres rejects for its data is isolated: it ends in the dead-letter topic as
//! `rejected_by_postgres` with its SQLSTATE, while the rest of its batch commits and the
//! partition moves on. The rejection comes from a CHECK constraint a DBA added, which the
//! worker's validation knows nothing of, in a database of the test's own (so the constraint
//! touches no other test). Broker: tansu.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::Message;
use tenantstream::testing::dead_letter::{
    HEADER_ERROR_CODE, HEADER_ERROR_REASON, HEADER_ERROR_SQLSTATE, HEADER_ERROR_STAGE,
    HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION, REJECTED_BY_POSTGRES,
};
use tenantstream::testing::domain::{self, OrderEvent};
use tenantstream::testing::sink;
use tenantstream::testing::traffic::{self, Generated, TrafficSpec};
use tenantstream::Secret;
use uuid::Uuid;

use crate::support;

/// A valid event Postgres refuses under the test's constraint.
const POISON_CUSTOMER: &str = "poison";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_postgres_rejects_is_dead_lettered_and_the_rest_of_its_batch_commits() {
    let (mut settings, _, redis) = support::tansu_setup("rejected").await;
    let database = format!(
        "tenantstream_rejected_{}",
        &Uuid::new_v4().simple().to_string()[..12]
    );
    let admin_url = format!("postgres://postgres@127.0.0.1:5432/{database}");
    sink::migrate(&admin_url)
        .await
        .expect("migrate own database");
    settings.database.url = Secret::new(format!(
        "postgres://tenantstream_worker@127.0.0.1:5432/{database}"
    ));
    settings.database.admin_url = Secret::new(&admin_url);
    let admin = sqlx::PgPool::connect(&admin_url).await.unwrap();
    sqlx::query(&format!(
        "ALTER TABLE orders ADD CONSTRAINT no_poison CHECK (customer_id <> '{POISON_CUSTOMER}')"
    ))
    .execute(&admin)
    .await
    .unwrap();

    let spec = TrafficSpec {
        count: 1_200,
        tenants: 3,
        malformed: 0.0,
        seed: rand::random(),
        ..Default::default()
    };
    let encoder = support::order_encoder(&settings);
    let (mut messages, expected) = traffic::generate(&spec, &encoder);
    // Poison: new orders, and a newer version of an existing order (whose older row must stay),
    // spread through the traffic so that each lands in a batch with valid rows.
    let (tenant, order_id) = expected.orders.keys().next().unwrap().clone();
    let mut poison: Vec<OrderEvent> = (0..12)
        .map(|i| poisoned(expected.tenants[i % 3], &format!("poison-{i}"), 1))
        .collect();
    poison.push(poisoned(tenant, &order_id, 1_000));
    for (i, event) in poison.iter().enumerate() {
        let at = (i + 1) * messages.len() / (poison.len() + 1);
        let message = Generated {
            key: event.order_id.clone().into_bytes(),
            value: encoder.encode(event, false),
            malformed: Some(REJECTED_BY_POSTGRES),
        };
        messages.insert(at, message);
    }
    let sent = support::send(&settings, &settings.kafka.orders_topic, &messages).await;
    support::run_until_consumed(&settings, &admin, &sent.ends, &expected.tenants).await;

    // Every valid row is there at its version, none of the poison; the cache matches.
    support::assert_rows(&admin, &expected).await;
    support::assert_cache(&redis, &expected).await;

    // Each poison message is dead-lettered once, with its bytes, its SQLSTATE and its source.
    let poisoned_at: HashMap<(i32, i64), &Generated> = messages
        .iter()
        .zip(&sent.positions)
        .filter(|(m, _)| m.malformed.is_some())
        .map(|(m, p)| (*p, m))
        .collect();
    assert_eq!(poisoned_at.len(), poison.len());
    let dead = support::read_topic(
        &settings.kafka.brokers,
        &settings.kafka.dead_letter_topic,
        poison.len(),
        Duration::from_secs(30),
    );
    assert_eq!(dead.len(), poison.len(), "one dead letter per rejected row");
    for letter in &dead {
        let source = (
            support::header(letter, HEADER_SOURCE_PARTITION)
                .parse()
                .unwrap(),
            support::header(letter, HEADER_SOURCE_OFFSET)
                .parse()
                .unwrap(),
        );
        let original = poisoned_at
            .get(&source)
            .unwrap_or_else(|| panic!("dead letter for a valid message {source:?}"));
        assert_eq!(letter.payload(), Some(original.value.as_slice()));
        assert_eq!(letter.key(), Some(original.key.as_slice()));
        assert_eq!(
            support::header(letter, HEADER_ERROR_CODE),
            REJECTED_BY_POSTGRES
        );
        assert_eq!(support::header(letter, HEADER_ERROR_STAGE), "sink");
        assert_eq!(support::header(letter, HEADER_ERROR_SQLSTATE), "23514");
        let reason = support::header(letter, HEADER_ERROR_REASON);
        assert!(reason.contains("no_poison"), "{reason}");
    }

    drop(admin);
    let server = sqlx::PgPool::connect(support::ADMIN_URL).await.unwrap();
    sqlx::query(&format!("DROP DATABASE {database} WITH (FORCE)"))
        .execute(&server)
        .await
        .unwrap();
}

/// A valid order event of `tenant` that the test's constraint refuses.
fn poisoned(tenant: Uuid, order_id: &str, version: i64) -> OrderEvent {
    OrderEvent {
        event_id: Uuid::new_v4().to_string(),
        tenant_id: tenant.to_string(),
        order_id: order_id.into(),
        version,
        customer_id: POISON_CUSTOMER.into(),
        ..domain::sample_order()
    }
}
