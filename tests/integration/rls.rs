//! Row-level security as the worker role: a tenant context sees and writes only its own rows,
//! no context sees and writes nothing, and the role owns no table and cannot bypass RLS.

use sqlx::{PgPool, Postgres, Transaction};
use tenantstream::testing::sink;
use uuid::Uuid;

use crate::support;

async fn worker_pool() -> PgPool {
    support::admin_pool().await; // migrated
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(support::WORKER_URL)
        .await
        .unwrap()
}

async fn in_context(pool: &PgPool, tenant: Option<Uuid>) -> Transaction<'static, Postgres> {
    let mut tx = pool.begin().await.unwrap();
    if let Some(tenant) = tenant {
        sink::set_tenant(&mut tx, tenant).await.unwrap();
    }
    tx
}

/// Inserts tenant + one order as that tenant, committed.
async fn seed(pool: &PgPool, tenant: Uuid, order_id: &str) {
    let mut tx = in_context(pool, Some(tenant)).await;
    sqlx::query("INSERT INTO tenants (tenant_id) VALUES ($1)")
        .bind(tenant)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO orders (tenant_id, order_id, version, status, customer_id, currency,
                             total_cents, items, occurred_at, last_event_id)
         VALUES ($1, $2, 1, 'created', 'c', 'EUR', 100, '[]', now(), $3)",
    )
    .bind(tenant)
    .bind(order_id)
    .bind(Uuid::new_v4())
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

async fn visible_orders(tx: &mut Transaction<'_, Postgres>, tenant: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM orders WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(&mut **tx)
        .await
        .unwrap()
}

#[tokio::test]
async fn tenant_context_isolates_reads_and_writes() {
    let pool = worker_pool().await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    seed(&pool, a, "a-1").await;
    seed(&pool, b, "b-1").await;

    let mut tx = in_context(&pool, Some(a)).await;
    assert_eq!(visible_orders(&mut tx, a).await, 1, "A sees its own row");
    assert_eq!(visible_orders(&mut tx, b).await, 0, "A cannot read B's row");
    let updated = sqlx::query("UPDATE orders SET total_cents = 0 WHERE tenant_id = $1")
        .bind(b)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(updated.rows_affected(), 0, "A cannot update B's row");
    let insert = sqlx::query(
        "INSERT INTO orders (tenant_id, order_id, version, status, customer_id, currency,
                             total_cents, items, occurred_at, last_event_id)
         VALUES ($1, 'forged', 1, 'created', 'c', 'EUR', 1, '[]', now(), $2)",
    )
    .bind(b)
    .bind(Uuid::new_v4())
    .execute(&mut *tx)
    .await;
    let error = insert.expect_err("A cannot insert a row for B").to_string();
    assert!(error.contains("row-level security"), "{error}");
    tx.rollback().await.unwrap();

    // B's row is untouched.
    let mut tx = in_context(&pool, Some(b)).await;
    let total: i64 = sqlx::query_scalar("SELECT total_cents FROM orders WHERE order_id = 'b-1'")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(total, 100);
}

#[tokio::test]
async fn no_context_sees_and_writes_nothing() {
    let pool = worker_pool().await;
    let a = Uuid::new_v4();
    seed(&pool, a, "a-1").await;
    let mut tx = in_context(&pool, None).await;
    for table in ["orders", "tenants", "cache_outbox"] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(n, 0, "{table} visible without a tenant context");
    }
    let insert = sqlx::query("INSERT INTO tenants (tenant_id) VALUES ($1)")
        .bind(Uuid::new_v4())
        .execute(&mut *tx)
        .await;
    assert!(insert.is_err(), "insert without context must fail");
    tx.rollback().await.unwrap();

    // A context set in one transaction does not leak into the next one on the same connection.
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(a.to_string())
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(n, 0, "context is transaction-local");
}

#[tokio::test]
async fn worker_role_owns_nothing_and_cannot_bypass() {
    let pool = worker_pool().await;
    sink::ensure_rls_applies(&pool)
        .await
        .expect("worker role is subject to RLS");
    let (superuser, bypass, owned): (bool, bool, i64) = sqlx::query_as(
        "SELECT rolsuper, rolbypassrls,
                (SELECT count(*) FROM pg_class c WHERE c.relowner = r.oid)
           FROM pg_roles r WHERE rolname = current_user",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!superuser && !bypass);
    assert_eq!(owned, 0, "worker owns no relation");
    let forced: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT relname::text, relrowsecurity, relforcerowsecurity FROM pg_class
          WHERE relname IN ('tenants', 'orders', 'cache_outbox') ORDER BY relname",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(forced.len(), 3);
    assert!(
        forced.iter().all(|(_, on, force)| *on && *force),
        "{forced:?}"
    );
    let disable = sqlx::query("ALTER TABLE orders DISABLE ROW LEVEL SECURITY")
        .execute(&pool)
        .await;
    assert!(disable.is_err(), "worker must not be able to turn RLS off");
    // row_security=off makes a query that RLS would filter fail instead of bypassing it.
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET row_security = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    let read = sqlx::query("SELECT count(*) FROM orders")
        .fetch_one(&mut *conn)
        .await;
    let error = read
        .expect_err("row_security=off must not reveal rows")
        .to_string();
    assert!(error.contains("row-level security"), "{error}");
    conn.close().await.unwrap();

    // The owner's connection is refused as a worker connection.
    let admin = support::admin_pool().await;
    let refused = sink::ensure_rls_applies(&admin)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("bypasses"), "{refused}");
}
