//! Shared test helpers: real Postgres (database `tenantstream_test`), real Redis, and a real
//! Kafka-protocol broker (tansu, started by scripts/test.sh) or librdkafka's mock cluster.
//! Each test isolates itself with its own topics, consumer group and tenants.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use sqlx::PgPool;
use tenantstream::config::Secret;
use tenantstream::produce::{EndOffsets, Expected};
use tenantstream::{cache, sink, Settings};
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

/// Settings for one test: its own topics and group on `brokers`, the test database.
pub fn settings(brokers: &str, name: &str) -> Settings {
    let unique = format!("{name}-{}", &Uuid::new_v4().to_string()[..8]);
    let mut s = Settings::default();
    s.kafka.brokers = brokers.to_owned();
    s.kafka.group_id = format!("g-{unique}");
    s.kafka.orders_topic = format!("orders-{unique}");
    s.kafka.config_topic = format!("config-{unique}");
    s.kafka.dead_letter_topic = format!("dlq-{unique}");
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

/// A producer that writes one record per batch. tansu 0.6.0 answers a fetch from an offset
/// inside a multi-record batch with nothing, so a consumer resuming mid-batch (after a crash)
/// would stall; with one-record batches every offset is a batch start.
pub fn single_record_producer(brokers: &str) -> rdkafka::producer::FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("batch.num.messages", "1")
        .set("linger.ms", "0")
        .set("acks", "all")
        .create()
        .expect("producer")
}

pub async fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics");
    for result in results {
        result.expect("topic created");
    }
}

/// A worker running in this process until [`RunningWorker::stop`].
pub struct RunningWorker {
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<(), tenantstream::worker::WorkerError>>,
}

impl RunningWorker {
    pub async fn start(settings: &Settings, health: tenantstream::http::Health) -> Self {
        let worker = tenantstream::Worker::connect(settings.clone(), health)
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

/// A test's own topics on tansu (orders with 3 partitions, dead letters with 1), with the
/// migrated database and Redis.
pub async fn tansu_setup(name: &str) -> (Settings, PgPool, fred::prelude::Client) {
    let brokers = tansu_brokers();
    let settings = settings(&brokers, name);
    create_topics(
        &brokers,
        &[
            (&settings.kafka.orders_topic, 3),
            (&settings.kafka.config_topic, 2),
            (&settings.kafka.dead_letter_topic, 1),
        ],
    )
    .await;
    (settings, admin_pool().await, redis().await)
}

/// Waits until Postgres stores exactly `ends` as the group's next offsets of the orders topic.
pub async fn wait_for_offsets(
    pool: &PgPool,
    settings: &Settings,
    ends: &EndOffsets,
    limit: Duration,
) {
    wait_for_topic_offsets(pool, settings, &settings.kafka.orders_topic, ends, limit).await
}

/// Waits until Postgres stores exactly `ends` as the group's next offsets of `topic`.
pub async fn wait_for_topic_offsets(
    pool: &PgPool,
    settings: &Settings,
    topic: &str,
    ends: &EndOffsets,
    limit: Duration,
) {
    let never = tokio_util::sync::CancellationToken::new();
    tokio::time::timeout(
        limit,
        tenantstream::demo::wait_until_consumed(pool, settings, topic, ends, &never),
    )
    .await
    .unwrap_or_else(|_| panic!("stored offsets did not reach {ends:?} in {limit:?}"))
    .expect("offsets progress");
    let partitions: Vec<i32> = ends.keys().copied().collect();
    let stored = sink::load_stored_offsets(pool, &settings.kafka.group_id, topic, &partitions)
        .await
        .unwrap();
    assert_eq!(
        &stored, ends,
        "stored offsets end exactly at the end offsets"
    );
}

/// Waits until the cache outbox holds nothing for `tenants`.
pub async fn wait_for_cache(pool: &PgPool, tenants: &[Uuid], limit: Duration) {
    let started = Instant::now();
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM cache_outbox WHERE tenant_id = ANY($1)")
                .bind(tenants)
                .fetch_one(pool)
                .await
                .unwrap();
        if pending == 0 {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{pending} cache updates still queued after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that Postgres holds exactly the expected orders of the traffic's tenants.
pub async fn assert_rows(pool: &PgPool, expected: &Expected) {
    type Row = (
        Uuid,
        String,
        i64,
        String,
        String,
        String,
        i64,
        serde_json::Value,
        Uuid,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT tenant_id, order_id, version, status, customer_id, currency, total_cents,
                    items, last_event_id
               FROM orders WHERE tenant_id = ANY($1)",
    )
    .bind(&expected.tenants)
    .fetch_all(pool)
    .await
    .unwrap();
    if rows.len() != expected.orders.len() {
        let present: std::collections::HashSet<(Uuid, String)> =
            rows.iter().map(|r| (r.0, r.1.clone())).collect();
        let missing: Vec<_> = expected
            .orders
            .iter()
            .filter(|(k, _)| !present.contains(k))
            .take(10)
            .map(|(k, e)| (k.1.clone(), e.version))
            .collect();
        panic!(
            "row count {} != expected {}; missing (order, version): {missing:?}",
            rows.len(),
            expected.orders.len()
        );
    }
    for (tenant, order_id, version, status, customer, currency, total, items, event_id) in rows {
        let want = expected
            .orders
            .get(&(tenant, order_id.clone()))
            .unwrap_or_else(|| panic!("unexpected row {tenant}/{order_id}"));
        assert_eq!(version, want.version, "{order_id} version");
        assert_eq!(status, want.event_type.status(), "{order_id} status");
        assert_eq!(customer, want.customer_id);
        assert_eq!(currency, want.currency);
        assert_eq!(total, want.total_cents);
        assert_eq!(items, serde_json::to_value(&want.items).unwrap());
        assert_eq!(event_id.to_string(), want.event_id, "{order_id} last event");
    }
}

/// Asserts that Redis holds exactly one key per expected order, at the expected version.
pub async fn assert_cache(redis: &fred::prelude::Client, expected: &Expected) {
    use fred::prelude::*;
    let mut total = 0;
    for tenant in &expected.tenants {
        total += tenantstream::demo::count_keys(redis, &format!("t:{{{tenant}}}:g0:order:*"))
            .await
            .unwrap();
    }
    assert_eq!(total, expected.orders.len(), "cache key count");
    for ((tenant, order_id), want) in &expected.orders {
        let key = cache::order_key(tenant, 0, order_id);
        let json: Option<String> = redis.get(&key).await.unwrap();
        let json = json.unwrap_or_else(|| panic!("missing cache key {key}"));
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["version"], want.version, "{key}");
        assert_eq!(value["status"], want.event_type.status(), "{key}");
        assert_eq!(value["tenant_id"], tenant.to_string());
        assert_eq!(value["total_cents"], want.total_cents);
    }
}

/// Reads `count` messages from `topic` (all partitions, from the start), or fails after `limit`.
pub fn read_topic(brokers: &str, topic: &str, count: usize, limit: Duration) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{}", Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let started = Instant::now();
    let mut messages = Vec::new();
    while messages.len() < count {
        assert!(
            started.elapsed() < limit,
            "read {} of {count} messages from {topic} in {limit:?}",
            messages.len()
        );
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            messages.push(message.unwrap().detach());
        }
    }
    // Nothing more than expected arrives within a short grace period.
    let grace = Instant::now();
    while grace.elapsed() < Duration::from_secs(2) {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            messages.push(message.unwrap().detach());
        }
    }
    messages
}

/// The producer's messages, by (partition, offset), from the delivery reports' order.
pub fn header<'a>(message: &'a OwnedMessage, key: &str) -> &'a str {
    let headers = message.headers().expect("dead letter has headers");
    tenantstream::deadletter::header_text(headers, key)
        .unwrap_or_else(|| panic!("header {key} missing"))
}

/// Counts by key.
pub fn tally<'a>(items: impl IntoIterator<Item = &'a str>) -> HashMap<&'a str, usize> {
    let mut counts = HashMap::new();
    for item in items {
        *counts.entry(item).or_default() += 1;
    }
    counts
}

pub fn schemas_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas"))
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Redis servers of the test's own (FLUSHALL or a cluster there touches no other test), from
/// Debian's redis-server; stopped on drop.
pub struct PrivateRedis {
    children: Vec<std::process::Child>,
    _dir: tempfile::TempDir,
    pub url: String,
    pub ports: Vec<u16>,
}

impl PrivateRedis {
    fn spawn(dir: &Path, port: u16, cluster: bool) -> std::process::Child {
        let mut command = std::process::Command::new("redis-server");
        command.args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        command.arg("--dir").arg(dir);
        if cluster {
            command.args([
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                "5000",
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
            ]);
        }
        command
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) starts")
    }

    fn wait_for(port: u16) {
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis on {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One standalone server.
    pub fn single() -> Self {
        Self::single_on(free_port())
    }

    /// One standalone server on `port` (to start it again where clients expect it).
    pub fn single_on(port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = Self::spawn(dir.path(), port, false);
        Self::wait_for(port);
        Self {
            children: vec![child],
            _dir: dir,
            url: format!("redis://127.0.0.1:{port}"),
            ports: vec![port],
        }
    }

    /// A 3-node cluster (3 primaries, no replicas), every slot covered.
    pub fn cluster() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let children = ports
            .iter()
            .map(|p| Self::spawn(dir.path(), *p, true))
            .collect();
        ports.iter().for_each(|p| Self::wait_for(*p));
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let status = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("redis-cli --cluster create");
        assert!(status.success(), "cluster creation failed");
        let started = Instant::now();
        loop {
            let info = std::process::Command::new("redis-cli")
                .args(["-p", &ports[0].to_string(), "cluster", "info"])
                .output()
                .expect("redis-cli cluster info");
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "cluster not ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let url = format!(
            "redis-cluster://{}?node={}&node={}",
            nodes[0], nodes[1], nodes[2]
        );
        Self {
            children,
            _dir: dir,
            url,
            ports,
        }
    }
}

impl PrivateRedis {
    /// Stops the servers now (as an outage would).
    pub fn stop(&mut self) {
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One Redis value, for comparing whole keyspaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dumped {
    String(String),
    Hash(std::collections::BTreeMap<String, String>),
    Set(std::collections::BTreeSet<String>),
}

/// Every key of a single Redis server with its value and whether it expires.
pub async fn dump_all(
    redis: &fred::prelude::Client,
) -> std::collections::BTreeMap<String, (Dumped, bool)> {
    dump_matching(redis, "*").await
}

/// The keys matching `pattern` with their values and whether they expire.
pub async fn dump_matching(
    redis: &fred::prelude::Client,
    pattern: &str,
) -> std::collections::BTreeMap<String, (Dumped, bool)> {
    use fred::prelude::*;
    let mut out = std::collections::BTreeMap::new();
    for key in tenantstream::demo::scan_keys(redis, pattern).await.unwrap() {
        let kind: String = redis
            .custom(fred::cmd!("TYPE"), vec![key.clone()])
            .await
            .unwrap();
        let value = match kind.as_str() {
            "string" => Dumped::String(redis.get(&key).await.unwrap()),
            "hash" => Dumped::Hash(redis.hgetall(&key).await.unwrap()),
            "set" => Dumped::Set(redis.smembers(&key).await.unwrap()),
            other => panic!("unexpected type {other} of {key}"),
        };
        let ttl: i64 = redis.ttl(&key).await.unwrap();
        out.insert(key, (value, ttl > 0));
    }
    out
}

/// Configuration traffic for `tenants` with this test's own category ids.
pub fn config_traffic(
    settings: &Settings,
    tenants: &[Uuid],
    suspended: f64,
) -> (
    Vec<tenantstream::produce::Generated>,
    tenantstream::produce::ExpectedConfig,
) {
    let spec = tenantstream::produce::ConfigSpec {
        tenants: tenants.to_vec(),
        changes_per_tenant: 12,
        categories: 6,
        category_prefix: format!("{}-cat-", settings.kafka.group_id),
        suspended,
        seed: rand::random(),
        start_ms: None,
    };
    tenantstream::produce::generate_config(
        &spec,
        &tenantstream::commands::config_encoder(settings).unwrap(),
    )
}

/// Asserts Postgres holds exactly the newest profile, entries (tombstones included) and
/// categories of the traffic.
pub async fn assert_config_rows(pool: &PgPool, expected: &tenantstream::produce::ExpectedConfig) {
    use tenantstream::events::TenantMap;
    for (tenant, (version, profile)) in &expected.profiles {
        let row: (String, String, String, i64) = sqlx::query_as(
            "SELECT status, name, tier, profile_version FROM tenants WHERE tenant_id = $1",
        )
        .bind(tenant)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(
            (row.0.as_str(), row.1.as_str(), row.2.as_str(), row.3),
            (
                profile["status"].as_str().unwrap(),
                profile["name"].as_str().unwrap(),
                profile["tier"].as_str().unwrap(),
                *version
            ),
            "profile of {tenant}"
        );
    }
    for ((tenant, map, key), (version, value)) in &expected.entries {
        let table = match map {
            TenantMap::Settings => "tenant_settings",
            TenantMap::SlaPolicies => "sla_policies",
        };
        let row: (i64, Option<serde_json::Value>) = sqlx::query_as(&format!(
            "SELECT version, value FROM {table} WHERE tenant_id = $1 AND key = $2"
        ))
        .bind(tenant)
        .bind(key)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(row, (*version, value.clone()), "{table} {tenant} {key}");
    }
    for (id, (version, value)) in &expected.categories {
        let row: (i64, Option<serde_json::Value>) =
            sqlx::query_as("SELECT version, value FROM categories WHERE category_id = $1")
                .bind(id)
                .fetch_one(pool)
                .await
                .unwrap();
        assert_eq!(row, (*version, value.clone()), "category {id}");
    }
}

/// Asserts Redis holds, in each keyspace's current generation, exactly the expected profile,
/// settings and SLA policies of the tenants that were never suspended, and the categories.
pub async fn assert_config_cache(
    redis: &fred::prelude::Client,
    expected: &tenantstream::produce::ExpectedConfig,
) {
    use fred::prelude::*;
    use tenantstream::cache::Keyspace;
    use tenantstream::events::TenantMap;
    let spaces = expected
        .profiles
        .keys()
        .map(|t| Keyspace::Tenant(*t))
        .chain([Keyspace::Reference]);
    let generations = cache::read_generations(redis, spaces).await.unwrap();
    for (tenant, (version, profile)) in &expected.profiles {
        let space = Keyspace::Tenant(*tenant);
        let generation = generations[&space];
        let suspended = profile["status"] == "suspended";
        assert_eq!(generation, i64::from(suspended), "generation of {tenant}");
        let json: Option<String> = redis.get(space.key(generation, "profile")).await.unwrap();
        let cached: serde_json::Value =
            serde_json::from_str(&json.unwrap_or_else(|| panic!("profile of {tenant}"))).unwrap();
        assert_eq!(cached["version"], *version, "profile version of {tenant}");
        for field in ["status", "name", "tier"] {
            assert_eq!(cached[field], profile[field], "profile {field} of {tenant}");
        }
        if suspended {
            continue;
        }
        for map in [TenantMap::Settings, TenantMap::SlaPolicies] {
            let cached: HashMap<String, String> = redis
                .hgetall(space.key(generation, map.name()))
                .await
                .unwrap();
            let cached: HashMap<String, serde_json::Value> = cached
                .into_iter()
                .map(|(k, v)| (k, serde_json::from_str(&v).unwrap()))
                .collect();
            let want: HashMap<String, serde_json::Value> = expected
                .entries
                .iter()
                .filter(|((t, m, _), _)| t == tenant && *m == map)
                .filter_map(|((_, _, k), (_, v))| v.clone().map(|v| (k.clone(), v)))
                .collect();
            assert_eq!(cached, want, "{} of {tenant}", map.name());
        }
    }
    let generation = generations[&Keyspace::Reference];
    let ids_key = Keyspace::Reference.key(generation, "ids");
    for (id, (_, value)) in &expected.categories {
        let json: Option<String> = redis
            .get(cache::category_key(generation, id))
            .await
            .unwrap();
        let cached = json.map(|j| serde_json::from_str::<serde_json::Value>(&j).unwrap());
        assert_eq!(&cached, value, "category {id}");
        let member: bool = redis.sismember(&ids_key, id).await.unwrap();
        assert_eq!(member, value.is_some(), "category {id} in the index");
    }
}
