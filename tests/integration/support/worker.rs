//! A worker running inside the test process, stopped as SIGTERM would, and the binary run as a
//! separate process.

use std::process::{Child, Stdio};
use std::time::Duration;

use sqlx::PgPool;
use tenantstream::testing::monitor::TenantMonitor;
use tenantstream::testing::traffic::EndOffsets;
use tenantstream::{Clock, Health, Settings, Worker, WorkerError};
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
        Self::spawn(worker)
    }

    /// [`RunningWorker::start`] with `clock` as "now" for its batches, deadline timer and
    /// violation publisher: a manual clock moves SLA time only when the test advances it.
    pub async fn start_with_clock(settings: &Settings, health: Health, clock: Clock) -> Self {
        let worker = Worker::connect(settings.clone(), health)
            .await
            .expect("worker connects")
            .with_clock(clock);
        Self::spawn(worker)
    }

    /// [`RunningWorker::start`] recording its per-tenant figures in `monitor`, which the test
    /// reads.
    pub async fn start_with_monitor(
        settings: &Settings,
        health: Health,
        monitor: TenantMonitor,
    ) -> Self {
        let worker = Worker::connect(settings.clone(), health)
            .await
            .expect("worker connects")
            .with_tenant_monitor(monitor);
        Self::spawn(worker)
    }

    fn spawn(worker: Worker) -> Self {
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

/// The `tenantstream` binary running `command` with nothing of the test's environment but
/// PATH, set up for `settings`: brokers, consumer group, topics, Postgres, Redis, schemas.
pub fn binary(command: &str, settings: &Settings) -> std::process::Command {
    let k = &settings.kafka;
    let mut binary = std::process::Command::new(env!("CARGO_BIN_EXE_tenantstream"));
    binary
        .arg(command)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KAFKA_BROKERS", &k.brokers)
        .env("TENANTSTREAM_GROUP_ID", &k.group_id)
        .env("TENANTSTREAM_ORDERS_TOPIC", &k.orders_topic)
        .env("TENANTSTREAM_CONFIG_TOPIC", &k.config_topic)
        .env("TENANTSTREAM_DEAD_LETTER_TOPIC", &k.dead_letter_topic)
        .env("TENANTSTREAM_SLA_VIOLATIONS_TOPIC", &k.sla_violations_topic)
        .env("DATABASE_URL", settings.database.url.expose())
        .env("REDIS_URL", settings.redis.url.expose())
        .env("TENANTSTREAM_SCHEMAS_DIR", &settings.schemas.dir)
        .env(
            "TENANTSTREAM_REBALANCE_PROTOCOL",
            settings.kafka.rebalance_protocol.to_string(),
        )
        .env(
            "TENANTSTREAM_TENANT_KEY_MUST_MATCH",
            settings.tenants.key_must_match.to_string(),
        )
        .env(
            "TENANTSTREAM_SLA_DEFAULT_POLICY",
            &settings.sla.default_policy,
        )
        .env(
            "TENANTSTREAM_SLA_LAG_WINDOW_MS",
            settings.sla.lag_window_ms.to_string(),
        )
        .env(
            "TENANTSTREAM_SLA_POLL_INTERVAL_MS",
            settings.sla.poll_interval_ms.to_string(),
        );
    binary
}

/// `tenantstream run` for `settings`, serving HTTP on `settings.http.listen`, its stderr piped
/// (read by [`terminate`] or [`stderr_of`]).
pub fn spawn_run(settings: &Settings) -> Child {
    binary("run", settings)
        .env("TENANTSTREAM_HTTP_LISTEN", &settings.http.listen)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tenantstream run")
}

/// SIGTERM, then the stderr of the stopped process.
pub fn terminate(mut child: Child) -> String {
    stop_cleanly(&mut child);
    stderr_of(&mut child)
}

/// Sends SIGTERM and checks the process exits 0, as a worker stopping cleanly does.
pub fn stop_cleanly(child: &mut Child) {
    sigterm(child);
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM exit status {status:?}");
}

/// Sends SIGTERM, as an operator stopping a worker does.
pub fn sigterm(child: &Child) {
    let pid = child.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -TERM {pid}");
}

/// What a stopped process wrote to its piped stderr.
pub fn stderr_of(child: &mut Child) -> String {
    use std::io::Read;
    let mut text = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        stderr.read_to_string(&mut text).unwrap();
    }
    text
}
