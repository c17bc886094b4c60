//! Order rows: per tenant, one set-based upsert with the version guard that also registers the
//! tenant (when unknown tenants are registered) and queues the rows' cache work.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::cache_outbox::{tenant_upsert_tail, OutboxKind};
use super::tenant::set_tenant;
use super::SinkError;
use crate::domain::{CacheItem, QueuedCache, TenantPolicy, ValidOrder};

/// Upserts each tenant's newest order events under the tenant's context and queues their cache
/// work under `group`; `applied` holds, per tenant, outbox rows to delete on the way.
pub(super) async fn write_orders(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    orders: &[ValidOrder],
    tenant_policy: TenantPolicy,
    applied: &HashMap<Uuid, Vec<i64>>,
) -> Result<Vec<QueuedCache>, SinkError> {
    let mut queued = Vec::new();
    for (tenant, latest) in latest_per_order(orders) {
        set_tenant(tx, tenant).await?;
        let done = applied.get(&tenant).map_or(&[][..], Vec::as_slice);
        queued.extend(upsert_orders(tx, group, tenant, &latest, tenant_policy, done).await?);
    }
    Ok(queued)
}

/// Per tenant, the newest event of each order in the batch. Older events of the same order in
/// the same batch could change nothing, and one statement may touch a row only once.
fn latest_per_order(orders: &[ValidOrder]) -> BTreeMap<Uuid, Vec<&ValidOrder>> {
    let mut newest: HashMap<(Uuid, &str), &ValidOrder> = HashMap::new();
    for order in orders {
        newest
            .entry((order.tenant_id, order.event.order_id.as_str()))
            .and_modify(|kept| {
                if order.event.version > kept.event.version {
                    *kept = order;
                }
            })
            .or_insert(order);
    }
    let mut by_tenant: BTreeMap<Uuid, Vec<&ValidOrder>> = BTreeMap::new();
    for ((tenant, _), order) in newest {
        by_tenant.entry(tenant).or_default().push(order);
    }
    by_tenant
}

/// Register the tenant if asked ($11), upsert the orders whose version is newer than the
/// stored row, queue a cache refresh for each row written and delete the applied outbox rows
/// ($13), in one statement.
static UPSERT_ORDERS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH registered AS (
             INSERT INTO tenants (tenant_id) SELECT $1 WHERE $11
             ON CONFLICT (tenant_id) DO NOTHING
         ),
         upserted AS (
             INSERT INTO orders AS o (tenant_id, order_id, version, status, customer_id, currency,
                                      total_cents, items, occurred_at, last_event_id, updated_at)
             SELECT $1, i.order_id, i.version, i.status, i.customer_id, i.currency, i.total_cents,
                    i.items::jsonb, to_timestamp(i.occurred_ms / 1000.0), i.event_id, now()
               FROM UNNEST($2::text[], $3::int8[], $4::text[], $5::text[], $6::text[], $7::int8[],
                           $8::text[], $9::int8[], $10::uuid[])
                    AS i(order_id, version, status, customer_id, currency, total_cents,
                         items, occurred_ms, event_id)
             ON CONFLICT (tenant_id, order_id) DO UPDATE
                SET version = EXCLUDED.version, status = EXCLUDED.status,
                    customer_id = EXCLUDED.customer_id, currency = EXCLUDED.currency,
                    total_cents = EXCLUDED.total_cents, items = EXCLUDED.items,
                    occurred_at = EXCLUDED.occurred_at, last_event_id = EXCLUDED.last_event_id,
                    updated_at = now()
              WHERE o.version < EXCLUDED.version
             RETURNING o.order_id AS key_id, o.version, order_cache_json(o) AS value
         ),
         {}",
        tenant_upsert_tail(OutboxKind::Order, "$12", "$1", "$13")
    )
});

async fn upsert_orders(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    tenant: Uuid,
    orders: &[&ValidOrder],
    tenant_policy: TenantPolicy,
    applied_outbox_ids: &[i64],
) -> Result<Vec<QueuedCache>, SinkError> {
    let mut order_ids = Vec::with_capacity(orders.len());
    let mut versions = Vec::with_capacity(orders.len());
    let mut statuses = Vec::with_capacity(orders.len());
    let mut customers = Vec::with_capacity(orders.len());
    let mut currencies = Vec::with_capacity(orders.len());
    let mut totals = Vec::with_capacity(orders.len());
    let mut items = Vec::with_capacity(orders.len());
    let mut occurred = Vec::with_capacity(orders.len());
    let mut event_ids = Vec::with_capacity(orders.len());
    for order in orders {
        let e = &order.event;
        order_ids.push(e.order_id.as_str());
        versions.push(e.version);
        statuses.push(e.event_type.status());
        customers.push(e.customer_id.as_str());
        currencies.push(e.currency.as_str());
        totals.push(e.total_cents);
        items.push(serde_json::to_string(&e.items).expect("line items serialize"));
        occurred.push(e.occurred_at);
        event_ids.push(order.event_id);
    }
    let queued: Vec<(i64, String, i64, String)> = sqlx::query_as(&UPSERT_ORDERS)
        .bind(tenant)
        .bind(&order_ids)
        .bind(&versions)
        .bind(&statuses)
        .bind(&customers)
        .bind(&currencies)
        .bind(&totals)
        .bind(&items)
        .bind(&occurred)
        .bind(&event_ids)
        .bind(tenant_policy.registers_unknown())
        .bind(group)
        .bind(applied_outbox_ids)
        .fetch_all(&mut **tx)
        .await?;
    Ok(queued
        .into_iter()
        .map(|(outbox_id, order_id, version, json)| QueuedCache {
            outbox_id,
            item: CacheItem::Order {
                tenant,
                order_id,
                version,
                json,
            },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::sample_order;

    #[test]
    fn latest_per_order_keeps_highest_version() {
        let mut a = sample_order();
        a.version = 3;
        let mut b = sample_order();
        b.version = 5;
        let mut c = sample_order();
        c.order_id = "o-2".into();
        let orders: Vec<ValidOrder> = [a, b, c]
            .into_iter()
            .map(|e| e.validate().unwrap())
            .collect();
        let grouped = latest_per_order(&orders);
        assert_eq!(grouped.len(), 1);
        let mut kept: Vec<(String, i64)> = grouped
            .values()
            .next()
            .unwrap()
            .iter()
            .map(|o| (o.event.order_id.clone(), o.event.version))
            .collect();
        kept.sort();
        assert_eq!(kept, vec![("o-1".into(), 5), ("o-2".into(), 1)]);
    }
}
