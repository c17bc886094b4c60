//! The tenant context every RLS policy reads, set transaction-locally, and the registered
//! tenants (for strict tenants).

use std::collections::HashSet;

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::SinkError;

/// Sets the transaction-local tenant context that every RLS policy reads.
pub async fn set_tenant(tx: &mut Transaction<'_, Postgres>, tenant: Uuid) -> Result<(), SinkError> {
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(tenant.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The tenants among `tenants` that exist in `tenants`, each looked up under its own context,
/// in one round trip ([`tenant_statuses`], whose ids are the registered tenants).
pub async fn known_tenants(pool: &PgPool, tenants: &[Uuid]) -> Result<HashSet<Uuid>, SinkError> {
    let known = tenant_statuses(pool, tenants).await?;
    Ok(known.into_iter().map(|(tenant, _)| tenant).collect())
}

/// The stored status (`provisional`, `active`, `suspended`) of each of `tenants` that exists,
/// each looked up under its own context, in one round trip (the database function
/// `tenant_statuses`; the contexts it sets end with the statement's own transaction).
pub async fn tenant_statuses(
    pool: &PgPool,
    tenants: &[Uuid],
) -> Result<Vec<(Uuid, String)>, SinkError> {
    let statuses = sqlx::query_as("SELECT tenant_id, status FROM tenant_statuses($1)")
        .bind(tenants)
        .fetch_all(pool)
        .await?;
    Ok(statuses)
}
