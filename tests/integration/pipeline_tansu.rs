//! End to end against tansu, a real Kafka-protocol broker process: a few thousand events of
//! several tenants with duplicates, reordering and malformed messages, in both wire formats.
//! Asserts exact rows, versions, cache keys, stored offsets and the dead letters with headers.

use std::time::Duration;

use rdkafka::Message;
use tenantstream::testing::dead_letter::*;
use tenantstream::testing::traffic::{self, TrafficSpec, WireFormat};

use crate::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tansu_end_to_end_rows_cache_offsets_and_dead_letters() {
    let (settings, admin, redis) = support::tansu_setup("e2e").await;
    let brokers = settings.kafka.brokers.clone();

    let spec = TrafficSpec {
        count: 3_000,
        tenants: 6,
        malformed: 0.03,
        duplicates: 0.08,
        reorder: 0.2,
        format: WireFormat::Mixed,
        seed: rand::random(),
        ..Default::default()
    };
    let (messages, expected) = traffic::generate(&spec, &support::order_encoder(&settings));
    let sent = support::send(&settings, &settings.kafka.orders_topic, &messages).await;
    support::run_until_consumed(&settings, &admin, &sent.ends, &expected.tenants).await;

    support::assert_rows(&admin, &expected).await;
    support::assert_cache(&redis, &expected).await;

    // Dead letters: exactly the malformed messages, bytes intact, headers naming the source.
    let expected_dead: usize = expected.dead_letters.values().sum();
    assert!(expected_dead >= 50, "traffic has malformed messages");
    let dead = support::read_topic(
        &brokers,
        &settings.kafka.dead_letter_topic,
        expected_dead,
        Duration::from_secs(60),
    );
    assert_eq!(
        dead.len(),
        expected_dead,
        "one dead letter per malformed message"
    );
    let codes = support::tally(dead.iter().map(|m| support::header(m, HEADER_ERROR_CODE)));
    let want: std::collections::HashMap<&str, usize> = expected
        .dead_letters
        .iter()
        .map(|(k, v)| (*k, *v))
        .collect();
    assert_eq!(codes, want);
    for letter in &dead {
        assert_eq!(
            support::header(letter, HEADER_SOURCE_TOPIC),
            settings.kafka.orders_topic
        );
        let partition: i32 = support::header(letter, HEADER_SOURCE_PARTITION)
            .parse()
            .unwrap();
        let offset: i64 = support::header(letter, HEADER_SOURCE_OFFSET)
            .parse()
            .unwrap();
        let index = sent
            .positions
            .iter()
            .position(|p| *p == (partition, offset))
            .expect("dead letter points at a produced message");
        let original = &messages[index];
        assert_eq!(
            original.malformed,
            Some(support::header(letter, HEADER_ERROR_CODE)),
            "only malformed messages are dead-lettered, with their own code"
        );
        assert_eq!(
            letter.payload(),
            Some(original.value.as_slice()),
            "original bytes"
        );
        assert_eq!(letter.key(), Some(original.key.as_slice()), "original key");
        let stage = support::header(letter, HEADER_ERROR_STAGE);
        assert!(stage == "decode" || stage == "validate", "{stage}");
        assert!(!support::header(letter, HEADER_ERROR_REASON).is_empty());
    }
}
