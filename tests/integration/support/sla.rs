//! The SLA engine seen from outside: order events and SLA policy changes at chosen times, the
//! deadlines and violations Postgres stores (read as the owner), the violation ids Redis counts,
//! and the violations on the violations topic, decoded as a consumer would decode them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::Message;
use sqlx::PgPool;
use tenantstream::testing::cache;
use tenantstream::testing::decode::{Decoder, SchemaStore};
use tenantstream::testing::domain::{
    self, ConfigChangeEvent, ConfigKind, ConfigScope, OrderEvent, OrderEventType, SlaViolation,
    ViolationKind,
};
use tenantstream::testing::traffic::{EndOffsets, Generated};
use tenantstream::Settings;
use uuid::Uuid;

use super::kafka::{read_topic, send};
use super::traffic::{config_encoder, order_encoder};

/// The sample order as an event of `tenant`'s order `order_id` at `version`, of type
/// `event_type`, that occurred at `occurred_at` (ms since the epoch), with a fresh event id.
pub fn order_event(
    tenant: Uuid,
    order_id: &str,
    version: i64,
    event_type: OrderEventType,
    occurred_at: i64,
) -> OrderEvent {
    OrderEvent {
        event_id: Uuid::new_v4().to_string(),
        tenant_id: tenant.to_string(),
        order_id: order_id.into(),
        version,
        event_type,
        occurred_at,
        ..domain::sample_order()
    }
}

/// `tenant`'s SLA_POLICY entry `default` (the one the engine applies) set to `policy` at
/// `version`.
pub fn sla_policy_change(
    tenant: Uuid,
    version: i64,
    policy: &serde_json::Value,
    occurred_at: i64,
) -> ConfigChangeEvent {
    ConfigChangeEvent {
        event_id: Uuid::new_v4().to_string(),
        scope: ConfigScope::Tenant,
        tenant_id: Some(tenant.to_string()),
        kind: ConfigKind::SlaPolicy,
        key: "default".into(),
        value: Some(policy.to_string()),
        version,
        occurred_at,
    }
}

/// Sends `events` to the orders topic, each keyed by its order id (so one order's events stay
/// in the order given). Returns the end offsets of the partitions they went to.
pub async fn send_orders(settings: &Settings, events: &[OrderEvent]) -> EndOffsets {
    let messages = order_messages(settings, events);
    send(settings, &settings.kafka.orders_topic, &messages)
        .await
        .ends
}

/// The messages [`send_orders`] sends for `events`: keyed by order id, encoded with the
/// configured schema.
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

/// Sends tenant configuration changes to the configuration topic, keyed by tenant. Returns the
/// end offsets of the partitions they went to.
pub async fn send_config_changes(settings: &Settings, changes: &[ConfigChangeEvent]) -> EndOffsets {
    let encoder = config_encoder(settings);
    let messages: Vec<Generated> = changes
        .iter()
        .map(|change| Generated {
            key: change.tenant_id.clone().unwrap_or_default().into_bytes(),
            value: encoder.encode(change, false),
            malformed: None,
        })
        .collect();
    send(settings, &settings.kafka.config_topic, &messages)
        .await
        .ends
}

/// A pending deadline as `sla_deadlines` stores it (times in ms since the epoch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDeadline {
    pub order_id: String,
    pub transition: String,
    pub started_ms: i64,
    pub due_ms: i64,
    pub threshold_ms: i64,
    pub policy_version: i64,
}

/// `tenant`'s pending deadlines, by order and transition.
pub async fn stored_deadlines(pool: &PgPool, tenant: Uuid) -> Vec<StoredDeadline> {
    let rows: Vec<(String, String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT order_id, transition, (extract(epoch FROM started_at) * 1000)::bigint,
                (extract(epoch FROM due_at) * 1000)::bigint, threshold_ms, policy_version
           FROM sla_deadlines WHERE tenant_id = $1 ORDER BY order_id, transition",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|r| StoredDeadline {
            order_id: r.0,
            transition: r.1,
            started_ms: r.2,
            due_ms: r.3,
            threshold_ms: r.4,
            policy_version: r.5,
        })
        .collect()
}

/// `tenant`'s stored violations as the records they are published as, in the order they were
/// detected.
pub async fn stored_violations(pool: &PgPool, tenant: Uuid) -> Vec<SlaViolation> {
    type Row = (
        Uuid,
        Option<String>,
        String,
        Option<String>,
        i64,
        i64,
        i64,
        i64,
        i64,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT violation_id, order_id, kind, transition, threshold_ms, observed_ms, event_count,
                policy_version, (extract(epoch FROM detected_at) * 1000)::bigint
           FROM sla_violations WHERE tenant_id = $1 ORDER BY detected_at, order_id, violation_id",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|r| SlaViolation {
            violation_id: r.0.to_string(),
            tenant_id: tenant.to_string(),
            order_id: r.1,
            kind: ViolationKind::parse(&r.2).expect("a known kind"),
            transition: r.3,
            threshold_ms: r.4,
            observed_ms: r.5,
            event_count: r.6,
            policy_version: r.7,
            detected_at: r.8,
        })
        .collect()
}

/// Waits until `tenant` has `count` stored violations, and returns them.
pub async fn wait_for_violations(
    pool: &PgPool,
    tenant: Uuid,
    count: usize,
    limit: Duration,
) -> Vec<SlaViolation> {
    let started = Instant::now();
    loop {
        let stored = stored_violations(pool, tenant).await;
        if stored.len() >= count {
            return stored;
        }
        assert!(
            started.elapsed() < limit,
            "{} of {count} violations of {tenant} after {limit:?}: {stored:?}",
            stored.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The violation ids Redis counts for `tenant` on the UTC day `day` (`YYYY-MM-DD`).
pub async fn counted_violations(
    redis: &fred::prelude::Client,
    tenant: Uuid,
    day: &str,
) -> BTreeSet<String> {
    use fred::prelude::*;
    redis
        .smembers(cache::violations_key(&tenant, day))
        .await
        .unwrap()
}

/// A message of the violations topic: its key, the schema id of its Confluent framing, and
/// its value decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedViolation {
    pub key: String,
    pub schema_id: u32,
    pub violation: SlaViolation,
}

/// Reads `count` messages of the violations topic (and any more that arrive within
/// [`read_topic`]'s grace period) and decodes each: Confluent framing (`0x00`, a 4-byte
/// big-endian schema id), then the Avro body, resolved against `schemas/sla_violation.avsc` by
/// the crate's own decoder.
pub async fn read_violations(
    settings: &Settings,
    count: usize,
    limit: Duration,
) -> Vec<PublishedViolation> {
    let (brokers, topic) = (
        settings.kafka.brokers.clone(),
        settings.kafka.sla_violations_topic.clone(),
    );
    let messages = tokio::task::spawn_blocking(move || read_topic(&brokers, &topic, count, limit))
        .await
        .unwrap();
    let store = Arc::new(SchemaStore::load(&settings.schemas.dir, None).expect("schemas load"));
    let decoder = Decoder::new(store, SlaViolation::SCHEMA_FILE, &settings.limits)
        .expect("the violation schema loads");
    let mut published = Vec::new();
    for message in messages {
        let payload = message.payload().expect("a violation has a value");
        assert_eq!(payload[0], 0, "Confluent framing starts with a zero byte");
        let schema_id = u32::from_be_bytes(payload[1..5].try_into().unwrap());
        let key = message.key().expect("a violation has a key");
        published.push(PublishedViolation {
            key: String::from_utf8(key.to_vec()).expect("the key is text"),
            schema_id,
            violation: decoder
                .decode(payload)
                .await
                .expect("the violation decodes"),
        });
    }
    published
}

/// A lag threshold no test reaches (30 days), for tests about deadlines only.
pub const NO_LAG_MS: u64 = 30 * 86_400_000;

/// An SLA policy's JSON with `deadlines` (`FROM->TO`, ms) and a lag threshold nothing reaches.
pub fn deadline_policy(deadlines: &[(&str, u64)]) -> String {
    let deadlines: serde_json::Map<String, serde_json::Value> = deadlines
        .iter()
        .map(|(transition, ms)| ((*transition).to_owned(), (*ms).into()))
        .collect();
    serde_json::json!({ "lag_threshold_ms": NO_LAG_MS, "deadlines_ms": deadlines }).to_string()
}

/// The end offsets of several sends to one topic together.
pub fn merge_ends(into: &mut EndOffsets, ends: &EndOffsets) {
    for (partition, end) in ends {
        let merged = into.entry(*partition).or_default();
        *merged = (*merged).max(*end);
    }
}

/// Polls `check` every 100 ms until it holds; fails naming `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The ids of the violations stored for `tenants`, sorted (one row per id: the primary key).
pub async fn stored_violation_ids(pool: &PgPool, tenants: &[Uuid]) -> Vec<Uuid> {
    sqlx::query_scalar(
        "SELECT violation_id FROM sla_violations WHERE tenant_id = ANY($1) ORDER BY violation_id",
    )
    .bind(tenants)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// How many deadlines are pending for `tenants`.
pub async fn pending_deadlines(pool: &PgPool, tenants: &[Uuid]) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM sla_deadlines WHERE tenant_id = ANY($1)")
        .bind(tenants)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The outbox rows of `tenants`: violation id, and whether the broker has acknowledged it.
pub async fn outbox(pool: &PgPool, tenants: &[Uuid]) -> Vec<(Uuid, bool)> {
    sqlx::query_as(
        "SELECT violation_id, published FROM sla_outbox WHERE tenant_id = ANY($1)
          ORDER BY violation_id",
    )
    .bind(tenants)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The distinct ids among `count` messages of the violations topic (read by
/// [`read_violations`]; publishing is at least once, consumers de-duplicate by id). Each
/// message must be keyed by its violation's tenant.
pub async fn published_ids(settings: &Settings, count: usize, limit: Duration) -> BTreeSet<Uuid> {
    let published = read_violations(settings, count, limit).await;
    for message in &published {
        assert_eq!(message.key, message.violation.tenant_id, "keyed by tenant");
    }
    published
        .iter()
        .map(|message| message.violation.violation_id.parse().unwrap())
        .collect()
}

/// The end offset of each of the first `partitions` partitions of `topic` (the broker's high
/// watermarks; exact on librdkafka's mock cluster).
pub fn end_offsets(brokers: &str, topic: &str, partitions: i32) -> EndOffsets {
    use rdkafka::consumer::{BaseConsumer, Consumer};
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

/// Asserts that Redis counts exactly the violations stored for `tenants`: each tenant's set of
/// the UTC day of detection holds the ids of that tenant and day.
pub async fn assert_counted(pool: &PgPool, redis: &fred::prelude::Client, tenants: &[Uuid]) {
    let mut by_day: std::collections::BTreeMap<(Uuid, String), BTreeSet<String>> =
        Default::default();
    for tenant in tenants {
        for violation in stored_violations(pool, *tenant).await {
            let day = domain::utc_day(violation.detected_at);
            by_day
                .entry((*tenant, day))
                .or_default()
                .insert(violation.violation_id);
        }
    }
    for ((tenant, day), want) in by_day {
        let counted = counted_violations(redis, tenant, &day).await;
        assert_eq!(counted, want, "violations of {tenant} counted on {day}");
    }
}
