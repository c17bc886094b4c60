//! Row-level security as the worker role: a tenant context sees and writes only its own rows,
//! no context sees and writes nothing, and the role owns no table and cannot bypass RLS.

use std::collections::{HashMap, HashSet};

use sqlx::{PgPool, Postgres, Transaction};
use tenantstream::testing::domain::{
    self, CacheItem, CacheRef, OrderEvent, TenantPolicy, ValidOrder,
};
use tenantstream::testing::sink::{self, Batch, BatchOutcome, PartitionKey};
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
          WHERE relname IN ('tenants', 'orders', 'cache_outbox', 'sla_deadlines', 'sla_violations')
          ORDER BY relname",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(forced.len(), 5);
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

/// A login role that reaches power only through membership is refused, naming the role it
/// reaches: a member (even NOINHERIT, which can still `SET ROLE`) of a BYPASSRLS role, of a
/// role owning an RLS table, and a member of a member of a superuser. The plain worker role,
/// a member of a harmless role, passes.
#[tokio::test]
async fn a_role_reaching_power_through_membership_is_refused() {
    let admin = support::admin_pool().await;
    let tag = &Uuid::new_v4().simple().to_string()[..8];
    let role = |name: &str| format!("ts_rls_{name}_{tag}");
    let (bypass, owner, middle, harmless) = (
        role("bypass"),
        role("owner"),
        role("middle"),
        role("harmless"),
    );
    let database: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&admin)
        .await
        .unwrap();
    let mut setup = vec![
        format!("CREATE ROLE {bypass} NOLOGIN BYPASSRLS"),
        format!("CREATE ROLE {owner} NOLOGIN"),
        // In a schema of its own: tests that list public's RLS tables must not see it.
        format!("CREATE SCHEMA {owner}"),
        format!("CREATE TABLE {owner}.t (id int)"),
        format!("ALTER TABLE {owner}.t ENABLE ROW LEVEL SECURITY"),
        format!("ALTER TABLE {owner}.t OWNER TO {owner}"),
        format!("CREATE ROLE {middle} NOLOGIN"),
        format!("GRANT postgres TO {middle}"),
        format!("CREATE ROLE {harmless} NOLOGIN"),
    ];
    // (login role, what it is a member of, the role the refusal must name)
    let cases = [
        (role("a"), bypass.clone(), Some(bypass.clone())),
        (role("b"), owner.clone(), Some(owner.clone())),
        (role("c"), middle.clone(), Some("postgres".to_owned())),
        (role("d"), harmless.clone(), None),
    ];
    for (login, member_of, _) in &cases {
        setup.push(format!("CREATE ROLE {login} LOGIN NOINHERIT"));
        setup.push(format!("GRANT {member_of} TO {login}"));
        setup.push(format!("GRANT CONNECT ON DATABASE {database} TO {login}"));
    }
    for statement in &setup {
        sqlx::query(statement).execute(&admin).await.unwrap();
    }
    let mut outcomes = Vec::new();
    for (login, _, refused_for) in &cases {
        let url = support::WORKER_URL.replace("tenantstream_worker", login);
        let pool = PgPool::connect(&url).await.unwrap();
        let checked = sink::ensure_rls_applies(&pool).await;
        pool.close().await;
        outcomes.push((
            login.clone(),
            checked.map_err(|e| e.to_string()),
            refused_for,
        ));
    }
    let mut teardown: Vec<String> = cases
        .iter()
        .flat_map(|(login, _, _)| {
            [
                format!("REVOKE CONNECT ON DATABASE {database} FROM {login}"),
                format!("DROP ROLE {login}"),
            ]
        })
        .collect();
    teardown.push(format!("DROP SCHEMA {owner} CASCADE"));
    for name in [&bypass, &owner, &middle, &harmless] {
        teardown.push(format!("DROP ROLE {name}"));
    }
    for statement in &teardown {
        sqlx::query(statement).execute(&admin).await.unwrap();
    }
    for (login, checked, refused_for) in outcomes {
        match (checked, refused_for) {
            (Ok(()), None) => {}
            (Err(error), Some(reached)) => {
                assert!(
                    error.contains(&format!("a member of \"{reached}\"")),
                    "{login}: {error}"
                );
                assert!(
                    error.contains("bypasses row-level security"),
                    "{login}: {error}"
                );
            }
            (checked, refused_for) => {
                panic!("{login}: {checked:?}, expected refusal for {refused_for:?}")
            }
        }
    }
}

fn order(tenant: Uuid, order_id: &str) -> ValidOrder {
    OrderEvent {
        tenant_id: tenant.to_string(),
        order_id: order_id.into(),
        ..domain::sample_order()
    }
    .validate()
    .unwrap()
}

/// Order ids visible under `tenant`'s context, as the worker.
async fn orders_seen_by(pool: &PgPool, tenant: Uuid) -> Vec<String> {
    let mut tx = in_context(pool, Some(tenant)).await;
    sqlx::query_scalar("SELECT order_id FROM orders ORDER BY order_id")
        .fetch_all(&mut *tx)
        .await
        .unwrap()
}

async fn outbox_seen_by(pool: &PgPool, tenant: Uuid) -> Vec<i64> {
    let mut tx = in_context(pool, Some(tenant)).await;
    sqlx::query_scalar("SELECT id FROM cache_outbox ORDER BY id")
        .fetch_all(&mut *tx)
        .await
        .unwrap()
}

fn batch<'a>(
    key: &'a PartitionKey,
    rows: &'a [ValidOrder],
    expected: Option<i64>,
    next_offset: i64,
    applied: &'a HashMap<Uuid, Vec<i64>>,
) -> Batch<'a> {
    Batch {
        key,
        expected,
        next_offset,
        rows: rows.into(),
        tenant_policy: TenantPolicy::RegisterUnknown,
        applied,
        sla: None,
    }
}

/// A batch of many tenants goes in one round trip (`write_order_batch` sets each tenant's
/// context in the database); isolation must stay what it was: each row under its own tenant,
/// the function runs as its caller (so RLS applies to every statement in it), and no context
/// is left behind for the rest of the transaction.
#[tokio::test]
async fn one_round_trip_per_batch_keeps_every_tenant_in_its_own_context() {
    let pool = worker_pool().await;
    let tenants: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let rows: Vec<ValidOrder> = [(0, "x-1"), (1, "x-1"), (2, "y-1"), (0, "x-2"), (1, "y-2")]
        .iter()
        .map(|(t, id)| order(tenants[*t], id))
        .collect();
    let key = PartitionKey {
        group: format!("rls-{}", Uuid::new_v4()),
        topic: "orders".into(),
        partition: 0,
    };
    let none = HashMap::new();
    let BatchOutcome::Committed(written) =
        sink::write_batch(&pool, &batch(&key, &rows, None, 5, &none))
            .await
            .unwrap()
    else {
        panic!("fenced");
    };
    assert_eq!(written.written, 5);
    assert_eq!(orders_seen_by(&pool, tenants[0]).await, ["x-1", "x-2"]);
    assert_eq!(orders_seen_by(&pool, tenants[1]).await, ["x-1", "y-2"]);
    assert_eq!(orders_seen_by(&pool, tenants[2]).await, ["y-1"]);
    // Each queued cache row is the tenant's own, and the ones Redis has are deleted by the
    // next batch of the same tenant only.
    let first_outbox = outbox_seen_by(&pool, tenants[0]).await;
    assert_eq!(first_outbox.len(), 2);
    for item in &written.cache {
        let CacheItem::Order { tenant, .. } = item.item else {
            panic!("{item:?}")
        };
        assert!(outbox_seen_by(&pool, tenant)
            .await
            .contains(&item.outbox_id));
    }
    let applied = HashMap::from([(tenants[0], first_outbox.clone())]);
    let again = [order(tenants[0], "x-3"), order(tenants[2], "y-3")];
    sink::write_batch(&pool, &batch(&key, &again, Some(5), 7, &applied))
        .await
        .unwrap();
    let outbox = outbox_seen_by(&pool, tenants[0]).await;
    assert_eq!(
        outbox.len(),
        1,
        "x-3's row is queued, x-1's and x-2's deleted"
    );
    assert!(!outbox.iter().any(|id| first_outbox.contains(id)));
    assert_eq!(outbox_seen_by(&pool, tenants[1]).await.len(), 2);

    // A batch of more tenants than one call takes (100) is split over several calls: every
    // row still lands under its own tenant.
    let many: Vec<ValidOrder> = (0..250)
        .map(|i| order(Uuid::new_v4(), &format!("m-{i}")))
        .collect();
    let BatchOutcome::Committed(written) =
        sink::write_batch(&pool, &batch(&key, &many, Some(7), 257, &none))
            .await
            .unwrap()
    else {
        panic!("fenced");
    };
    assert_eq!(written.written, 250);
    let admin = support::admin_pool().await;
    let ids: Vec<Uuid> = many.iter().map(|o| o.tenant_id).collect();
    let mut placed: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT tenant_id, order_id FROM orders WHERE tenant_id = ANY($1)")
            .bind(&ids)
            .fetch_all(&admin)
            .await
            .unwrap();
    placed.sort();
    let mut expected: Vec<(Uuid, String)> = many
        .iter()
        .map(|o| (o.tenant_id, o.event.order_id.clone()))
        .collect();
    expected.sort();
    assert_eq!(placed, expected);

    // No context outlives the call, and the function is not a definer's: RLS applies inside.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(
        "SELECT * FROM write_order_batch('g', 'order', true, $1, '{1}', '{1}', '{z-1}', '{1}',
                  '{created}', '{c}', '{EUR}', '{1}', '{\"[]\"}', '{0}', $2, '{}', '{1}', '{0}',
                  false, NULL, '{created}', '{created}', '{0}')",
    )
    .bind(vec![tenants[2]])
    .bind(vec![Uuid::new_v4()])
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(left, 0, "the function left a tenant context set");
    tx.rollback().await.unwrap();
    // The functions that run as the owner are exactly these, each revealing ids or counts only.
    let definers: Vec<String> = sqlx::query_scalar(
        "SELECT proname::text FROM pg_proc
          WHERE pronamespace = 'public'::regnamespace AND prosecdef ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        definers,
        [
            "cache_outbox_pending_tenants",
            "cache_outbox_state",
            "fire_due_deadlines",
            "sla_state"
        ]
    );

    // Strict tenants: each id is looked up under its own context, in one round trip.
    let stranger = Uuid::new_v4();
    let known = sink::known_tenants(&pool, &[tenants[0], stranger, tenants[2]])
        .await
        .unwrap();
    assert_eq!(known, HashSet::from([tenants[0], tenants[2]]));
}

#[tokio::test]
async fn orders_of_many_tenants_are_read_in_one_call_each_under_its_own_context() {
    let pool = worker_pool().await;
    let tenants: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let rows: Vec<ValidOrder> = [(0, "x-1"), (1, "x-1"), (2, "y-1")]
        .iter()
        .map(|(t, id)| order(tenants[*t], id))
        .collect();
    let key = PartitionKey {
        group: format!("rls-read-{}", Uuid::new_v4()),
        topic: "orders".into(),
        partition: 0,
    };
    sink::write_batch(&pool, &batch(&key, &rows, None, 3, &HashMap::new()))
        .await
        .unwrap();
    let order_ref = |t: usize, id: &str| CacheRef::Order {
        tenant: tenants[t],
        order_id: id.into(),
    };
    // y-1 is tenant 2's: asked for as tenant 0's, nothing comes back.
    let refs = [
        order_ref(0, "x-1"),
        order_ref(1, "x-1"),
        order_ref(0, "y-1"),
        order_ref(2, "y-1"),
        order_ref(2, "missing"),
    ];
    let mut tx = pool.begin().await.unwrap();
    let items = sink::read_current(&mut tx, &refs).await.unwrap();
    let mut found: Vec<(Uuid, String)> = items
        .iter()
        .map(|item| match item {
            CacheItem::Order {
                tenant,
                order_id,
                json,
                ..
            } => {
                assert!(json.contains(&tenant.to_string()), "{json}");
                (*tenant, order_id.clone())
            }
            other => panic!("{other:?}"),
        })
        .collect();
    found.sort();
    let mut expected = vec![
        (tenants[0], "x-1".to_owned()),
        (tenants[1], "x-1".to_owned()),
        (tenants[2], "y-1".to_owned()),
    ];
    expected.sort();
    assert_eq!(found, expected);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(left, 0, "the read left a tenant context set");
    tx.rollback().await.unwrap();
}
