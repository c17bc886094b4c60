//! A row Postgres rejects for its data is isolated: it ends in the dead-letter topic as
//! `rejected_by_postgres` with its SQLSTATE, while the rest of its batch commits and the
//! partition moves on. The rejection comes from a CHECK constraint a DBA added, which the
//! worker's validation knows nothing of, in a database of the test's own (so the constraint
//! touches no other test). Broker: tansu; the second test writes to the sink directly.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::Message;
use tenantstream::testing::dead_letter::{
    HEADER_ERROR_CODE, HEADER_ERROR_REASON, HEADER_ERROR_SQLSTATE, HEADER_ERROR_STAGE,
    HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION, REJECTED_BY_POSTGRES, UNKNOWN_TENANT,
};
use tenantstream::testing::domain::{
    self, ConfigChangeEvent, ConfigKind, OrderEvent, TenantPolicy, ValidConfig, ValidOrder,
};
use tenantstream::testing::sink::{
    self, Batch, BatchOutcome, BatchWrite, Isolated, PartitionKey, Rows,
};
use tenantstream::testing::traffic::{self, Generated, TrafficSpec};
use uuid::Uuid;

use crate::support;

/// A valid event Postgres refuses under the test's constraint.
const POISON_CUSTOMER: &str = "poison";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_postgres_rejects_is_dead_lettered_and_the_rest_of_its_batch_commits() {
    let (mut settings, _, redis) = support::tansu_setup("rejected").await;
    let database = support::OwnDatabase::create("tenantstream_rejected").await;
    database.use_in(&mut settings);
    let admin = database.admin.clone();
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
    support::spread_among(&mut messages, &poison, &encoder, REJECTED_BY_POSTGRES);
    let sent = support::send(&settings, &settings.kafka.orders_topic, &messages).await;
    support::run_until_consumed(&settings, &admin, &sent.ends, &expected.tenants).await;

    // Every valid row is there at its version, none of the poison; the cache matches.
    support::assert_rows(&admin, &expected).await;
    support::assert_cache(&redis, &expected).await;

    // Each poison message is dead-lettered once, with its bytes, its SQLSTATE and its source.
    let poisoned_at = support::malformed_by_position(&messages, &sent);
    assert_eq!(poisoned_at.len(), poison.len());
    let dead = support::read_topic(
        &settings.kafka.brokers,
        &settings.kafka.dead_letter_topic,
        poison.len(),
        Duration::from_secs(30),
    );
    assert_eq!(dead.len(), poison.len(), "one dead letter per rejected row");
    let mut sources = std::collections::HashSet::new();
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
        assert!(sources.insert(source), "{source:?} dead-lettered twice");
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

    database.drop().await;
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

/// The rows of a batch written one by one keep the set-based write's order: under strict
/// tenants a setting of a new tenant is written after the profile that registers the tenant
/// (it comes first in the batch), and an older version superseded in the batch is stale, never
/// tried, so never rejected. Only the rows Postgres refuses are left out. No broker.
#[tokio::test]
async fn rows_written_one_by_one_keep_the_batch_order_and_only_rejected_rows_are_left_out() {
    let database = support::OwnDatabase::create("tenantstream_isolation").await;
    for table in ["tenant_settings", "orders"] {
        let column = if table == "orders" {
            "customer_id"
        } else {
            "key"
        };
        sqlx::query(&format!(
            "ALTER TABLE {table} ADD CONSTRAINT no_poison CHECK ({column} <> '{POISON_CUSTOMER}')"
        ))
        .execute(&database.admin)
        .await
        .unwrap();
    }
    let mut settings = support::settings("unused:9092", "isolation");
    database.use_in(&mut settings);
    let pool = sink::connect_worker(&settings.database).await.unwrap();
    let key = PartitionKey {
        group: settings.kafka.group_id.clone(),
        topic: "t".into(),
        partition: 0,
    };
    let applied = HashMap::new();
    let rejected_of = |isolated: Isolated| match isolated {
        Isolated::Rejected(rows) => rows
            .into_iter()
            .map(|r| (r.index, r.sqlstate))
            .collect::<Vec<_>>(),
        Isolated::Written(outcome) => panic!("nothing rejected: {outcome:?}"),
    };

    // Configuration: [setting of a new tenant, its profile, a rejected setting].
    let tenant = Uuid::new_v4();
    let changes = [
        change(tenant, ConfigKind::Setting, "locale", r#""fr""#),
        change(
            tenant,
            ConfigKind::TenantProfile,
            "profile",
            r#"{"name":"A","tier":"pro","status":"active"}"#,
        ),
        change(tenant, ConfigKind::Setting, POISON_CUSTOMER, "1"),
    ];
    let config_batch = strict_batch(&key, changes[..].into(), &applied);
    let error = sink::write_batch(&pool, &config_batch).await.unwrap_err();
    assert_eq!(error.sqlstate().as_deref(), Some("23514"));
    let isolated = sink::write_each(&pool, &config_batch).await.unwrap();
    assert_eq!(rejected_of(isolated), vec![(2, "23514".to_owned())]);
    let rest = Batch {
        rows: changes[..2].into(),
        ..config_batch
    };
    let outcome = sink::write_each(&pool, &rest).await.unwrap();
    assert!(
        matches!(outcome, Isolated::Written(BatchOutcome::Committed(ref w)) if w.written == 2),
        "{outcome:?}"
    );
    let locale: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tenant_settings WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_one(&database.admin)
            .await
            .unwrap();
    assert_eq!(
        locale, 1,
        "the setting its profile registers the tenant for is written"
    );

    // Orders: [X v2 rejected, X v3, Y v1 rejected]: X's v2 is superseded, never tried.
    let orders = [
        valid(poisoned(tenant, "x", 2)),
        valid(OrderEvent {
            customer_id: "c".into(),
            ..poisoned(tenant, "x", 3)
        }),
        valid(poisoned(tenant, "y", 1)),
    ];
    let written = isolate_orders(&pool, &key, "orders-x", &orders, 2).await;
    assert_eq!(
        (written.written, written.superseded, written.stale),
        (1, 1, 0)
    );
    assert_eq!(stored_version(&database.admin, "x").await, 3);

    // [Z v5 rejected, Z v4]: the rejected newest version leaves the older one to be written.
    let orders = [
        valid(poisoned(tenant, "z", 5)),
        valid(OrderEvent {
            customer_id: "c".into(),
            ..poisoned(tenant, "z", 4)
        }),
    ];
    let written = isolate_orders(&pool, &key, "orders-z", &orders, 0).await;
    assert_eq!(
        (written.written, written.superseded, written.stale),
        (1, 0, 0)
    );
    assert_eq!(stored_version(&database.admin, "z").await, 4);
    database.drop().await;
}

/// Strict tenants: when Postgres rejects the profile that registers a new tenant, the tenant's
/// other events are `unknown_tenant`, as if the profile had never come; another tenant's are
/// written. Broker: tansu.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_strict_tenants_a_rejected_profile_leaves_its_tenants_events_unknown() {
    let (mut settings, _, _) = support::tansu_setup("rejected-strict").await;
    settings.tenants.strict = true;
    let database = support::OwnDatabase::create("tenantstream_rejected_strict").await;
    database.use_in(&mut settings);
    sqlx::query(&format!(
        "ALTER TABLE tenants ADD CONSTRAINT no_poison CHECK (name IS DISTINCT FROM '{POISON_CUSTOMER}')"
    ))
    .execute(&database.admin)
    .await
    .unwrap();
    let (rejected, accepted) = (Uuid::new_v4(), Uuid::new_v4());
    let encoder = support::config_encoder(&settings);
    let message = |tenant: Uuid, kind, key: &str, value: &str| Generated {
        key: tenant.to_string().into_bytes(),
        value: encoder.encode(&config_event(tenant, kind, key, value), false),
        malformed: None,
    };
    let profile = |name: &str| format!(r#"{{"name":"{name}","tier":"pro","status":"active"}}"#);
    let messages = [
        message(
            rejected,
            ConfigKind::TenantProfile,
            "profile",
            &profile(POISON_CUSTOMER),
        ),
        message(rejected, ConfigKind::Setting, "locale", r#""fr""#),
        message(
            accepted,
            ConfigKind::TenantProfile,
            "profile",
            &profile("fine"),
        ),
        message(accepted, ConfigKind::Setting, "locale", r#""de""#),
    ];
    let topic = settings.kafka.config_topic.clone();
    let sent = support::send(&settings, &topic, &messages).await;
    let worker = support::RunningWorker::start(&settings, tenantstream::Health::default()).await;
    let limit = Duration::from_secs(60);
    support::wait_for_topic_offsets(&database.admin, &settings, &topic, &sent.ends, limit).await;
    worker.stop().await;

    let dead = support::read_topic(
        &settings.kafka.brokers,
        &settings.kafka.dead_letter_topic,
        2,
        Duration::from_secs(30),
    );
    // By the original bytes: the profile is rejected, the setting's tenant is unknown.
    let codes: HashMap<&[u8], &str> = dead
        .iter()
        .map(|m| (m.payload().unwrap(), support::header(m, HEADER_ERROR_CODE)))
        .collect();
    let want = HashMap::from([
        (messages[0].value.as_slice(), REJECTED_BY_POSTGRES),
        (messages[1].value.as_slice(), UNKNOWN_TENANT),
    ]);
    assert_eq!(codes, want);
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT tenant_id, key FROM tenant_settings ORDER BY key")
            .fetch_all(&database.admin)
            .await
            .unwrap();
    assert_eq!(rows, vec![(accepted, "locale".to_owned())]);
    database.drop().await;
}

/// Writes `orders` row by row on a partition of `topic` of its own: Postgres rejects exactly the
/// row at `rejected` (SQLSTATE 23514) and nothing commits; without that row the rest does.
async fn isolate_orders(
    pool: &sqlx::PgPool,
    key: &PartitionKey,
    topic: &str,
    orders: &[ValidOrder],
    rejected: usize,
) -> BatchWrite {
    let key = PartitionKey {
        topic: topic.into(),
        ..key.clone()
    };
    let applied = HashMap::new();
    let batch = strict_batch(&key, orders.into(), &applied);
    let isolated = sink::write_each(pool, &batch).await.unwrap();
    let Isolated::Rejected(rows) = isolated else {
        panic!("nothing rejected: {isolated:?}");
    };
    let found: Vec<(usize, &str)> = rows
        .iter()
        .map(|r| (r.index, r.sqlstate.as_str()))
        .collect();
    assert_eq!(found, vec![(rejected, "23514")]);
    let mut rest = orders.to_vec();
    rest.remove(rejected);
    let outcome = sink::write_each(
        pool,
        &Batch {
            rows: rest[..].into(),
            ..batch
        },
    )
    .await
    .unwrap();
    let Isolated::Written(BatchOutcome::Committed(written)) = outcome else {
        panic!("not committed: {outcome:?}");
    };
    written
}

async fn stored_version(admin: &sqlx::PgPool, order_id: &str) -> i64 {
    sqlx::query_scalar("SELECT version FROM orders WHERE order_id = $1")
        .bind(order_id)
        .fetch_one(admin)
        .await
        .unwrap()
}

/// A batch of three messages, the first of its partition, under strict tenants.
fn strict_batch<'a>(
    key: &'a PartitionKey,
    rows: Rows<'a>,
    applied: &'a HashMap<Uuid, Vec<i64>>,
) -> Batch<'a> {
    Batch {
        key,
        expected: None,
        next_offset: 3,
        rows,
        tenant_policy: TenantPolicy::RequireKnown,
        applied,
        sla: None,
    }
}

/// A configuration change of `tenant` with a fresh event id.
fn config_event(tenant: Uuid, kind: ConfigKind, key: &str, value: &str) -> ConfigChangeEvent {
    ConfigChangeEvent {
        event_id: Uuid::new_v4().to_string(),
        tenant_id: Some(tenant.to_string()),
        kind,
        key: key.into(),
        value: Some(value.into()),
        ..domain::sample_config()
    }
}

fn change(tenant: Uuid, kind: ConfigKind, key: &str, value: &str) -> ValidConfig {
    config_event(tenant, kind, key, value).validate().unwrap()
}

fn valid(event: OrderEvent) -> ValidOrder {
    event.validate().unwrap()
}
