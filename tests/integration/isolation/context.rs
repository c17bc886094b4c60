//! The tenant context never outlives its transaction on a pooled connection: however the
//! transaction ends, and whichever context-setting function ran in it, the next use of the same
//! pooled connection has no context and sees no tenant row. rls.rs checks a raw COMMIT and, in
//! the same transaction, write_order_batch and read_orders; this covers every ending and every
//! function, on the connection the pool hands out next.

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres, Transaction};
use tenantstream::testing::sink;
use uuid::Uuid;

use super::worker_pool;
use crate::support;

/// A tenant with one order `o-1`, seeded as the owner.
async fn seeded_tenant(admin: &PgPool) -> Uuid {
    let tenant = Uuid::new_v4();
    sqlx::query("INSERT INTO tenants (tenant_id) VALUES ($1)")
        .bind(tenant)
        .execute(admin)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO orders (tenant_id, order_id, version, status, customer_id, currency,
                             total_cents, items, occurred_at, last_event_id)
         VALUES ($1, 'o-1', 1, 'created', 'c', 'EUR', 100, '[]', now(), gen_random_uuid())",
    )
    .bind(tenant)
    .execute(admin)
    .await
    .unwrap();
    tenant
}

async fn backend_pid(pool: &PgPool) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// On the pool's one connection (the same backend as before): no context, no order visible.
async fn assert_no_context(pool: &PgPool, pid: i32, case: &str) {
    let mut conn: PoolConnection<Postgres> = pool.acquire().await.unwrap();
    let (now_pid, setting, visible): (i32, Option<String>, i64) = sqlx::query_as(
        "SELECT pg_backend_pid(), current_setting('app.tenant_id', true),
                (SELECT count(*) FROM orders)",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(
        now_pid, pid,
        "{case}: the pool handed out another connection"
    );
    assert!(
        setting.as_deref().unwrap_or("").is_empty(),
        "{case}: context {setting:?} outlived its transaction"
    );
    assert_eq!(visible, 0, "{case}: orders visible after the transaction");
}

async fn visible_in(tx: &mut Transaction<'_, Postgres>) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut **tx)
        .await
        .unwrap()
}

#[derive(Debug, Clone, Copy)]
enum Ending {
    Commit,
    Rollback,
    /// A statement fails, then the transaction is rolled back.
    Error,
    /// The transaction is dropped without either (sqlx rolls it back when the connection
    /// returns to the pool).
    Dropped,
}

/// set_tenant (as the sink sets it) under a pool of one connection, the transaction ending
/// each way; and a context set by a statement outside any transaction (its implicit one).
#[tokio::test]
async fn tenant_context_ends_with_its_transaction_however_it_ends() {
    let admin = support::admin_pool().await;
    let pool = worker_pool(1).await;
    let tenant = seeded_tenant(&admin).await;
    let pid = backend_pid(&pool).await;
    assert_no_context(&pool, pid, "fresh connection").await;
    for ending in [
        Ending::Commit,
        Ending::Rollback,
        Ending::Error,
        Ending::Dropped,
    ] {
        let mut tx = pool.begin().await.unwrap();
        sink::set_tenant(&mut tx, tenant).await.unwrap();
        assert_eq!(
            visible_in(&mut tx).await,
            1,
            "{ending:?}: the context applies"
        );
        match ending {
            Ending::Commit => tx.commit().await.unwrap(),
            Ending::Rollback => tx.rollback().await.unwrap(),
            Ending::Error => {
                let failed = sqlx::query("SELECT 1 / 0").execute(&mut *tx).await;
                assert!(failed.is_err());
                tx.rollback().await.unwrap();
            }
            Ending::Dropped => drop(tx),
        }
        assert_no_context(&pool, pid, &format!("{ending:?}")).await;
    }
    let (visible,): (i64,) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM orders)
           FROM (SELECT set_config('app.tenant_id', $1, true)) s",
    )
    .bind(tenant.to_string())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(visible, 1, "implicit transaction: the context applies");
    assert_no_context(&pool, pid, "implicit transaction").await;

    // The check itself sees a leak: a session-level setting does outlive its transaction (the
    // connection is closed afterwards, not returned to the pool).
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SELECT set_config('app.tenant_id', $1, false)")
        .bind(tenant.to_string())
        .execute(&mut *conn)
        .await
        .unwrap();
    let leaked: Option<String> =
        sqlx::query_scalar("SELECT current_setting('app.tenant_id', true)")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!(leaked, Some(tenant.to_string()));
    conn.close().await.unwrap();
}

/// Every `set_config('app.tenant_id', …)` in the source and the migrations is transaction-local
/// (`…, true)`): none sets a session-level context that a pooled connection would carry on.
#[test]
fn every_context_set_in_the_code_is_transaction_local() {
    let root = support::manifest_dir();
    let mut files = Vec::new();
    for dir in ["src", "migrations"] {
        let mut stack = vec![root.join(dir)];
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            } else {
                files.push(path);
            }
        }
    }
    let mut calls = 0;
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for (at, _) in text.match_indices("set_config('app.tenant_id'") {
            let call = &text[at..at + text[at..].find(')').unwrap()];
            assert!(call.ends_with(", true"), "{}: {call}", path.display());
            calls += 1;
        }
    }
    assert!(calls >= 7, "found only {calls} calls");
}

/// One call of a context-setting function in a transaction; returns the rows it returned.
type Call = for<'a> fn(
    &'a mut Transaction<'static, Postgres>,
    Uuid,
) -> futures::future::BoxFuture<'a, usize>;

fn call_tenant_statuses<'a>(
    tx: &'a mut Transaction<'static, Postgres>,
    t: Uuid,
) -> futures::future::BoxFuture<'a, usize> {
    Box::pin(async move { rows(tx, "SELECT * FROM tenant_statuses($1)", t).await })
}

fn call_read_orders<'a>(
    tx: &'a mut Transaction<'static, Postgres>,
    t: Uuid,
) -> futures::future::BoxFuture<'a, usize> {
    Box::pin(async move {
        rows(
            tx,
            "SELECT * FROM read_orders($1, '{1}', '{1}', '{o-1}')",
            t,
        )
        .await
    })
}

fn call_write_order_batch<'a>(
    tx: &'a mut Transaction<'static, Postgres>,
    t: Uuid,
) -> futures::future::BoxFuture<'a, usize> {
    Box::pin(async move {
        rows(
            tx,
            "SELECT * FROM write_order_batch('isolation', 'order', true, $1, '{1}', '{1}',
                      '{z-1}', '{1}', '{created}', '{c}', '{EUR}', '{1}', '{\"[]\"}', '{0}',
                      ARRAY[gen_random_uuid()], '{}', '{1}', '{0}', false, NULL, '{created}',
                      '{created}', '{0}')",
            t,
        )
        .await
    })
}

/// One event ten seconds old against a one-second threshold: a PROCESSING_LAG violation,
/// created under the tenant's context (rolled back with the transaction).
fn call_record_processing_lag<'a>(
    tx: &'a mut Transaction<'static, Postgres>,
    t: Uuid,
) -> futures::future::BoxFuture<'a, usize> {
    Box::pin(async move {
        rows(
            tx,
            "SELECT * FROM record_processing_lag($1, '{1}', '{1}',
                      ARRAY[(extract(epoch FROM now()) * 1000)::bigint - 10000],
                      (extract(epoch FROM now()) * 1000)::bigint, 60000,
                      '{\"lag_threshold_ms\": 1000}')",
            t,
        )
        .await
    })
}

/// A violation queued in this transaction at the epoch (due before anyone else's), claimed at
/// 1 s after the epoch: only this one, read back under its tenant's context.
fn call_claim_sla_violations<'a>(
    tx: &'a mut Transaction<'static, Postgres>,
    t: Uuid,
) -> futures::future::BoxFuture<'a, usize> {
    Box::pin(async move {
        let violation = Uuid::new_v4();
        sink::set_tenant(tx, t).await.unwrap();
        sqlx::query(
            "INSERT INTO sla_violations (violation_id, tenant_id, kind, threshold_ms, observed_ms,
                                         event_count, policy_version, detected_at)
             VALUES ($1, $2, 'DEADLINE_MISSED', 1, 1, 1, 1, now())",
        )
        .bind(violation)
        .bind(t)
        .execute(&mut **tx)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO sla_outbox (violation_id, tenant_id, publish_after)
             VALUES ($1, $2, to_timestamp(0))",
        )
        .bind(violation)
        .bind(t)
        .execute(&mut **tx)
        .await
        .unwrap();
        sqlx::query("SELECT set_config('app.tenant_id', '', true)")
            .execute(&mut **tx)
            .await
            .unwrap();
        let claimed: Vec<Uuid> =
            sqlx::query_scalar("SELECT violation_id FROM claim_sla_violations(1000, 1000, 100)")
                .fetch_all(&mut **tx)
                .await
                .unwrap();
        assert_eq!(claimed, [violation]);
        claimed.len()
    })
}

async fn rows(tx: &mut Transaction<'static, Postgres>, sql: &str, tenant: Uuid) -> usize {
    sqlx::query(sql)
        .bind(vec![tenant])
        .fetch_all(&mut **tx)
        .await
        .unwrap()
        .len()
}

/// Every function the worker may execute that sets the context (found in the catalog by its
/// source) clears it: nothing is left in the rest of its transaction, nor on the pooled
/// connection after the transaction commits or rolls back. Each call returns rows that only
/// the context it set can reveal, so the functions did set it.
#[tokio::test]
async fn every_context_setting_function_leaves_no_context_behind() {
    let admin = support::admin_pool().await;
    let pool = worker_pool(1).await;
    let calls: [(&str, Call, bool); 5] = [
        ("claim_sla_violations", call_claim_sla_violations, false),
        ("read_orders", call_read_orders, true),
        ("record_processing_lag", call_record_processing_lag, false),
        ("tenant_statuses", call_tenant_statuses, true),
        ("write_order_batch", call_write_order_batch, false),
    ];
    let setting: Vec<String> = sqlx::query_scalar(
        "SELECT proname::text FROM pg_proc
          WHERE pronamespace = 'public'::regnamespace AND prosrc LIKE '%set_config%'
            AND has_function_privilege('tenantstream_worker', oid, 'EXECUTE')
          ORDER BY 1",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    let covered: Vec<&str> = calls.iter().map(|(name, _, _)| *name).collect();
    assert_eq!(
        setting, covered,
        "every context-setting function is covered"
    );

    let pid = backend_pid(&pool).await;
    for (name, call, commit) in calls {
        let tenant = seeded_tenant(&admin).await;
        let mut tx = pool.begin().await.unwrap();
        let returned = call(&mut tx, tenant).await;
        assert!(returned > 0, "{name} returned nothing: no context was set");
        let left: Option<String> =
            sqlx::query_scalar("SELECT current_setting('app.tenant_id', true)")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        assert!(
            left.as_deref().unwrap_or("").is_empty(),
            "{name} left context {left:?} in its transaction"
        );
        assert_eq!(visible_in(&mut tx).await, 0, "{name}: orders visible after");
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        assert_no_context(&pool, pid, name).await;
    }
}
