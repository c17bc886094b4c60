//! The pipeline's side of the tenant monitor: each tenant's share of a committed batch, and
//! the background task that reads tenants' stored statuses and evicts idle tenants.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::{CacheRef, Event, QueuedCache};
use crate::monitor::{TenantBatch, TenantMonitor};
use crate::sink;

/// How often statuses are read and idle tenants evicted.
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// Tenants whose status is read per round trip.
const STATUSES_PER_CALL: usize = 500;

/// Each tenant's share of a committed batch: its events, what became of them (as the batch's
/// totals count them: the newest event of each row is written or stale, the others
/// superseded), each event's latency at `now_ms`, and its share of the batch's Postgres time
/// by event count. Events of shared data (no tenant) are left out.
pub(super) fn tenant_shares<E: Event>(
    events: &[E],
    written: &[QueuedCache],
    now_ms: i64,
    postgres: Duration,
) -> Vec<TenantBatch> {
    let mut rows: HashMap<Uuid, HashSet<CacheRef>> = HashMap::new();
    let mut shares: HashMap<Uuid, TenantBatch> = HashMap::new();
    for event in events {
        let Some(tenant) = event.tenant() else {
            continue;
        };
        rows.entry(tenant).or_default().insert(event.cache_ref());
        let share = shares.entry(tenant).or_insert_with(|| TenantBatch {
            tenant,
            ..TenantBatch::default()
        });
        share.events += 1;
        share.latencies_ms.push(now_ms - event.occurred_at());
    }
    for queued in written {
        if let Some(share) = queued
            .item
            .cache_ref()
            .tenant()
            .and_then(|t| shares.get_mut(&t))
        {
            share.written += 1;
        }
    }
    let total = events.len().max(1) as u32;
    let mut shares: Vec<TenantBatch> = shares.into_values().collect();
    for share in &mut shares {
        let distinct = rows.get(&share.tenant).map_or(0, HashSet::len) as u32;
        share.superseded = share.events - distinct;
        share.stale = distinct.saturating_sub(share.written);
        share.postgres = postgres * share.events / total;
    }
    shares
}

/// Every [`REFRESH_EVERY`] until `shutdown`: evicts the idle tenants and reads the stored status
/// of those due (never read, or read over a minute ago: the longest ago first, so at 5,000
/// tenants each is read about once a minute). A failure waits for the next pass (the statuses
/// are informational; the batch path reports Postgres' health).
pub(super) async fn refresh_statuses(
    monitor: TenantMonitor,
    pool: PgPool,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(REFRESH_EVERY) => {}
        }
        monitor.evict_idle();
        let due = monitor.statuses_due(STATUSES_PER_CALL);
        if due.is_empty() {
            continue;
        }
        match sink::tenant_statuses(&pool, &due).await {
            Ok(found) => monitor.statuses_read(&due, &found),
            Err(error) => {
                tracing::debug!(%error, "Tenant statuses not read; trying again next pass.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{sample_order, CacheItem, ValidOrder};

    fn order(tenant: Uuid, order_id: &str, version: i64) -> ValidOrder {
        let mut event = sample_order();
        event.tenant_id = tenant.to_string();
        event.order_id = order_id.into();
        event.version = version;
        event.occurred_at = 1_000;
        ValidOrder {
            event_id: Uuid::new_v4(),
            tenant_id: tenant,
            event,
        }
    }

    #[test]
    fn shares_count_each_event_once_and_split_the_postgres_time_by_events() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let events = [
            order(a, "o-1", 1),
            order(a, "o-1", 2),
            order(a, "o-2", 1),
            order(b, "o-9", 1),
        ];
        let postgres = Duration::from_millis(40);
        // Written: a's newest o-1 and b's o-9; a's o-2 was stale.
        let written: Vec<QueuedCache> = [&events[1], &events[3]]
            .iter()
            .enumerate()
            .map(|(n, order)| QueuedCache {
                outbox_id: n as i64,
                item: CacheItem::Order {
                    tenant: order.tenant_id,
                    order_id: order.event.order_id.clone(),
                    version: order.event.version,
                    json: String::new(),
                },
            })
            .collect();
        let mut shares = tenant_shares(&events, &written, 1_250, postgres);
        shares.sort_by_key(|s| s.tenant);
        assert_eq!(shares.len(), 2);
        let first = &shares[0];
        let outcomes = (first.written, first.superseded, first.stale);
        assert_eq!((first.events, outcomes), (3, (1, 1, 1)));
        assert_eq!((shares[1].written, shares[1].stale), (1, 0));
        assert_eq!(first.latencies_ms, [250, 250, 250]);
        assert_eq!(first.postgres, Duration::from_millis(30));
        assert_eq!((shares[1].events, shares[1].postgres), (1, postgres / 4));
    }
}
