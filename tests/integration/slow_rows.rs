//! A row whose write alone runs past the statement timeout (here a trigger a DBA added, which
//! sleeps for one customer, in a database of the test's own) is dead-lettered as
//! `rejected_by_postgres` with SQLSTATE 57014; the rest of its batch commits and the partition
//! moves on, instead of the batch timing out and being retried forever. Broker: tansu.

use std::time::Duration;

use rdkafka::Message;
use tenantstream::testing::dead_letter::{
    HEADER_ERROR_CODE, HEADER_ERROR_SQLSTATE, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION,
    REJECTED_BY_POSTGRES,
};
use tenantstream::testing::domain::{self, OrderEvent};
use tenantstream::testing::traffic::{self, TrafficSpec};
use uuid::Uuid;

use crate::support;

const SLOW_CUSTOMER: &str = "slow";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_that_alone_runs_past_the_statement_timeout_is_dead_lettered() {
    let (mut settings, _, redis) = support::tansu_setup("slow").await;
    let database = support::OwnDatabase::create("tenantstream_slow").await;
    database.use_in(&mut settings);
    settings.database.statement_timeout_ms = 600;
    let admin = database.admin.clone();
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM pg_sleep(2); RETURN NEW; END $$;
         CREATE TRIGGER slow_row BEFORE INSERT OR UPDATE ON orders FOR EACH ROW
           WHEN (NEW.customer_id = '{SLOW_CUSTOMER}') EXECUTE FUNCTION slow_row();"
    ))
    .execute(&admin)
    .await
    .unwrap();

    let spec = TrafficSpec {
        count: 300,
        tenants: 2,
        malformed: 0.0,
        seed: rand::random(),
        ..Default::default()
    };
    let encoder = support::order_encoder(&settings);
    let (mut messages, expected) = traffic::generate(&spec, &encoder);
    let slow: Vec<OrderEvent> = (0..2)
        .map(|i| OrderEvent {
            event_id: Uuid::new_v4().to_string(),
            tenant_id: expected.tenants[i].to_string(),
            order_id: format!("slow-{i}"),
            customer_id: SLOW_CUSTOMER.into(),
            ..domain::sample_order()
        })
        .collect();
    support::spread_among(&mut messages, &slow, &encoder, REJECTED_BY_POSTGRES);
    let sent = support::send(&settings, &settings.kafka.orders_topic, &messages).await;
    support::run_until_consumed(&settings, &admin, &sent.ends, &expected.tenants).await;

    support::assert_rows(&admin, &expected).await;
    support::assert_cache(&redis, &expected).await;
    let slow_at = support::malformed_by_position(&messages, &sent);
    let dead = support::read_topic(
        &settings.kafka.brokers,
        &settings.kafka.dead_letter_topic,
        slow.len(),
        Duration::from_secs(30),
    );
    assert_eq!(dead.len(), slow.len(), "one dead letter per slow row");
    for letter in &dead {
        let source = (
            support::header(letter, HEADER_SOURCE_PARTITION)
                .parse()
                .unwrap(),
            support::header(letter, HEADER_SOURCE_OFFSET)
                .parse()
                .unwrap(),
        );
        let original = slow_at
            .get(&source)
            .unwrap_or_else(|| panic!("dead letter for a valid message {source:?}"));
        assert_eq!(letter.payload(), Some(original.value.as_slice()));
        assert_eq!(
            support::header(letter, HEADER_ERROR_CODE),
            REJECTED_BY_POSTGRES
        );
        assert_eq!(support::header(letter, HEADER_ERROR_SQLSTATE), "57014");
    }
    database.drop().await;
}
