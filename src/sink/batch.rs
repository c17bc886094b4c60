//! One partition batch, one transaction: fence the offset, upsert each tenant's rows, queue
//! their cache work. And the way out when Postgres rejects a row for its data: write the
//! events one by one to find it ([`write_each`]).

use std::collections::HashMap;

use sqlx::{Acquire, PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::offsets::{self, PartitionKey};
use super::orders::write_orders;
use super::tenant_config::write_config;
use super::SinkError;
use crate::domain::{CacheRef, QueuedCache, TenantPolicy, ValidConfig, ValidOrder};
use crate::retry::Classify;

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
    fn len(&self) -> usize {
        match self {
            Self::Orders(rows) => rows.len(),
            Self::Config(rows) => rows.len(),
        }
    }

    /// The `index`th row alone.
    fn one(&self, index: usize) -> Rows<'a> {
        match self {
            Self::Orders(rows) => Self::Orders(&rows[index..=index]),
            Self::Config(rows) => Self::Config(&rows[index..=index]),
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
    pub tenants: TenantPolicy,
    /// Per tenant, outbox rows whose Redis write already succeeded; deleted by the batch's own
    /// statements, which saves a round trip per tenant (left undeleted, a row is only applied
    /// again, harmlessly, by the drainer).
    pub applied: &'a HashMap<Uuid, Vec<i64>>,
}

/// What a committed batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchWrite {
    pub written: usize,
    pub stale: usize,
    /// The cache work this batch queued: one entry per row written, with the row's JSON.
    pub cache: Vec<QueuedCache>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOutcome {
    Committed(BatchWrite),
    /// The stored offset was not the one expected: another worker owns the partition now.
    Fenced,
}

/// Writes one partition batch: fence the offset, upsert each tenant's rows, record cache work.
pub async fn write_batch(pool: &PgPool, batch: &Batch<'_>) -> Result<BatchOutcome, SinkError> {
    let mut tx = pool.begin().await?;
    if !offsets::advance(&mut tx, batch.key, batch.expected, batch.next_offset).await? {
        tx.rollback().await?;
        return Ok(BatchOutcome::Fenced);
    }
    let cache = write_rows(
        &mut tx,
        &batch.key.group,
        batch.rows,
        batch.tenants,
        batch.applied,
    )
    .await?;
    tx.commit().await?;
    Ok(committed(batch.rows.len(), cache))
}

fn committed(rows: usize, cache: Vec<QueuedCache>) -> BatchOutcome {
    BatchOutcome::Committed(BatchWrite {
        written: cache.len(),
        stale: rows - cache.len(),
        cache,
    })
}

/// A row Postgres rejects for its data, by its index in the batch's rows.
#[derive(Debug)]
pub struct RejectedRow {
    pub index: usize,
    pub error: SinkError,
}

/// What writing a batch's rows one by one found.
#[derive(Debug)]
pub enum Isolated {
    /// No row fails on its own: the batch is committed (or fenced), each row by its own
    /// statements.
    Written(BatchOutcome),
    /// These rows fail on their own with a permanent error; nothing was committed.
    Rejected(Vec<RejectedRow>),
}

/// Writes the batch's rows one at a time, each in a savepoint, in offset order (the version
/// guard makes the result the same as the set-based write's), after the same fence. Used when
/// [`write_batch`] failed permanently: the rows that fail alone are returned and nothing is
/// committed, so that the caller can dead-letter them and write the rest; when no row fails
/// alone, the batch commits here.
pub async fn write_each(pool: &PgPool, batch: &Batch<'_>) -> Result<Isolated, SinkError> {
    let mut tx = pool.begin().await?;
    if !offsets::advance(&mut tx, batch.key, batch.expected, batch.next_offset).await? {
        tx.rollback().await?;
        return Ok(Isolated::Written(BatchOutcome::Fenced));
    }
    let no_applied = HashMap::new();
    let mut cache = Vec::new();
    let mut rejected = Vec::new();
    for index in 0..batch.rows.len() {
        let mut savepoint = tx.begin().await?;
        let row = batch.rows.one(index);
        match write_rows(
            &mut savepoint,
            &batch.key.group,
            row,
            batch.tenants,
            &no_applied,
        )
        .await
        {
            Ok(queued) => {
                savepoint.commit().await?;
                cache.extend(queued);
            }
            Err(error) if error.is_permanent() => {
                savepoint.rollback().await?;
                rejected.push(RejectedRow { index, error });
            }
            Err(error) => return Err(error),
        }
    }
    if !rejected.is_empty() {
        tx.rollback().await?;
        return Ok(Isolated::Rejected(rejected));
    }
    tx.commit().await?;
    Ok(Isolated::Written(committed(batch.rows.len(), cache)))
}

/// Writes rows outside any partition's progress (no offset is read or moved), for
/// `replay --rewrite-db`. The cache work is queued under `group` (the live worker's), so its
/// drainer applies it even if the replay stops before writing Redis. Returns the refs of the
/// rows that were newer than the stored ones.
pub async fn rewrite_rows(
    pool: &PgPool,
    group: &str,
    rows: Rows<'_>,
    tenants: TenantPolicy,
) -> Result<Vec<CacheRef>, SinkError> {
    let mut tx = pool.begin().await?;
    let queued = write_rows(&mut tx, group, rows, tenants, &HashMap::new()).await?;
    tx.commit().await?;
    Ok(queued.iter().map(|q| q.item.cache_ref()).collect())
}

/// Upserts the rows of either event type and queues their cache work under `group`.
async fn write_rows(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    rows: Rows<'_>,
    tenants: TenantPolicy,
    applied: &HashMap<Uuid, Vec<i64>>,
) -> Result<Vec<QueuedCache>, SinkError> {
    match rows {
        Rows::Orders(orders) => write_orders(tx, group, orders, tenants, applied).await,
        Rows::Config(changes) => write_config(tx, group, changes, tenants, applied).await,
    }
}
