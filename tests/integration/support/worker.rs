//! A worker running inside the test process, stopped as SIGTERM would.

use tenantstream::{Health, Settings, Worker, WorkerError};

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
