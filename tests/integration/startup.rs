//! `tenantstream run` meeting an environment that is not ready (the binary, real Postgres and
//! Redis; Kafka on librdkafka's mock cluster, or no broker at all): what only an operator can
//! fix ends the command at once with the cause and the fix; what heals by itself is waited for,
//! logged once per interval, and counted; Redis down at start does not hold Postgres back.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use tenantstream::testing::{kafka, traffic};
use tenantstream::{Component, Health, Secret, Settings};
use uuid::Uuid;

use crate::support;

/// Runs `tenantstream run` with `settings` until it exits (at most `limit`); its exit success
/// and stderr.
fn run_to_exit(settings: &Settings, limit: Duration) -> (bool, String) {
    let mut worker = support::WorkerProcess(support::spawn_run(settings));
    exit_within(&mut worker.0, limit)
}

/// Waits at most `limit` for `child` to exit (killing it and failing the test after that); its
/// exit success and stderr.
fn exit_within(child: &mut Child, limit: Duration) -> (bool, String) {
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "still running after {limit:?} (it should have stopped): {}",
                support::stderr_of(child)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.success(), support::stderr_of(child))
}

/// A change of the test's settings that makes one setup mistake.
type Change<'a> = Box<dyn Fn(&mut Settings) + 'a>;

fn worker_url(database: &str, role: &str) -> Secret {
    Secret::new(format!("postgres://{role}@127.0.0.1:5432/{database}"))
}

#[tokio::test]
async fn setup_mistakes_end_the_command_with_the_cause_and_the_fix() {
    support::admin_pool().await; // the worker role exists
    let mock = MockCluster::new(1).unwrap();
    let settings = support::settings(&mock.bootstrap_servers(), "failfast");
    let limit = Duration::from_secs(20);
    let unmigrated = format!(
        "tenantstream_bare_{}",
        &Uuid::new_v4().simple().to_string()[..8]
    );
    let server = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {unmigrated}"))
        .execute(&server)
        .await
        .unwrap();

    let cases: Vec<(&str, Change, Vec<String>)> = vec![
        (
            "a database that does not exist",
            Box::new(|s| s.database.url = worker_url("no_such_db", "tenantstream_worker")),
            vec![
                "database \"no_such_db\" does not exist at 127.0.0.1:5432".into(),
                "run `tenantstream migrate`".into(),
            ],
        ),
        (
            "a role that does not exist",
            Box::new(|s| s.database.url = worker_url("tenantstream_test", "no_such_role")),
            vec![
                "refuses role \"no_such_role\"".into(),
                "create the role, or correct DATABASE_URL".into(),
            ],
        ),
        (
            "a database that is not migrated",
            Box::new(|s| s.database.url = worker_url(&unmigrated, "tenantstream_worker")),
            vec![
                format!("{unmigrated} is not migrated"),
                "run `tenantstream migrate`".into(),
            ],
        ),
        (
            "a schemas folder that does not exist",
            Box::new(|s| s.schemas.dir = "/no/such/schemas".into()),
            vec![
                "cannot read the schemas folder /no/such/schemas".into(),
                "--schemas-dir".into(),
            ],
        ),
        (
            "a global SLA policy that breaks the SLA_POLICY rules",
            Box::new(|s| {
                s.sla.default_policy =
                    r#"{"lag_threshold_ms": 1000, "deadlines_ms": {"SHIPPED->CREATED": 5}}"#.into()
            }),
            vec![
                "invalid setting sla.default_policy".into(),
                "\"SHIPPED->CREATED\" is not FROM->TO with TO after FROM".into(),
            ],
        ),
    ];
    for (case, change, want) in cases {
        let mut settings = settings.clone();
        change(&mut settings);
        let (success, stderr) = run_to_exit(&settings, limit);
        assert!(!success, "{case}: must exit non-zero");
        let error = stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("{case}: no error line in {stderr}"));
        for text in want {
            assert!(error.contains(&text), "{case}: {text:?} not in {error}");
        }
        // Each cause once.
        let first_words = &error["error: ".len()..][..20];
        assert_eq!(error.matches(first_words).count(), 1, "{case}: {error}");
    }
    sqlx::query(&format!("DROP DATABASE {unmigrated} WITH (FORCE)"))
        .execute(&server)
        .await
        .unwrap();
}

/// With nothing listening at the Postgres port and no broker at all, the worker waits, names
/// the address it cannot reach, logs each dependency's failure once per interval (not once per
/// retry), counts every failure, and reports itself not ready.
#[tokio::test]
async fn unreachable_dependencies_are_waited_for_quietly_and_counted() {
    support::admin_pool().await;
    let mut settings = support::settings(&format!("127.0.0.1:{}", support::free_port()), "quiet");
    let http = format!("127.0.0.1:{}", support::free_port());
    settings.http.listen = http.clone();

    let postgres_port = support::free_port();
    let mut no_postgres = settings.clone();
    no_postgres.database.url = Secret::new(format!(
        "postgres://tenantstream_worker@127.0.0.1:{postgres_port}/tenantstream_test"
    ));
    let child = support::spawn_run(&no_postgres);
    std::thread::sleep(Duration::from_secs(3));
    let stderr = support::terminate(child);
    assert!(
        stderr.contains(&format!(
            "cannot reach Postgres at 127.0.0.1:{postgres_port}: Connection refused"
        )),
        "{stderr}"
    );

    let child = support::spawn_run(&settings);
    let watched = Duration::from_secs(12);
    std::thread::sleep(watched);
    let client = reqwest::Client::new();
    let metrics = client
        .get(format!("http://{http}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ready = client
        .get(format!("http://{http}/readyz"))
        .send()
        .await
        .unwrap();
    let (ready_status, ready_body) = (ready.status(), ready.text().await.unwrap());
    let stderr = support::terminate(child);

    let failures = support::sample(
        &metrics,
        "tenantstream_transient_errors_total",
        &[("component", "kafka"), ("stage", "consume")],
    )
    .unwrap_or(0.0);
    assert!(failures >= 3.0, "every failure is counted: {metrics}");
    assert_eq!(ready_status, 503, "{ready_body}");
    assert!(ready_body.contains("kafka:"), "{ready_body}");
    assert!(
        !ready_body.contains("not yet assigned"),
        "the broker's failure, not the startup state: {ready_body}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    let kafka_lines = lines.iter().filter(|l| l.contains("kafka failing")).count();
    assert_eq!(kafka_lines, 1, "one line for the episode: {stderr}");
    // Serving, the one failure line, and the three lines of stopping.
    assert!(
        lines.len() <= 6,
        "{} lines in {watched:?} with the broker down ({failures} failures): {stderr}",
        lines.len()
    );
}

/// Redis down when the worker starts: it starts, writes Postgres, keeps the cache work queued,
/// and fills the cache once Redis answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_starts_without_redis_and_fills_the_cache_once_it_answers() {
    let mock = MockCluster::new(1).unwrap();
    let mut settings = support::mock_settings(&mock, "no-redis");
    let port = support::free_port();
    settings.redis.url = Secret::new(format!("redis://127.0.0.1:{port}"));
    let admin = support::admin_pool().await;
    let spec = traffic::TrafficSpec {
        count: 1_000,
        tenants: 3,
        malformed: 0.0,
        seed: rand::random(),
        ..Default::default()
    };
    let (messages, expected) = traffic::generate(&spec, &support::order_encoder(&settings));

    let health = Health::default();
    let worker = support::RunningWorker::start(&settings, health.clone()).await;
    let producer = kafka::producer(&settings.kafka).unwrap();
    let topic = &settings.kafka.orders_topic;
    let sent = traffic::send(&producer, topic, &messages, 0, None)
        .await
        .unwrap();
    support::wait_for_offsets(&admin, &settings, &sent.ends, Duration::from_secs(60)).await;
    support::assert_rows(&admin, &expected).await;
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM cache_outbox WHERE tenant_id = ANY($1)")
            .bind(&expected.tenants)
            .fetch_one(&admin)
            .await
            .unwrap();
    assert!(pending > 0, "cache work waits while Redis is down");
    // A failed Redis call takes up to its timeout to be noticed.
    let noticed = Instant::now();
    while !health.is_failing(Component::Redis) && noticed.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        health.is_failing(Component::Redis),
        "not ready while Redis is down: {}",
        health.report()
    );

    let redis_server = support::PrivateRedis::single_on(port);
    support::wait_for_cache(&admin, &expected.tenants, Duration::from_secs(60)).await;
    worker.stop().await;
    let redis = tenantstream::testing::cache::connect(&redis_server.url)
        .await
        .unwrap();
    support::assert_cache(&redis, &expected).await;
}

/// `--log-format json`: every line is JSON; partitions are plain text fields, not Rust debug
/// text; dead letters log under `tenantstream::dead_letter` with their code as a field.
#[tokio::test]
async fn json_logs_hold_plain_fields_under_meaningful_targets() {
    support::admin_pool().await;
    let mock = MockCluster::new(1).unwrap();
    let settings = support::mock_settings(&mock, "json-logs");
    let spec = traffic::TrafficSpec {
        count: 200,
        tenants: 2,
        malformed: 0.05,
        seed: 11,
        ..Default::default()
    };
    let (messages, _) = traffic::generate(&spec, &support::order_encoder(&settings));
    let malformed = messages.iter().filter(|m| m.malformed.is_some()).count();
    let producer = kafka::producer(&settings.kafka).unwrap();
    let sent = traffic::send(&producer, &settings.kafka.orders_topic, &messages, 0, None)
        .await
        .unwrap();

    let admin = support::admin_pool().await;
    let child = support::binary("run", &settings)
        .env("TENANTSTREAM_LOG_FORMAT", "json")
        .env("TENANTSTREAM_HTTP_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    support::wait_for_offsets(&admin, &settings, &sent.ends, Duration::from_secs(60)).await;
    let stderr = support::terminate(child);

    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let assigned = lines
        .iter()
        .find(|l| {
            l["fields"]["message"] == "Partitions assigned at stored offsets."
                && l["fields"]["topic"] == settings.kafka.orders_topic.as_str()
        })
        .unwrap_or_else(|| panic!("no assignment line: {stderr}"));
    let mut partitions: Vec<&str> = assigned["fields"]["partitions"]
        .as_str()
        .unwrap_or_else(|| panic!("partitions is a string: {assigned}"))
        .split(',')
        .collect();
    partitions.sort();
    assert_eq!(partitions, ["0@start", "1@start"]);
    let dead: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["target"] == "tenantstream::dead_letter")
        .collect();
    assert_eq!(dead.len(), malformed, "{stderr}");
    for line in dead {
        let code = line["fields"]["error_code"].as_str().unwrap_or_default();
        assert!(!code.is_empty(), "{line}");
    }
}

/// From the first scrape of an idle worker: every catalogued metric has its HELP text and its
/// series (counters at 0 for each topic, outcome, dead-letter code and retried dependency), and
/// README's catalogue names every metric.
#[tokio::test]
async fn every_metric_is_described_and_present_from_the_first_scrape() {
    use tenantstream::testing::metrics::{Kind, CATALOGUE, CONSUMER_LAG, PROCESS_METRICS};
    support::admin_pool().await;
    let mock = MockCluster::new(1).unwrap();
    let mut settings = support::mock_settings(&mock, "metrics-zero");
    let http = format!("127.0.0.1:{}", support::free_port());
    settings.http.listen = http.clone();
    let child = support::spawn_run(&settings);
    let url = format!("http://{http}/metrics");
    let started = Instant::now();
    let rendered = loop {
        if let Ok(response) = reqwest::get(&url).await {
            let text = response.text().await.unwrap();
            if text.contains("tenantstream_events_consumed_total") {
                break text;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no metrics");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    support::terminate(child);

    let readme = std::fs::read_to_string(support::manifest_dir().join("README.md")).unwrap();
    for (name, kind, _) in CATALOGUE {
        assert!(readme.contains(&format!("`{name}`")), "README lacks {name}");
        if *name == CONSUMER_LAG {
            continue; // per partition, from librdkafka's statistics every 5 s
        }
        let (help, type_line) = (format!("# HELP {name} "), format!("# TYPE {name} "));
        assert!(rendered.contains(&help), "no HELP for {name}: {rendered}");
        assert!(rendered.contains(&type_line), "no TYPE for {name}");
        let sample_name = match kind {
            Kind::Histogram => format!("{name}_count"),
            Kind::Counter | Kind::Gauge => name.to_string(),
        };
        assert!(
            rendered.lines().any(|l| l.starts_with(&sample_name)),
            "no series of {name}"
        );
    }
    // The process metrics are not catalogued (not ours), but read at every scrape.
    for name in PROCESS_METRICS {
        assert!(readme.contains(&format!("`{name}`")), "README lacks {name}");
        assert!(rendered.contains(&format!("# TYPE {name} ")), "no {name}");
        assert!(
            support::sample(&rendered, name, &[]).is_some(),
            "no value of {name}"
        );
    }
    let orders = settings.kafka.orders_topic.as_str();
    for (name, labels) in [
        (
            "tenantstream_events_processed_total",
            vec![("topic", orders), ("outcome", "stale")],
        ),
        (
            "tenantstream_events_processed_total",
            vec![("topic", orders), ("outcome", "superseded")],
        ),
        (
            "tenantstream_dead_letters_total",
            vec![("topic", orders), ("error_code", "too_large")],
        ),
        ("tenantstream_fenced_batches_total", vec![("topic", orders)]),
        (
            "tenantstream_transient_errors_total",
            vec![("component", "redis"), ("stage", "cache")],
        ),
    ] {
        assert_eq!(
            support::sample(&rendered, name, &labels),
            Some(0.0),
            "{name} {labels:?} at zero"
        );
    }
}

/// Topics missing on the broker (librdkafka's mock cluster): `run` waits for them with one
/// clear error naming a missing topic and how to find and create every one, not a line per
/// retry.
#[tokio::test]
async fn missing_topics_are_one_clear_error_in_run() {
    support::admin_pool().await;
    let mock = MockCluster::new(1).unwrap();
    let settings = support::settings(&mock.bootstrap_servers(), "no-topics");
    let child = support::spawn_run(&settings);
    std::thread::sleep(Duration::from_secs(8));
    let stderr = support::terminate(child);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("Unknown topic or partition"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    let k = &settings.kafka;
    assert!(
        errors[0].contains(&k.orders_topic) || errors[0].contains(&k.config_topic),
        "names the topic: {stderr}"
    );
    assert!(
        errors[0].contains("create it (`tenantstream check`"),
        "{stderr}"
    );
    assert!(stderr.lines().count() <= 6, "{stderr}");
}

/// A broker that stops answering under a worker (connections stay open, nothing comes back),
/// then SIGTERM: librdkafka's close waits for the group coordinator's answers, so the worker
/// stops without them after `LEAVE_GROUP_WITHIN` (10 s) and exits 0 within 20 s. Before, it was
/// still closing when the test gave up. The broker is tansu behind a proxy of the test's that
/// goes silent ([`support::SilentBroker`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_told_to_stop_while_its_broker_is_silent_still_stops() {
    let admin = support::admin_pool().await;
    let broker = support::SilentBroker::start().await;
    let settings = support::settings(&broker.brokers, "stop-broker-silent");
    let k = &settings.kafka;
    support::create_topics(
        &broker.brokers,
        &[
            (&k.orders_topic, 2),
            (&k.config_topic, 1),
            (&k.dead_letter_topic, 1),
            (&k.sla_violations_topic, 1),
        ],
    )
    .await;
    let spec = traffic::TrafficSpec {
        count: 100,
        tenants: 2,
        malformed: 0.0,
        seed: 12,
        ..Default::default()
    };
    let (messages, _) = traffic::generate(&spec, &support::order_encoder(&settings));
    let producer = support::single_record_producer(&broker.brokers);
    let sent = traffic::send(&producer, &k.orders_topic, &messages, 0, None)
        .await
        .unwrap();
    drop(producer);
    let mut worker = support::WorkerProcess(support::spawn_run(&settings));
    // In the group, with every message written.
    support::wait_for_offsets(&admin, &settings, &sent.ends, Duration::from_secs(60)).await;

    broker.silence();
    tokio::time::sleep(Duration::from_secs(1)).await;
    support::sigterm(&worker.0);
    let limit = kafka::LEAVE_GROUP_WITHIN + Duration::from_secs(10);
    let (stopped, stderr) = tokio::task::block_in_place(|| exit_within(&mut worker.0, limit));
    assert!(stopped, "{stderr}");
}
