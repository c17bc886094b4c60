//! Configuration rows: tenant profiles (in `tenants`), per-tenant entries (`tenant_settings`,
//! `sla_policies`) and shared categories, each upsert with the version guard, a deletion kept
//! as a tombstone (`value` NULL), and the rows' cache work queued in the same statement.

use std::collections::{BTreeMap, HashMap};

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::cache_outbox::{shared_upsert_tail, tenant_upsert_tail, OutboxKind};
use super::tenant::set_tenant;
use super::SinkError;
use crate::domain::{
    CacheItem, ConfigTarget, QueuedCache, TenantMap, TenantPolicy, TenantProfile, TenantStatus,
    ValidConfig,
};

impl TenantMap {
    /// The table that holds the map: the one place a map is named in SQL.
    pub fn table(self) -> &'static str {
        match self {
            Self::Settings => "tenant_settings",
            Self::SlaPolicies => "sla_policies",
        }
    }
}

/// Per tenant (and once for shared data): the profile first (it may create the tenant), then
/// each map's entries; categories outside any tenant context. `applied` holds, per tenant,
/// outbox rows to delete on the way.
pub(super) async fn write_config(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    changes: &[ValidConfig],
    tenant_policy: TenantPolicy,
    applied: &HashMap<Uuid, Vec<i64>>,
) -> Result<Vec<QueuedCache>, SinkError> {
    let mut by_tenant: BTreeMap<Option<Uuid>, Vec<&ValidConfig>> = BTreeMap::new();
    for change in latest_per_target(changes) {
        by_tenant
            .entry(change.target.tenant())
            .or_default()
            .push(change);
    }
    let mut queued = Vec::new();
    for (tenant, changes) in by_tenant {
        let Some(tenant) = tenant else {
            queued.extend(upsert_categories(tx, group, &changes).await?);
            continue;
        };
        set_tenant(tx, tenant).await?;
        let done = applied.get(&tenant).map_or(&[][..], Vec::as_slice);
        let mut entries: BTreeMap<TenantMap, Vec<&ValidConfig>> = BTreeMap::new();
        for change in changes {
            match &change.target {
                ConfigTarget::Profile { .. } => {
                    queued.extend(upsert_profile(tx, group, tenant, change, done).await?)
                }
                ConfigTarget::Entry { map, .. } => entries.entry(*map).or_default().push(change),
                ConfigTarget::Category { .. } => unreachable!("grouped under no tenant"),
            }
        }
        for (map, changes) in entries {
            let entries = TenantEntries {
                tenant,
                map,
                changes: &changes,
                tenant_policy,
                applied: done,
            };
            queued.extend(upsert_entries(tx, group, entries).await?);
        }
    }
    Ok(queued)
}

/// The newest change of each target in the batch (one statement may touch a row only once).
fn latest_per_target(changes: &[ValidConfig]) -> Vec<&ValidConfig> {
    let mut newest: BTreeMap<&ConfigTarget, &ValidConfig> = BTreeMap::new();
    for change in changes {
        newest
            .entry(&change.target)
            .and_modify(|kept| {
                if change.version > kept.version {
                    *kept = change;
                }
            })
            .or_insert(change);
    }
    newest.into_values().collect()
}

/// The tenant's profile, if newer than the stored one; creates the tenant if needed.
async fn upsert_profile(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    tenant: Uuid,
    change: &ValidConfig,
    applied: &[i64],
) -> Result<Option<QueuedCache>, SinkError> {
    let profile: TenantProfile = serde_json::from_str(change.value.as_deref().unwrap_or_default())
        .map_err(|e| SinkError::Setup(format!("profile validated but unreadable: {e}")))?;
    let sql = format!(
        "WITH upserted AS (
             INSERT INTO tenants AS t (tenant_id, status, name, tier, profile_version, updated_at)
             VALUES ($1, $2, $3, $4, $5, now())
             ON CONFLICT (tenant_id) DO UPDATE
                SET status = EXCLUDED.status, name = EXCLUDED.name, tier = EXCLUDED.tier,
                    profile_version = EXCLUDED.profile_version, updated_at = now()
              WHERE t.profile_version < EXCLUDED.profile_version
             RETURNING 'profile'::text AS key_id, t.profile_version AS version,
                       tenant_profile_json(t) AS value
         ),
         {}",
        tenant_upsert_tail(OutboxKind::Profile, "$6", "$1", "$7")
    );
    let row: Option<(i64, String, i64, String)> = sqlx::query_as(&sql)
        .bind(tenant)
        .bind(profile.status.as_str())
        .bind(&profile.name)
        .bind(&profile.tier)
        .bind(change.version)
        .bind(group)
        .bind(applied)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.map(|(outbox_id, _, version, json)| QueuedCache {
        outbox_id,
        item: CacheItem::Profile {
            tenant,
            version,
            json,
            suspended: profile.status == TenantStatus::Suspended,
        },
    }))
}

/// Column arrays of config changes, for UNNEST.
struct ChangeColumns<'a> {
    keys: Vec<&'a str>,
    values: Vec<Option<&'a str>>,
    versions: Vec<i64>,
    occurred: Vec<i64>,
    event_ids: Vec<Uuid>,
}

impl<'a> ChangeColumns<'a> {
    fn of(changes: &[&'a ValidConfig]) -> Self {
        let key = |c: &'a ValidConfig| match &c.target {
            ConfigTarget::Entry { key, .. } => key.as_str(),
            ConfigTarget::Category { id } => id.as_str(),
            ConfigTarget::Profile { .. } => "profile",
        };
        Self {
            keys: changes.iter().map(|c| key(c)).collect(),
            values: changes.iter().map(|c| c.value.as_deref()).collect(),
            versions: changes.iter().map(|c| c.version).collect(),
            occurred: changes.iter().map(|c| c.occurred_at).collect(),
            event_ids: changes.iter().map(|c| c.event_id).collect(),
        }
    }
}

/// One tenant's changes of one map.
struct TenantEntries<'a> {
    tenant: Uuid,
    map: TenantMap,
    changes: &'a [&'a ValidConfig],
    tenant_policy: TenantPolicy,
    /// Outbox rows of the tenant already applied to Redis, deleted by the same statement.
    applied: &'a [i64],
}

/// Settings or SLA policies of one tenant: upsert the newer ones (a `None` value is kept as a
/// tombstone) and queue their cache work.
async fn upsert_entries(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    entries: TenantEntries<'_>,
) -> Result<Vec<QueuedCache>, SinkError> {
    let TenantEntries {
        tenant,
        map,
        changes,
        tenant_policy,
        applied,
    } = entries;
    let c = ChangeColumns::of(changes);
    let sql = format!(
        "WITH registered AS (
             INSERT INTO tenants (tenant_id) SELECT $1 WHERE $7
             ON CONFLICT (tenant_id) DO NOTHING
         ),
         upserted AS (
             INSERT INTO {table} AS s (tenant_id, key, value, version, occurred_at,
                                      last_event_id, updated_at)
             SELECT $1, i.key, i.value::jsonb, i.version, to_timestamp(i.occurred_ms / 1000.0),
                    i.event_id, now()
               FROM UNNEST($2::text[], $3::text[], $4::int8[], $5::int8[], $6::uuid[])
                    AS i(key, value, version, occurred_ms, event_id)
             ON CONFLICT (tenant_id, key) DO UPDATE
                SET value = EXCLUDED.value, version = EXCLUDED.version,
                    occurred_at = EXCLUDED.occurred_at, last_event_id = EXCLUDED.last_event_id,
                    updated_at = now()
              WHERE s.version < EXCLUDED.version
             RETURNING s.key AS key_id, s.version, s.value::text AS value
         ),
         {tail}",
        table = map.table(),
        tail = tenant_upsert_tail(OutboxKind::Entry(map), "$8", "$1", "$9"),
    );
    let rows: Vec<(i64, String, i64, Option<String>)> = sqlx::query_as(&sql)
        .bind(tenant)
        .bind(&c.keys)
        .bind(&c.values)
        .bind(&c.versions)
        .bind(&c.occurred)
        .bind(&c.event_ids)
        .bind(tenant_policy.registers_unknown())
        .bind(group)
        .bind(applied)
        .fetch_all(&mut **tx)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(outbox_id, key, version, value)| QueuedCache {
            outbox_id,
            item: CacheItem::Entry {
                tenant,
                map,
                key,
                version,
                value,
            },
        })
        .collect())
}

/// Shared categories: upsert the newer ones and queue their cache work.
async fn upsert_categories(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    changes: &[&ValidConfig],
) -> Result<Vec<QueuedCache>, SinkError> {
    let c = ChangeColumns::of(changes);
    let sql = format!(
        "WITH upserted AS (
             INSERT INTO categories AS s (category_id, value, version, occurred_at,
                                         last_event_id, updated_at)
             SELECT i.key, i.value::jsonb, i.version, to_timestamp(i.occurred_ms / 1000.0),
                    i.event_id, now()
               FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::uuid[])
                    AS i(key, value, version, occurred_ms, event_id)
             ON CONFLICT (category_id) DO UPDATE
                SET value = EXCLUDED.value, version = EXCLUDED.version,
                    occurred_at = EXCLUDED.occurred_at, last_event_id = EXCLUDED.last_event_id,
                    updated_at = now()
              WHERE s.version < EXCLUDED.version
             RETURNING s.category_id AS key_id, s.version, s.value::text AS value
         ),
         {}",
        shared_upsert_tail(OutboxKind::Category, "$6")
    );
    let rows: Vec<(i64, String, i64, Option<String>)> = sqlx::query_as(&sql)
        .bind(&c.keys)
        .bind(&c.values)
        .bind(&c.versions)
        .bind(&c.occurred)
        .bind(&c.event_ids)
        .bind(group)
        .fetch_all(&mut **tx)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(outbox_id, id, version, value)| QueuedCache {
            outbox_id,
            item: CacheItem::Category { id, version, value },
        })
        .collect())
}
