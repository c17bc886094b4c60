//! The tenant health API and the per-tenant metrics of a running worker (`tenantstream run`,
//! a process of its own) on librdkafka's mock cluster hosted by the test, with the shared test
//! database and Redis: the figures of one tenant equal the workload sent to it, and traffic from
//! 5,000 tenants keeps the per-tenant series within their bound while every tenant answers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use serde_json::Value;
use tenantstream::testing::domain::{
    ConfigChangeEvent, ConfigKind, ConfigScope, OrderEvent, OrderEventType,
};
use tenantstream::testing::monitor::TENANT_METRICS;
use tenantstream::testing::traffic::EndOffsets;
use uuid::Uuid;

use crate::support::{
    self, merge_ends, order_event, send_config_changes, send_orders, wait_for_offsets,
    wait_for_topic_offsets, WorkerProcess,
};

/// GETs `path` of the worker: the status and the JSON body.
async fn get(http: &str, path: &str) -> (u16, Value) {
    let response = reqwest::get(format!("http://{http}{path}")).await.unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Polls `path` until `done` holds for its body (or fails after `limit`, showing the body).
async fn get_until(
    http: &str,
    path: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = get(http, path).await;
        if status == 200 && done(&body) {
            return body;
        }
        assert!(
            started.elapsed() < limit,
            "{path} after {limit:?}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn orders(tenant: Uuid, ids: &[&str], version: i64) -> Vec<OrderEvent> {
    ids.iter()
        .map(|id| order_event(tenant, id, version, OrderEventType::Created, now_ms()))
        .collect()
}

fn profile(tenant: Uuid, status: &str) -> ConfigChangeEvent {
    ConfigChangeEvent {
        event_id: Uuid::new_v4().to_string(),
        scope: ConfigScope::Tenant,
        tenant_id: Some(tenant.to_string()),
        kind: ConfigKind::TenantProfile,
        key: "profile".into(),
        value: Some(format!(
            r#"{{"name":"Acme","tier":"gold","status":"{status}"}}"#
        )),
        version: 1,
        occurred_at: now_ms(),
    }
}

/// Tenant A gets five new orders, then two of them again (stale) and one order with an invalid
/// currency (a dead letter of A, `invalid_field`); tenant B gets a profile (active) and one
/// order; nothing else. A's health must show exactly that, and B's status must be read.
#[tokio::test]
async fn a_tenants_health_equals_the_workload_sent_to_it() {
    support::admin_pool().await;
    let mock = MockCluster::new(1).unwrap();
    let mut settings = support::mock_settings(&mock, "tenant-health");
    let http = format!("127.0.0.1:{}", support::free_port());
    settings.http.listen = http.clone();
    let _worker = WorkerProcess(support::spawn_run(&settings));
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let admin = support::admin_pool().await;

    let mut first = orders(a, &["a-1", "a-2", "a-3", "a-4", "a-5"], 1);
    first.extend(orders(b, &["b-1"], 1));
    let mut ends = send_orders(&settings, &first).await;
    wait_for_offsets(&admin, &settings, &ends, Duration::from_secs(60)).await;
    // Phase two, after phase one committed: the same versions again are stale.
    let mut second = orders(a, &["a-1", "a-2"], 1);
    let mut invalid = order_event(a, "a-6", 1, OrderEventType::Created, now_ms());
    invalid.currency = "ZZZ".into();
    second.push(invalid);
    merge_ends(&mut ends, &send_orders(&settings, &second).await);
    wait_for_offsets(&admin, &settings, &ends, Duration::from_secs(60)).await;
    let config_ends: EndOffsets = send_config_changes(&settings, &[profile(b, "active")]).await;
    let config_topic = settings.kafka.config_topic.clone();
    wait_for_topic_offsets(
        &admin,
        &settings,
        &config_topic,
        &config_ends,
        Duration::from_secs(60),
    )
    .await;

    let path = format!("/tenants/{a}/health");
    let health = get_until(&http, &path, Duration::from_secs(30), |h| {
        h["totals"]["events"] == 8 && h["status"].is_string()
    })
    .await;
    let totals = &health["totals"];
    assert_eq!(totals["written"], 5, "{health}");
    assert_eq!(totals["stale"], 2, "{health}");
    assert_eq!(totals["superseded"], 0, "{health}");
    assert_eq!(totals["dead_letters"], 1, "{health}");
    assert_eq!(
        totals["dead_letters_by_code"]["invalid_field"], 1,
        "{health}"
    );
    assert_eq!(totals["sla_violations"]["DEADLINE_MISSED"], 0, "{health}");
    assert_eq!(health["last_1m"]["events"], 8, "{health}");
    assert_eq!(health["last_15m"]["events"], 8, "{health}");
    assert!(health["last_1m"]["latency_p99_ms"].is_u64(), "{health}");
    assert!(
        totals["postgres_seconds"].as_f64().unwrap() > 0.0,
        "{health}"
    );
    // Registered by its first order, never given a profile.
    assert_eq!(health["status"], "provisional", "{health}");
    assert_eq!(health["verdict"], "degraded", "{health}");
    assert_eq!(health["tenant_id"], a.to_string());

    let b_health = get_until(
        &http,
        &format!("/tenants/{b}/health"),
        Duration::from_secs(30),
        |h| h["status"] == "active",
    )
    .await;
    // The profile is shared data of B: an event of B, written.
    assert_eq!(b_health["totals"]["events"], 2, "{b_health}");
    assert_eq!(b_health["totals"]["written"], 2, "{b_health}");
    assert_eq!(b_health["verdict"], "ok", "{b_health}");

    let (status, ranking) = get(&http, "/tenants?sort=errors&limit=1").await;
    assert_eq!(status, 200);
    assert_eq!(ranking["tenants"].as_array().unwrap().len(), 1, "{ranking}");
    assert_eq!(
        ranking["tenants"][0]["tenant_id"],
        a.to_string(),
        "{ranking}"
    );
    assert_eq!(ranking["tenants"][0]["dead_letters"], 1, "{ranking}");

    let unknown = Uuid::new_v4();
    let (status, body) = get(&http, &format!("/tenants/{unknown}/health")).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains(&unknown.to_string()));
    let (status, body) = get(&http, "/tenants/not-a-uuid/health").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("not-a-uuid"));
    for bad in ["/tenants?sort=size", "/tenants?limit=0", "/tenants?limit=x"] {
        let (status, body) = get(&http, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
}

/// 5,000 tenants, one order each: every per-tenant metric (described, and in README's catalogue)
/// stays within 4K+1 series (K = 10),
/// the table holds all 5,000, and the health API answers for any of them. Prints the series
/// count and the API's latency at 5,000 tenants (figures for the README, not asserted).
#[tokio::test]
async fn five_thousand_tenants_keep_the_series_bound_and_each_answers() {
    const TENANTS: usize = 5_000;
    const TOP_K: usize = 10;
    support::admin_pool().await;
    let mock = MockCluster::new(1).unwrap();
    let mut settings = support::mock_settings(&mock, "tenant-series");
    let http = format!("127.0.0.1:{}", support::free_port());
    settings.http.listen = http.clone();
    let _worker = WorkerProcess(support::spawn_run(&settings));
    let tenants: Vec<Uuid> = (0..TENANTS).map(|_| Uuid::new_v4()).collect();
    let events: Vec<OrderEvent> = tenants
        .iter()
        .map(|t| order_event(*t, "o-1", 1, OrderEventType::Created, now_ms()))
        .collect();
    let ends = send_orders(&settings, &events).await;
    let admin = support::admin_pool().await;
    wait_for_offsets(&admin, &settings, &ends, Duration::from_secs(180)).await;
    get_until(&http, "/tenants?limit=1", Duration::from_secs(30), |body| {
        body["tenants_tracked"] == TENANTS
    })
    .await;

    let rendered = reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let readme = std::fs::read_to_string(support::manifest_dir().join("README.md")).unwrap();
    let mut per_metric = BTreeMap::new();
    for (name, _) in TENANT_METRICS {
        assert!(readme.contains(&format!("`{name}`")), "README lacks {name}");
        assert!(
            rendered.contains(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
        assert!(
            rendered.contains(&format!("# TYPE {name} gauge")),
            "no TYPE for {name}"
        );
        let series = rendered
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .count();
        per_metric.insert(*name, series);
    }
    let series_total = rendered.lines().filter(|l| !l.starts_with('#')).count();
    println!(
        "series at {TENANTS} tenants: {series_total} in all; per tenant metric {per_metric:?}"
    );
    for (name, series) in &per_metric {
        if name.ends_with("_tracked") {
            continue;
        }
        assert!(*series <= 4 * TOP_K + 1, "{name}: {series} series");
    }
    let other = "tenantstream_tenant_events_per_second{tenant=\"other\"}";
    assert!(rendered.contains(other), "no other series");
    assert!(
        rendered.contains(&format!("tenantstream_tenants_tracked {TENANTS}")),
        "tracked"
    );

    // Every 50th tenant, and the list: timed, each must answer with its one event.
    let mut slowest = Duration::ZERO;
    for tenant in tenants.iter().step_by(50) {
        let started = Instant::now();
        let (status, health) = get(&http, &format!("/tenants/{tenant}/health")).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(status, 200, "{tenant}: {health}");
        assert_eq!(health["totals"]["events"], 1, "{health}");
        assert_eq!(health["totals"]["written"], 1, "{health}");
    }
    let started = Instant::now();
    let (status, ranking) = get(&http, "/tenants?sort=lag&limit=10").await;
    let list = started.elapsed();
    assert_eq!(status, 200);
    assert_eq!(ranking["tenants"].as_array().unwrap().len(), 10);
    let started = Instant::now();
    let _ = reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap();
    let scrape = started.elapsed();
    println!(
        "at {TENANTS} tenants: slowest of 100 health reads {slowest:?}, /tenants?sort=lag {list:?}, \
         /metrics {scrape:?}"
    );
}
