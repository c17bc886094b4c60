//! `tenantstream replay` against real Redis, Postgres and a real broker (tansu), and the
//! in-process mock cluster where end offsets must be exact (tansu's high watermarks are only
//! right for one-record batches, which the tansu tests here produce).

use std::collections::BTreeMap;
use std::time::Duration;

use fred::prelude::*;
use tenantstream::replay::{self, ReplayOptions, StartFrom};
use tenantstream::testing::cache;
use tenantstream::testing::domain::{Keyspace, OrderEventType};
use tenantstream::testing::kafka;
use tenantstream::testing::traffic::{self, Expected, ExpectedConfig, Generated, TrafficSpec};
use tenantstream::{Health, Secret, Settings};
use uuid::Uuid;

use crate::support;

fn options() -> ReplayOptions {
    ReplayOptions {
        topics: Vec::new(),
        from: StartFrom::Earliest,
        tenant: None,
        flush: false,
        dry_run: false,
        rewrite_db: false,
        chunk: 700,
    }
}

/// Orders and configuration traffic of `tenants` tenants, sent with one record per batch.
async fn traffic(
    settings: &Settings,
    count: usize,
    tenants: usize,
) -> (
    Expected,
    ExpectedConfig,
    traffic::EndOffsets,
    traffic::EndOffsets,
) {
    let spec = TrafficSpec {
        count,
        tenants,
        malformed: 0.02,
        seed: rand::random(),
        ..Default::default()
    };
    let (orders, expected) = traffic::generate(&spec, &support::order_encoder(settings));
    let (config, expected_config) = support::config_traffic(settings, &expected.tenants, 0.0);
    let producer = support::single_record_producer(&settings.kafka.brokers);
    let send = |topic: String, messages: Vec<Generated>| {
        let producer = producer.clone();
        async move {
            traffic::send(&producer, &topic, &messages, 0, None)
                .await
                .unwrap()
                .ends
        }
    };
    let order_ends = send(settings.kafka.orders_topic.clone(), orders).await;
    let config_ends = send(settings.kafka.config_topic.clone(), config).await;
    (expected, expected_config, order_ends, config_ends)
}

/// Runs a worker until both topics are written and the cache work is done.
async fn run_live(
    settings: &Settings,
    admin: &sqlx::PgPool,
    tenants: &[Uuid],
    order_ends: &traffic::EndOffsets,
    config_ends: &traffic::EndOffsets,
) {
    let worker = support::RunningWorker::start(settings, Health::default()).await;
    let limit = Duration::from_secs(120);
    support::wait_for_offsets(admin, settings, order_ends, limit).await;
    let topic = settings.kafka.config_topic.clone();
    support::wait_for_topic_offsets(admin, settings, &topic, config_ends, limit).await;
    support::wait_for_cache(admin, tenants, Duration::from_secs(30)).await;
    worker.stop().await;
}

fn without(
    dump: &BTreeMap<String, (support::Dumped, bool)>,
    tenants: &[Uuid],
) -> BTreeMap<String, (support::Dumped, bool)> {
    dump.iter()
        .filter(|(k, _)| !tenants.iter().any(|t| k.contains(&format!("{{{t}}}"))))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A test on tansu with a Redis of its own, after the live worker has written `count` order
/// events and the configuration traffic of `tenants` tenants: the settings, the Redis (kept
/// running) and a client, the oracles, and every key the live path wrote.
struct LiveSetup {
    settings: Settings,
    _redis_server: support::PrivateRedis,
    redis: fred::prelude::Client,
    expected: Expected,
    config: ExpectedConfig,
    order_ends: traffic::EndOffsets,
    config_ends: traffic::EndOffsets,
    live: BTreeMap<String, (support::Dumped, bool)>,
}

async fn live_on_own_redis(name: &str, count: usize, tenants: usize) -> LiveSetup {
    let (mut settings, admin, _) = support::tansu_setup(name).await;
    let redis_server = support::PrivateRedis::single();
    settings.redis.url = Secret::new(&redis_server.url);
    let (expected, config, order_ends, config_ends) = traffic(&settings, count, tenants).await;
    run_live(
        &settings,
        &admin,
        &expected.tenants,
        &order_ends,
        &config_ends,
    )
    .await;
    let redis = cache::connect(&redis_server.url).await.unwrap();
    let live = support::dump_all(&redis).await;
    LiveSetup {
        settings,
        _redis_server: redis_server,
        redis,
        expected,
        config,
        order_ends,
        config_ends,
        live,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_after_flushall_restores_exactly_the_keys_the_live_path_wrote() {
    let LiveSetup {
        settings,
        redis,
        expected,
        config,
        order_ends,
        config_ends,
        live,
        // Bound, so the Redis server lives until the end of the test.
        _redis_server: _server,
        ..
    } = live_on_own_redis("replay-flushall", 1_500, 4).await;
    assert!(
        live.len() > expected.orders.len(),
        "live path wrote orders and config"
    );

    // As after a restart of Redis: no keys, and no scripts loaded (each write is sent by
    // SHA1, answered NOSCRIPT, and sent again once its script is loaded).
    let () = redis.flushall(false).await.unwrap();
    let () = redis.script_flush(false).await.unwrap();
    let summary = replay::run(&settings, &options()).await.unwrap();
    let replayed = support::dump_all(&redis).await;
    assert_eq!(
        replayed, live,
        "replay rebuilt the same keys, values and expiries"
    );
    let sent: i64 = order_ends.values().sum::<i64>() + config_ends.values().sum::<i64>();
    assert_eq!(summary.events_read as i64, sent);
    assert_eq!(
        summary.dead as usize,
        expected.dead_letters.values().sum::<usize>()
    );
    assert_eq!(summary.skipped_older, 0, "nothing was in Redis");
    assert!(summary.keys_written as usize > expected.orders.len());
    support::assert_config_cache(&redis, &config).await;

    // Again, over a full cache: every key is already at its version.
    let again = replay::run(&settings, &options()).await.unwrap();
    assert_eq!(again.keys_written, 0);
    assert_eq!(again.skipped_older, summary.keys_written);
    assert_eq!(support::dump_all(&redis).await, live);

    // Values that expired while their versions were kept are written again at that version.
    let gone: Vec<String> = live
        .keys()
        .filter(|k| k.ends_with(":config") || k.ends_with(":profile") || k.contains(":cat:"))
        .cloned()
        .collect();
    assert!(!gone.is_empty());
    let _: i64 = redis.del(gone).await.unwrap();
    replay::run(&settings, &options()).await.unwrap();
    assert_eq!(support::dump_all(&redis).await, live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_beside_the_live_worker_leaves_no_key_older_than_postgres() {
    let (settings, admin, redis) = support::tansu_setup("replay-race").await;
    let (expected, _, order_ends, config_ends) = traffic(&settings, 1_200, 3).await;
    run_live(
        &settings,
        &admin,
        &expected.tenants,
        &order_ends,
        &config_ends,
    )
    .await;

    // The live worker writes a newer version of every order while replay rebuilds the old
    // ones from the first range.
    let worker = support::RunningWorker::start(&settings, Health::default()).await;
    let encoder = support::order_encoder(&settings);
    let newer: Vec<Generated> = expected
        .orders
        .values()
        .map(|order| {
            let mut next = order.clone();
            next.version += 1;
            next.event_id = Uuid::new_v4().to_string();
            next.event_type = OrderEventType::Updated;
            Generated {
                key: next.order_id.clone().into_bytes(),
                value: encoder.encode(&next, false),
                malformed: None,
            }
        })
        .collect();
    let producer = support::single_record_producer(&settings.kafka.brokers);
    let topic = settings.kafka.orders_topic.clone();
    let produce_newer = tokio::spawn(async move {
        traffic::send(&producer, &topic, &newer, 0, None)
            .await
            .unwrap()
    });
    let summary = replay::run(
        &settings,
        &ReplayOptions {
            topics: vec![settings.kafka.orders_topic.clone()],
            chunk: 50,
            ..options()
        },
    )
    .await
    .unwrap();
    assert!(summary.events_read > 0);
    let sent = produce_newer.await.unwrap();
    let ends: traffic::EndOffsets = sent.ends;
    support::wait_for_offsets(&admin, &settings, &ends, Duration::from_secs(120)).await;
    support::wait_for_cache(&admin, &expected.tenants, Duration::from_secs(30)).await;
    worker.stop().await;

    // Every order key holds the version Postgres holds.
    let rows: Vec<(Uuid, String, i64)> =
        sqlx::query_as("SELECT tenant_id, order_id, version FROM orders WHERE tenant_id = ANY($1)")
            .bind(&expected.tenants)
            .fetch_all(&admin)
            .await
            .unwrap();
    assert_eq!(rows.len(), expected.orders.len());
    for (tenant, order_id, version) in rows {
        let want = expected.orders[&(tenant, order_id.clone())].version + 1;
        assert_eq!(
            version, want,
            "Postgres has the newer version of {order_id}"
        );
        let json: Option<String> = redis
            .get(cache::order_key(&tenant, 0, &order_id))
            .await
            .unwrap();
        let cached: serde_json::Value = serde_json::from_str(&json.expect("cached")).unwrap();
        assert_eq!(cached["version"], version, "{tenant} {order_id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_of_one_tenant_touches_only_that_tenant() {
    let LiveSetup {
        settings,
        redis,
        expected,
        live,
        // Bound, so the Redis server lives until the end of the test.
        _redis_server: _server,
        ..
    } = live_on_own_redis("replay-tenant", 900, 3).await;
    let (a, b) = (expected.tenants[0], expected.tenants[1]);

    // Lose every key of tenants A and B.
    let lost: Vec<String> = live
        .keys()
        .filter(|k| k.contains(&format!("{{{a}}}")) || k.contains(&format!("{{{b}}}")))
        .cloned()
        .collect();
    let _: i64 = redis.del(lost).await.unwrap();
    let without_ab = support::dump_all(&redis).await;
    assert_eq!(without_ab, without(&live, &[a, b]));

    // A dry run writes nothing.
    let dry = replay::run(
        &settings,
        &ReplayOptions {
            tenant: Some(a),
            dry_run: true,
            ..options()
        },
    )
    .await
    .unwrap();
    assert!(dry.keys_written > 0 && dry.filtered > 0, "{dry:?}");
    assert_eq!(support::dump_all(&redis).await, without_ab);

    // Replaying A restores exactly A's keys; B and shared keys stay as they are.
    let summary = replay::run(
        &settings,
        &ReplayOptions {
            tenant: Some(a),
            ..options()
        },
    )
    .await
    .unwrap();
    assert_eq!(summary.keys_written, dry.keys_written);
    assert_eq!(support::dump_all(&redis).await, without(&live, &[b]));

    // With --flush, A's keyspace is retired first and rebuilt in the next generation.
    let flushed = replay::run(
        &settings,
        &ReplayOptions {
            tenant: Some(a),
            flush: true,
            ..options()
        },
    )
    .await
    .unwrap();
    assert_eq!(flushed.keyspaces_flushed, 1);
    assert_eq!(flushed.keys_written, summary.keys_written);
    let generations = cache::read_generations(
        &redis,
        [
            Keyspace::Tenant(a),
            Keyspace::Tenant(b),
            Keyspace::Reference,
        ],
    )
    .await
    .unwrap();
    assert_eq!(generations[&Keyspace::Tenant(a)], 1);
    assert_eq!(generations[&Keyspace::Tenant(b)], 0);
    assert_eq!(generations[&Keyspace::Reference], 0);
    let after = support::dump_all(&redis).await;
    let a_g0: BTreeMap<String, support::Dumped> = after
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("t:{{{a}}}:g0:")))
        .map(|(k, v)| (k.replacen(":g0:", ":g1:", 1), v.0.clone()))
        .collect();
    let a_g1: BTreeMap<String, support::Dumped> = after
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("t:{{{a}}}:g1:")))
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    assert_eq!(a_g1, a_g0, "generation 1 holds what generation 0 held");
    assert_eq!(without(&after, &[a]), without(&live, &[a, b]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_stops_by_itself_at_the_end_offsets_it_saw_at_start() {
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    let mut settings = support::settings(&mock.bootstrap_servers(), "replay-ends");
    mock.create_topic(&settings.kafka.orders_topic, 3, 1)
        .unwrap();
    mock.create_topic(&settings.kafka.config_topic, 1, 1)
        .unwrap();
    settings.kafka.brokers = mock.bootstrap_servers();
    let _admin = support::admin_pool().await;
    let spec = TrafficSpec {
        count: 3_000,
        tenants: 3,
        seed: rand::random(),
        ..Default::default()
    };
    let (messages, _) = traffic::generate(&spec, &support::order_encoder(&settings));
    let producer = kafka::producer(&settings.kafka).unwrap();
    let topic = settings.kafka.orders_topic.clone();
    traffic::send(&producer, &topic, &messages[..1_000], 0, None)
        .await
        .unwrap();
    // The topic keeps growing while replay runs, until replay has returned.
    let stop = tokio_util::sync::CancellationToken::new();
    let growing = {
        let (stop, producer, topic) = (stop.clone(), producer.clone(), topic.clone());
        let rest = messages[1_000..].to_vec();
        tokio::spawn(async move {
            let mut sent = 0;
            for chunk in rest.chunks(20) {
                if stop.is_cancelled() {
                    break;
                }
                traffic::send(&producer, &topic, chunk, 0, None)
                    .await
                    .unwrap();
                sent += chunk.len();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sent
        })
    };
    let summary = tokio::time::timeout(
        Duration::from_secs(60),
        replay::run(
            &settings,
            &ReplayOptions {
                topics: vec![topic.clone()],
                dry_run: true,
                chunk: 100,
                ..options()
            },
        ),
    )
    .await
    .expect("replay stops by itself")
    .unwrap();
    stop.cancel();
    let sent_later = growing.await.unwrap();
    // --flush of one topic would retire keys it never rebuilds.
    let refused = replay::run(
        &settings,
        &ReplayOptions {
            topics: vec![topic.clone()],
            flush: true,
            ..options()
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(refused.contains("--flush"), "{refused}");
    let planned: i64 = summary.ranges.iter().map(|r| r.end - r.start).sum();
    assert!(planned >= 1_000, "{:?}", summary.ranges);
    assert_eq!(
        summary.events_read as i64, planned,
        "read exactly to the planned ends"
    );
    assert!(
        1_000 + sent_later as i64 > planned,
        "the topic grew past the ends replay saw ({sent_later} sent later)"
    );
}
