//! Kafka helpers: topics, producers, and reading a topic back (dead letters).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use sqlx::PgPool;
use tenantstream::testing::dead_letter::{HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION};
use tenantstream::testing::kafka;
use tenantstream::testing::traffic::{self, Generated, Sent};
use tenantstream::Settings;
use uuid::Uuid;

use super::services::{admin_pool, redis, settings, tansu_brokers};

/// Sends `messages` to `topic` with the crate's producer; returns where each one went.
pub async fn send(settings: &Settings, topic: &str, messages: &[Generated]) -> Sent {
    let producer = kafka::producer(&settings.kafka).unwrap();
    traffic::send(&producer, topic, messages, 0, None)
        .await
        .unwrap()
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

/// A test's own topics on tansu (orders with 3 partitions, dead letters and SLA violations
/// with 1), with the
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
            (&settings.kafka.sla_violations_topic, 1),
        ],
    )
    .await;
    (settings, admin_pool().await, redis().await)
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

/// The text of header `key` of a dead letter.
pub fn header<'a>(message: &'a OwnedMessage, key: &str) -> &'a str {
    let headers = message.headers().expect("dead letter has headers");
    tenantstream::testing::dead_letter::header_text(headers, key)
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

/// Settings for one test on librdkafka's mock cluster, with its four topics created (orders
/// on 2 partitions).
pub fn mock_settings(
    mock: &rdkafka::mocking::MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    name: &str,
) -> Settings {
    let settings = super::settings(&mock.bootstrap_servers(), name);
    let k = &settings.kafka;
    mock.create_topic(&k.orders_topic, 2, 1).unwrap();
    mock.create_topic(&k.config_topic, 1, 1).unwrap();
    mock.create_topic(&k.dead_letter_topic, 1, 1).unwrap();
    mock.create_topic(&k.sla_violations_topic, 1, 1).unwrap();
    settings
}

/// How the dead letters compared with the malformed messages.
pub struct DeadLetters {
    pub distinct: usize,
    pub copies: usize,
}

/// Asserts every malformed message of `messages` (sent as `sent`) is in the dead-letter topic
/// with its original bytes, nothing else is, and each copy (sent again after a crash between
/// sending it and committing its batch) is byte-identical: dead letters are at least once.
pub fn assert_dead_letters(
    settings: &Settings,
    messages: &[Generated],
    sent: &Sent,
) -> DeadLetters {
    let malformed = super::malformed_by_position(messages, sent);
    assert!(!malformed.is_empty(), "the traffic has malformed messages");
    let dead = read_topic(
        &settings.kafka.brokers,
        &settings.kafka.dead_letter_topic,
        malformed.len(),
        Duration::from_secs(60),
    );
    let mut seen: HashMap<(i32, i64), Option<Vec<u8>>> = HashMap::new();
    for letter in &dead {
        let source = (
            header(letter, HEADER_SOURCE_PARTITION)
                .parse::<i32>()
                .unwrap(),
            header(letter, HEADER_SOURCE_OFFSET).parse::<i64>().unwrap(),
        );
        let original = malformed
            .get(&source)
            .unwrap_or_else(|| panic!("dead letter for a valid message {source:?}"));
        assert_eq!(
            letter.payload(),
            Some(&original.value[..]),
            "original bytes"
        );
        if let Some(previous) = seen.insert(source, letter.payload().map(<[u8]>::to_vec)) {
            assert_eq!(previous.as_deref(), letter.payload(), "copies differ");
        }
    }
    assert_eq!(
        seen.len(),
        malformed.len(),
        "every malformed message dead-lettered"
    );
    DeadLetters {
        distinct: seen.len(),
        copies: dead.len(),
    }
}
