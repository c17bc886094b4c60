//! Pipeline behaviour on librdkafka's mock cluster (in-process broker, correct end offsets):
//! strict tenants, a Redis outage during which Postgres progress continues and the cache
//! work waits and drains later, and a byte budget of a few messages.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use tenantstream::testing::dead_letter::HEADER_ERROR_CODE;
use tenantstream::testing::traffic::{self, Expected, TrafficSpec};
use tenantstream::testing::{cache, kafka, sink};
use tenantstream::{Health, Secret, Settings};
use uuid::Uuid;

use crate::support;

fn traffic(
    settings: &Settings,
    count: usize,
    tenants: usize,
    seed: u64,
) -> (Vec<traffic::Generated>, Expected) {
    let spec = TrafficSpec {
        count,
        tenants,
        malformed: 0.0,
        seed,
        ..Default::default()
    };
    traffic::generate(&spec, &support::order_encoder(settings))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_dead_letters_unknown_tenants() {
    let mock = MockCluster::new(1).unwrap();
    let mut settings = support::mock_settings(&mock, "strict");
    settings.tenants.strict = true;
    let admin = support::admin_pool().await;
    let (messages, expected) = traffic(&settings, 600, 2, rand::random());
    let (known, unknown) = (expected.tenants[0], expected.tenants[1]);
    sqlx::query("INSERT INTO tenants (tenant_id, status) VALUES ($1, 'active')")
        .bind(known)
        .execute(&admin)
        .await
        .unwrap();

    let sent = support::send(&settings, &settings.kafka.orders_topic, &messages).await;
    let worker = support::RunningWorker::start(&settings, Health::default()).await;
    support::wait_for_offsets(&admin, &settings, &sent.ends, Duration::from_secs(60)).await;
    worker.stop().await;

    let count = |tenant: Uuid| {
        let admin = admin.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM orders WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_one(&admin)
                .await
                .unwrap()
        }
    };
    let known_orders = expected.orders.keys().filter(|(t, _)| *t == known).count();
    assert_eq!(count(known).await as usize, known_orders);
    assert_eq!(
        count(unknown).await,
        0,
        "unknown tenant's events must not be written"
    );
    let registered: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants WHERE tenant_id = $1")
        .bind(unknown)
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(registered, 0, "strict mode registers no tenant");
    let unknown_messages = messages
        .iter()
        .filter(|m| {
            let order_id = String::from_utf8(m.key.clone()).unwrap();
            expected.orders.contains_key(&(unknown, order_id))
        })
        .count();
    let dead = support::read_topic(
        &settings.kafka.brokers,
        &settings.kafka.dead_letter_topic,
        unknown_messages,
        Duration::from_secs(30),
    );
    assert_eq!(dead.len(), unknown_messages);
    assert!(dead
        .iter()
        .all(|m| support::header(m, HEADER_ERROR_CODE) == "unknown_tenant"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_postgres_progress_and_drains_later() {
    let mock = MockCluster::new(1).unwrap();
    let mut settings = support::mock_settings(&mock, "redis-down");
    let mut redis_server = support::PrivateRedis::single();
    let port = redis_server.ports[0];
    settings.redis.url = Secret::new(format!("redis://127.0.0.1:{port}"));
    let admin = support::admin_pool().await;
    let (messages, expected) = traffic(&settings, 2_000, 3, rand::random());
    let (first, second) = messages.split_at(messages.len() / 2);

    let health = Health::default();
    let worker = support::RunningWorker::start(&settings, health.clone()).await;
    let producer = kafka::producer(&settings.kafka).unwrap();
    let topic = &settings.kafka.orders_topic;
    let sent = traffic::send(&producer, topic, first, 0, None)
        .await
        .unwrap();
    support::wait_for_offsets(&admin, &settings, &sent.ends, Duration::from_secs(60)).await;
    support::wait_for_cache(&admin, &expected.tenants, Duration::from_secs(30)).await;
    let before: HashSet<(Uuid, String, i64)> = rows(&admin, &expected).await;

    redis_server.stop();
    let sent_more = traffic::send(&producer, topic, second, 0, None)
        .await
        .unwrap();
    let mut ends = sent.ends.clone();
    ends.extend(sent_more.ends);
    support::wait_for_offsets(&admin, &settings, &ends, Duration::from_secs(60)).await;
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM cache_outbox WHERE tenant_id = ANY($1)")
            .bind(&expected.tenants)
            .fetch_one(&admin)
            .await
            .unwrap();
    assert!(
        pending > 0,
        "cache work must wait in the outbox while Redis is down"
    );
    // The first failed Redis call can take up to its timeout to be noticed.
    let noticed = Instant::now();
    while health.is_ready() && noticed.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !health.is_ready(),
        "readiness must fail while Redis is down"
    );

    let _redis_server = support::PrivateRedis::single_on(port);
    support::wait_for_cache(&admin, &expected.tenants, Duration::from_secs(60)).await;
    worker.stop().await;

    // The restarted Redis is empty, so it holds exactly the rows written during the outage.
    let after = rows(&admin, &expected).await;
    let changed: Vec<_> = after.difference(&before).collect();
    assert!(!changed.is_empty());
    let redis = cache::connect(settings.redis.url.expose()).await.unwrap();
    let mut present = 0;
    for (tenant, order_id, _) in &changed {
        let json: Option<String> =
            fred::interfaces::KeysInterface::get(&redis, cache::order_key(tenant, 0, order_id))
                .await
                .unwrap();
        present += usize::from(json.is_some());
    }
    assert_eq!(present, changed.len(), "keys present after the outage");
    for (tenant, order_id, version) in &changed {
        let json: Option<String> =
            fred::interfaces::KeysInterface::get(&redis, cache::order_key(tenant, 0, order_id))
                .await
                .unwrap();
        let value: serde_json::Value =
            serde_json::from_str(&json.expect("key drained after outage")).unwrap();
        assert_eq!(value["version"], *version);
    }
    support::assert_rows(&admin, &expected).await;
}

/// A byte budget of a few messages (`limits.max_buffered_bytes` of 4 KiB, which all partitions
/// share; batches of about 1 KiB): the partitions pause again and again, each waiting for the
/// others' bytes to be written, while librdkafka holds a megabyte of prefetched messages, and
/// still every event is written and every stored offset reaches its partition's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_budget_of_a_few_messages_still_writes_every_event() {
    let mock = MockCluster::new(1).unwrap();
    let mut settings = support::mock_settings(&mock, "tiny-buffers");
    settings.limits.max_buffered_bytes = 4096;
    let admin = support::admin_pool().await;
    let (messages, expected) = traffic(&settings, 3000, 5, rand::random());
    let sent = support::send(&settings, &settings.kafka.orders_topic, &messages).await;
    let worker = support::RunningWorker::start(&settings, Health::default()).await;
    support::wait_for_offsets(&admin, &settings, &sent.ends, Duration::from_secs(60)).await;
    worker.stop().await;
    support::assert_rows(&admin, &expected).await;
}

async fn rows(admin: &sqlx::PgPool, expected: &Expected) -> HashSet<(Uuid, String, i64)> {
    sqlx::query_as::<_, (Uuid, String, i64)>(
        "SELECT tenant_id, order_id, version FROM orders WHERE tenant_id = ANY($1)",
    )
    .bind(&expected.tenants)
    .fetch_all(admin)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_outcome_and_lag_reaches_zero() {
    let metrics = tenantstream::testing::metrics::install_recorder();
    let mock = MockCluster::new(1).unwrap();
    let settings = support::mock_settings(&mock, "metrics");
    let admin = support::admin_pool().await;
    let spec = TrafficSpec {
        count: 1_500,
        tenants: 3,
        malformed: 0.04,
        seed: rand::random(),
        ..Default::default()
    };
    let (messages, expected) = traffic::generate(&spec, &support::order_encoder(&settings));
    let producer = kafka::producer(&settings.kafka).unwrap();
    let topic = settings.kafka.orders_topic.clone();
    let sent = traffic::send(&producer, &topic, &messages, 0, None)
        .await
        .unwrap();
    let worker = support::RunningWorker::start(&settings, Health::default()).await;
    support::wait_for_offsets(&admin, &settings, &sent.ends, Duration::from_secs(60)).await;

    // Lag comes from librdkafka statistics (every 5 s): wait until every partition reports 0.
    let started = Instant::now();
    loop {
        let rendered = metrics.render();
        let lags: Vec<Option<f64>> = sent
            .ends
            .keys()
            .map(|p| {
                support::sample(
                    &rendered,
                    tenantstream::testing::metrics::CONSUMER_LAG,
                    &[("topic", &topic), ("partition", &p.to_string())],
                )
            })
            .collect();
        if lags.iter().all(|l| *l == Some(0.0)) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "lag {lags:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    worker.stop().await;

    let rendered = metrics.render();
    let count = |name: &str, extra: &[(&str, &str)]| topic_sample(&rendered, &topic, name, extra);
    use tenantstream::testing::metrics::{DEAD_LETTERS, EVENTS_CONSUMED, EVENTS_PROCESSED};
    let consumed = count(EVENTS_CONSUMED, &[]);
    let written = count(EVENTS_PROCESSED, &[("outcome", "written")]);
    let superseded = count(EVENTS_PROCESSED, &[("outcome", "superseded")]);
    let stale = count(EVENTS_PROCESSED, &[("outcome", "stale")]);
    let dead = count(EVENTS_PROCESSED, &[("outcome", "dead_lettered")]);
    assert_eq!(consumed, messages.len());
    assert_eq!(
        written + superseded + stale + dead,
        consumed,
        "every event has one outcome"
    );
    assert_eq!(dead, expected.dead_letters.values().sum::<usize>());
    assert!(
        written >= expected.orders.len(),
        "each order written at least once"
    );
    assert!(
        superseded + stale > 0,
        "duplicates and reordering change nothing"
    );
    for (code, n) in &expected.dead_letters {
        assert_eq!(count(DEAD_LETTERS, &[("error_code", code)]), *n, "{code}");
    }

    // Known duplicates, sent once every row is stored: the newest event of 40 orders again.
    // Each is the only event of its row in its batch and not newer than the stored row, so
    // exactly 40 more are stale, and none is counted superseded or written.
    let encoder = support::order_encoder(&settings);
    let duplicates: Vec<traffic::Generated> = expected
        .orders
        .values()
        .take(40)
        .map(|event| traffic::Generated {
            key: event.order_id.clone().into_bytes(),
            value: encoder.encode(event, false),
            malformed: None,
        })
        .collect();
    let resent = traffic::send(&producer, &topic, &duplicates, 0, None)
        .await
        .unwrap();
    let worker = support::RunningWorker::start(&settings, Health::default()).await;
    support::wait_for_offsets(&admin, &settings, &resent.ends, Duration::from_secs(60)).await;
    worker.stop().await;
    let rendered = metrics.render();
    let count = |name: &str, extra: &[(&str, &str)]| topic_sample(&rendered, &topic, name, extra);
    assert_eq!(count(EVENTS_PROCESSED, &[("outcome", "stale")]), stale + 40);
    assert_eq!(
        count(EVENTS_PROCESSED, &[("outcome", "superseded")]),
        superseded
    );
    assert_eq!(count(EVENTS_PROCESSED, &[("outcome", "written")]), written);
}

/// A stored offset beyond the end of the partition's log (the topic was recreated, or the log
/// truncated) is not a reason to skip what the log holds: the worker counts the reset and reads
/// the log again from its start, and every row and key is exact. Broker: the mock cluster
/// (tansu's log ends are wrong).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_offset_beyond_the_log_end_reads_the_log_again_from_its_start() {
    let metrics = tenantstream::testing::metrics::install_recorder();
    let mock = MockCluster::new(1).unwrap();
    let settings = support::mock_settings(&mock, "beyond-log");
    let admin = support::admin_pool().await;
    let (messages, expected) = traffic(&settings, 300, 2, rand::random());
    let producer = kafka::producer(&settings.kafka).unwrap();
    let topic = settings.kafka.orders_topic.clone();
    let sent = traffic::send(&producer, &topic, &messages, 0, None)
        .await
        .unwrap();
    // Progress stored by a worker that read an earlier, longer incarnation of the topic.
    for partition in sent.ends.keys() {
        sqlx::query(
            "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset)
             VALUES ($1, $2, $3, 1000000)",
        )
        .bind(&settings.kafka.group_id)
        .bind(&topic)
        .bind(partition)
        .execute(&admin)
        .await
        .unwrap();
    }

    // (Stored offsets already above the ends would satisfy the usual wait at once.)
    let worker = support::RunningWorker::start(&settings, Health::default()).await;
    let partitions: Vec<i32> = sent.ends.keys().copied().collect();
    let started = Instant::now();
    loop {
        let group = &settings.kafka.group_id;
        let stored = sink::load_stored_offsets(&admin, group, &topic, &partitions)
            .await
            .unwrap();
        if stored == sent.ends {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "stored {stored:?}, log ends {:?}",
            sent.ends
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    support::wait_for_cache(&admin, &expected.tenants, Duration::from_secs(30)).await;
    worker.stop().await;
    support::assert_rows(&admin, &expected).await;
    let resets = support::sample(
        &metrics.render(),
        tenantstream::testing::metrics::OFFSET_RESETS,
        &[("topic", &topic)],
    );
    assert_eq!(
        resets,
        Some(sent.ends.len() as f64),
        "one reset per partition"
    );
}

/// A counter of the topic's series with the `extra` labels (0 when absent).
fn topic_sample(rendered: &str, topic: &str, name: &str, extra: &[(&str, &str)]) -> usize {
    let mut want = vec![("topic", topic)];
    want.extend_from_slice(extra);
    support::sample(rendered, name, &want).unwrap_or(0.0) as usize
}
