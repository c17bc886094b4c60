//! A worker running inside the test process, stopped as SIGTERM would.

use std::time::Duration;

use sqlx::PgPool;
use tenantstream::testing::traffic::EndOffsets;
use tenantstream::{Health, Settings, Worker, WorkerError};
use uuid::Uuid;

use super::postgres::{wait_for_cache, wait_for_offsets};

/// A worker running in this process until [`RunningWorker::stop`].
pub struct RunningWorker {
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<(), WorkerError>>,
}

impl RunningWorker {
    pub async fn start(settings: &Settings, health: Health) -> Self {
        let worker = Worker::connect(settings.clone(), health)
            .await
            .expect("worker connects");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(worker.run(shutdown.clone()));
        Self { shutdown, task }
    }

    /// Stops it as SIGTERM would, and checks it stopped cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().expect("worker stops cleanly");
    }
}

/// Runs a worker until the group's stored offsets of the orders topic are exactly `ends` and
/// no cache work of `tenants` is queued, then stops it.
pub async fn run_until_consumed(
    settings: &Settings,
    admin: &PgPool,
    ends: &EndOffsets,
    tenants: &[Uuid],
) {
    let worker = RunningWorker::start(settings, Health::default()).await;
    wait_for_offsets(admin, settings, ends, Duration::from_secs(120)).await;
    wait_for_cache(admin, tenants, Duration::from_secs(30)).await;
    worker.stop().await;
}
