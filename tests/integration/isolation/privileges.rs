//! The worker role's privileges, read from the catalog, are exactly the documented minimum: the
//! lists below, which README's "Worker role privileges" repeats line for line.

use sqlx::PgPool;

use crate::support;

const ROLE: &str = "tenantstream_worker";

/// Table → privileges, in README's order (PUBLIC's grants included: `categories`' SELECT).
const TABLES: &[(&str, &str)] = &[
    ("cache_outbox", "SELECT, INSERT, UPDATE, DELETE"),
    ("categories", "SELECT, INSERT, UPDATE"),
    ("consumer_offsets", "SELECT, INSERT, UPDATE"),
    ("orders", "SELECT, INSERT, UPDATE"),
    ("shared_cache_outbox", "SELECT, INSERT, UPDATE, DELETE"),
    ("sla_deadlines", "SELECT, INSERT, DELETE"),
    ("sla_outbox", "SELECT, INSERT, UPDATE, DELETE"),
    ("sla_policies", "SELECT, INSERT, UPDATE"),
    ("sla_violations", "SELECT, INSERT, UPDATE"),
    ("tenant_settings", "SELECT, INSERT, UPDATE"),
    ("tenants", "SELECT, INSERT, UPDATE"),
];

/// The functions of `public` (extensions' left out) the role may execute.
const FUNCTIONS: &[&str] = &[
    "cache_outbox_pending_tenants(text,interval,uuid,integer)",
    "cache_outbox_state(text)",
    "claim_sla_violations(bigint,bigint,integer)",
    "fire_due_deadlines(bigint,integer)",
    "order_cache_json(orders)",
    "read_orders(uuid[],integer[],integer[],text[])",
    "record_processing_lag(uuid[],integer[],integer[],bigint[],bigint,bigint,jsonb)",
    "sla_state(bigint)",
    "sla_status_rank(text)",
    "sla_violation_id(uuid,text,text)",
    "tenant_profile_json(tenants)",
    "tenant_statuses(uuid[])",
    "write_order_batch(text,text,boolean,uuid[],integer[],integer[],text[],bigint[],text[],\
     text[],text[],bigint[],text[],bigint[],uuid[],bigint[],integer[],integer[],boolean,jsonb,\
     text[],text[],bigint[])",
];

/// Everything else the role holds.
const OTHER: &[&str] = &[
    "- schemas: `public` USAGE",
    "- database: CONNECT, TEMPORARY",
    "- sequences: none",
    "- role attributes: LOGIN, INHERIT",
    "- member of: none",
    "- members: none",
    "- default privileges: none",
];

/// The documented privileges of `table` (for the isolation matrix).
pub(super) fn table_privileges(table: &str) -> Vec<&'static str> {
    TABLES
        .iter()
        .find(|(name, _)| *name == table)
        .map_or(Vec::new(), |(_, privileges)| {
            privileges.split(", ").collect()
        })
}

fn table_line(table: &str, privileges: &str) -> String {
    format!("| `{table}` | {privileges} |")
}

fn function_line(signature: &str) -> String {
    format!("- `{signature}`")
}

fn documented() -> Vec<String> {
    TABLES
        .iter()
        .map(|(t, p)| table_line(t, p))
        .chain(FUNCTIONS.iter().map(|f| function_line(f)))
        .chain(OTHER.iter().map(|o| (*o).to_owned()))
        .collect()
}

/// `(object, privilege)` pairs → one "a, b" list per object, in query order.
fn grouped(pairs: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (object, privilege) in pairs {
        match out.last_mut() {
            Some((last, list)) if *last == object => {
                list.push_str(", ");
                list.push_str(&privilege);
            }
            _ => out.push((object, privilege)),
        }
    }
    out
}

fn listed(items: Vec<String>) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

async fn strings(admin: &PgPool, sql: &str) -> Vec<String> {
    sqlx::query_scalar(sql)
        .bind(ROLE)
        .fetch_all(admin)
        .await
        .unwrap()
}

/// What the catalog says the role holds, in the documented lines' shape.
async fn actual(admin: &PgPool) -> Vec<String> {
    // Column grants count: has_any_column_privilege is true for a table grant or any column's.
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, p.privilege
           FROM pg_class c
          CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE',
                                  'REFERENCES', 'TRIGGER']) WITH ORDINALITY AS p(privilege, n)
          WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
            AND CASE WHEN p.privilege IN ('SELECT', 'INSERT', 'UPDATE', 'REFERENCES')
                     THEN has_any_column_privilege($1, c.oid, p.privilege)
                     ELSE has_table_privilege($1, c.oid, p.privilege) END
          ORDER BY c.relname, p.n",
    )
    .bind(ROLE)
    .fetch_all(admin)
    .await
    .unwrap();
    let functions = strings(
        admin,
        "SELECT p.oid::regprocedure::text FROM pg_proc p
          WHERE p.pronamespace = 'public'::regnamespace
            AND NOT EXISTS (SELECT FROM pg_depend d
                             WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                               AND d.deptype = 'e')
            AND has_function_privilege($1, p.oid, 'EXECUTE')
          ORDER BY 1",
    )
    .await;
    let schemas = strings(
        admin,
        "SELECT format('`%s` %s', n.nspname, p) FROM pg_namespace n
          CROSS JOIN unnest(ARRAY['USAGE', 'CREATE']) p
          WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
            AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
            AND has_schema_privilege($1, n.oid, p)
          ORDER BY n.nspname, p DESC",
    )
    .await;
    let database = strings(
        admin,
        "SELECT p FROM unnest(ARRAY['CONNECT', 'CREATE', 'TEMPORARY']) p
          WHERE has_database_privilege($1, current_database(), p)",
    )
    .await;
    let sequences = strings(
        admin,
        "SELECT format('`%s` %s', c.relname, p) FROM pg_class c
          CROSS JOIN unnest(ARRAY['USAGE', 'SELECT', 'UPDATE']) p
          WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'S'
            AND has_sequence_privilege($1, c.oid, p)
          ORDER BY 1",
    )
    .await;
    let attributes = strings(
        admin,
        "SELECT a FROM pg_roles r, LATERAL (VALUES
                  (1, 'SUPERUSER', r.rolsuper), (2, 'LOGIN', r.rolcanlogin),
                  (3, 'INHERIT', r.rolinherit), (4, 'CREATEROLE', r.rolcreaterole),
                  (5, 'CREATEDB', r.rolcreatedb), (6, 'REPLICATION', r.rolreplication),
                  (7, 'BYPASSRLS', r.rolbypassrls)) AS f(n, a, held)
          WHERE r.rolname = $1 AND held ORDER BY n",
    )
    .await;
    let member_of = strings(
        admin,
        "SELECT format('`%s`', roleid::regrole) FROM pg_auth_members
          WHERE member = $1::regrole ORDER BY 1",
    )
    .await;
    let members = strings(
        admin,
        "SELECT format('`%s`', member::regrole) FROM pg_auth_members
          WHERE roleid = $1::regrole ORDER BY 1",
    )
    .await;
    let defaults = strings(
        admin,
        "SELECT format('%s %s', d.defaclobjtype, a.privilege_type)
           FROM pg_default_acl d, aclexplode(d.defaclacl) a
          WHERE a.grantee = $1::regrole ORDER BY 1",
    )
    .await;
    grouped(tables)
        .iter()
        .map(|(t, p)| table_line(t, p))
        .chain(functions.iter().map(|f| function_line(f)))
        .chain([
            format!("- schemas: {}", listed(schemas)),
            format!("- database: {}", listed(database)),
            format!("- sequences: {}", listed(sequences)),
            format!("- role attributes: {}", listed(attributes)),
            format!("- member of: {}", listed(member_of)),
            format!("- members: {}", listed(members)),
            format!("- default privileges: {}", listed(defaults)),
        ])
        .collect()
}

/// The catalog (tables and views of `public` with column grants counted, functions of `public`
/// without extensions', schemas, the database, sequences, role attributes, memberships both
/// ways, default privileges) gives exactly the documented list, and README holds every line.
#[tokio::test]
async fn worker_role_privileges_are_exactly_the_documented_minimum() {
    let admin = support::admin_pool().await;
    let actual = actual(&admin).await;
    let documented = documented();
    assert!(
        actual == documented,
        "worker privileges differ from the documented minimum.\nactual:\n{}\ndocumented:\n{}",
        actual.join("\n"),
        documented.join("\n")
    );
    let readme = std::fs::read_to_string(support::manifest_dir().join("README.md")).unwrap();
    let section = readme
        .split("### Worker role privileges")
        .nth(1)
        .expect("README has a \"Worker role privileges\" section")
        .split("\n#")
        .next()
        .unwrap();
    let lines: Vec<&str> = section.lines().map(str::trim).collect();
    let missing: Vec<&String> = documented
        .iter()
        .filter(|line| !lines.contains(&line.as_str()))
        .collect();
    assert!(missing.is_empty(), "README's section lacks {missing:#?}");
}
