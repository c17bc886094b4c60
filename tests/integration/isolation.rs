//! Tenant isolation as the worker role (issue 11, least privilege and isolation), against the
//! shared test database, each test with fresh tenant ids:
//!
//! - the isolation matrix: every RLS table × SELECT, INSERT, UPDATE, DELETE and upsert, under
//!   the row's own tenant, under another tenant and with no context (this file);
//! - the tenant context never outlives its transaction on a pooled connection ([`context`]);
//! - the worker role's privileges are exactly the minimum the README documents ([`privileges`]);
//! - a change keyed by one tenant whose body names another, through the worker ([`key_trust`]).
//!
//! rls.rs holds the first checks of the policies (one table each, the `SECURITY DEFINER` list,
//! the startup refusal); these extend them to every table and operation.

mod context;
mod key_trust;
mod privileges;

use std::fmt;

use sqlx::{PgPool, Postgres, Transaction};
use tenantstream::testing::sink;
use uuid::Uuid;

use crate::support;

pub(crate) async fn worker_pool(max_connections: u32) -> PgPool {
    support::admin_pool().await; // migrated
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(max_connections)
        .connect(support::WORKER_URL)
        .await
        .unwrap()
}

/// One RLS table as the matrix drives it. Every statement takes the row's tenant as `$1` and its
/// key as `$2` (text; the key a fresh row is inserted with, or the one `insert` returned).
struct Table {
    name: &'static str,
    /// A new row with its marker at 1, returning the row's key.
    insert: &'static str,
    /// The WHERE clause naming one row.
    row: &'static str,
    /// The change an update makes: the marker to 2.
    set: &'static str,
    /// The column read back to see a change.
    marker: &'static str,
    /// An insert of tenant `$1`'s row that conflicts with the row keyed `$2`, updating it.
    upsert: &'static str,
    /// Whether the conflict key holds the tenant id: then only a row of the other tenant can
    /// conflict with the other tenant's row; otherwise the upsert proposes a row of its own
    /// tenant that collides with the other tenant's key.
    key_has_tenant: bool,
}

const TABLES: &[Table] = &[
    Table {
        name: "tenants",
        insert: "INSERT INTO tenants (tenant_id, name, profile_version) VALUES ($1, $2, 1)
                 RETURNING tenant_id::text",
        row: "tenant_id = $1 AND tenant_id::text = $2",
        set: "profile_version = 2",
        marker: "profile_version",
        upsert: "INSERT INTO tenants (tenant_id, name, profile_version) VALUES ($1, $2, 1)
                 ON CONFLICT (tenant_id) DO UPDATE SET profile_version = 2",
        key_has_tenant: true,
    },
    Table {
        name: "orders",
        insert: "INSERT INTO orders (tenant_id, order_id, version, status, customer_id, currency,
                                     total_cents, items, occurred_at, last_event_id)
                 VALUES ($1, $2, 1, 'created', 'c', 'EUR', 100, '[]', now(), gen_random_uuid())
                 RETURNING order_id",
        row: "tenant_id = $1 AND order_id = $2",
        set: "version = 2",
        marker: "version",
        upsert: "INSERT INTO orders (tenant_id, order_id, version, status, customer_id, currency,
                                     total_cents, items, occurred_at, last_event_id)
                 VALUES ($1, $2, 1, 'created', 'c', 'EUR', 100, '[]', now(), gen_random_uuid())
                 ON CONFLICT (tenant_id, order_id) DO UPDATE SET version = 2",
        key_has_tenant: true,
    },
    Table {
        name: "tenant_settings",
        insert: "INSERT INTO tenant_settings (tenant_id, key, value, version, occurred_at,
                                              last_event_id)
                 VALUES ($1, $2, '1', 1, now(), gen_random_uuid()) RETURNING key",
        row: "tenant_id = $1 AND key = $2",
        set: "version = 2",
        marker: "version",
        upsert: "INSERT INTO tenant_settings (tenant_id, key, value, version, occurred_at,
                                              last_event_id)
                 VALUES ($1, $2, '1', 1, now(), gen_random_uuid())
                 ON CONFLICT (tenant_id, key) DO UPDATE SET version = 2",
        key_has_tenant: true,
    },
    Table {
        name: "sla_policies",
        insert: "INSERT INTO sla_policies (tenant_id, key, value, version, occurred_at,
                                           last_event_id)
                 VALUES ($1, $2, '{}', 1, now(), gen_random_uuid()) RETURNING key",
        row: "tenant_id = $1 AND key = $2",
        set: "version = 2",
        marker: "version",
        upsert: "INSERT INTO sla_policies (tenant_id, key, value, version, occurred_at,
                                           last_event_id)
                 VALUES ($1, $2, '{}', 1, now(), gen_random_uuid())
                 ON CONFLICT (tenant_id, key) DO UPDATE SET version = 2",
        key_has_tenant: true,
    },
    // Due in a century: no timer of another test fires these.
    Table {
        name: "sla_deadlines",
        insert: "INSERT INTO sla_deadlines (tenant_id, order_id, transition, started_at, due_at,
                                            threshold_ms, policy_version)
                 VALUES ($1, $2, 'CREATED->CONFIRMED', now(), now() + interval '100 years', 1, 1)
                 RETURNING order_id",
        row: "tenant_id = $1 AND order_id = $2",
        set: "threshold_ms = 2",
        marker: "threshold_ms",
        upsert: "INSERT INTO sla_deadlines (tenant_id, order_id, transition, started_at, due_at,
                                            threshold_ms, policy_version)
                 VALUES ($1, $2, 'CREATED->CONFIRMED', now(), now() + interval '100 years', 1, 1)
                 ON CONFLICT (tenant_id, order_id, transition) DO UPDATE SET threshold_ms = 2",
        key_has_tenant: true,
    },
    Table {
        name: "sla_violations",
        insert: "INSERT INTO sla_violations (violation_id, tenant_id, kind, threshold_ms,
                                             observed_ms, event_count, policy_version, detected_at)
                 VALUES ($2::uuid, $1, 'DEADLINE_MISSED', 1, 1, 1, 1, now())
                 RETURNING violation_id::text",
        row: "tenant_id = $1 AND violation_id = $2::uuid",
        set: "threshold_ms = 2",
        marker: "threshold_ms",
        upsert: "INSERT INTO sla_violations (violation_id, tenant_id, kind, threshold_ms,
                                             observed_ms, event_count, policy_version, detected_at)
                 VALUES ($2::uuid, $1, 'DEADLINE_MISSED', 1, 1, 1, 1, now())
                 ON CONFLICT (violation_id) DO UPDATE SET threshold_ms = 2",
        key_has_tenant: false,
    },
    // Queued for a consumer group no drainer runs.
    Table {
        name: "cache_outbox",
        insert: "INSERT INTO cache_outbox (consumer_group, tenant_id, kind, key_id, version)
                 VALUES ('isolation-matrix', $1, 'order', $2, 1) RETURNING id::text",
        row: "tenant_id = $1 AND id = $2::bigint",
        set: "version = 2",
        marker: "version",
        upsert: "INSERT INTO cache_outbox (id, consumer_group, tenant_id, kind, key_id, version)
                 OVERRIDING SYSTEM VALUE
                 VALUES ($2::bigint, 'isolation-matrix', $1, 'order', 'upsert', 1)
                 ON CONFLICT (id) DO UPDATE SET version = 2",
        key_has_tenant: false,
    },
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Select,
    Insert,
    Update,
    Delete,
    Upsert,
}

const OPS: [Op; 5] = [Op::Select, Op::Insert, Op::Update, Op::Delete, Op::Upsert];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    Own,
    OtherTenant,
    NoContext,
}

/// What a statement did, as the worker saw it.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Rows(u64),
    RefusedByRls,
    NoPrivilege,
    Failed(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Rows(n) => write!(f, "{n} row(s)"),
            Outcome::RefusedByRls => write!(f, "RLS refused (42501)"),
            Outcome::NoPrivilege => write!(f, "no privilege (42501)"),
            Outcome::Failed(error) => write!(f, "FAILED: {error}"),
        }
    }
}

fn outcome(result: Result<u64, sqlx::Error>) -> Outcome {
    match result {
        Ok(n) => Outcome::Rows(n),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => {
            if e.message().contains("row-level security") {
                Outcome::RefusedByRls
            } else if e.message().contains("permission denied") {
                Outcome::NoPrivilege
            } else {
                Outcome::Failed(e.to_string())
            }
        }
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// A seeded row: its tenant and its key.
#[derive(Clone)]
struct Target {
    tenant: Uuid,
    key: String,
}

/// One table's tenants and seeded rows: tenant A (one tenant and row per operation, so that
/// each operation starts from a row at marker 1), tenant B (one row), and the tenant a new row
/// is inserted for (no rows).
struct Fixture {
    a: Vec<Target>,
    b: Target,
    new_tenant: Uuid,
}

async fn seed(admin: &PgPool, table: &Table) -> Fixture {
    let mut rows = Vec::new();
    for _ in 0..=OPS.len() {
        let tenant = Uuid::new_v4();
        if table.name != "tenants" {
            sqlx::query("INSERT INTO tenants (tenant_id) VALUES ($1)")
                .bind(tenant)
                .execute(admin)
                .await
                .unwrap();
        }
        let key: String = sqlx::query_scalar(table.insert)
            .bind(tenant)
            .bind(Uuid::new_v4().to_string())
            .fetch_one(admin)
            .await
            .unwrap();
        rows.push(Target { tenant, key });
    }
    let b = rows.pop().unwrap();
    Fixture {
        a: rows,
        b,
        new_tenant: Uuid::new_v4(),
    }
}

fn op_index(op: Op) -> usize {
    OPS.iter().position(|o| *o == op).unwrap()
}

/// Runs one operation as the worker, committing what succeeds; returns what the worker saw and
/// what the owner sees afterwards.
async fn run(
    worker: &PgPool,
    admin: &PgPool,
    table: &Table,
    fixture: &Fixture,
    op: Op,
    scenario: Scenario,
) -> (Outcome, String) {
    let own = &fixture.a[op_index(op)];
    let (context, target) = match scenario {
        Scenario::Own => (Some(own.tenant), own.clone()),
        Scenario::OtherTenant => (Some(own.tenant), fixture.b.clone()),
        Scenario::NoContext => (None, own.clone()),
    };
    let mut tx: Transaction<'_, Postgres> = worker.begin().await.unwrap();
    let result = match op {
        Op::Select => {
            // Unfiltered as itself (only its own row may show), by key otherwise.
            let sql = match scenario {
                Scenario::OtherTenant => {
                    format!("SELECT count(*) FROM {} WHERE {}", table.name, table.row)
                }
                _ => format!(
                    "SELECT count(*) FROM {} WHERE $1::uuid IS NOT NULL AND $2::text IS NOT NULL",
                    table.name
                ),
            };
            if let Some(tenant) = context {
                sink::set_tenant(&mut tx, tenant).await.unwrap();
            }
            sqlx::query_scalar::<_, i64>(&sql)
                .bind(target.tenant)
                .bind(&target.key)
                .fetch_one(&mut *tx)
                .await
                .map(|n| n as u64)
        }
        Op::Insert => {
            // Its own: a new tenant registers itself and inserts its row; the other tenant's
            // row is proposed under A's context; without context, a new tenant's row.
            let (context, tenant) = match scenario {
                Scenario::Own => (Some(fixture.new_tenant), fixture.new_tenant),
                Scenario::OtherTenant => (context, fixture.b.tenant),
                Scenario::NoContext => (None, fixture.new_tenant),
            };
            if let Some(tenant) = context {
                sink::set_tenant(&mut tx, tenant).await.unwrap();
            }
            if scenario == Scenario::Own && table.name != "tenants" {
                {
                    sqlx::query("INSERT INTO tenants (tenant_id) VALUES ($1)")
                        .bind(tenant)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                }
            }
            sqlx::query(table.insert)
                .bind(tenant)
                .bind(Uuid::new_v4().to_string())
                .execute(&mut *tx)
                .await
                .map(|r| r.rows_affected())
        }
        Op::Update | Op::Delete | Op::Upsert => {
            if let Some(tenant) = context {
                sink::set_tenant(&mut tx, tenant).await.unwrap();
            }
            let proposed = match scenario {
                Scenario::OtherTenant if !table.key_has_tenant => own.tenant,
                _ => target.tenant,
            };
            let sql = match op {
                Op::Update => format!(
                    "UPDATE {} SET {} WHERE {}",
                    table.name, table.set, table.row
                ),
                Op::Delete => format!("DELETE FROM {} WHERE {}", table.name, table.row),
                _ => table.upsert.to_owned(),
            };
            sqlx::query(&sql)
                .bind(if op == Op::Upsert {
                    proposed
                } else {
                    target.tenant
                })
                .bind(&target.key)
                .execute(&mut *tx)
                .await
                .map(|r| r.rows_affected())
        }
    };
    let seen = outcome(result);
    if matches!(seen, Outcome::Rows(_)) {
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
    let after = if op == Op::Insert {
        let tenant = match scenario {
            Scenario::OtherTenant => fixture.b.tenant,
            _ => fixture.new_tenant,
        };
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {} WHERE tenant_id = $1",
            table.name
        ))
        .bind(tenant)
        .fetch_one(admin)
        .await
        .unwrap();
        format!("{n} row(s) of its tenant")
    } else {
        let marker: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT {}::bigint FROM {} WHERE {}",
            table.marker, table.name, table.row
        ))
        .bind(target.tenant)
        .bind(&target.key)
        .fetch_optional(admin)
        .await
        .unwrap();
        marker.map_or("row gone".to_owned(), |m| format!("marker {m}"))
    };
    (seen, after)
}

/// What the matrix must show, from the privileges the README documents.
fn expected(table: &Table, op: Op, scenario: Scenario) -> (Outcome, String) {
    let granted = privileges::table_privileges(table.name);
    let needs: &[&str] = match op {
        Op::Select => &["SELECT"],
        Op::Insert => &["INSERT"],
        Op::Update => &["UPDATE"],
        Op::Delete => &["DELETE"],
        Op::Upsert => &["INSERT", "UPDATE"],
    };
    let allowed = needs.iter().all(|p| granted.contains(p));
    let unchanged = "marker 1".to_owned();
    let inserted = |n: u32| format!("{n} row(s) of its tenant");
    if !allowed {
        let after = if op == Op::Insert {
            inserted(u32::from(scenario == Scenario::OtherTenant))
        } else {
            unchanged
        };
        return (Outcome::NoPrivilege, after);
    }
    match (scenario, op) {
        (Scenario::Own, Op::Select) => (Outcome::Rows(1), unchanged),
        (Scenario::Own, Op::Insert) => (Outcome::Rows(1), inserted(1)),
        (Scenario::Own, Op::Update | Op::Upsert) => (Outcome::Rows(1), "marker 2".to_owned()),
        (Scenario::Own, Op::Delete) => (Outcome::Rows(1), "row gone".to_owned()),
        (Scenario::OtherTenant, Op::Insert) => (Outcome::RefusedByRls, inserted(1)),
        (Scenario::NoContext, Op::Insert) => (Outcome::RefusedByRls, inserted(0)),
        (_, Op::Upsert) => (Outcome::RefusedByRls, unchanged),
        (_, Op::Select | Op::Update | Op::Delete) => (Outcome::Rows(0), unchanged),
    }
}

fn cell((outcome, after): &(Outcome, String)) -> String {
    format!("{outcome}; owner sees {after}")
}

/// Every RLS table × SELECT, INSERT, UPDATE, DELETE, upsert, as the worker: under the row's own
/// tenant (allowed where granted), under another tenant (nothing seen, nothing changed, foreign
/// rows refused by WITH CHECK) and with no context (nothing at all); an operation the role has
/// no privilege for is refused with 42501 whatever the context. Cross-tenant and contextless
/// statements commit, and the owner then reads the target row, so "unchanged" is the
/// database's word, not a rolled-back transaction's.
#[tokio::test]
async fn every_rls_table_and_operation_is_isolated_by_tenant_context() {
    let admin = support::admin_pool().await;
    let worker = worker_pool(2).await;
    let rls_tables: Vec<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_class
          WHERE relnamespace = 'public'::regnamespace AND relrowsecurity ORDER BY 1",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    let mut in_matrix: Vec<String> = TABLES.iter().map(|t| t.name.to_owned()).collect();
    in_matrix.sort();
    assert_eq!(rls_tables, in_matrix, "every RLS table is in the matrix");

    let scenarios = [Scenario::NoContext, Scenario::OtherTenant, Scenario::Own];
    let mut actual = Vec::new();
    let mut wanted = Vec::new();
    let mut fixtures = Vec::new();
    for table in TABLES {
        let fixture = seed(&admin, table).await;
        let mut rows: Vec<Vec<String>> = vec![Vec::new(); OPS.len()];
        let mut expected_rows = rows.clone();
        // Own-tenant changes last, so that the others run against the seeded rows.
        for scenario in scenarios {
            for (i, op) in OPS.iter().enumerate() {
                rows[i].push(cell(
                    &run(&worker, &admin, table, &fixture, *op, scenario).await,
                ));
                expected_rows[i].push(cell(&expected(table, *op, scenario)));
            }
        }
        for (i, op) in OPS.iter().enumerate() {
            let label = format!("{:<16} {:<7}", table.name, format!("{op:?}"));
            actual.push(format!("{label} | {}", rows[i].join(" | ")));
            wanted.push(format!("{label} | {}", expected_rows[i].join(" | ")));
        }
        fixtures.push((table, fixture));
    }
    cleanup(&admin, &fixtures).await;
    let header = "table            op      | no context | other tenant's row | own row";
    let matrix = format!("{header}\n{}", actual.join("\n"));
    println!("{matrix}");
    assert!(
        actual == wanted,
        "isolation matrix differs.\nactual:\n{matrix}\nexpected:\n{header}\n{}",
        wanted.join("\n")
    );
}

/// Removes the matrix's rows (the shared database outlives the test).
async fn cleanup(admin: &PgPool, fixtures: &[(&Table, Fixture)]) {
    let tenants: Vec<Uuid> = fixtures
        .iter()
        .flat_map(|(_, f)| {
            f.a.iter()
                .map(|t| t.tenant)
                .chain([f.b.tenant, f.new_tenant])
        })
        .collect();
    for table in TABLES.iter().rev() {
        sqlx::query(&format!(
            "DELETE FROM {} WHERE tenant_id = ANY($1)",
            table.name
        ))
        .bind(&tenants)
        .execute(admin)
        .await
        .unwrap();
    }
}
