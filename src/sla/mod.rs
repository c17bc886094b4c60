//! The SLA engine's background work: the deadline timer turns due deadlines into violations,
//! and the publisher sends stored violations to the violations topic and counts them in Redis.
//! Deadlines and lag are recorded by the batches themselves, in their transactions (`sink`).
//!
//! Guarantee: a deadline fires once however many workers run (`FOR UPDATE SKIP LOCKED`, and a
//! violation id decided by what it is about); a violation is stored once and published at least
//! once: its outbox row goes only after the broker acknowledged it and Redis counted it. All
//! SLA time is read from one [`Clock`].

mod publisher;
mod timer;

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::metrics;
use crate::sink::sla;

pub use publisher::ViolationPublisher;
pub use timer::DeadlineTimer;

/// How often the engine's backlog gauges are read.
const STATE_EVERY: Duration = Duration::from_secs(5);

/// Reads the engine's backlog (deadlines and outbox) into the gauges; a failure leaves them as
/// they were (the timer and the publisher report Postgres failures themselves). The timer
/// calls it, every [`STATE_EVERY`].
async fn refresh_gauges(pool: &PgPool, clock: &Clock) {
    if let Ok(state) = sla::sla_state(pool, clock.now_ms()).await {
        metrics::sla_backlog(
            state.deadlines_pending,
            state.oldest_overdue_ms,
            state.outbox_depth,
            state.oldest_outbox_ms,
        );
    }
}

/// Between two passes of the timer or the publisher: waits `pause`. False when stopped
/// meanwhile.
async fn between_passes(pause: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(pause) => true,
    }
}
