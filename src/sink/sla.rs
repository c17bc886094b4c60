//! The SLA engine's SQL (migration `20261130000001_sla.sql` explains each function): lag checks
//! in the batch transaction, the deadline timer, the violation outbox and the engine's state.
//! Deadlines themselves are kept by `write_order_batch`, in the statement that writes the order.
//! Every time is the caller's clock, passed in as milliseconds: the database's own clock never
//! decides an SLA.

use std::collections::BTreeMap;

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::orders::position;
use super::SinkError;
use crate::clock::Clock;
use crate::domain::{SlaViolation, ValidOrder, ViolationKind};

/// What a live batch needs to keep SLAs: replay writes without it, so it never creates
/// violations.
#[derive(Clone, Debug)]
pub struct SlaTracking {
    /// The policy of tenants without their own (`None`: none).
    pub default_policy: Option<serde_json::Value>,
    /// PROCESSING_LAG's window.
    pub lag_window_ms: i64,
    /// "Now" for lag: the batch's commit is timed by this clock.
    pub clock: Clock,
}

/// Records the PROCESSING_LAG of a batch's order events, every event counted (also the
/// superseded and stale ones: each was processed), in the batch's transaction. Returns how many
/// violations this batch created (a window's later batches only add to its violation).
pub(super) async fn record_lag(
    tx: &mut Transaction<'_, Postgres>,
    orders: &[ValidOrder],
    sla: &SlaTracking,
) -> Result<usize, SinkError> {
    if orders.is_empty() {
        return Ok(0);
    }
    let mut by_tenant: BTreeMap<Uuid, Vec<i64>> = BTreeMap::new();
    for order in orders {
        by_tenant
            .entry(order.tenant_id)
            .or_default()
            .push(order.event.occurred_at);
    }
    let (mut tenants, mut firsts, mut lasts, mut occurred) = (vec![], vec![], vec![], vec![]);
    for (tenant, times) in by_tenant {
        tenants.push(tenant);
        firsts.push(position(occurred.len() + 1));
        occurred.extend(times);
        lasts.push(position(occurred.len()));
    }
    let created: Vec<bool> =
        sqlx::query_scalar("SELECT created FROM record_processing_lag($1, $2, $3, $4, $5, $6, $7)")
            .bind(&tenants)
            .bind(&firsts)
            .bind(&lasts)
            .bind(&occurred)
            .bind(sla.clock.now_ms())
            .bind(sla.lag_window_ms)
            .bind(&sla.default_policy)
            .fetch_all(&mut **tx)
            .await?;
    Ok(created.into_iter().filter(|created| *created).count())
}

/// One pass of the deadline timer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fired {
    /// Deadlines due and claimed.
    pub deadlines: u64,
    /// Violations stored for them (fewer when one with the same id existed).
    pub violations: u64,
}

/// Fires up to `max` deadlines due at `now_ms`, earliest first, skipping those another timer
/// holds: each becomes a stored violation queued for publishing, in one transaction.
pub async fn fire_due_deadlines(pool: &PgPool, now_ms: i64, max: i32) -> Result<Fired, SinkError> {
    let (deadlines, violations): (i64, i64) =
        sqlx::query_as("SELECT fired, created FROM fire_due_deadlines($1, $2)")
            .bind(now_ms)
            .bind(max)
            .fetch_one(pool)
            .await?;
    Ok(Fired {
        deadlines: deadlines as u64,
        violations: violations as u64,
    })
}

/// A violation claimed for publishing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    pub violation: SlaViolation,
    pub tenant: Uuid,
    pub id: Uuid,
    /// The broker already has it (only Redis's count is missing).
    pub published: bool,
}

/// Claims up to `max` violations due for publishing at `now_ms`, leased for `lease_ms`: until
/// then no other publisher takes them, and after it they come back if not finished.
pub async fn claim_violations(
    pool: &PgPool,
    now_ms: i64,
    lease_ms: i64,
    max: i32,
) -> Result<Vec<Claimed>, SinkError> {
    type Row = (
        Uuid,
        Uuid,
        Option<String>,
        String,
        Option<String>,
        i64,
        i64,
        i64,
        i64,
        i64,
        bool,
    );
    let rows: Vec<Row> = sqlx::query_as("SELECT * FROM claim_sla_violations($1, $2, $3)")
        .bind(now_ms)
        .bind(lease_ms)
        .bind(max)
        .fetch_all(pool)
        .await?;
    let claimed = rows.into_iter().map(|row| {
        let (id, tenant, order_id, kind, transition, threshold, observed, count, version) = (
            row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7, row.8,
        );
        Claimed {
            violation: SlaViolation {
                violation_id: id.to_string(),
                tenant_id: tenant.to_string(),
                order_id,
                kind: ViolationKind::parse(&kind).expect("the table's CHECK lists the kinds"),
                transition,
                threshold_ms: threshold,
                observed_ms: observed,
                event_count: count,
                policy_version: version,
                detected_at: row.9,
            },
            tenant,
            id,
            published: row.10,
        }
    });
    Ok(claimed.collect())
}

/// Gives claimed violations back unfinished, for the next pass to take again: `published` of
/// them the broker acknowledged (they will not be sent again, only counted).
pub async fn release_violations(
    pool: &PgPool,
    claimed: &[Uuid],
    published: &[Uuid],
) -> Result<(), SinkError> {
    sqlx::query(
        "UPDATE sla_outbox SET lease_until = NULL,
                published = published OR violation_id = ANY($2)
          WHERE violation_id = ANY($1)",
    )
    .bind(claimed)
    .bind(published)
    .execute(pool)
    .await?;
    Ok(())
}

/// These violations are published and counted: their outbox rows go.
pub async fn finish_violations(pool: &PgPool, ids: &[Uuid]) -> Result<(), SinkError> {
    sqlx::query("DELETE FROM sla_outbox WHERE violation_id = ANY($1)")
        .bind(ids)
        .execute(pool)
        .await?;
    Ok(())
}

/// The engine's backlog, for metrics and the timer's health.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlaState {
    pub deadlines_pending: i64,
    /// How long the earliest pending deadline has been due (0: none is due).
    pub oldest_overdue_ms: i64,
    pub outbox_depth: i64,
    /// How long the oldest publishable violation has waited (a lag violation becomes
    /// publishable 5 s after its window closes).
    pub oldest_outbox_ms: i64,
}

pub async fn sla_state(pool: &PgPool, now_ms: i64) -> Result<SlaState, SinkError> {
    let (deadlines_pending, oldest_overdue_ms, outbox_depth, oldest_outbox_ms) =
        sqlx::query_as("SELECT * FROM sla_state($1)")
            .bind(now_ms)
            .fetch_one(pool)
            .await?;
    Ok(SlaState {
        deadlines_pending,
        oldest_overdue_ms,
        outbox_depth,
        oldest_outbox_ms,
    })
}
