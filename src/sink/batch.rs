//! One partition batch, one transaction: fence the offset, upsert each tenant's rows, queue
//! their cache work. When Postgres rejects a row for its data, [`write_each`](super::write_each)
//! finds it.

use std::collections::{HashMap, HashSet};

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::isolate::write_isolating;
use super::offsets::{self, PartitionKey};
use super::orders::write_orders;
use super::sla::{record_lag, SlaTracking};
use super::tenant_config::write_config;
use super::SinkError;
use crate::domain::{CacheRef, QueuedCache, TenantPolicy, ValidConfig, ValidOrder};

/// The rows of one partition batch: each topic carries one event type.
#[derive(Debug, Clone, Copy)]
pub enum Rows<'a> {
    Orders(&'a [ValidOrder]),
    Config(&'a [ValidConfig]),
}

impl<'a> From<&'a [ValidOrder]> for Rows<'a> {
    fn from(rows: &'a [ValidOrder]) -> Self {
        Self::Orders(rows)
    }
}

impl<'a> From<&'a [ValidConfig]> for Rows<'a> {
    fn from(rows: &'a [ValidConfig]) -> Self {
        Self::Config(rows)
    }
}

impl<'a> Rows<'a> {
    pub(super) fn len(&self) -> usize {
        match self {
            Self::Orders(rows) => rows.len(),
            Self::Config(rows) => rows.len(),
        }
    }

    /// How many rows the events name (an order, a configuration target): each row's newest
    /// event in the batch is the one written.
    pub(super) fn distinct_rows(&self) -> usize {
        match self {
            Self::Orders(rows) => rows
                .iter()
                .map(|o| (o.tenant_id, o.event.order_id.as_str()))
                .collect::<HashSet<_>>()
                .len(),
            Self::Config(rows) => rows.iter().map(|c| &c.target).collect::<HashSet<_>>().len(),
        }
    }

    /// The rows at `indices`, in that order (owned: a subset is not a slice).
    pub(super) fn pick(&self, indices: &[usize]) -> Picked {
        match self {
            Self::Orders(rows) => {
                Picked::Orders(indices.iter().map(|i| rows[*i].clone()).collect())
            }
            Self::Config(rows) => {
                Picked::Config(indices.iter().map(|i| rows[*i].clone()).collect())
            }
        }
    }
}

/// Some rows of a batch, picked out.
pub(super) enum Picked {
    Orders(Vec<ValidOrder>),
    Config(Vec<ValidConfig>),
}

impl Picked {
    pub(super) fn rows(&self) -> Rows<'_> {
        match self {
            Self::Orders(rows) => Rows::Orders(rows),
            Self::Config(rows) => Rows::Config(rows),
        }
    }
}

/// A partition batch ready to be written.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// Where the partition's progress is stored.
    pub key: &'a PartitionKey,
    /// The next offset this worker believes is stored (`None`: nothing stored yet).
    pub expected: Option<i64>,
    /// The offset after the batch's last message.
    pub next_offset: i64,
    pub rows: Rows<'a>,
    pub tenant_policy: TenantPolicy,
    /// Per tenant, outbox rows whose Redis write already succeeded; deleted by the batch's own
    /// statements, which saves a round trip per tenant (left undeleted, a row is only applied
    /// again, harmlessly, by the drainer).
    pub applied: &'a HashMap<Uuid, Vec<i64>>,
    /// Keep the SLAs of the batch's orders (deadlines, lag), in its transaction.
    pub sla: Option<&'a SlaTracking>,
}

/// What a committed batch did with each of its events: exactly one of written, superseded
/// or stale.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchWrite {
    /// The newest event of its row in the batch, and newer than the stored row: written.
    pub written: usize,
    /// Older than, or a copy of, another event of the same row in the same batch: that event
    /// is the one written (a batch writes each row once), so this one changed nothing by itself.
    pub superseded: usize,
    /// The newest event of its row in the batch, but not newer than the stored row (a
    /// duplicate, or an older version arriving late): nothing written.
    pub stale: usize,
    /// The cache work this batch queued: one entry per row written, with the row's JSON.
    pub cache: Vec<QueuedCache>,
    /// PROCESSING_LAG violations this batch created.
    pub lag_violations: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOutcome {
    Committed(BatchWrite),
    /// The stored offset was not the one expected: another worker owns the partition now.
    Fenced,
}

/// Writes one partition batch: fence the offset, upsert each tenant's rows, record cache work.
pub async fn write_batch(pool: &PgPool, batch: &Batch<'_>) -> Result<BatchOutcome, SinkError> {
    let Some(mut tx) = begin_fenced(pool, batch).await? else {
        return Ok(BatchOutcome::Fenced);
    };
    let group = &batch.key.group;
    let cache = write_rows(
        &mut tx,
        group,
        batch.rows,
        batch.tenant_policy,
        batch.applied,
        batch.sla,
    )
    .await?;
    let lag_violations = check_lag(&mut tx, batch).await?;
    tx.commit().await?;
    Ok(committed(batch.rows, cache, lag_violations))
}

/// The batch's PROCESSING_LAG, recorded in its transaction just before the commit (orders
/// only; configuration changes have no SLA).
pub(super) async fn check_lag(
    tx: &mut Transaction<'_, Postgres>,
    batch: &Batch<'_>,
) -> Result<usize, SinkError> {
    match (batch.rows, batch.sla) {
        (Rows::Orders(orders), Some(sla)) => record_lag(tx, orders, sla).await,
        _ => Ok(0),
    }
}

/// Begins the batch's transaction with its fence: the compare-and-set of the stored offset,
/// taken first. `None` (rolled back) when another writer moved the offset.
pub(super) async fn begin_fenced<'p>(
    pool: &'p PgPool,
    batch: &Batch<'_>,
) -> Result<Option<Transaction<'p, Postgres>>, SinkError> {
    let mut tx = pool.begin().await?;
    if offsets::advance(&mut tx, batch.key, batch.expected, batch.next_offset).await? {
        return Ok(Some(tx));
    }
    tx.rollback().await?;
    Ok(None)
}

pub(super) fn committed(
    rows: Rows<'_>,
    cache: Vec<QueuedCache>,
    lag_violations: usize,
) -> BatchOutcome {
    let distinct = rows.distinct_rows();
    BatchOutcome::Committed(BatchWrite {
        written: cache.len(),
        superseded: rows.len() - distinct,
        stale: distinct.saturating_sub(cache.len()),
        cache,
        lag_violations,
    })
}

/// What a rewrite did.
#[derive(Debug, Default)]
pub struct Rewritten {
    /// The refs of the rows that were newer than the stored ones.
    pub refs: Vec<CacheRef>,
    /// How many rows Postgres rejected for their data (the live worker dead-letters them).
    pub rejected: usize,
}

/// Writes rows outside any partition's progress (no offset is read or moved), for
/// `replay --rewrite-db`. The cache work is queued under `group` (the live worker's), so its
/// drainer applies it even if the replay stops before writing Redis. Rows Postgres rejects
/// for their data are left out, as the live worker leaves them out. SLAs are not kept: a
/// rewrite registers no deadline and records no lag, so replay never creates violations.
pub async fn rewrite_rows(
    pool: &PgPool,
    group: &str,
    rows: Rows<'_>,
    tenant_policy: TenantPolicy,
) -> Result<Rewritten, SinkError> {
    let none = HashMap::new();
    let mut tx = pool.begin().await?;
    let written = write_rows(&mut tx, group, rows, tenant_policy, &none, None).await;
    let (queued, rejected) = match written {
        Ok(queued) => (queued, Vec::new()),
        Err(error) if error.rejects_row() => {
            tx.rollback().await?;
            tx = pool.begin().await?;
            write_isolating(&mut tx, group, rows, tenant_policy, &none, None).await?
        }
        Err(error) => return Err(error),
    };
    tx.commit().await?;
    let refs = queued.iter().map(|q| q.item.cache_ref()).collect();
    Ok(Rewritten {
        refs,
        rejected: rejected.len(),
    })
}

/// Upserts the rows of either event type and queues their cache work under `group`.
pub(super) async fn write_rows(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    rows: Rows<'_>,
    tenant_policy: TenantPolicy,
    applied: &HashMap<Uuid, Vec<i64>>,
    sla: Option<&SlaTracking>,
) -> Result<Vec<QueuedCache>, SinkError> {
    match rows {
        Rows::Orders(orders) => write_orders(tx, group, orders, tenant_policy, applied, sla).await,
        Rows::Config(changes) => write_config(tx, group, changes, tenant_policy, applied).await,
    }
}
