//! The deadline timer: fires due deadlines by the clock, whether or not events arrive.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::domain::ViolationKind;
use crate::health::{Component, Health};
use crate::metrics::{self, Stage};
use crate::retry::RetryPolicy;
use crate::sink::sla;

/// Deadlines fired per transaction. A full pass is followed at once by the next one, so a
/// backlog drains at the database's pace; fewer means the timer has caught up.
pub const FIRE_BATCH: i32 = 2_000;

pub struct DeadlineTimer {
    pub pool: PgPool,
    pub clock: Clock,
    pub health: Health,
    /// The pause after a pass that found fewer than [`FIRE_BATCH`] due deadlines.
    pub interval: Duration,
}

impl DeadlineTimer {
    /// Fires due deadlines until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = RetryPolicy::BATCH.backoff();
        let mut gauges_at = Instant::now();
        loop {
            let pause = match self.pass().await {
                Ok(fired) => {
                    backoff.reset();
                    self.health.recovered(Component::Postgres);
                    if fired.deadlines >= FIRE_BATCH as u64 {
                        Duration::ZERO
                    } else {
                        self.interval
                    }
                }
                Err(error) => {
                    let retry_in = backoff.advance();
                    let stage = Stage::SlaTimer;
                    self.health
                        .transient(Component::Postgres, stage, &error, retry_in);
                    retry_in
                }
            };
            if gauges_at.elapsed() >= super::STATE_EVERY {
                super::refresh_gauges(&self.pool, &self.clock).await;
                gauges_at = Instant::now();
            }
            if !super::between_passes(pause, &shutdown).await {
                return;
            }
        }
    }

    /// One transaction: up to [`FIRE_BATCH`] due deadlines become violations.
    pub async fn pass(&self) -> Result<sla::Fired, crate::sink::SinkError> {
        let fired = sla::fire_due_deadlines(&self.pool, self.clock.now_ms(), FIRE_BATCH).await?;
        metrics::sla_violations_detected(ViolationKind::DeadlineMissed.as_str(), fired.violations);
        if fired.violations > 0 {
            tracing::info!(
                target: "tenantstream::sla",
                deadlines = fired.deadlines,
                violations = fired.violations,
                "Deadlines missed."
            );
        }
        Ok(fired)
    }
}
