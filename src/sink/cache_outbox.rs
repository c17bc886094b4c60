//! The cache outbox, all of its SQL: `cache_outbox` (per tenant, under RLS) and
//! `shared_cache_outbox` (shared reference data) record the Redis work of each committed row, in
//! the row's own statement, and lose it once Redis has it.
//!
//! Life of an outbox row: queued by the upsert that wrote its row ([`tenant_upsert_tail`],
//! [`shared_upsert_tail`], or for orders inside the database function `write_order_batch`;
//! same statement, so no extra round trip); after the batch's Redis write succeeded its id
//! travels in the ledger and is deleted by the next upsert of the same tenant (the same tail;
//! for orders, a `DELETE` in `write_order_batch` just before it) or by the drainer's sweep
//! ([`delete_applied`]); left behind by a crash or a Redis outage, it is claimed by the drainer
//! ([`claim`], found through [`pending_tenants`]).

use std::collections::HashMap;
use std::time::Duration;

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::tenant::set_tenant;
use super::SinkError;
use crate::domain::{CacheRef, ConfigTarget, Keyspace, TenantMap};

/// The `kind` column: which cached value an outbox row stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OutboxKind {
    Order,
    Profile,
    Entry(TenantMap),
    Category,
}

impl OutboxKind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Order => "order",
            Self::Profile => "profile",
            Self::Entry(map) => map.name(),
            Self::Category => "category",
        }
    }
}

/// The end of a tenant's upsert statement, after its CTE `upserted` (which returns `key_id`,
/// `version` and `value`): queue one outbox row per row written, delete the applied outbox rows
/// (their ids are a parameter), and return `(outbox id, key_id, version, value)` per row.
/// `group`, `tenant` and `applied` are the placeholders (`$12`, …) of the statement's
/// parameters holding the consumer group, the tenant and the applied outbox ids.
pub(super) fn tenant_upsert_tail(
    kind: OutboxKind,
    group: &str,
    tenant: &str,
    applied: &str,
) -> String {
    format!(
        "queued AS (
             INSERT INTO cache_outbox (consumer_group, tenant_id, kind, key_id, version)
             SELECT {group}, {tenant}, '{kind}', key_id, version FROM upserted
             RETURNING id, key_id
         ),
         cleared AS (
             DELETE FROM cache_outbox WHERE id = ANY({applied})
         )
         SELECT q.id, u.key_id, u.version, u.value
           FROM upserted u JOIN queued q ON q.key_id = u.key_id",
        kind = kind.as_str()
    )
}

/// [`tenant_upsert_tail`] for shared rows: queues in `shared_cache_outbox`.
pub(super) fn shared_upsert_tail(kind: OutboxKind, group: &str) -> String {
    format!(
        "queued AS (
             INSERT INTO shared_cache_outbox (consumer_group, kind, key_id, version)
             SELECT {group}, '{kind}', key_id, version FROM upserted
             RETURNING id, key_id
         )
         SELECT q.id, u.key_id, u.version, u.value
           FROM upserted u JOIN queued q ON q.key_id = u.key_id",
        kind = kind.as_str()
    )
}

/// Deletes outbox rows already applied to Redis, each tenant's under its own context, in one
/// transaction.
pub async fn delete_applied(
    pool: &PgPool,
    applied: &HashMap<Keyspace, Vec<i64>>,
) -> Result<(), SinkError> {
    if applied.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    delete_claimed(&mut tx, applied).await?;
    tx.commit().await?;
    Ok(())
}

/// Deletes outbox rows by id, per keyspace (under each tenant's context), in `tx`.
pub async fn delete_claimed(
    tx: &mut Transaction<'_, Postgres>,
    ids: &HashMap<Keyspace, Vec<i64>>,
) -> Result<(), SinkError> {
    for (space, ids) in ids {
        let table = match space {
            Keyspace::Tenant(tenant) => {
                set_tenant(tx, *tenant).await?;
                "cache_outbox"
            }
            Keyspace::Reference => "shared_cache_outbox",
        };
        sqlx::query(&format!("DELETE FROM {table} WHERE id = ANY($1)"))
            .bind(ids)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// One outbox row locked by [`claim`]: its id and what it refers to (`None`: a kind this
/// version does not know, to be deleted).
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub cache_ref: Option<CacheRef>,
}

/// Claims up to `max` of a tenant's (or, with `None`, the shared) outbox rows of consumer
/// group `group` older than `min_age`, locking them in `tx` (whose context is the tenant's;
/// other drainers skip them). The caller deletes, with [`delete_claimed`], the rows whose work
/// is done; the rest stay queued when `tx` ends.
pub async fn claim(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    tenant: Option<Uuid>,
    min_age: Duration,
    max: i64,
) -> Result<Vec<Claimed>, SinkError> {
    let rows: Vec<(i64, String, String)> = match tenant {
        Some(tenant) => {
            sqlx::query_as(
                "SELECT id, kind, key_id FROM cache_outbox
                  WHERE consumer_group = $1 AND tenant_id = $2
                    AND created_at < now() - make_interval(secs => $3)
                  ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED",
            )
            .bind(group)
            .bind(tenant)
            .bind(min_age.as_secs_f64())
            .bind(max)
            .fetch_all(&mut **tx)
            .await?
        }
        None => {
            sqlx::query_as(
                "SELECT id, kind, key_id FROM shared_cache_outbox
                  WHERE consumer_group = $1
                    AND created_at < now() - make_interval(secs => $2)
                  ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED",
            )
            .bind(group)
            .bind(min_age.as_secs_f64())
            .bind(max)
            .fetch_all(&mut **tx)
            .await?
        }
    };
    Ok(rows
        .into_iter()
        .map(|(id, kind, key_id)| {
            let cache_ref = cache_ref_of(tenant, &kind, key_id);
            if cache_ref.is_none() {
                tracing::warn!(
                    kind,
                    "Dropped an outbox row of a kind this version does not know."
                );
            }
            Claimed { id, cache_ref }
        })
        .collect())
}

/// What an outbox row's `kind` and `key_id` refer to; `None` for a kind this version does not
/// know.
fn cache_ref_of(tenant: Option<Uuid>, kind: &str, key_id: String) -> Option<CacheRef> {
    let entry = |map| {
        tenant.map(|tenant| {
            CacheRef::Config(ConfigTarget::Entry {
                tenant,
                map,
                key: key_id.clone(),
            })
        })
    };
    match (tenant, kind) {
        (Some(tenant), "order") => Some(CacheRef::Order {
            tenant,
            order_id: key_id,
        }),
        (Some(tenant), "profile") => Some(CacheRef::Config(ConfigTarget::Profile { tenant })),
        (None, "category") => Some(CacheRef::Config(ConfigTarget::Category { id: key_id })),
        (Some(_), kind) => TenantMap::ALL
            .into_iter()
            .find(|map| OutboxKind::Entry(*map).as_str() == kind)
            .and_then(entry),
        _ => None,
    }
}

/// Tenants after `after` (in id order) with cache work queued by consumer group `group` and
/// older than `min_age` (at most `max`). Ids only, through the one SECURITY DEFINER function.
pub async fn pending_tenants(
    pool: &PgPool,
    group: &str,
    min_age: Duration,
    after: Option<Uuid>,
    max: i32,
) -> Result<Vec<Uuid>, SinkError> {
    Ok(sqlx::query_scalar(
        "SELECT cache_outbox_pending_tenants($1, make_interval(secs => $2), $3, $4)",
    )
    .bind(group)
    .bind(min_age.as_secs_f64())
    .bind(after)
    .bind(max)
    .fetch_all(pool)
    .await?)
}

/// The cache outbox of one consumer group, for its gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxState {
    /// Rows queued, tenants' and shared.
    pub rows: i64,
    /// Age of the oldest, by Postgres's clock (0 when none).
    pub oldest_ms: i64,
}

/// The rows of consumer group `group` queued in both outboxes and the age of the oldest,
/// through the SECURITY DEFINER function `cache_outbox_state` (the worker's role sees one
/// tenant's rows at a time).
pub async fn outbox_state(pool: &PgPool, group: &str) -> Result<OutboxState, SinkError> {
    let (rows, oldest_ms) = sqlx::query_as("SELECT * FROM cache_outbox_state($1)")
        .bind(group)
        .fetch_one(pool)
        .await?;
    Ok(OutboxState { rows, oldest_ms })
}

/// Outbox rows of consumer group `group` still queued, counted as the owner (bypassing RLS),
/// for the demo's wait.
pub async fn queued_count(admin: &PgPool, group: &str) -> Result<i64, SinkError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM cache_outbox WHERE consumer_group = $1")
            .bind(group)
            .fetch_one(admin)
            .await?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_maps_back_to_the_ref_it_was_queued_for() {
        let tenant = Uuid::from_u128(7);
        let kinds = [
            (OutboxKind::Order, Some(tenant)),
            (OutboxKind::Profile, Some(tenant)),
            (OutboxKind::Entry(TenantMap::Settings), Some(tenant)),
            (OutboxKind::Entry(TenantMap::SlaPolicies), Some(tenant)),
            (OutboxKind::Category, None),
        ];
        for (kind, tenant) in kinds {
            let r = cache_ref_of(tenant, kind.as_str(), "k".into()).expect("known kind");
            assert_eq!(r.tenant(), tenant, "{kind:?}");
        }
        assert_eq!(cache_ref_of(Some(tenant), "later-kind", "k".into()), None);
        assert_eq!(cache_ref_of(None, "order", "k".into()), None);
    }
}
