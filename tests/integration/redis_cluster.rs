//! The worker and replay against a 3-node Redis Cluster started from Debian's redis-server:
//! every script touches keys of one keyspace, which share a hash slot, so cluster routing
//! accepts them, and generation bumps work per tenant.

use std::time::Duration;

use fred::prelude::*;
use tenantstream::replay::{self, ReplayOptions, StartFrom};
use tenantstream::testing::cache;
use tenantstream::testing::domain::Keyspace;
use tenantstream::testing::traffic::{self, TrafficSpec};
use tenantstream::{Health, Secret};

use crate::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipeline_and_replay_work_against_a_redis_cluster() {
    let cluster = support::PrivateRedis::cluster();
    let (mut settings, admin, _) = support::tansu_setup("cluster").await;
    settings.redis.url = Secret::new(&cluster.url);
    let spec = TrafficSpec {
        count: 800,
        tenants: 4,
        malformed: 0.0,
        seed: rand::random(),
        ..Default::default()
    };
    let (orders, expected) = traffic::generate(&spec, &support::order_encoder(&settings));
    let (config, expected_config) = support::config_traffic(&settings, &expected.tenants, 0.5);
    let producer = support::single_record_producer(&settings.kafka.brokers);
    let config_ends = traffic::send(&producer, &settings.kafka.config_topic, &config, 0, None)
        .await
        .unwrap()
        .ends;
    let order_ends = traffic::send(&producer, &settings.kafka.orders_topic, &orders, 0, None)
        .await
        .unwrap()
        .ends;

    let worker = support::RunningWorker::start(&settings, Health::default()).await;
    let config_topic = settings.kafka.config_topic.clone();
    let limit = Duration::from_secs(120);
    support::wait_for_topic_offsets(&admin, &settings, &config_topic, &config_ends, limit).await;
    support::wait_for_offsets(&admin, &settings, &order_ends, limit).await;
    support::wait_for_cache(&admin, &expected.tenants, Duration::from_secs(30)).await;
    worker.stop().await;

    let redis = cache::connect(&cluster.url).await.unwrap();
    support::assert_config_cache(&redis, &expected_config).await;
    // Every order of a tenant never suspended is cached (a suspended tenant's orders written
    // before its suspension are retired with its keyspace).
    let spaces = expected.tenants.iter().map(|t| Keyspace::Tenant(*t));
    let generations = cache::read_generations(&redis, spaces).await.unwrap();
    assert!(
        generations.values().any(|g| *g == 0),
        "some tenants stay active"
    );
    for ((tenant, order_id), want) in &expected.orders {
        let generation = generations[&Keyspace::Tenant(*tenant)];
        if generation > 0 {
            continue;
        }
        let json: Option<String> = redis
            .get(cache::order_key(tenant, generation, order_id))
            .await
            .unwrap();
        let cached: serde_json::Value = serde_json::from_str(&json.expect("cached")).unwrap();
        assert_eq!(cached["version"], want.version, "{tenant} {order_id}");
    }

    // Replay one tenant with --flush: its keyspace moves to the next generation, with every
    // order rebuilt.
    let tenant = expected.tenants[0];
    let before = generations[&Keyspace::Tenant(tenant)];
    let summary = replay::run(
        &settings,
        &ReplayOptions {
            topics: Vec::new(),
            from: StartFrom::Earliest,
            tenant: Some(tenant),
            flush: true,
            dry_run: false,
            rewrite_db: false,
            chunk: 500,
        },
    )
    .await
    .unwrap();
    assert_eq!(summary.keyspaces_flushed, 1);
    let after = cache::read_generations(&redis, [Keyspace::Tenant(tenant)])
        .await
        .unwrap()[&Keyspace::Tenant(tenant)];
    assert_eq!(after, before + 1);
    for ((t, order_id), want) in &expected.orders {
        if *t != tenant {
            continue;
        }
        let json: Option<String> = redis
            .get(cache::order_key(t, after, order_id))
            .await
            .unwrap();
        let cached: serde_json::Value = serde_json::from_str(&json.expect("rebuilt")).unwrap();
        assert_eq!(cached["version"], want.version);
    }
}
