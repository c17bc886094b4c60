//! A worker that lost its partition cannot commit over the new owner: the stored offset is a
//! compare-and-set, taken first in the batch transaction.

use tenantstream::testing::domain::{
    CacheItem, Keyspace, LineItem, OrderEvent, OrderEventType, TenantPolicy, ValidOrder,
};
use tenantstream::testing::sink::{self, Batch, BatchOutcome, PartitionKey};
use uuid::Uuid;

use crate::support;

fn order(tenant: Uuid, order_id: &str, version: i64) -> ValidOrder {
    OrderEvent {
        event_id: Uuid::new_v4().to_string(),
        tenant_id: tenant.to_string(),
        order_id: order_id.into(),
        version,
        event_type: OrderEventType::Updated,
        occurred_at: 1_700_000_000_000,
        customer_id: "c".into(),
        currency: "EUR".into(),
        total_cents: 100 * version,
        items: vec![LineItem {
            sku: "s".into(),
            category_id: "k".into(),
            quantity: 1,
            unit_price_cents: 100 * version,
        }],
    }
    .validate()
    .unwrap()
}

/// The owner pool (to check rows), the worker pool and partition 0 of a fresh group.
async fn setup(name: &str) -> (sqlx::PgPool, sqlx::PgPool, PartitionKey) {
    let admin = support::admin_pool().await;
    let settings = support::settings("unused:9092", name);
    let pool = sink::connect_worker(&settings.database).await.unwrap();
    let key = PartitionKey {
        group: settings.kafka.group_id.clone(),
        topic: "orders".into(),
        partition: 0,
    };
    (admin, pool, key)
}

/// One batch with no applied cache work to clear, registering unknown tenants.
async fn write(
    pool: &sqlx::PgPool,
    key: &PartitionKey,
    expected: Option<i64>,
    next: i64,
    orders: &[ValidOrder],
) -> BatchOutcome {
    let batch = Batch {
        key,
        expected,
        next_offset: next,
        rows: orders.into(),
        tenant_policy: TenantPolicy::RegisterUnknown,
        applied: &Default::default(),
        sla: None,
    };
    sink::write_batch(pool, &batch).await.unwrap()
}

async fn stored(pool: &sqlx::PgPool, key: &PartitionKey) -> Option<i64> {
    sink::load_stored_offsets(pool, &key.group, &key.topic, &[key.partition])
        .await
        .unwrap()
        .get(&key.partition)
        .copied()
}

#[tokio::test]
async fn stale_owner_is_fenced_and_changes_nothing() {
    let (admin, pool, key) = setup("fence").await;
    let tenant = Uuid::new_v4();

    // Old owner writes offsets 0..10.
    let first = write(&pool, &key, None, 10, &[order(tenant, "o-1", 1)]).await;
    assert!(matches!(first, BatchOutcome::Committed(ref w) if w.written == 1));

    // New owner (seeked to 10) writes 10..20.
    let second = write(&pool, &key, Some(10), 20, &[order(tenant, "o-1", 2)]).await;
    assert!(matches!(second, BatchOutcome::Committed(_)));

    // The old owner, still believing 10 is stored, tries to commit 10..15 with other data.
    let stale = write(&pool, &key, Some(10), 15, &[order(tenant, "o-2", 1)]).await;
    assert_eq!(stale, BatchOutcome::Fenced);
    // A worker that never saw a stored offset cannot create one over an existing row either.
    let fresh = write(&pool, &key, None, 5, &[order(tenant, "o-3", 1)]).await;
    assert_eq!(fresh, BatchOutcome::Fenced);

    assert_eq!(stored(&pool, &key).await, Some(20));
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT order_id, version FROM orders WHERE tenant_id = $1 ORDER BY order_id",
    )
    .bind(tenant)
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![("o-1".to_owned(), 2)],
        "fenced batches wrote nothing"
    );
}

#[tokio::test]
async fn version_guard_counts_superseded_and_stale_and_keeps_the_newest() {
    let (admin, pool, key) = setup("guard").await;
    let tenant = Uuid::new_v4();
    let batch = [
        order(tenant, "o-1", 3),
        order(tenant, "o-1", 2),
        order(tenant, "o-2", 1),
    ];
    let BatchOutcome::Committed(w) = write(&pool, &key, None, 3, &batch).await else {
        panic!("fenced")
    };
    // o-1 v2 is superseded by v3 in the same batch; nothing is older than a stored row.
    assert_eq!((w.written, w.superseded, w.stale), (2, 1, 0));
    // Same and older versions later: nothing changes. Each row's newest event in the batch is
    // stale (not newer than the stored row); o-1 v1 is superseded by o-1 v3 beside it.
    let batch = [
        order(tenant, "o-1", 3),
        order(tenant, "o-1", 1),
        order(tenant, "o-2", 1),
    ];
    let BatchOutcome::Committed(w) = write(&pool, &key, Some(3), 6, &batch).await else {
        panic!("fenced")
    };
    assert_eq!((w.written, w.superseded, w.stale), (0, 1, 2));
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT order_id, version, total_cents FROM orders WHERE tenant_id = $1 ORDER BY order_id",
    )
    .bind(tenant)
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![("o-1".to_owned(), 3, 300), ("o-2".to_owned(), 1, 100)]
    );
    let status: String = sqlx::query_scalar("SELECT status FROM tenants WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(
        status, "provisional",
        "unknown tenant registered as provisional"
    );
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM cache_outbox WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(
        queued, 2,
        "one cache refresh per row written, none for stale events"
    );
}

#[tokio::test]
async fn applied_cache_work_is_deleted_with_the_next_write() {
    let (admin, pool, key) = setup("ledger").await;
    let (tenant, other) = (Uuid::new_v4(), Uuid::new_v4());
    let batch = [order(tenant, "o-1", 1), order(other, "x-1", 1)];
    let BatchOutcome::Committed(first) = write(&pool, &key, None, 2, &batch).await else {
        panic!("fenced")
    };
    assert_eq!(first.cache.len(), 2);
    for queued in &first.cache {
        let CacheItem::Order {
            tenant: queued_tenant,
            json,
            ..
        } = &queued.item
        else {
            panic!("an order batch queues order keys: {queued:?}")
        };
        let json: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(
            json["version"], 1,
            "the batch returns the committed row's JSON"
        );
        assert_eq!(json["tenant_id"], queued_tenant.to_string());
    }
    // Both rows were applied to Redis; the next batch, of `tenant` only, deletes its row.
    let applied: std::collections::HashMap<Uuid, Vec<i64>> = first
        .cache
        .iter()
        .map(|q| (q.item.keyspace(), vec![q.outbox_id]))
        .filter_map(|(space, ids)| match space {
            Keyspace::Tenant(t) => Some((t, ids)),
            Keyspace::Reference => None,
        })
        .collect();
    let next = [order(tenant, "o-1", 2)];
    let batch = Batch {
        key: &key,
        expected: Some(2),
        next_offset: 3,
        rows: next[..].into(),
        tenant_policy: TenantPolicy::RegisterUnknown,
        applied: &applied,
        sla: None,
    };
    sink::write_batch(&pool, &batch).await.unwrap();
    let left: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT tenant_id, version FROM cache_outbox WHERE tenant_id = ANY($1) ORDER BY version",
    )
    .bind([tenant, other])
    .fetch_all(&admin)
    .await
    .unwrap();
    // `other` is not in the batch, so its applied row is left for the drainer's sweep.
    assert_eq!(left, vec![(other, 1), (tenant, 2)]);
}
