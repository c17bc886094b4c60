//! The Kafka key against the body (README "Trust model"), through the worker on librdkafka's
//! mock cluster: a configuration change keyed by tenant A whose body names tenant B. By default
//! the body decides: B's row is written, A has nothing, no dead letter. With
//! `tenants.key_must_match` the change is dead-lettered as `tenant_key_mismatch` and nothing is
//! written for either tenant, while correctly keyed changes in the same run are; a GLOBAL
//! change with a wrong key is dead-lettered too. Replay counts exactly the same messages dead.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::Message;
use sqlx::PgPool;
use tenantstream::replay::{self, ReplayOptions, StartFrom};
use tenantstream::testing::dead_letter::{
    HEADER_ERROR_CODE, HEADER_ERROR_REASON, HEADER_ERROR_STAGE, HEADER_SOURCE_OFFSET,
};
use tenantstream::testing::domain::{ConfigChangeEvent, ConfigKind, ConfigScope};
use tenantstream::testing::monitor::TenantMonitor;
use tenantstream::testing::sink;
use tenantstream::testing::traffic::{EndOffsets, Generated, Sent};
use tenantstream::{Clock, Health, Settings};
use uuid::Uuid;

use super::worker_pool;
use crate::support;

/// The setting every change of these tests sets.
const SETTING: &str = "trust.key";

/// `tenant`'s setting [`SETTING`], its value naming the tenant.
fn setting(tenant: Uuid) -> ConfigChangeEvent {
    ConfigChangeEvent {
        event_id: Uuid::new_v4().to_string(),
        scope: ConfigScope::Tenant,
        tenant_id: Some(tenant.to_string()),
        kind: ConfigKind::Setting,
        key: SETTING.into(),
        value: Some(format!(r#"{{"of": "{tenant}"}}"#)),
        version: 1,
        occurred_at: 1_700_000_000_000,
    }
}

/// Shared category `id`.
fn category(id: &str) -> ConfigChangeEvent {
    ConfigChangeEvent {
        event_id: Uuid::new_v4().to_string(),
        scope: ConfigScope::Global,
        tenant_id: None,
        kind: ConfigKind::Category,
        key: id.into(),
        value: Some(format!(r#"{{"name": "{id}"}}"#)),
        version: 1,
        occurred_at: 1_700_000_000_000,
    }
}

fn keyed(settings: &Settings, event: &ConfigChangeEvent, key: &[u8]) -> Generated {
    Generated {
        key: key.to_vec(),
        value: support::config_encoder(settings).encode(event, false),
        malformed: None,
    }
}

/// Sends `messages` to the configuration topic and runs a worker, its per-tenant figures in
/// `monitor`, until it has stored their end offsets.
async fn consume(
    settings: &Settings,
    admin: &PgPool,
    messages: &[Generated],
    monitor: &TenantMonitor,
) -> Sent {
    let topic = settings.kafka.config_topic.clone();
    let sent = support::send(settings, &topic, messages).await;
    let health = Health::default();
    let worker =
        support::RunningWorker::start_with_monitor(settings, health, monitor.clone()).await;
    let limit = Duration::from_secs(60);
    support::wait_for_topic_offsets(admin, settings, &topic, &sent.ends, limit).await;
    worker.stop().await;
    sent
}

fn monitor() -> TenantMonitor {
    TenantMonitor::new(Clock::system(), 10, Duration::from_secs(3600))
}

/// The tenants that have a `tenants` row and the tenants that have a [`SETTING`] row, among
/// `tenants`, as the owner sees them (bypassing RLS).
async fn owned_rows(admin: &PgPool, tenants: &[Uuid]) -> (Vec<Uuid>, Vec<Uuid>) {
    let registered = "SELECT tenant_id FROM tenants WHERE tenant_id = ANY($1) ORDER BY 1";
    let set = "SELECT tenant_id FROM tenant_settings WHERE tenant_id = ANY($1) AND key = $2
               ORDER BY 1";
    let registered = sqlx::query_scalar(registered)
        .bind(tenants)
        .fetch_all(admin)
        .await
        .unwrap();
    let set = sqlx::query_scalar(set)
        .bind(tenants)
        .bind(SETTING)
        .fetch_all(admin)
        .await
        .unwrap();
    (registered, set)
}

/// What the worker role sees under `tenant`'s context: the tenant ids of every `tenants` row
/// and every `tenant_settings` row visible (RLS filters; the tenant is fresh, so only this
/// test's rows can be its own).
async fn seen_as_worker(worker: &PgPool, tenant: Uuid) -> (Vec<Uuid>, Vec<Uuid>) {
    let mut tx = worker.begin().await.unwrap();
    sink::set_tenant(&mut tx, tenant).await.unwrap();
    let registered = sqlx::query_scalar("SELECT tenant_id FROM tenants")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    let set = sqlx::query_scalar("SELECT tenant_id FROM tenant_settings")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    (registered, set)
}

/// Messages of the configuration topic `replay --dry-run` counts dead, with the key rule on or
/// off.
async fn replayed_dead(settings: &Settings, key_must_match: bool) -> u64 {
    let mut settings = settings.clone();
    settings.tenants.key_must_match = key_must_match;
    let options = ReplayOptions {
        topics: vec![settings.kafka.config_topic.clone()],
        from: StartFrom::Earliest,
        tenant: None,
        flush: false,
        dry_run: true,
        rewrite_db: false,
        chunk: 100,
    };
    replay::run(&settings, &options).await.unwrap().dead
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_the_body_names_the_tenant_whatever_the_key() {
    let mock = MockCluster::new(1).unwrap();
    let settings = support::mock_settings(&mock, "key-trust-default");
    let admin = support::admin_pool().await;
    let worker = worker_pool(1).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let messages = [keyed(&settings, &setting(b), a.to_string().as_bytes())];
    let monitor = monitor();
    consume(&settings, &admin, &messages, &monitor).await;

    // B is registered (provisional) by its setting; A has nothing.
    assert_eq!(owned_rows(&admin, &[a, b]).await, (vec![b], vec![b]));
    let value: serde_json::Value =
        sqlx::query_scalar("SELECT value FROM tenant_settings WHERE tenant_id = $1 AND key = $2")
            .bind(b)
            .bind(SETTING)
            .fetch_one(&admin)
            .await
            .unwrap();
    assert_eq!(value, serde_json::json!({"of": b.to_string()}));
    assert_eq!(seen_as_worker(&worker, a).await, (vec![], vec![]));
    assert_eq!(seen_as_worker(&worker, b).await, (vec![b], vec![b]));
    let dead_letters = support::end_offsets(
        &settings.kafka.brokers,
        &settings.kafka.dead_letter_topic,
        1,
    );
    assert_eq!(dead_letters, EndOffsets::from([(0, 0)]), "no dead letter");
    assert!(
        monitor.health(a).is_none(),
        "nothing counted against the key's tenant"
    );
    assert_eq!(monitor.health(b).unwrap().totals.written, 1);
    // Replay agrees with the worker either way.
    assert_eq!(replayed_dead(&settings, false).await, 0);
    assert_eq!(replayed_dead(&settings, true).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_key_must_match_a_change_keyed_otherwise_is_dead_lettered() {
    let mock = MockCluster::new(1).unwrap();
    let mut settings = support::mock_settings(&mock, "key-trust-match");
    settings.tenants.key_must_match = true;
    let admin = support::admin_pool().await;
    let worker = worker_pool(1).await;
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let group = &settings.kafka.group_id;
    let (bad, good) = (format!("{group}-bad"), format!("{group}-good"));
    let messages = [
        // Tenant B's change keyed by tenant A.
        keyed(&settings, &setting(b), a.to_string().as_bytes()),
        // Keyed by its own tenant, spelt in capitals: the same UUID.
        keyed(
            &settings,
            &setting(c),
            c.to_string().to_uppercase().as_bytes(),
        ),
        // A GLOBAL change keyed by its key alone, not KIND:key.
        keyed(&settings, &category(&bad), bad.as_bytes()),
        keyed(
            &settings,
            &category(&good),
            format!("CATEGORY:{good}").as_bytes(),
        ),
    ];
    let monitor = monitor();
    let sent = consume(&settings, &admin, &messages, &monitor).await;

    assert_eq!(owned_rows(&admin, &[a, b, c]).await, (vec![c], vec![c]));
    assert_eq!(seen_as_worker(&worker, a).await, (vec![], vec![]));
    assert_eq!(seen_as_worker(&worker, b).await, (vec![], vec![]));
    assert_eq!(seen_as_worker(&worker, c).await, (vec![c], vec![c]));
    let categories: Vec<String> = sqlx::query_scalar(
        "SELECT category_id FROM categories WHERE category_id = ANY($1) ORDER BY 1",
    )
    .bind(vec![bad.clone(), good.clone()])
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(categories, vec![good]);

    let brokers = &settings.kafka.brokers;
    let dead = support::read_topic(
        brokers,
        &settings.kafka.dead_letter_topic,
        2,
        Duration::from_secs(30),
    );
    assert_eq!(dead.len(), 2, "one dead letter per mis-keyed change");
    let by_offset: BTreeMap<i64, _> = dead
        .iter()
        .map(|m| (support::header(m, HEADER_SOURCE_OFFSET).parse().unwrap(), m))
        .collect();
    for (index, expected_reason) in [
        (0, vec![a.to_string(), b.to_string()]),
        (2, vec![format!("\"{bad}\""), format!("\"CATEGORY:{bad}\"")]),
    ] {
        let letter = by_offset[&sent.positions[index].1];
        assert_eq!(
            support::header(letter, HEADER_ERROR_CODE),
            "tenant_key_mismatch"
        );
        assert_eq!(support::header(letter, HEADER_ERROR_STAGE), "validate");
        assert_eq!(letter.key(), Some(messages[index].key.as_slice()));
        assert_eq!(letter.payload(), Some(messages[index].value.as_slice()));
        let reason = support::header(letter, HEADER_ERROR_REASON);
        for named in expected_reason {
            assert!(reason.contains(&named), "{reason:?} names {named}");
        }
    }
    // Counted against the body's tenant, never the key's.
    assert!(monitor.health(a).is_none());
    let codes = monitor
        .health(b)
        .unwrap()
        .totals
        .dead_letters_by_code
        .unwrap();
    assert_eq!(codes, BTreeMap::from([("tenant_key_mismatch", 1)]));
    assert_eq!(monitor.health(c).unwrap().totals.written, 1);
    // Replay dead-letters exactly what the worker did, by the same rule.
    assert_eq!(replayed_dead(&settings, true).await, 2);
    assert_eq!(replayed_dead(&settings, false).await, 0);
}
