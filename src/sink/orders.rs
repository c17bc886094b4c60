//! Order rows: a batch's orders of up to [`TENANTS_PER_CALL`] tenants and [`ROWS_PER_CALL`]
//! rows in one round trip. The database function `write_order_batch` (its migrations explain
//! it) sets each tenant's context in turn, registers the tenant (when unknown tenants are
//! registered and it is missing), deletes its applied outbox rows and runs one set-based upsert
//! with the version guard for that tenant's rows, which also queues the rows' cache work, then
//! keeps the written orders' deadlines when the tenant has any. Row-level security applies to
//! every statement, under the context just set, as when the client set it, but a batch no longer
//! pays two round trips per tenant.

use std::collections::{BTreeMap, HashMap};

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::cache_outbox::OutboxKind;
use super::sla::SlaTracking;
use super::SinkError;
use crate::domain::{sla_rank, CacheItem, QueuedCache, TenantPolicy, ValidOrder};

/// Upserts each tenant's newest order events under the tenant's context and queues their cache
/// work under `group`; `applied` holds, per tenant, outbox rows to delete on the way. With
/// `sla`, the written orders' deadlines are kept in the same statements.
pub(super) async fn write_orders(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    orders: &[ValidOrder],
    tenant_policy: TenantPolicy,
    applied: &HashMap<Uuid, Vec<i64>>,
    sla: Option<&SlaTracking>,
) -> Result<Vec<QueuedCache>, SinkError> {
    let by_tenant = latest_per_order(orders);
    let progress = progress_per_order(orders);
    let mut queued = Vec::new();
    for tenants in calls(&by_tenant) {
        let columns = Columns::grouped(&tenants, applied, &progress);
        queued.extend(write_order_batch(tx, group, tenant_policy, &columns, sla).await?);
    }
    Ok(queued)
}

/// Tenants per call of `write_order_batch`. A call is one statement, so `statement_timeout`
/// covers all its tenants' writes: a call of 100 tenants, or of 1,000 rows of a few, took up to
/// about 70 ms in psql on the development machine, far inside the smallest timeout allowed
/// (300 ms), so a timeout still points at a row's own work, while a batch of 1,000 tenants
/// needs 10 round trips instead of 2,000.
const TENANTS_PER_CALL: usize = 100;

/// Rows per call of `write_order_batch`, for the same reason: a tenant with more rows in one
/// batch has them written over several calls (each under its context).
const ROWS_PER_CALL: usize = 1000;

/// The calls of a batch: each tenant's rows in order, cut so that a call holds at most
/// [`TENANTS_PER_CALL`] tenants (a tenant cut in two counts twice) and [`ROWS_PER_CALL`] rows.
fn calls<'m, 'o>(
    by_tenant: &'m BTreeMap<Uuid, Vec<&'o ValidOrder>>,
) -> Vec<Vec<(Uuid, &'m [&'o ValidOrder])>> {
    let mut calls = Vec::new();
    let mut call: Vec<(Uuid, &[&ValidOrder])> = Vec::new();
    let mut rows = 0;
    for (tenant, orders) in by_tenant {
        for part in orders.chunks(ROWS_PER_CALL) {
            if call.len() == TENANTS_PER_CALL || rows + part.len() > ROWS_PER_CALL {
                calls.push(std::mem::take(&mut call));
                rows = 0;
            }
            rows += part.len();
            call.push((*tenant, part));
        }
    }
    if !call.is_empty() {
        calls.push(call);
    }
    calls
}

async fn write_order_batch(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    tenant_policy: TenantPolicy,
    columns: &Columns<'_>,
    sla: Option<&SlaTracking>,
) -> Result<Vec<QueuedCache>, SinkError> {
    let queued: Vec<(i64, Uuid, String, i64, String)> = sqlx::query_as(
        "SELECT * FROM write_order_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                                         $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)",
    )
    .bind(group)
    .bind(OutboxKind::Order.as_str())
    .bind(tenant_policy.registers_unknown())
    .bind(&columns.tenants)
    .bind(&columns.firsts)
    .bind(&columns.lasts)
    .bind(&columns.order_ids)
    .bind(&columns.versions)
    .bind(&columns.statuses)
    .bind(&columns.customers)
    .bind(&columns.currencies)
    .bind(&columns.totals)
    .bind(&columns.items)
    .bind(&columns.occurred)
    .bind(&columns.event_ids)
    .bind(&columns.applied_ids)
    .bind(&columns.applied_firsts)
    .bind(&columns.applied_lasts)
    .bind(sla.is_some())
    .bind(sla.and_then(|sla| sla.default_policy.as_ref()))
    .bind(&columns.reached)
    .bind(&columns.starts)
    .bind(&columns.started)
    .fetch_all(&mut **tx)
    .await?;
    Ok(queued
        .into_iter()
        .map(|(outbox_id, tenant, order_id, version, json)| QueuedCache {
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

/// Per tenant, the newest event of each order in the batch. Older events of the same order in
/// the same batch could change nothing, and one statement may touch a row only once.
pub fn latest_per_order(orders: &[ValidOrder]) -> BTreeMap<Uuid, Vec<&ValidOrder>> {
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

/// What one order's events of a batch mean for its deadlines, whichever of them is written:
/// the furthest status they reach (clears), and the last lifecycle status with its
/// occurred_at (starts). See migration `20261130000001_sla.sql`.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Progress<'a> {
    /// (rank, status)
    reached: Option<(u8, &'a str)>,
    /// (version, status, occurred_at)
    start: Option<(i64, &'a str, i64)>,
}

fn progress_per_order(orders: &[ValidOrder]) -> HashMap<(Uuid, &str), Progress<'_>> {
    let mut progress: HashMap<(Uuid, &str), Progress> = HashMap::new();
    for order in orders {
        let e = &order.event;
        let Some(rank) = sla_rank(e.event_type) else {
            continue;
        };
        let status = e.event_type.status();
        let p = progress
            .entry((order.tenant_id, e.order_id.as_str()))
            .or_default();
        if p.reached.is_none_or(|(r, _)| rank > r) {
            p.reached = Some((rank, status));
        }
        if p.start.is_none_or(|(version, _, _)| e.version > version) {
            p.start = Some((e.version, status, e.occurred_at));
        }
    }
    progress
}

/// The parameters of `write_order_batch`: the rows as one array per column, tenant by tenant,
/// with each tenant's range of positions (1-based, inclusive, as SQL arrays count) in the rows
/// and in the applied outbox ids.
#[derive(Debug, Default, PartialEq)]
struct Columns<'a> {
    tenants: Vec<Uuid>,
    firsts: Vec<i32>,
    lasts: Vec<i32>,
    order_ids: Vec<&'a str>,
    versions: Vec<i64>,
    statuses: Vec<&'a str>,
    customers: Vec<&'a str>,
    currencies: Vec<&'a str>,
    totals: Vec<i64>,
    items: Vec<String>,
    occurred: Vec<i64>,
    event_ids: Vec<Uuid>,
    applied_ids: Vec<i64>,
    applied_firsts: Vec<i32>,
    applied_lasts: Vec<i32>,
    reached: Vec<Option<&'a str>>,
    starts: Vec<Option<&'a str>>,
    started: Vec<Option<i64>>,
}

impl<'a> Columns<'a> {
    fn grouped(
        by_tenant: &[(Uuid, &[&'a ValidOrder])],
        applied: &HashMap<Uuid, Vec<i64>>,
        progress: &HashMap<(Uuid, &str), Progress<'a>>,
    ) -> Self {
        let mut columns = Columns::default();
        for (tenant, orders) in by_tenant {
            let tenant = *tenant;
            columns.tenants.push(tenant);
            columns.firsts.push(position(columns.order_ids.len() + 1));
            for order in orders.iter() {
                let e = &order.event;
                columns.order_ids.push(&e.order_id);
                columns.versions.push(e.version);
                columns.statuses.push(e.event_type.status());
                columns.customers.push(&e.customer_id);
                columns.currencies.push(&e.currency);
                columns.totals.push(e.total_cents);
                columns
                    .items
                    .push(serde_json::to_string(&e.items).expect("line items serialize"));
                columns.occurred.push(e.occurred_at);
                columns.event_ids.push(order.event_id);
                let p = progress
                    .get(&(tenant, e.order_id.as_str()))
                    .copied()
                    .unwrap_or_default();
                columns.reached.push(p.reached.map(|(_, status)| status));
                columns.starts.push(p.start.map(|(_, status, _)| status));
                columns
                    .started
                    .push(p.start.map(|(_, _, occurred)| occurred));
            }
            columns.lasts.push(position(columns.order_ids.len()));
            columns
                .applied_firsts
                .push(position(columns.applied_ids.len() + 1));
            if let Some(ids) = applied.get(&tenant) {
                columns.applied_ids.extend(ids);
            }
            columns
                .applied_lasts
                .push(position(columns.applied_ids.len()));
        }
        columns
    }
}

/// A position in a SQL array (for the 1-based ranges the batch functions take); a batch is
/// bounded far below `i32::MAX` rows.
pub(super) fn position(index: usize) -> i32 {
    i32::try_from(index).expect("a batch holds fewer than 2^31 rows")
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

    #[test]
    fn progress_keeps_the_furthest_status_and_the_last_lifecycle_one() {
        use crate::domain::OrderEventType::*;
        let event = |version: i64, event_type, occurred_at| {
            let mut e = sample_order();
            e.version = version;
            e.event_type = event_type;
            e.occurred_at = occurred_at;
            e.validate().unwrap()
        };
        // CONFIRMED then UPDATED: the newest (written) event is UPDATED, which alone would
        // neither clear CREATED->CONFIRMED nor start CONFIRMED->SHIPPED.
        let orders = [
            event(2, Confirmed, 20),
            event(3, Updated, 30),
            event(1, Created, 10),
        ];
        let progress = progress_per_order(&orders);
        let p = progress.values().next().unwrap();
        assert_eq!(p.reached, Some((2, "confirmed")));
        assert_eq!(p.start, Some((2, "confirmed", 20)));
        // Only UPDATED: nothing to clear or start.
        assert!(progress_per_order(&[event(4, Updated, 40)]).is_empty());
    }

    #[test]
    fn calls_are_cut_at_their_tenants_and_rows_and_keep_every_row_once() {
        let orders_of = |tenant: u128, count: usize| -> Vec<ValidOrder> {
            (0..count)
                .map(|i| {
                    let mut e = sample_order();
                    e.tenant_id = Uuid::from_u128(tenant).to_string();
                    e.order_id = format!("o-{i}");
                    e.validate().unwrap()
                })
                .collect()
        };
        let sizes = |orders: &[ValidOrder]| -> Vec<Vec<(u128, usize)>> {
            calls(&latest_per_order(orders))
                .iter()
                .map(|call| {
                    call.iter()
                        .map(|(tenant, rows)| (tenant.as_u128(), rows.len()))
                        .collect()
                })
                .collect()
        };
        // A tenant with more rows than a call holds is cut; the next tenant fills the rest.
        let orders = [orders_of(1, 2500), orders_of(2, 10), orders_of(3, 995)].concat();
        assert_eq!(
            sizes(&orders),
            [
                vec![(1, 1000)],
                vec![(1, 1000)],
                vec![(1, 500), (2, 10)],
                vec![(3, 995)]
            ]
        );
        // One row each: cut at the tenants.
        let many: Vec<ValidOrder> = (0..250).flat_map(|t| orders_of(t, 1)).collect();
        let calls: Vec<usize> = sizes(&many).iter().map(Vec::len).collect();
        assert_eq!(calls, [100, 100, 50]);
    }

    #[test]
    fn columns_give_each_tenant_its_range_of_rows_and_of_applied_ids() {
        let event = |tenant: u128, order: &str| {
            let mut e = sample_order();
            e.tenant_id = Uuid::from_u128(tenant).to_string();
            e.order_id = order.into();
            e.validate().unwrap()
        };
        let orders = [event(2, "b-1"), event(1, "a-1"), event(2, "b-2")];
        let applied = HashMap::from([
            (Uuid::from_u128(2), vec![7, 8]),
            (Uuid::from_u128(9), vec![1]),
        ]);
        let grouped = latest_per_order(&orders);
        let grouped: Vec<_> = grouped.iter().map(|(t, o)| (*t, o.as_slice())).collect();
        let columns = Columns::grouped(&grouped, &applied, &progress_per_order(&orders));
        assert_eq!(columns.tenants, [Uuid::from_u128(1), Uuid::from_u128(2)]);
        assert_eq!((columns.firsts, columns.lasts), (vec![1, 2], vec![1, 3]));
        assert_eq!(columns.order_ids[0], "a-1");
        let mut second: Vec<&str> = columns.order_ids[1..].to_vec();
        second.sort();
        assert_eq!(second, ["b-1", "b-2"]);
        // Tenant 1 has no applied ids (an empty range); tenant 9 is not in the batch.
        assert_eq!(columns.applied_ids, [7, 8]);
        assert_eq!(
            (columns.applied_firsts, columns.applied_lasts),
            (vec![1, 1], vec![0, 2])
        );
    }
}
