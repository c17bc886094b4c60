//! Setup shared by the benchmarks: knobs, the bench database, a mock cluster with the topics.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use tenantstream::testing::sink;
use tenantstream::{Secret, Settings};
use uuid::Uuid;

pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/tenantstream_bench";
pub const WORKER_URL: &str = "postgres://tenantstream_worker@127.0.0.1:5432/tenantstream_bench";

/// An environment knob with a default.
pub fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// True when cargo only probes the binary (`cargo bench -- --list`, `cargo test --benches`).
pub fn probing() -> bool {
    std::env::args().any(|a| a == "--list")
}

/// The migrated bench database (owner pool), a mock cluster with the orders and configuration
/// topics (`partitions` each) and the dead-letter topic, and settings pointing at both.
pub async fn setup(
    name: &str,
    partitions: i32,
) -> anyhow::Result<(
    sqlx::PgPool,
    MockCluster<'static, DefaultProducerContext>,
    Settings,
)> {
    sink::migrate(ADMIN_URL)
        .await
        .context("migrate bench database")?;
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(ADMIN_URL)
        .await?;
    let mock = MockCluster::new(1)?;
    let mut settings = Settings::default();
    settings.kafka.brokers = mock.bootstrap_servers();
    settings.kafka.group_id = format!("{name}-{}", Uuid::new_v4());
    settings.database.url = Secret::new(WORKER_URL);
    settings.database.admin_url = Secret::new(ADMIN_URL);
    mock.create_topic(&settings.kafka.orders_topic, partitions, 1)?;
    mock.create_topic(&settings.kafka.config_topic, partitions, 1)?;
    mock.create_topic(&settings.kafka.dead_letter_topic, 1, 1)?;
    Ok((admin, mock, settings))
}

/// A redis-server of the benchmark's own (its port is `.1`), so FLUSHALL or a server setting
/// touches nothing else.
pub struct OwnRedis(std::process::Child, pub u16);

impl OwnRedis {
    /// Starts one on a free loopback port, with `extra` arguments (e.g. server settings).
    pub fn start(extra: &[&str]) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self(child, port))
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
