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

/// The tenants among `tenants` that exist in `tenants` (each checked under its own context).
pub async fn known_tenants(pool: &PgPool, tenants: &[Uuid]) -> Result<HashSet<Uuid>, SinkError> {
    let mut tx = pool.begin().await?;
    let mut known = HashSet::new();
    for tenant in tenants {
        set_tenant(&mut tx, *tenant).await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE tenant_id = $1)")
                .bind(tenant)
                .fetch_one(&mut *tx)
                .await?;
        if exists {
            known.insert(*tenant);
        }
    }
    tx.commit().await?;
    Ok(known)
}
