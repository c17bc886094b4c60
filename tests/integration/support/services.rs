//! The services every test talks to: the test database (as its owner), Redis, the tansu broker,
//! and settings that give each test its own topics and consumer group.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tenantstream::testing::{cache, sink};
use tenantstream::{Secret, Settings};
use uuid::Uuid;

pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/tenantstream_test";
pub const WORKER_URL: &str = "postgres://tenantstream_worker@127.0.0.1:5432/tenantstream_test";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The tansu broker started by scripts/test.sh. Tests that need it fail (never skip) without it.
pub fn tansu_brokers() -> String {
    std::env::var("TENANTSTREAM_TEST_BROKERS").expect(
        "TENANTSTREAM_TEST_BROKERS is not set: run the suite with scripts/test.sh, which starts tansu",
    )
}

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn schemas_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas"))
}

/// Settings for one test: its own topics and group on `brokers`, the test database.
pub fn settings(brokers: &str, name: &str) -> Settings {
    let unique = format!("{name}-{}", &Uuid::new_v4().to_string()[..8]);
    let mut s = Settings::default();
    s.kafka.brokers = brokers.to_owned();
    s.kafka.group_id = format!("g-{unique}");
    s.kafka.orders_topic = format!("orders-{unique}");
    s.kafka.config_topic = format!("config-{unique}");
    s.kafka.dead_letter_topic = format!("dlq-{unique}");
    s.kafka.sla_violations_topic = format!("sla-{unique}");
    s.kafka.batch_linger_ms = 20;
    s.kafka.batch_max_events = 500;
    s.kafka.session_timeout_ms = 6000;
    s.database.url = Secret::new(WORKER_URL);
    s.database.admin_url = Secret::new(ADMIN_URL);
    s.redis.url = Secret::new(REDIS_URL);
    s.schemas.dir = manifest_dir().join("schemas");
    s.http.listen = "127.0.0.1:0".into();
    s
}

/// Migrates the test database (idempotent; sqlx serializes concurrent runs) and returns an
/// owner pool, which bypasses RLS and so can check every tenant's rows.
pub async fn admin_pool() -> PgPool {
    sink::migrate(ADMIN_URL)
        .await
        .expect("migrate test database");
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(ADMIN_URL)
        .await
        .expect("connect as owner")
}

pub async fn redis() -> fred::prelude::Client {
    cache::connect(REDIS_URL).await.expect("connect to Redis")
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Waits until `child` (a server named `what`, logging to `log`) accepts connections at `addr`
/// and is still running `settle` later: a port from [`free_port`] can be taken by another
/// process first, whose listener then answers while `child` exits. Returns why `child` exited
/// instead, for the caller to start it again on another port; kills it and fails the test after
/// `limit`.
pub fn wait_listening(
    child: &mut std::process::Child,
    what: &str,
    addr: &str,
    log: &Path,
    settle: Duration,
    limit: Duration,
) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let answered = std::net::TcpStream::connect(addr).is_ok();
        if answered {
            std::thread::sleep(settle);
        }
        if let Some(status) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("{what} on {addr} exited ({status}): {log}"));
        }
        if answered {
            return Ok(());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{what} on {addr} did not start listening in {limit:?}: {log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A migrated database of the test's own, for a test that changes the schema (a constraint no
/// other test may see). Dropped by [`OwnDatabase::drop`].
pub struct OwnDatabase {
    pub name: String,
    pub admin_url: String,
    pub worker_url: String,
    /// The owner's pool, which bypasses RLS.
    pub admin: PgPool,
}

impl OwnDatabase {
    /// A new database named `<prefix>_<random>`. Each test has its own prefix: databases of it
    /// left by an earlier run that failed are dropped first.
    pub async fn create(prefix: &str) -> Self {
        // The shared test database's migration creates the worker role (a cluster-wide object)
        // under its lock; migrating a second database at the same moment would race on it.
        let server = admin_pool().await;
        let leftovers: Vec<String> =
            sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE datname ~ $1")
                .bind(format!("^{prefix}_[0-9a-f]{{12}}$"))
                .fetch_all(&server)
                .await
                .expect("list databases");
        for leftover in leftovers {
            sqlx::query(&format!("DROP DATABASE IF EXISTS {leftover} WITH (FORCE)"))
                .execute(&server)
                .await
                .expect("drop a leftover database");
        }
        let name = format!("{prefix}_{}", &Uuid::new_v4().simple().to_string()[..12]);
        let admin_url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        sink::migrate(&admin_url)
            .await
            .expect("migrate own database");
        let admin = PgPool::connect(&admin_url).await.expect("connect as owner");
        Self {
            worker_url: format!("postgres://tenantstream_worker@127.0.0.1:5432/{name}"),
            name,
            admin_url,
            admin,
        }
    }

    /// Points `settings` at this database.
    pub fn use_in(&self, settings: &mut Settings) {
        settings.database.url = Secret::new(&self.worker_url);
        settings.database.admin_url = Secret::new(&self.admin_url);
    }

    pub async fn drop(self) {
        self.admin.close().await;
        let server = PgPool::connect(ADMIN_URL)
            .await
            .expect("connect to the server");
        sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&server)
            .await
            .expect("drop own database");
    }
}
