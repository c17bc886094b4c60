//! Postgres checks: waiting for stored offsets and drained cache work, and asserting rows
//! against the traffic's oracle.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tenantstream::testing::sink;
use tenantstream::testing::traffic::{EndOffsets, Expected, ExpectedConfig};
use tenantstream::Settings;
use uuid::Uuid;

/// Waits until Postgres stores exactly `ends` as the group's next offsets of the orders topic.
pub async fn wait_for_offsets(
    pool: &PgPool,
    settings: &Settings,
    ends: &EndOffsets,
    limit: Duration,
) {
    wait_for_topic_offsets(pool, settings, &settings.kafka.orders_topic, ends, limit).await
}

/// Waits until Postgres stores exactly `ends` as the group's next offsets of `topic`.
pub async fn wait_for_topic_offsets(
    pool: &PgPool,
    settings: &Settings,
    topic: &str,
    ends: &EndOffsets,
    limit: Duration,
) {
    let never = tokio_util::sync::CancellationToken::new();
    tokio::time::timeout(
        limit,
        tenantstream::testing::probe::wait_until_consumed(pool, settings, topic, ends, &never),
    )
    .await
    .unwrap_or_else(|_| panic!("stored offsets did not reach {ends:?} in {limit:?}"))
    .expect("offsets progress");
    let partitions: Vec<i32> = ends.keys().copied().collect();
    let stored = sink::load_stored_offsets(pool, &settings.kafka.group_id, topic, &partitions)
        .await
        .unwrap();
    assert_eq!(
        &stored, ends,
        "stored offsets end exactly at the end offsets"
    );
}

/// Waits until the cache outbox holds nothing for `tenants`.
pub async fn wait_for_cache(pool: &PgPool, tenants: &[Uuid], limit: Duration) {
    let started = Instant::now();
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM cache_outbox WHERE tenant_id = ANY($1)")
                .bind(tenants)
                .fetch_one(pool)
                .await
                .unwrap();
        if pending == 0 {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{pending} cache updates still queued after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that Postgres holds exactly the expected orders of the traffic's tenants.
pub async fn assert_rows(pool: &PgPool, expected: &Expected) {
    type Row = (
        Uuid,
        String,
        i64,
        String,
        String,
        String,
        i64,
        serde_json::Value,
        Uuid,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT tenant_id, order_id, version, status, customer_id, currency, total_cents,
                    items, last_event_id
               FROM orders WHERE tenant_id = ANY($1)",
    )
    .bind(&expected.tenants)
    .fetch_all(pool)
    .await
    .unwrap();
    if rows.len() != expected.orders.len() {
        let present: std::collections::HashSet<(Uuid, String)> =
            rows.iter().map(|r| (r.0, r.1.clone())).collect();
        let missing: Vec<_> = expected
            .orders
            .iter()
            .filter(|(k, _)| !present.contains(k))
            .take(10)
            .map(|(k, e)| (k.1.clone(), e.version))
            .collect();
        panic!(
            "row count {} != expected {}; missing (order, version): {missing:?}",
            rows.len(),
            expected.orders.len()
        );
    }
    for (tenant, order_id, version, status, customer, currency, total, items, event_id) in rows {
        let want = expected
            .orders
            .get(&(tenant, order_id.clone()))
            .unwrap_or_else(|| panic!("unexpected row {tenant}/{order_id}"));
        assert_eq!(version, want.version, "{order_id} version");
        assert_eq!(status, want.event_type.status(), "{order_id} status");
        assert_eq!(customer, want.customer_id);
        assert_eq!(currency, want.currency);
        assert_eq!(total, want.total_cents);
        assert_eq!(items, serde_json::to_value(&want.items).unwrap());
        assert_eq!(event_id.to_string(), want.event_id, "{order_id} last event");
    }
}

/// Asserts Postgres holds exactly the newest profile, entries (tombstones included) and
/// categories of the traffic.
pub async fn assert_config_rows(pool: &PgPool, expected: &ExpectedConfig) {
    for (tenant, (version, profile)) in &expected.profiles {
        let row: (String, String, String, i64) = sqlx::query_as(
            "SELECT status, name, tier, profile_version FROM tenants WHERE tenant_id = $1",
        )
        .bind(tenant)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(
            (row.0.as_str(), row.1.as_str(), row.2.as_str(), row.3),
            (
                profile["status"].as_str().unwrap(),
                profile["name"].as_str().unwrap(),
                profile["tier"].as_str().unwrap(),
                *version
            ),
            "profile of {tenant}"
        );
    }
    for ((tenant, map, key), (version, value)) in &expected.entries {
        let table = map.table();
        let row: (i64, Option<serde_json::Value>) = sqlx::query_as(&format!(
            "SELECT version, value FROM {table} WHERE tenant_id = $1 AND key = $2"
        ))
        .bind(tenant)
        .bind(key)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(row, (*version, value.clone()), "{table} {tenant} {key}");
    }
    for (id, (version, value)) in &expected.categories {
        let row: (i64, Option<serde_json::Value>) =
            sqlx::query_as("SELECT version, value FROM categories WHERE category_id = $1")
                .bind(id)
                .fetch_one(pool)
                .await
                .unwrap();
        assert_eq!(row, (*version, value.clone()), "category {id}");
    }
}
