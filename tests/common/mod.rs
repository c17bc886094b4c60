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
            (&settings.kafka.dead_letter_topic, 1),
        ],
    )
    .await;
    (settings, admin_pool().await, redis().await)
}

/// Waits until Postgres stores exactly `ends` as the group's next offsets.
pub async fn wait_for_offsets(
    pool: &PgPool,
    settings: &Settings,
    ends: &EndOffsets,
    limit: Duration,
) {
    let never = tokio_util::sync::CancellationToken::new();
    tokio::time::timeout(
        limit,
        tenantstream::demo::wait_until_consumed(pool, settings, ends, &never),
    )
    .await
    .unwrap_or_else(|_| panic!("stored offsets did not reach {ends:?} in {limit:?}"))
    .expect("offsets progress");
    let partitions: Vec<i32> = ends.keys().copied().collect();
    let stored = sink::load_stored_offsets(
        pool,
        &settings.kafka.group_id,
        &settings.kafka.orders_topic,
        &partitions,
    )
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
        total += tenantstream::demo::count_keys(redis, &format!("t:{{{tenant}}}:order:*"))
            .await
            .unwrap();
    }
    assert_eq!(total, expected.orders.len(), "cache key count");
    for ((tenant, order_id), want) in &expected.orders {
        let key = cache::order_key(tenant, order_id);
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
