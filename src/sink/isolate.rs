//! Finding the rows Postgres rejects for their data (SQLSTATE class 22 or 23, or a statement
//! timeout: [`SinkError::rejects_row`]), so that one bad
//! event costs one dead letter instead of blocking its partition.
//!
//! The batch's targets (one order, one configuration entry) are written in the order the
//! set-based write takes them, targets whose event registers the tenant (a profile) first, by
//! bisection in savepoints ([`write_isolating`]). Per target the newest version is tried first;
//! the first version Postgres accepts decides it, as in the set-based write, and older versions
//! of it are stale and never tried; a rejected version is rolled back and the next older one is
//! tried. An event that a newer, accepted version of its row supersedes in the same batch is
//! therefore never rejected, only stale.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use sqlx::{Acquire, PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::batch::{begin_fenced, check_lag, committed, write_rows, Batch, BatchOutcome, Rows};
use super::sla::SlaTracking;
use super::SinkError;
use crate::domain::{CacheRef, Event, QueuedCache, TenantPolicy};

/// A row Postgres rejected for its data, by its index in the batch's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRow {
    pub index: usize,
    /// The SQLSTATE Postgres answered (class 22 or 23, or 57014).
    pub sqlstate: String,
    /// Postgres's message, e.g. `new row for relation "orders" violates check constraint …`.
    pub message: String,
}

/// What writing a batch's rows one by one found.
#[derive(Debug)]
pub enum Isolated {
    /// No row was rejected: the batch is committed (or fenced), each row by its own statements.
    Written(BatchOutcome),
    /// These rows were rejected; nothing was committed.
    Rejected(Vec<RejectedRow>),
}

/// Writes the batch finding its rejected rows, after the same fence as
/// [`write_batch`](super::write_batch), when that failed for the data of some row. The rejected rows are returned and nothing is
/// committed, so that the caller can dead-letter them first and then write the rest; when no
/// row is rejected, the batch commits here.
pub async fn write_each(pool: &PgPool, batch: &Batch<'_>) -> Result<Isolated, SinkError> {
    let Some(mut tx) = begin_fenced(pool, batch).await? else {
        return Ok(Isolated::Written(BatchOutcome::Fenced));
    };
    let group = &batch.key.group;
    let (cache, rejected) = write_isolating(
        &mut tx,
        group,
        batch.rows,
        batch.tenant_policy,
        batch.applied,
        batch.sla,
    )
    .await?;
    if !rejected.is_empty() {
        tx.rollback().await?;
        return Ok(Isolated::Rejected(rejected));
    }
    let lag_violations = check_lag(&mut tx, batch).await?;
    tx.commit().await?;
    Ok(Isolated::Written(committed(
        batch.rows,
        cache,
        lag_violations,
    )))
}

/// Writes `rows` finding the rejected ones by bisection, each attempt in a savepoint of `tx`:
/// a run of targets is written set-based (each target's newest version still untried); when
/// Postgres rejects it, the run is split in two and each half tried in order, down to one target,
/// whose rejected version is recorded before its next older one is tried. That costs a few
/// savepoints per rejected row rather than one per row. Returns the cache work of the rows
/// written and the rows rejected; any other failure ends the attempt.
pub(super) async fn write_isolating(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    rows: Rows<'_>,
    tenant_policy: TenantPolicy,
    applied: &HashMap<Uuid, Vec<i64>>,
    sla: Option<&SlaTracking>,
) -> Result<(Vec<QueuedCache>, Vec<RejectedRow>), SinkError> {
    let mut cache = Vec::new();
    let mut rejected = Vec::new();
    let mut timed_out = HashSet::new();
    // Runs of targets still to write, in order; each target is its versions still to try.
    let targets: Vec<VecDeque<usize>> = attempt_order(rows).into_iter().map(Into::into).collect();
    let mut runs: VecDeque<Vec<VecDeque<usize>>> = VecDeque::from([targets]);
    while let Some(mut run) = runs.pop_front() {
        run.retain(|versions| !versions.is_empty());
        if run.is_empty() {
            continue;
        }
        let newest: Vec<usize> = run.iter().map(|versions| versions[0]).collect();
        let picked = rows.pick(&newest);
        let mut savepoint = tx.begin().await?;
        let rows = picked.rows();
        let written = write_rows(&mut savepoint, group, rows, tenant_policy, applied, sla);
        match written.await {
            Ok(queued) => {
                savepoint.commit().await?;
                cache.extend(queued);
            }
            Err(error) if error.rejects_row() => {
                savepoint.rollback().await?;
                if let [versions] = run.as_mut_slice() {
                    // A lone row that timed out is tried once more before it is blamed: a
                    // passing stall (a checkpoint, say) does not repeat, its own work does.
                    if error.is_statement_timeout() && timed_out.insert(versions[0]) {
                        runs.push_front(run);
                        continue;
                    }
                    let index = versions.pop_front().expect("a version was tried");
                    rejected.extend(RejectedRow::of(index, &error));
                    runs.push_front(run); // the target's next older version
                } else {
                    let second = run.split_off(run.len() / 2);
                    runs.push_front(second);
                    runs.push_front(run);
                }
            }
            Err(error) => return Err(error),
        }
    }
    rejected.sort_by_key(|r| r.index);
    Ok((cache, rejected))
}

impl RejectedRow {
    /// The rejection `error` is, if Postgres refused the row for its data.
    fn of(index: usize, error: &SinkError) -> Option<Self> {
        if !error.rejects_row() {
            return None;
        }
        Some(Self {
            index,
            sqlstate: error.sqlstate()?,
            message: error.database_message()?.to_owned(),
        })
    }
}

/// The batch's row indices grouped per target, in the order the set-based write takes them:
/// targets whose event registers its tenant first, then in order of first appearance; within a
/// target, the newest version first (the earliest of equal versions first).
fn attempt_order(rows: Rows<'_>) -> Vec<Vec<usize>> {
    match rows {
        Rows::Orders(rows) => group_newest_first(rows.iter().map(|o| (o, o.event.version))),
        Rows::Config(rows) => group_newest_first(rows.iter().map(|c| (c, c.version))),
    }
}

fn group_newest_first<'a, E: Event + 'a>(
    rows: impl Iterator<Item = (&'a E, i64)>,
) -> Vec<Vec<usize>> {
    /// One target's versions in the batch.
    struct Target {
        registers_tenant: bool,
        first_index: usize,
        versions: Vec<(i64, usize)>,
    }
    let mut targets: BTreeMap<CacheRef, Target> = BTreeMap::new();
    for (index, (event, version)) in rows.enumerate() {
        let target = targets.entry(event.cache_ref()).or_insert(Target {
            registers_tenant: event.registers_tenant(),
            first_index: index,
            versions: Vec::new(),
        });
        target.versions.push((version, index));
    }
    let mut targets: Vec<Target> = targets.into_values().collect();
    targets.sort_by_key(|t| (!t.registers_tenant, t.first_index));
    targets
        .into_iter()
        .map(|mut target| {
            target
                .versions
                .sort_by_key(|(version, index)| (std::cmp::Reverse(*version), *index));
            target
                .versions
                .into_iter()
                .map(|(_, index)| index)
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::domain::{sample_config, sample_order, ConfigKind, ValidConfig, ValidOrder};

    fn order(order_id: &str, version: i64) -> ValidOrder {
        let mut event = sample_order();
        event.order_id = order_id.into();
        event.version = version;
        event.validate().unwrap()
    }

    #[test]
    fn orders_are_tried_per_order_newest_first_in_order_of_appearance() {
        let rows = [
            order("a", 1),
            order("b", 4),
            order("a", 3),
            order("a", 2),
            order("b", 4),
        ];
        assert_eq!(
            attempt_order(rows[..].into()),
            vec![vec![2, 3, 0], vec![1, 4]]
        );
    }

    #[test]
    fn a_profile_is_tried_before_the_entries_it_registers_its_tenant_for() {
        let tenant = Uuid::new_v4().to_string();
        let change = |kind, key: &str, value: &str| -> ValidConfig {
            let mut event = sample_config();
            event.tenant_id = Some(tenant.clone());
            event.kind = kind;
            event.key = key.into();
            event.value = Some(value.into());
            event.validate().unwrap()
        };
        let rows = [
            change(ConfigKind::Setting, "locale", "\"fr\""),
            change(
                ConfigKind::TenantProfile,
                "profile",
                r#"{"name":"A","tier":"pro","status":"active"}"#,
            ),
            change(ConfigKind::Setting, "currency", "\"EUR\""),
        ];
        assert_eq!(
            attempt_order(rows[..].into()),
            vec![vec![1], vec![0], vec![2]]
        );
    }
}
