//! The short version of `scripts/tenant-cost.sh` (no broker): `benches/tenant_cost.sql`, run as
//! the worker role, writes every row it times through `write_order_batch` under row-level
//! security, and leaves nothing once its transaction is rolled back.

use crate::support;

/// Orders whose ids the benchmark generates ("tenant-cost-N"), whatever their tenant.
const ITS_ORDERS: &str = "SELECT count(*) FROM orders WHERE order_id LIKE 'tenant-cost-%'";
/// Cache work it queues (under its consumer group).
const ITS_CACHE_WORK: &str =
    "SELECT count(*) FROM cache_outbox WHERE consumer_group = 'tenant-cost'";

#[tokio::test]
async fn the_tenant_cost_benchmark_writes_every_row_it_times_and_leaves_nothing() {
    let admin = support::admin_pool().await;
    let mut tx = admin.begin().await.unwrap();
    sqlx::raw_sql(include_str!("../../benches/tenant_cost.sql"))
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("SET LOCAL ROLE tenantstream_worker")
        .execute(&mut *tx)
        .await
        .unwrap();
    // The role it times as is subject to row-level security.
    let bypasses: bool = sqlx::query_scalar(
        "SELECT rolbypassrls OR rolsuper FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert!(!bypasses);
    // 10 tenants, 2 calls of each shape per pass, 2 passes.
    let passes: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT pass, rows_written
           FROM pg_temp.tenant_cost(tenants => 10, calls => 2, passes => 2)",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    // A pass writes 2 calls of 10 tenants × 2 orders and 2 of 1 tenant × 20: 80 rows, counted
    // from the start.
    assert_eq!(passes, [(1, 80), (2, 160)]);

    // As the owner, in the same transaction: the timed rows and the first, untimed call's
    // (10 tenants × 1 order) are there, with their cache work queued...
    sqlx::query("RESET ROLE").execute(&mut *tx).await.unwrap();
    let written: i64 = sqlx::query_scalar(ITS_ORDERS)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let queued: i64 = sqlx::query_scalar(ITS_CACHE_WORK)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!((written, queued), (170, 170));

    // ...and gone once it is rolled back, as the script does: orders, cache work and tenants.
    tx.rollback().await.unwrap();
    let left: (i64, i64, i64) = sqlx::query_as(&format!(
        "SELECT ({ITS_ORDERS}), ({ITS_CACHE_WORK}),
                (SELECT count(*) FROM tenants
                  WHERE tenant_id IN (SELECT md5('tenant-cost-' || t)::uuid
                                        FROM generate_series(1, 10) t))"
    ))
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(left, (0, 0, 0));
}
