//! The current cache value behind each [`CacheRef`], read from the committed rows: for the
//! drainer (work left behind) and `replay` (keys named by old events).

use std::collections::BTreeMap;

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::orders::position;
use super::tenant::set_tenant;
use super::SinkError;
use crate::domain::{CacheItem, CacheRef, ConfigTarget, TenantMap, TenantStatus};

/// The current cache values behind `refs`, each tenant's read under its own context in `tx`.
/// Refs without a row yield nothing. Orders of every tenant are read in one round trip
/// (`read_orders`, which sets each tenant's context server-side); a tenant's configuration
/// rows in a round trip of their own (few: configuration changes are rare).
pub async fn read_current(
    tx: &mut Transaction<'_, Postgres>,
    refs: &[CacheRef],
) -> Result<Vec<CacheItem>, SinkError> {
    let mut orders: BTreeMap<Uuid, Vec<&str>> = BTreeMap::new();
    let mut by_tenant: BTreeMap<Option<Uuid>, Vec<&CacheRef>> = BTreeMap::new();
    for r in refs {
        match r {
            CacheRef::Order { tenant, order_id } => {
                orders.entry(*tenant).or_default().push(order_id)
            }
            _ => by_tenant.entry(r.tenant()).or_default().push(r),
        }
    }
    let mut items = order_items(tx, &orders).await?;
    for (tenant, refs) in by_tenant {
        match tenant {
            Some(tenant) => {
                set_tenant(tx, tenant).await?;
                items.extend(tenant_items(tx, tenant, &refs).await?);
            }
            None => items.extend(shared_items(tx, &refs).await?),
        }
    }
    Ok(items)
}

/// The orders of every tenant in `orders`, in one call of `read_orders`.
async fn order_items(
    tx: &mut Transaction<'_, Postgres>,
    orders: &BTreeMap<Uuid, Vec<&str>>,
) -> Result<Vec<CacheItem>, SinkError> {
    if orders.is_empty() {
        return Ok(Vec::new());
    }
    let mut tenants = Vec::with_capacity(orders.len());
    let (mut firsts, mut lasts) = (Vec::new(), Vec::new());
    let mut order_ids: Vec<&str> = Vec::new();
    for (tenant, ids) in orders {
        tenants.push(*tenant);
        // 1-based, inclusive: Postgres array positions.
        firsts.push(position(order_ids.len() + 1));
        order_ids.extend(ids);
        lasts.push(position(order_ids.len()));
    }
    let rows: Vec<(Uuid, String, i64, String)> =
        sqlx::query_as("SELECT * FROM read_orders($1, $2, $3, $4)")
            .bind(&tenants)
            .bind(&firsts)
            .bind(&lasts)
            .bind(&order_ids)
            .fetch_all(&mut **tx)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(tenant, order_id, version, json)| CacheItem::Order {
            tenant,
            order_id,
            version,
            json,
        })
        .collect())
}

/// One tenant's configuration refs, read under its context (already set in `tx`).
async fn tenant_items(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    refs: &[&CacheRef],
) -> Result<Vec<CacheItem>, SinkError> {
    let mut profile = false;
    let mut entries: BTreeMap<TenantMap, Vec<&str>> = BTreeMap::new();
    for r in refs {
        match r {
            CacheRef::Config(ConfigTarget::Profile { .. }) => profile = true,
            CacheRef::Config(ConfigTarget::Entry { map, key, .. }) => {
                entries.entry(*map).or_default().push(key)
            }
            CacheRef::Order { .. } | CacheRef::Config(ConfigTarget::Category { .. }) => {}
        }
    }
    let mut items = Vec::new();
    if profile {
        let row: Option<(i64, String, String)> = sqlx::query_as(
            "SELECT t.profile_version, t.status, tenant_profile_json(t) FROM tenants t
              WHERE t.tenant_id = $1 AND t.profile_version > 0",
        )
        .bind(tenant)
        .fetch_optional(&mut **tx)
        .await?;
        items.extend(row.map(|(version, status, json)| CacheItem::Profile {
            tenant,
            version,
            json,
            suspended: status == TenantStatus::Suspended.as_str(),
        }));
    }
    for (map, keys) in entries {
        let sql = format!(
            "SELECT key, version, value::text FROM {} WHERE tenant_id = $1 AND key = ANY($2)",
            map.table()
        );
        let rows: Vec<(String, i64, Option<String>)> = sqlx::query_as(&sql)
            .bind(tenant)
            .bind(&keys)
            .fetch_all(&mut **tx)
            .await?;
        items.extend(
            rows.into_iter()
                .map(|(key, version, value)| CacheItem::Entry {
                    tenant,
                    map,
                    key,
                    version,
                    value,
                }),
        );
    }
    Ok(items)
}

/// Shared refs (categories), read without a tenant context.
async fn shared_items(
    tx: &mut Transaction<'_, Postgres>,
    refs: &[&CacheRef],
) -> Result<Vec<CacheItem>, SinkError> {
    let categories: Vec<&str> = refs
        .iter()
        .filter_map(|r| match r {
            CacheRef::Config(ConfigTarget::Category { id }) => Some(id.as_str()),
            _ => None,
        })
        .collect();
    if categories.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(String, i64, Option<String>)> = sqlx::query_as(
        "SELECT category_id, version, value::text FROM categories
          WHERE category_id = ANY($1)",
    )
    .bind(&categories)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, version, value)| CacheItem::Category { id, version, value })
        .collect())
}
