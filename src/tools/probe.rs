//! Waits and counts that look at the end state from outside the pipeline: stored offsets,
//! readiness, queued cache work, messages in a topic. For the demo, the benchmarks and the
//! tests.

use std::time::{Duration, Instant};

use anyhow::bail;
use rdkafka::consumer::{BaseConsumer, Consumer};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::health::Health;
use crate::sink::{self, cache_outbox};
use crate::source;
use crate::tools::traffic::EndOffsets;

/// How long a wait may see no progress before it gives up.
pub const STALL_LIMIT: Duration = Duration::from_secs(60);

/// Waits until Postgres stores `ends` as the group's next offsets of `topic`, printing progress.
pub async fn wait_until_consumed(
    pool: &PgPool,
    settings: &Settings,
    topic: &str,
    ends: &EndOffsets,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let partitions: Vec<i32> = ends.keys().copied().collect();
    let total: i64 = ends.values().sum();
    let mut last_print = Instant::now();
    let mut last_progress = (0, Instant::now());
    loop {
        let stored =
            sink::load_stored_offsets(pool, &settings.kafka.group_id, topic, &partitions).await?;
        let done: i64 = ends
            .iter()
            .map(|(p, end)| stored.get(p).copied().unwrap_or(0).min(*end))
            .sum();
        if done == total {
            return Ok(());
        }
        if done > last_progress.0 {
            last_progress = (done, Instant::now());
        } else if last_progress.1.elapsed() > STALL_LIMIT {
            bail!("no progress for {STALL_LIMIT:?} at {done}/{total} committed messages; see the worker's log above");
        }
        if last_print.elapsed() > Duration::from_secs(2) {
            println!("demo: {done}/{total} messages committed");
            last_print = Instant::now();
        }
        pause(shutdown).await?;
    }
}

/// Waits until the worker has joined the group and has its partitions, so that a measured
/// time is the pipeline's, not the group join's.
pub async fn wait_until_ready(health: &Health, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let started = Instant::now();
    while !health.is_ready() {
        if started.elapsed() > STALL_LIMIT {
            bail!("the worker did not get ready in {STALL_LIMIT:?}; see the log above");
        }
        pause(shutdown).await?;
    }
    Ok(())
}

/// Waits until consumer group `group` has no cache work queued (counted as the owner).
pub async fn wait_until_cache_drained(
    admin: &PgPool,
    group: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let pending = cache_outbox::queued_count(admin, group).await?;
        if pending == 0 {
            return Ok(());
        }
        if started.elapsed() > STALL_LIMIT {
            bail!("{pending} cache updates still queued after {STALL_LIMIT:?}; see the worker's log above");
        }
        pause(shutdown).await?;
    }
}

async fn pause(shutdown: &CancellationToken) -> anyhow::Result<()> {
    tokio::select! {
        _ = shutdown.cancelled() => bail!("interrupted"),
        _ = tokio::time::sleep(Duration::from_millis(50)) => Ok(()),
    }
}

/// Messages in partition 0 of `topic` (high minus low watermark).
pub fn message_count(settings: &Settings, topic: &str) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = source::client_config(&settings.kafka).create()?;
    let (low, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(5))?;
    Ok(high - low)
}
