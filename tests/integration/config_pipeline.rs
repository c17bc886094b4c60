//! Configuration-change events end to end against tansu: rows under RLS with the version guard
//! and tombstones, per-tenant and shared Redis keyspaces, dead letters for invalid changes, and
//! a suspension retiring exactly one tenant's keyspace.

use std::time::Duration;

use fred::prelude::*;
use tenantstream::testing::cache;
use tenantstream::testing::domain::{ConfigChangeEvent, ConfigKind, ConfigScope, Keyspace};
use tenantstream::testing::traffic::{self, Generated, TrafficSpec};
use tenantstream::testing::{dead_letter, domain};
use tenantstream::{Health, Settings};
use uuid::Uuid;

use crate::support;

async fn send(settings: &Settings, topic: &str, messages: &[Generated]) -> traffic::EndOffsets {
    support::send(settings, topic, messages).await.ends
}

fn encoded(settings: &Settings, event: &ConfigChangeEvent, key: &str) -> Generated {
    Generated {
        key: key.as_bytes().to_vec(),
        value: support::config_encoder(settings).encode(event, false),
        malformed: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_changes_end_in_rows_and_keys_and_invalid_ones_are_dead_lettered() {
    let (settings, admin, redis) = support::tansu_setup("config").await;
    let tenants: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    // Random traffic whose end state deletes some entry (a few in a hundred end with none).
    let (mut messages, expected) =
        std::iter::repeat_with(|| support::config_traffic(&settings, &tenants, 0.34))
            .find(|(_, expected)| expected.entries.values().any(|(_, v)| v.is_none()))
            .expect("an endless supply of traffic");
    // Two changes no worker can apply: a GLOBAL setting and an SLA policy of the wrong shape.
    let mut global_setting = domain::sample_config();
    global_setting.scope = ConfigScope::Global;
    global_setting.tenant_id = None;
    let mut bad_policy = domain::sample_config();
    bad_policy.tenant_id = Some(tenants[0].to_string());
    bad_policy.kind = ConfigKind::SlaPolicy;
    bad_policy.value = Some(r#"{"lag_threshold_ms": -5}"#.into());
    messages.insert(3, encoded(&settings, &global_setting, "SETTING:x"));
    messages.insert(7, encoded(&settings, &bad_policy, &tenants[0].to_string()));
    let ends = send(&settings, &settings.kafka.config_topic, &messages).await;

    let worker = support::RunningWorker::start(&settings, Health::default()).await;
    let topic = settings.kafka.config_topic.clone();
    support::wait_for_topic_offsets(&admin, &settings, &topic, &ends, Duration::from_secs(120))
        .await;
    support::wait_for_cache(&admin, &tenants, Duration::from_secs(30)).await;
    worker.stop().await;

    support::assert_config_rows(&admin, &expected).await;
    support::assert_config_cache(&redis, &expected).await;
    let dead = support::read_topic(
        &settings.kafka.brokers,
        &settings.kafka.dead_letter_topic,
        2,
        Duration::from_secs(30),
    );
    let codes = support::tally(
        dead.iter()
            .map(|m| support::header(m, dead_letter::HEADER_ERROR_CODE)),
    );
    assert_eq!(codes.get("invalid_field"), Some(&2), "{codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn suspension_retires_its_tenant_keyspace_and_nothing_else() {
    let (settings, admin, redis) = support::tansu_setup("suspend").await;
    let spec = TrafficSpec {
        count: 400,
        tenants: 2,
        malformed: 0.0,
        seed: rand::random(),
        ..Default::default()
    };
    let (orders, expected_orders) = traffic::generate(&spec, &support::order_encoder(&settings));
    let tenants = expected_orders.tenants.clone();
    let (config, expected) = support::config_traffic(&settings, &tenants, 0.0);
    let order_ends = send(&settings, &settings.kafka.orders_topic, &orders).await;
    let config_ends = send(&settings, &settings.kafka.config_topic, &config).await;
    let worker = support::RunningWorker::start(&settings, Health::default()).await;
    support::wait_for_offsets(&admin, &settings, &order_ends, Duration::from_secs(120)).await;
    let config_topic = settings.kafka.config_topic.clone();
    support::wait_for_topic_offsets(
        &admin,
        &settings,
        &config_topic,
        &config_ends,
        Duration::from_secs(60),
    )
    .await;
    support::wait_for_cache(&admin, &tenants, Duration::from_secs(30)).await;
    let (a, b) = (tenants[0], tenants[1]);
    // The shared Redis holds other tests' keys too: look at A's, B's and the shared ones only.
    let dump = || async {
        let mut keys = support::dump_matching(&redis, &format!("t:{{{a}}}*")).await;
        keys.extend(support::dump_matching(&redis, &format!("t:{{{b}}}*")).await);
        keys.extend(support::dump_matching(&redis, "ref:{category}*").await);
        keys
    };
    let before = dump().await;
    let keys_of = |dump: &std::collections::BTreeMap<String, (support::Dumped, bool)>,
                   tag: &str| {
        dump.iter()
            .filter(|(k, _)| k.contains(tag))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let a_tag = format!("{{{a}}}");
    let b_tag = format!("{{{b}}}");
    let ref_keys: Vec<String> = expected
        .categories
        .keys()
        .map(|id| cache::category_key(0, id))
        .collect();
    assert!(
        keys_of(&before, &a_tag).len() > 10,
        "tenant A has cached keys"
    );

    // Tenant A is suspended (a newer profile version than any in the traffic).
    let mut suspend = domain::sample_config();
    suspend.tenant_id = Some(a.to_string());
    suspend.kind = ConfigKind::TenantProfile;
    suspend.key = "profile".into();
    suspend.version = 1_000;
    suspend.value = Some(r#"{"name":"A","tier":"pro","status":"suspended"}"#.into());
    suspend.event_id = Uuid::new_v4().to_string();
    let ends = send(
        &settings,
        &config_topic,
        &[encoded(&settings, &suspend, &a.to_string())],
    )
    .await;
    support::wait_for_topic_offsets(
        &admin,
        &settings,
        &config_topic,
        &ends,
        Duration::from_secs(60),
    )
    .await;
    support::wait_for_cache(&admin, &tenants, Duration::from_secs(30)).await;
    worker.stop().await;

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
    assert_eq!(
        generations[&Keyspace::Tenant(a)],
        1,
        "A's generation moved once"
    );
    assert_eq!(
        generations[&Keyspace::Tenant(b)],
        0,
        "B's generation did not move"
    );
    assert_eq!(
        generations[&Keyspace::Reference],
        0,
        "shared generation did not move"
    );
    let after = dump().await;
    // Every key A had before is still there, in generation 0, which readers no longer use,
    // and expires on its own.
    for (key, (value, _)) in keys_of(&before, &a_tag) {
        if key.ends_with(":gen") || key.ends_with(":gen:bumped_for") {
            continue;
        }
        assert!(key.contains(":g0:"), "{key}");
        let (kept, expires) = after.get(&key).unwrap_or_else(|| panic!("{key} kept"));
        assert_eq!(kept, &value, "{key} unchanged");
        assert!(expires, "retired key {key} expires on its own");
    }
    let visible: Vec<String> = keys_of(&after, &format!("{a_tag}:g1:"))
        .into_keys()
        .collect();
    let profile_key = Keyspace::Tenant(a).key(1, "profile");
    let versions_key = Keyspace::Tenant(a).key(1, "versions");
    assert_eq!(
        visible,
        vec![profile_key.clone(), versions_key],
        "only the new profile is visible"
    );
    let profile: String = redis.get(&profile_key).await.unwrap();
    assert!(profile.contains("\"suspended\""), "{profile}");
    // B and the shared reference data are untouched.
    assert_eq!(keys_of(&after, &b_tag), keys_of(&before, &b_tag));
    for key in &ref_keys {
        assert_eq!(after.get(key), before.get(key), "{key}");
    }
    support::assert_config_rows(&admin, &expected_without_profile_of(expected, a)).await;
}

/// The expected configuration, minus a profile replaced since.
fn expected_without_profile_of(
    mut expected: traffic::ExpectedConfig,
    tenant: Uuid,
) -> traffic::ExpectedConfig {
    expected.profiles.remove(&tenant);
    expected
}
