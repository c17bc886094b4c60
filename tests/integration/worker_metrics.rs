//! The worker's global metrics agree with what it did: read from the `/metrics` of the binary
//! (its own process, so no other test's samples mix in) after a known workload on librdkafka's
//! mock cluster (orders on 2 partitions, configuration on 1); and the cache outbox's size and age
//! as the worker's role reads them; and a replay's messages counted.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::mocking::MockCluster;
use tenantstream::replay::{self, ReplayOptions, StartFrom};
use tenantstream::testing::domain::OrderEventType;
use tenantstream::testing::metrics::{
    install_recorder, ASSIGNED_PARTITIONS, BATCH_SIZE_EVENTS, BATCH_TENANTS, BUFFERED_BYTES,
    BUILD_INFO, CACHE_VISIBLE_SECONDS, EVENTS_CONSUMED, POSTGRES_POOL_CONNECTIONS, PROCESS_METRICS,
    READY, REBALANCES, REDIS_ERRORS, REPLAY_MESSAGES, STAGE_DURATION_SECONDS,
};
use tenantstream::testing::sink::{outbox_state, OutboxState};
use uuid::Uuid;

use crate::support::{self, sample};

/// Orders sent, each a new order of its own (so each writes its row and its key).
const EVENTS: usize = 240;

/// How long before sending each event "occurred".
const OCCURRED_BEFORE_MS: i64 = 1_500;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Scrapes `url` until `done` holds for the text (at most 30 s), and returns that text.
async fn scrape_until(url: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        if let Ok(response) = reqwest::get(url).await {
            let text = response.text().await.unwrap();
            if done(&text) {
                return text;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_of_a_run_agree_with_its_traffic_and_its_partitions() {
    let admin = support::admin_pool().await;
    let mock = MockCluster::new(1).unwrap();
    let mut settings = support::mock_settings(&mock, "worker-metrics");
    let http = format!("127.0.0.1:{}", support::free_port());
    settings.http.listen = http.clone();
    let child = support::spawn_run(&settings);
    let url = format!("http://{http}/metrics");
    // Ready (partitions held, every dependency answering) before the traffic, so each batch
    // writes its own cache keys.
    scrape_until(&url, "ready", |m| sample(m, READY, &[]) == Some(1.0)).await;
    let tenant = Uuid::new_v4();
    let occurred = now_ms() - OCCURRED_BEFORE_MS;
    let events: Vec<_> = (0..EVENTS)
        .map(|i| {
            let order = format!("m-{i}");
            support::order_event(tenant, &order, 1, OrderEventType::Created, occurred)
        })
        .collect();
    // The tenant's row locked, so that the first batches wait (their orders' foreign key
    // check) while every message arrives: the worker then holds every message's key and value.
    let messages = support::order_messages(&settings, &events);
    let sent_bytes: usize = messages.iter().map(|m| m.key.len() + m.value.len()).sum();
    sqlx::query("INSERT INTO tenants (tenant_id) VALUES ($1)")
        .bind(tenant)
        .execute(&admin)
        .await
        .unwrap();
    let mut lock = admin.begin().await.unwrap();
    sqlx::query("SELECT FROM tenants WHERE tenant_id = $1 FOR UPDATE")
        .bind(tenant)
        .execute(&mut *lock)
        .await
        .unwrap();
    let orders_topic = &settings.kafka.orders_topic;
    let ends = support::send(&settings, orders_topic, &messages).await.ends;
    scrape_until(
        &url,
        "every message's bytes held while the batches wait",
        |m| sample(m, BUFFERED_BYTES, &[]) == Some(sent_bytes as f64),
    )
    .await;
    lock.rollback().await.unwrap();
    support::wait_for_offsets(&admin, &settings, &ends, Duration::from_secs(60)).await;
    // The last batch's keys are written after its offsets are stored, and its bytes are let go
    // after that; the pool is sampled every 5 s.
    let pool = |m: &str, state| sample(m, POSTGRES_POOL_CONNECTIONS, &[("state", state)]);
    let orders = settings.kafka.orders_topic.as_str();
    let visible_count = format!("{CACHE_VISIBLE_SECONDS}_count");
    let m = scrape_until(
        &url,
        "every key visible, no byte held, the pool sampled",
        |m| {
            sample(m, &visible_count, &[("topic", orders)]) == Some(EVENTS as f64)
                && sample(m, BUFFERED_BYTES, &[]) == Some(0.0)
                && pool(m, "in_use").unwrap_or(0.0) + pool(m, "idle").unwrap_or(0.0) >= 1.0
        },
    )
    .await;
    support::terminate(child);

    let config = settings.kafka.config_topic.as_str();
    let get = |name: &str, labels: &[(&str, &str)]| {
        sample(&m, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?}"))
    };
    let events = EVENTS as f64;
    // Every message consumed went through one batch, and batches are bounded.
    let batch_sum = |topic| get(&format!("{BATCH_SIZE_EVENTS}_sum"), &[("topic", topic)]);
    let batch_count = |topic| get(&format!("{BATCH_SIZE_EVENTS}_count"), &[("topic", topic)]);
    assert_eq!(batch_sum(orders), events);
    assert_eq!(get(EVENTS_CONSUMED, &[("topic", orders)]), events);
    assert_eq!((batch_sum(config), batch_count(config)), (0.0, 0.0));
    let batches = batch_count(orders);
    assert!(
        (2.0..=events).contains(&batches),
        "{batches} batches for 2 partitions"
    );
    let largest = get(
        &format!("{BATCH_SIZE_EVENTS}_bucket"),
        &[("topic", orders), ("le", "1000")],
    );
    assert_eq!(largest, batches, "240 events make no batch beyond 1,000");
    // Every event is of one tenant: each committed batch wrote one tenant's events.
    let tenants = |suffix: &str| get(&format!("{BATCH_TENANTS}_{suffix}"), &[("topic", orders)]);
    assert_eq!((tenants("count"), tenants("sum")), (batches, batches));
    // Each batch decoded, wrote and refreshed its keys once, each timed once.
    for stage in ["decode", "sink", "cache"] {
        let timed = get(
            &format!("{STAGE_DURATION_SECONDS}_count"),
            &[("stage", stage)],
        );
        assert_eq!(timed, batches, "{stage} timed once per batch");
    }
    // Each event's key written by its own batch, at least OCCURRED_BEFORE_MS after it occurred.
    let visible = |suffix: &str, extra: &[(&str, &str)]| {
        let mut labels = vec![("topic", orders)];
        labels.extend_from_slice(extra);
        get(&format!("{CACHE_VISIBLE_SECONDS}_{suffix}"), &labels)
    };
    assert_eq!(visible("count", &[]), events);
    assert_eq!(
        visible("bucket", &[("le", "1")]),
        0.0,
        "none before it occurred + 1.5 s"
    );
    assert!(visible("sum", &[]) >= events * 1.5);
    assert!(visible("sum", &[]) < events * 60.0);
    // One assignment of every partition, held to the end.
    assert!(get(REBALANCES, &[("kind", "assign")]) >= 1.0);
    assert_eq!(get(ASSIGNED_PARTITIONS, &[("topic", orders)]), 2.0);
    assert_eq!(get(ASSIGNED_PARTITIONS, &[("topic", config)]), 1.0);
    let connections = pool(&m, "in_use").unwrap() + pool(&m, "idle").unwrap();
    assert!(connections <= settings.database.max_connections as f64);
    for stage in ["cache", "drain", "sla_publish"] {
        assert_eq!(get(REDIS_ERRORS, &[("stage", stage)]), 0.0, "{stage}");
    }
    assert_eq!(get(REPLAY_MESSAGES, &[]), 0.0);
    let build = [
        ("version", env!("CARGO_PKG_VERSION")),
        ("commit", env!("TENANTSTREAM_COMMIT")),
    ];
    assert_eq!(get(BUILD_INFO, &build), 1.0);
    // The process metrics, read at the scrape.
    for name in PROCESS_METRICS {
        assert!(m.contains(&format!("# TYPE {name} ")), "no {name}: {m}");
    }
    assert!(get("process_resident_memory_bytes", &[]) > 1e6);
    assert!(get("process_open_fds", &[]) >= 3.0);
    assert!(get("process_threads", &[]) >= 2.0);
}

/// The outbox gauges' source: every queued row of the group, tenants' (which the worker's role
/// sees one tenant at a time) and shared, and the oldest's age; other groups' rows are not
/// counted.
#[tokio::test]
async fn the_outbox_state_counts_every_tenant_s_rows_of_the_group_and_the_oldest_age() {
    let admin = support::admin_pool().await;
    let worker = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(support::WORKER_URL)
        .await
        .unwrap();
    let group = format!("outbox-state-{}", Uuid::new_v4());
    let empty = outbox_state(&worker, &group).await.unwrap();
    assert_eq!(
        empty,
        OutboxState {
            rows: 0,
            oldest_ms: 0
        }
    );
    for (tenant, age_s) in [(Uuid::new_v4(), 30), (Uuid::new_v4(), 2)] {
        sqlx::query(
            "INSERT INTO cache_outbox (consumer_group, tenant_id, kind, key_id, version, created_at)
             VALUES ($1, $2, 'order', 'o', 1, now() - make_interval(secs => $3))",
        )
        .bind(&group)
        .bind(tenant)
        .bind(age_s as f64)
        .execute(&admin)
        .await
        .unwrap();
    }
    let other = format!("{group}-other");
    for group in [&group, &other] {
        sqlx::query(
            "INSERT INTO shared_cache_outbox (consumer_group, kind, key_id, version)
             VALUES ($1, 'category', 'c', 1)",
        )
        .bind(group)
        .execute(&admin)
        .await
        .unwrap();
    }
    let state = outbox_state(&worker, &group).await.unwrap();
    sqlx::query("DELETE FROM cache_outbox WHERE consumer_group = $1")
        .bind(&group)
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query("DELETE FROM shared_cache_outbox WHERE consumer_group IN ($1, $2)")
        .bind(&group)
        .bind(&other)
        .execute(&admin)
        .await
        .unwrap();
    assert_eq!(state.rows, 3);
    assert!(
        (30_000..40_000).contains(&state.oldest_ms),
        "oldest {} ms",
        state.oldest_ms
    );
}

/// A replay counts each message it reads. In this process other tests may replay at the same
/// time, so the counter grows by at least this replay's messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_counts_the_messages_it_reads() {
    let metrics = install_recorder();
    let mock = MockCluster::new(1).unwrap();
    let settings = support::mock_settings(&mock, "replay-metrics");
    support::admin_pool().await;
    let tenant = Uuid::new_v4();
    let events: Vec<_> = (0..150)
        .map(|i| support::order_event(tenant, &format!("r-{i}"), 1, OrderEventType::Created, 0))
        .collect();
    support::send_orders(&settings, &events).await;
    let read_before = sample(&metrics.render(), REPLAY_MESSAGES, &[]).unwrap_or(0.0);
    let options = ReplayOptions {
        topics: vec![settings.kafka.orders_topic.clone()],
        from: StartFrom::Earliest,
        tenant: None,
        flush: false,
        dry_run: true,
        rewrite_db: false,
        chunk: 100,
    };
    let summary = replay::run(&settings, &options).await.unwrap();
    assert_eq!(summary.events_read, 150);
    let read = sample(&metrics.render(), REPLAY_MESSAGES, &[]).unwrap() - read_before;
    assert!(read >= 150.0, "{read} counted");
}
