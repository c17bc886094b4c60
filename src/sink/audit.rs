//! Counts that check an end state against an oracle, read as the owner (who bypasses RLS and so
//! sees every tenant's rows): for the demo's summary.

use sqlx::PgPool;
use uuid::Uuid;

use super::SinkError;
use crate::domain::TenantMap;

/// Order rows of `tenants`.
pub async fn orders_of(admin: &PgPool, tenants: &[Uuid]) -> Result<i64, SinkError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE tenant_id = ANY($1)")
            .bind(tenants)
            .fetch_one(admin)
            .await?,
    )
}

/// Order rows at exactly the expected `(tenant, order id, version)`.
pub async fn orders_at(admin: &PgPool, expected: &[(Uuid, String, i64)]) -> Result<i64, SinkError> {
    let (tenants, orders, versions) = unzip3(expected);
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM orders o
           JOIN UNNEST($1::uuid[], $2::text[], $3::int8[]) AS e(tenant_id, order_id, version)
             ON o.tenant_id = e.tenant_id AND o.order_id = e.order_id AND o.version = e.version",
    )
    .bind(tenants)
    .bind(orders)
    .bind(versions)
    .fetch_one(admin)
    .await?)
}

/// Tenant profiles at exactly the expected `(tenant, profile version)`.
pub async fn profiles_at(admin: &PgPool, expected: &[(Uuid, i64)]) -> Result<i64, SinkError> {
    let (tenants, versions): (Vec<Uuid>, Vec<i64>) = expected.iter().copied().unzip();
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM tenants t
           JOIN UNNEST($1::uuid[], $2::int8[]) AS e(tenant_id, version)
             ON t.tenant_id = e.tenant_id AND t.profile_version = e.version",
    )
    .bind(tenants)
    .bind(versions)
    .fetch_one(admin)
    .await?)
}

/// Entries of `map` at exactly the expected `(tenant, key, version)` (tombstones included).
pub async fn entries_at(
    admin: &PgPool,
    map: TenantMap,
    expected: &[(Uuid, String, i64)],
) -> Result<i64, SinkError> {
    let (tenants, keys, versions) = unzip3(expected);
    let sql = format!(
        "SELECT count(*) FROM {table} s
           JOIN UNNEST($1::uuid[], $2::text[], $3::int8[]) AS e(tenant_id, key, version)
             ON s.tenant_id = e.tenant_id AND s.key = e.key AND s.version = e.version",
        table = map.table()
    );
    Ok(sqlx::query_scalar(&sql)
        .bind(tenants)
        .bind(keys)
        .bind(versions)
        .fetch_one(admin)
        .await?)
}

/// Categories at exactly the expected `(id, version)`.
pub async fn categories_at(admin: &PgPool, expected: &[(String, i64)]) -> Result<i64, SinkError> {
    let (ids, versions): (Vec<String>, Vec<i64>) = expected.iter().cloned().unzip();
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM categories c
           JOIN UNNEST($1::text[], $2::int8[]) AS e(id, version)
             ON c.category_id = e.id AND c.version = e.version",
    )
    .bind(ids)
    .bind(versions)
    .fetch_one(admin)
    .await?)
}

fn unzip3(rows: &[(Uuid, String, i64)]) -> (Vec<Uuid>, Vec<String>, Vec<i64>) {
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    for (a, b, c) in rows {
        out.0.push(*a);
        out.1.push(b.clone());
        out.2.push(*c);
    }
    out
}

/// The ids of the SLA violations stored for `tenants`.
pub async fn violations_of(admin: &PgPool, tenants: &[Uuid]) -> Result<Vec<Uuid>, SinkError> {
    Ok(sqlx::query_scalar(
        "SELECT violation_id FROM sla_violations WHERE tenant_id = ANY($1) ORDER BY 1",
    )
    .bind(tenants)
    .fetch_all(admin)
    .await?)
}
