//! Hostile inputs by size and shape: each costs one dead letter with a precise code, and the
//! partition moves on. Broker: tansu.

use std::collections::HashMap;
use std::time::Duration;

use fred::prelude::*;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use tenantstream::testing::dead_letter::{
    HEADER_ERROR_CODE, HEADER_ERROR_REASON, HEADER_PAYLOAD_DROPPED, HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC, MAX_REASON_BYTES,
};
use tenantstream::testing::domain::{self, OrderEvent};
use tenantstream::testing::traffic::{self, EndOffsets, TrafficSpec};
use tenantstream::Health;
use uuid::Uuid;

use crate::support;

/// One hostile message: where it goes, its bytes and headers, and the dead-letter code it earns.
struct Hostile {
    topic: String,
    key: Vec<u8>,
    value: Vec<u8>,
    headers: Vec<(&'static str, &'static str)>,
    code: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_hostile_input_costs_one_dead_letter_and_the_partitions_move_on() {
    let (mut settings, admin, redis) = support::tansu_setup("hostile").await;
    settings.limits.max_items = 50;
    let spec = TrafficSpec {
        count: 400,
        tenants: 2,
        malformed: 0.0,
        seed: rand::random(),
        ..Default::default()
    };
    let encoder = support::order_encoder(&settings);
    let (messages, expected) = traffic::generate(&spec, &encoder);
    let tenant = expected.tenants[0];
    let order = |order_id: &str| OrderEvent {
        event_id: Uuid::new_v4().to_string(),
        tenant_id: tenant.to_string(),
        order_id: order_id.into(),
        ..domain::sample_order()
    };
    let orders_topic = settings.kafka.orders_topic.clone();
    let config_topic = settings.kafka.config_topic.clone();

    // Over max_message_bytes (1 MiB): the dead letter with the value would be over the worker
    // producer's 1,000,000-byte message.max.bytes, so it goes without the value.
    let huge = Hostile {
        topic: orders_topic.clone(),
        key: b"huge".to_vec(),
        value: vec![7; 1_100_000],
        headers: vec![],
        code: "too_large",
    };
    // More line items than max_items.
    let mut many = order("many-items");
    many.items = vec![many.items[0].clone(); 51];
    let many = Hostile {
        topic: orders_topic.clone(),
        key: b"many-items".to_vec(),
        value: encoder.encode(&many, false),
        headers: vec![],
        code: "too_large",
    };
    // A reason that grows with the bad field, and headers forging the worker's own.
    let mut long = order("long-currency");
    long.currency = "X".repeat(5_000);
    let forged = Hostile {
        topic: orders_topic.clone(),
        key: b"long-currency".to_vec(),
        value: encoder.encode(&long, false),
        headers: vec![
            ("trace-id", "kept"),
            ("tenantstream.source.offset", "123456789"),
            ("tenantstream.payload.dropped", "forged"),
        ],
        code: "invalid_field",
    };
    // 2 kB of JSON that Postgres would store as 90 kB (numbers are written out in full).
    let numbers = vec!["1e300"; 300].join(",");
    let expanding = domain::ConfigChangeEvent {
        tenant_id: Some(tenant.to_string()),
        value: Some(format!("[{numbers}]")),
        ..domain::sample_config()
    };
    let expanding = Hostile {
        topic: config_topic.clone(),
        key: b"expanding".to_vec(),
        value: support::config_encoder(&settings).encode(&expanding, false),
        headers: vec![],
        code: "invalid_field",
    };
    let hostile = [huge, many, forged, expanding];

    // Valid traffic before and after the hostile messages, on every partition.
    let (first, second) = messages.split_at(messages.len() / 2);
    let mut ends = support::send(&settings, &orders_topic, first).await.ends;
    let producer = large_message_producer(&settings.kafka.brokers);
    let mut sources = HashMap::new();
    let mut config_ends = EndOffsets::new();
    for (i, message) in hostile.iter().enumerate() {
        for partition in 0..if message.topic == orders_topic { 3 } else { 1 } {
            let (partition, offset) = send_with_headers(&producer, message, partition).await;
            sources.insert((message.topic.clone(), partition, offset), i);
            let topic_ends = if message.topic == orders_topic {
                &mut ends
            } else {
                &mut config_ends
            };
            let end = topic_ends.entry(partition).or_insert(0);
            *end = (*end).max(offset + 1);
        }
    }
    for (partition, end) in support::send(&settings, &orders_topic, second).await.ends {
        let known = ends.entry(partition).or_insert(0);
        *known = (*known).max(end);
    }

    let worker = support::RunningWorker::start(&settings, Health::default()).await;
    let limit = Duration::from_secs(120);
    support::wait_for_offsets(&admin, &settings, &ends, limit).await;
    support::wait_for_topic_offsets(&admin, &settings, &config_topic, &config_ends, limit).await;
    support::wait_for_cache(&admin, &expected.tenants, Duration::from_secs(30)).await;
    worker.stop().await;

    // The valid traffic around them is written in full.
    support::assert_rows(&admin, &expected).await;
    support::assert_cache(&redis, &expected).await;

    // One dead letter per hostile message, each with its code and true source.
    let dead = support::read_topic(
        &settings.kafka.brokers,
        &settings.kafka.dead_letter_topic,
        sources.len(),
        Duration::from_secs(30),
    );
    assert_eq!(
        dead.len(),
        sources.len(),
        "one dead letter per hostile message"
    );
    let mut seen = std::collections::HashSet::new();
    for letter in &dead {
        let source = (
            support::header(letter, HEADER_SOURCE_TOPIC).to_owned(),
            support::header(letter, HEADER_SOURCE_PARTITION)
                .parse()
                .unwrap(),
            support::header(letter, HEADER_SOURCE_OFFSET)
                .parse()
                .unwrap(),
        );
        let original = &hostile[*sources
            .get(&source)
            .unwrap_or_else(|| panic!("dead letter of an unknown source {source:?}"))];
        assert!(
            seen.insert(source.clone()),
            "{source:?} dead-lettered twice"
        );
        assert_eq!(support::header(letter, HEADER_ERROR_CODE), original.code);
        let reason = support::header(letter, HEADER_ERROR_REASON);
        assert!(reason.len() <= MAX_REASON_BYTES, "{} bytes", reason.len());
        let dropped = tenantstream::testing::dead_letter::header_text(
            letter.headers().unwrap(),
            HEADER_PAYLOAD_DROPPED,
        );
        if original.key == b"huge" {
            assert!(letter.payload().is_none(), "the value is left out");
            assert!(letter.key().is_none(), "so is the key");
            let dropped = dropped.expect("says what was left out");
            assert!(dropped.contains("value of 1100000 bytes"), "{dropped}");
            assert!(reason.contains("limits.max_message_bytes"), "{reason}");
        } else {
            assert_eq!(dropped, None, "no forged header survives");
            assert_eq!(letter.payload(), Some(original.value.as_slice()));
            assert_eq!(letter.key(), Some(original.key.as_slice()));
        }
        if original.key == b"many-items" {
            assert!(reason.contains("limits.max_items (50)"), "{reason}");
        }
        if original.key == b"long-currency" {
            assert_eq!(reason.len(), MAX_REASON_BYTES, "cut to the bound");
            assert!(reason.starts_with("invalid field currency"), "{reason}");
            assert_eq!(support::header(letter, "trace-id"), "kept");
            let offsets = letter
                .headers()
                .unwrap()
                .iter()
                .filter(|h| h.key == HEADER_SOURCE_OFFSET)
                .count();
            assert_eq!(offsets, 1, "the forged source offset is left out");
        }
        if original.key == b"expanding" {
            assert!(reason.contains("stored as jsonb"), "{reason}");
        }
    }
}

/// A producer that may send messages up to 2 MB (the topic accepts them; the worker's own
/// producer keeps librdkafka's 1,000,000-byte default).
fn large_message_producer(brokers: &str) -> FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", "2000000")
        .set("acks", "all")
        .create()
        .expect("producer")
}

async fn send_with_headers(
    producer: &FutureProducer,
    message: &Hostile,
    partition: i32,
) -> (i32, i64) {
    let mut headers = OwnedHeaders::new();
    for (key, value) in &message.headers {
        headers = headers.insert(Header {
            key,
            value: Some(*value),
        });
    }
    let record = FutureRecord::to(&message.topic)
        .partition(partition)
        .key(&message.key)
        .payload(&message.value)
        .headers(headers);
    let delivery = producer
        .send(record, Duration::from_secs(30))
        .await
        .unwrap_or_else(|(e, _)| {
            panic!("sending {:?}: {e}", String::from_utf8_lossy(&message.key))
        });
    (delivery.partition, delivery.offset)
}

/// A key Redis refuses (someone left a hash where an order's JSON goes) costs that key only:
/// every other key of the batch, of its tenant and of other tenants is written, the refused
/// key's cache work stays queued, and the drainer applies it once the key is fixed. Broker:
/// tansu.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_redis_refuses_holds_back_only_itself() {
    let (settings, admin, redis) = support::tansu_setup("refused-key").await;
    let spec = TrafficSpec {
        count: 600,
        tenants: 4,
        malformed: 0.0,
        seed: rand::random(),
        ..Default::default()
    };
    let (messages, expected) = traffic::generate(&spec, &support::order_encoder(&settings));
    let (tenant, order_id) = expected.orders.keys().next().unwrap().clone();
    let bad_key = tenantstream::testing::cache::order_key(&tenant, 0, &order_id);
    let () = redis
        .hset(&bad_key, ("not", "an order"))
        .await
        .expect("a hash where the order's JSON goes");
    let sent = support::send(&settings, &settings.kafka.orders_topic, &messages).await;

    let worker = support::RunningWorker::start(&settings, Health::default()).await;
    let limit = Duration::from_secs(120);
    support::wait_for_offsets(&admin, &settings, &sent.ends, limit).await;
    // Every other key's work is done while the refused one stays queued.
    let others: Vec<Uuid> = expected
        .tenants
        .iter()
        .copied()
        .filter(|t| *t != tenant)
        .collect();
    support::wait_for_cache(&admin, &others, Duration::from_secs(30)).await;
    let queued: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT kind, key_id FROM cache_outbox
          WHERE consumer_group = $1 AND tenant_id = $2",
    )
    .bind(&settings.kafka.group_id)
    .bind(tenant)
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(queued.len(), 1, "only the refused key waits: {queued:?}");
    assert_eq!(queued[0].1, order_id);
    let key_type: String = redis.r#type(&bad_key).await.unwrap();
    assert_eq!(key_type, "hash", "the refused key is left as it was");

    // Fixed by an operator: the drainer applies the waiting work, and the cache is exact.
    let () = redis.del(&bad_key).await.unwrap();
    support::wait_for_cache(&admin, &expected.tenants, Duration::from_secs(30)).await;
    worker.stop().await;
    support::assert_rows(&admin, &expected).await;
    support::assert_cache(&redis, &expected).await;
}
