//! SLA test support: order events at chosen times, a worker on a hand-driven clock, and the
//! violations as Postgres (rows, outbox), the violations topic and Redis (day sets) hold them.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use sqlx::PgPool;
use tenantstream::testing::cache;
use tenantstream::testing::decode::{Decoder, SchemaStore};
use tenantstream::testing::domain::{
    sample_order, utc_day, OrderEvent, OrderEventType, SlaViolation,
};
use tenantstream::testing::traffic::{EndOffsets, Generated};
use tenantstream::{Clock, Health, Settings, Worker, WorkerError};
use uuid::Uuid;

use super::traffic::order_encoder;

/// A lag threshold no test reaches (30 days): the module's violations are deadlines only.
pub const NO_LAG_MS: u64 = 30 * 86_400_000;

/// An SLA policy's JSON with `deadlines` (`FROM->TO`, ms) and a lag threshold nothing reaches.
pub fn deadline_policy(deadlines: &[(&str, u64)]) -> String {
    let deadlines: serde_json::Map<String, serde_json::Value> = deadlines
        .iter()
        .map(|(transition, ms)| ((*transition).to_owned(), (*ms).into()))
        .collect();
    serde_json::json!({ "lag_threshold_ms": NO_LAG_MS, "deadlines_ms": deadlines }).to_string()
}

/// A valid order event of `tenant`'s `order_id` at `version`, of type `kind`, at `occurred_at`.
pub fn order_event(
    tenant: Uuid,
    order_id: &str,
    version: i64,
    kind: OrderEventType,
    occurred_at: i64,
) -> OrderEvent {
    OrderEvent {
        event_id: Uuid::new_v4().to_string(),
        tenant_id: tenant.to_string(),
        order_id: order_id.to_owned(),
        version,
        event_type: kind,
        occurred_at,
        ..sample_order()
    }
}

/// `events` as messages of the orders topic, each keyed by its order id (so an order's events
/// stay in one partition, in order).
pub fn order_messages(settings: &Settings, events: &[OrderEvent]) -> Vec<Generated> {
    let encoder = order_encoder(settings);
    events
        .iter()
        .map(|event| Generated {
            key: event.order_id.clone().into_bytes(),
            value: encoder.encode(event, false),
            malformed: None,
        })
        .collect()
}

/// The end offsets of several sends to one topic together.
pub fn merge_ends(into: &mut EndOffsets, ends: &EndOffsets) {
    for (partition, end) in ends {
        let merged = into.entry(*partition).or_default();
        *merged = (*merged).max(*end);
    }
}

/// A worker running in this process on `clock` (batches, deadline timer and publisher all read
/// it) until [`ClockedWorker::stop`]; `health` is its readiness.
pub struct ClockedWorker {
    pub health: Health,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<(), WorkerError>>,
}

impl ClockedWorker {
    pub async fn start(settings: &Settings, clock: &Clock) -> Self {
        let health = Health::default();
        let worker = Worker::connect(settings.clone(), health.clone())
            .await
            .expect("worker connects")
            .with_clock(clock.clone());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(worker.run(shutdown.clone()));
        Self {
            health,
            shutdown,
            task,
        }
    }

    /// Stops it as SIGTERM would, and checks it stopped cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().expect("worker stops cleanly");
    }
}

/// Polls `check` every 100 ms until it holds; fails naming `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The ids of the violations stored for `tenants`, sorted (one row per id: the primary key).
pub async fn stored_violations(admin: &PgPool, tenants: &[Uuid]) -> Vec<Uuid> {
    sqlx::query_scalar(
        "SELECT violation_id FROM sla_violations WHERE tenant_id = ANY($1) ORDER BY violation_id",
    )
    .bind(tenants)
    .fetch_all(admin)
    .await
    .unwrap()
}

/// The deadlines pending for `tenants`.
pub async fn pending_deadlines(admin: &PgPool, tenants: &[Uuid]) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM sla_deadlines WHERE tenant_id = ANY($1)")
        .bind(tenants)
        .fetch_one(admin)
        .await
        .unwrap()
}

/// The outbox rows of `tenants`: violation id and whether the broker has acknowledged it.
pub async fn outbox(admin: &PgPool, tenants: &[Uuid]) -> Vec<(Uuid, bool)> {
    sqlx::query_as(
        "SELECT violation_id, published FROM sla_outbox WHERE tenant_id = ANY($1)
          ORDER BY violation_id",
    )
    .bind(tenants)
    .fetch_all(admin)
    .await
    .unwrap()
}

/// The violations in `messages` of the violations topic, decoded with the worker's schema; each
/// message's key must be its violation's tenant id (text, like the configuration topic's).
pub async fn decode_violations(
    settings: &Settings,
    messages: &[OwnedMessage],
) -> Vec<SlaViolation> {
    let store = Arc::new(SchemaStore::load(&settings.schemas.dir, None).unwrap());
    let decoder = Decoder::new(store, SlaViolation::SCHEMA_FILE, &settings.limits).unwrap();
    let mut violations = Vec::new();
    for message in messages {
        let violation: SlaViolation = decoder
            .decode(message.payload().expect("a violation has a payload"))
            .await
            .expect("a violation decodes");
        let key = message.key().map(String::from_utf8_lossy);
        assert_eq!(key.as_deref(), Some(violation.tenant_id.as_str()), "key");
        violations.push(violation);
    }
    violations
}

/// The distinct ids of `violations` (consumers de-duplicate by id: publishing is at least once).
pub fn distinct_ids(violations: &[SlaViolation]) -> BTreeSet<Uuid> {
    violations
        .iter()
        .map(|v| v.violation_id.parse().unwrap())
        .collect()
}

/// The end offset of each partition of `topic` (the broker's high watermarks; exact on
/// librdkafka's mock cluster).
pub fn end_offsets(brokers: &str, topic: &str, partitions: i32) -> EndOffsets {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    (0..partitions)
        .map(|partition| {
            let (_, high) = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .unwrap();
            (partition, high)
        })
        .collect()
}

/// Asserts that Redis counts exactly the violations stored for `tenants`: each tenant's day set
/// (the UTC day of the violation's detection) holds the ids of that tenant and day.
pub async fn assert_counted(admin: &PgPool, redis: &fred::prelude::Client, tenants: &[Uuid]) {
    use fred::prelude::*;
    let stored: Vec<(Uuid, Uuid, i64)> = sqlx::query_as(
        "SELECT tenant_id, violation_id, (extract(epoch FROM detected_at) * 1000)::bigint
           FROM sla_violations WHERE tenant_id = ANY($1)",
    )
    .bind(tenants)
    .fetch_all(admin)
    .await
    .unwrap();
    let mut by_key: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (tenant, id, detected_ms) in stored {
        let key = cache::violations_key(&tenant, &utc_day(detected_ms));
        by_key.entry(key).or_default().insert(id.to_string());
    }
    for (key, want) in by_key {
        let members: Vec<String> = redis.smembers(&key).await.unwrap();
        let counted: BTreeSet<String> = members.into_iter().collect();
        assert_eq!(counted, want, "members of {key}");
    }
}
