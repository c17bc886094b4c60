//! A real Prometheus (Debian's 2.42 package, on loopback) scraping a running `tenantstream run`
//! process every second under a known workload: what an operator's Prometheus sees is the
//! whole catalogue, and counts that match the traffic exactly.
//!
//! Kafka: librdkafka's in-process mock cluster (exact end offsets; the worker process reaches
//! it over loopback). Real Postgres (a database of the test's own) and Redis.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use tenantstream::testing::metrics::{Kind, CATALOGUE};
use tenantstream::testing::monitor::TENANT_METRICS;
use tenantstream::testing::traffic::{self, TrafficSpec};

use crate::support::{self, Labels, Prometheus};

const JOB: &str = "tenantstream";

/// Prometheus scrapes the worker (`up` is 1); after a workload of N messages with some
/// malformed, PromQL sums give exactly N consumed and N processed (one outcome each), the
/// malformed ones as dead_lettered and per error code; and every catalogued metric is stored
/// (read from `CATALOGUE` and the per-tenant `TENANT_METRICS`, so a metric added later is
/// checked too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_every_metric_and_counts_the_workload_exactly() {
    // A database of its own: the worker's drainer and SLA publisher then serve only this
    // test's tenants.
    let database = support::OwnDatabase::create("prometheus_scrape").await;
    let admin = database.admin.clone();
    let mock = MockCluster::new(1).unwrap();
    let mut settings = support::mock_settings(&mock, "scrape");
    database.use_in(&mut settings);
    let http = format!("127.0.0.1:{}", support::free_port());
    settings.http.listen = http.clone();
    let mut worker = support::WorkerProcess(support::spawn_run(&settings));
    // Its log is read as it comes, so that a full pipe never blocks the worker.
    let mut stderr = worker.0.stderr.take().unwrap();
    let log = std::thread::spawn(move || std::io::read_to_string(&mut stderr).unwrap_or_default());
    let prometheus = Prometheus::scraping(JOB, &http).await;
    let up = format!("up{{job=\"{JOB}\"}}");
    prometheus
        .wait_for(&up, Duration::from_secs(30), |r| {
            r.len() == 1 && r[0].1 == 1.0
        })
        .await;

    let spec = TrafficSpec {
        count: 2_000,
        tenants: 4,
        malformed: 0.03,
        seed: rand::random(),
        ..Default::default()
    };
    let (messages, expected) = traffic::generate(&spec, &support::order_encoder(&settings));
    let malformed = messages.iter().filter(|m| m.malformed.is_some()).count();
    assert!(malformed > 0, "the workload holds malformed messages");
    let orders = settings.kafka.orders_topic.clone();
    let sent = support::send(&settings, &orders, &messages).await;
    support::wait_for_offsets(&admin, &settings, &sent.ends, Duration::from_secs(60)).await;
    support::wait_for_cache(&admin, &expected.tenants, Duration::from_secs(30)).await;

    // The last batch's outcomes are counted just after its commit, and a scrape can come
    // between: the sums are polled until they reach N (a count past N never does).
    let of_topic = format!("job=\"{JOB}\",topic=\"{orders}\"");
    let sum = |metric: &str, extra: &str| format!("sum({metric}{{{of_topic}{extra}}})");
    let n = messages.len() as f64;
    let exactly = |want: f64| move |r: &[(Labels, f64)]| r.len() == 1 && r[0].1 == want;
    let limit = Duration::from_secs(30);
    let consumed = sum("tenantstream_events_consumed_total", "");
    prometheus.wait_for(&consumed, limit, exactly(n)).await;
    let processed = sum("tenantstream_events_processed_total", "");
    prometheus.wait_for(&processed, limit, exactly(n)).await;
    // Every outcome is counted now: what was dead-lettered, exactly.
    let dead_lettered = sum(
        "tenantstream_events_processed_total",
        ",outcome=\"dead_lettered\"",
    );
    assert_eq!(
        prometheus.value(&dead_lettered).await,
        Some(malformed as f64),
        "{dead_lettered}"
    );
    let by_code =
        format!("sum by (error_code) (tenantstream_dead_letters_total{{{of_topic}}} > 0)");
    let seen: BTreeMap<String, f64> = prometheus
        .query(&by_code)
        .await
        .into_iter()
        .map(|(labels, value)| (labels["error_code"].clone(), value))
        .collect();
    let want: BTreeMap<String, f64> = expected
        .dead_letters
        .iter()
        .map(|(code, count)| (code.to_string(), *count as f64))
        .collect();
    assert_eq!(seen, want, "{by_code}");

    // Lag series appear with librdkafka's statistics (every 5 s); every partition reaches 0.
    let lag = format!("tenantstream_consumer_lag_messages{{{of_topic}}}");
    prometheus
        .wait_for(&lag, limit, |r| {
            let zero: BTreeSet<String> = r
                .iter()
                .filter(|(_, value)| *value == 0.0)
                .map(|(labels, _)| labels["partition"].clone())
                .collect();
            sent.ends.keys().all(|p| zero.contains(&p.to_string()))
        })
        .await;

    let names: BTreeSet<String> = prometheus
        .query(&format!("count by (__name__) ({{job=\"{JOB}\"}})"))
        .await
        .into_iter()
        .filter_map(|(mut labels, _)| labels.remove("__name__"))
        .collect();
    let per_tenant = TENANT_METRICS.iter().map(|(name, _)| (*name, Kind::Gauge));
    let missing: Vec<String> = CATALOGUE
        .iter()
        .map(|(name, kind, _)| (*name, *kind))
        .chain(per_tenant)
        .flat_map(|(name, kind)| series_names(name, kind))
        .filter(|series| !names.contains(series))
        .collect();
    drop(prometheus);
    support::stop_cleanly(&mut worker.0);
    let log = log.join().unwrap();
    database.drop().await;
    assert!(
        missing.is_empty(),
        "not in Prometheus: {missing:?}; it has {names:?}; worker log: {log}"
    );
}

/// The sample names Prometheus stores for a metric: a histogram's buckets, sum and count.
fn series_names(name: &str, kind: Kind) -> Vec<String> {
    match kind {
        Kind::Histogram => ["_bucket", "_sum", "_count"]
            .iter()
            .map(|suffix| format!("{name}{suffix}"))
            .collect(),
        Kind::Counter | Kind::Gauge => vec![name.to_string()],
    }
}
