//! The SLA engine under faults: a rebalance between two workers of one group, a SIGKILL between
//! storing a violation and publishing it, and a broker outage while violations are published.
//! Each ends with every expected violation stored once, published (at least once; compared as
//! distinct ids), counted in Redis, and its outbox row gone.
//!
//! Broker: librdkafka's mock cluster, in every test. Its group coordinator is correct when a
//! member joins mid-stream (the rebalance test); the test takes it down and up (the outage);
//! and it refuses the violations topic until the test lifts the error, under the same topic
//! name (the crash test; a missing topic would not do: the mock creates it when the producer
//! asks for it). The crash test's worker is the real binary in its own process, connected to
//! the mock cluster's TCP listener.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::types::RDKafkaRespErr;
use tenantstream::testing::domain::{deadline_violation_id, OrderEvent, OrderEventType};
use tenantstream::testing::metrics::{install_recorder, SLA_PUBLISH_ERRORS};
use tenantstream::{Clock, Component, Health, Settings};
use uuid::Uuid;

use crate::support::{self, RunningWorker, WorkerProcess};

const POLL_MS: u64 = 100;

/// How long a wait for the worker's work may take before the test fails.
const LIMIT: Duration = Duration::from_secs(60);

/// Settings on the mock cluster and the database `db`, whose workers keep `policy` for every
/// tenant and poll the SLA engine's work every [`POLL_MS`].
///
/// Each test has a database of its own: the deadline timer fires every tenant's due deadlines
/// by its own clock, and a publisher sends every tenant's violations to its own topic, so in a
/// shared database a test's manual clock would fire other tests' deadlines and its worker
/// would publish their violations.
fn sla_settings(
    mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    db: &support::OwnDatabase,
    name: &str,
    policy: &[(&str, u64)],
) -> Settings {
    let mut settings = support::mock_settings(mock, name);
    db.use_in(&mut settings);
    settings.sla.default_policy = support::deadline_policy(policy);
    settings.sla.poll_interval_ms = POLL_MS;
    settings
}

/// What becomes of an order after it is CREATED, in the rebalance test.
#[derive(Clone, Copy, Debug)]
enum Fate {
    StaysCreated,
    StopsConfirmed,
    Delivered,
    Cancelled,
    SkipsToShipped,
}

/// The rebalance test's policy.
const LIFECYCLE_POLICY: &[(&str, u64)] = &[
    ("CREATED->CONFIRMED", 60_000),
    ("CONFIRMED->SHIPPED", 120_000),
    ("CREATED->DELIVERED", 300_000),
];

impl Fate {
    const ALL: [Self; 5] = [
        Self::StaysCreated,
        Self::StopsConfirmed,
        Self::Delivered,
        Self::Cancelled,
        Self::SkipsToShipped,
    ];

    /// The events after CREATED, in order.
    fn later_events(self) -> &'static [OrderEventType] {
        use OrderEventType::*;
        match self {
            Self::StaysCreated => &[],
            Self::StopsConfirmed => &[Confirmed],
            Self::Delivered => &[Confirmed, Shipped, Delivered],
            Self::Cancelled => &[Cancelled],
            Self::SkipsToShipped => &[Shipped],
        }
    }

    /// The deadlines of [`LIFECYCLE_POLICY`] it misses once the clock has passed them all.
    fn missed(self) -> &'static [&'static str] {
        match self {
            Self::StaysCreated => &["CREATED->CONFIRMED", "CREATED->DELIVERED"],
            Self::StopsConfirmed => &["CONFIRMED->SHIPPED", "CREATED->DELIVERED"],
            Self::Delivered | Self::Cancelled => &[],
            // SHIPPED reaches CONFIRMED's rank: only DELIVERED is still awaited.
            Self::SkipsToShipped => &["CREATED->DELIVERED"],
        }
    }
}

/// Two workers of one group, the second joining mid-stream (a rebalance while orders arrive),
/// both on one manual clock: when it passes the deadlines, both timers and both publishers run
/// side by side, and each missed deadline becomes exactly one stored violation, published and
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_and_a_rebalance_fire_each_missed_deadline_once() {
    let mock = MockCluster::new(1).unwrap();
    let db = support::OwnDatabase::create("sla_rebalance").await;
    let settings = sla_settings(&mock, &db, "sla-rebalance", LIFECYCLE_POLICY);
    let admin = db.admin.clone();
    let redis = support::redis().await;
    let start = Clock::system().now_ms();
    let clock = Clock::manual(start);

    let tenants: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    let mut created = Vec::new();
    let mut later = Vec::new();
    let mut expected = BTreeSet::new();
    for (t, tenant) in tenants.iter().enumerate() {
        for n in 0..40 {
            let order = format!("o-{t}-{n}");
            let fate = Fate::ALL[n % Fate::ALL.len()];
            let at = start + n as i64;
            let event = support::order_event(*tenant, &order, 1, OrderEventType::Created, at);
            created.push(event);
            for (step, kind) in fate.later_events().iter().enumerate() {
                let version = step as i64 + 2;
                let at = at + 1_000 * (step as i64 + 1);
                later.push(support::order_event(*tenant, &order, version, *kind, at));
            }
            for transition in fate.missed() {
                expected.insert(deadline_violation_id(*tenant, &order, transition));
            }
        }
    }
    // Worker A alone consumes half of the CREATED events; the rest of the traffic goes out in
    // chunks, worker B joining after the first half of them.
    let (first, rest) = created.split_at(created.len() / 2);
    let mut ends = support::send_orders(&settings, first).await;
    let a = RunningWorker::start_with_clock(&settings, Health::default(), clock.clone()).await;
    support::wait_for_offsets(&admin, &settings, &ends, Duration::from_secs(60)).await;

    let remaining: Vec<_> = rest.iter().chain(&later).cloned().collect();
    let chunks: Vec<_> = remaining.chunks(remaining.len() / 10 + 1).collect();
    let (before_b, after_b) = chunks.split_at(chunks.len() / 2);
    for chunk in before_b {
        support::merge_ends(&mut ends, &support::send_orders(&settings, chunk).await);
    }
    let b_health = Health::default();
    let b = RunningWorker::start_with_clock(&settings, b_health.clone(), clock.clone()).await;
    // B is ready once the group gave it partitions: the rebalance has happened.
    support::wait_until(Duration::from_secs(60), "worker B assigned", || async {
        b_health.is_ready()
    })
    .await;
    for chunk in after_b {
        support::merge_ends(&mut ends, &support::send_orders(&settings, chunk).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    support::wait_for_offsets(&admin, &settings, &ends, Duration::from_secs(120)).await;
    // Every deadline that will be missed is pending, and nothing has fired: the clock stands.
    assert_eq!(
        support::pending_deadlines(&admin, &tenants).await,
        expected.len() as i64
    );
    assert!(support::stored_violation_ids(&admin, &tenants)
        .await
        .is_empty());

    clock.advance(Duration::from_secs(600));
    support::wait_until(Duration::from_secs(60), "violations published", || async {
        support::stored_violation_ids(&admin, &tenants).await.len() == expected.len()
            && support::outbox(&admin, &tenants).await.is_empty()
    })
    .await;
    let stored = support::stored_violation_ids(&admin, &tenants).await;
    assert_eq!(stored, expected.iter().copied().collect::<Vec<_>>());
    assert_eq!(support::pending_deadlines(&admin, &tenants).await, 0);
    let published = support::published_ids(&settings, expected.len(), LIMIT).await;
    assert_eq!(published, expected);
    support::assert_counted(&admin, &redis, &tenants).await;
    a.stop().await;
    b.stop().await;
    db.drop().await;
}

/// `count` orders of each of `tenants` CREATED at `at` and never confirmed, as events, with the
/// ids of their CREATED->CONFIRMED violations.
fn unconfirmed_orders(
    tenants: &[Uuid],
    count: usize,
    at: i64,
) -> (Vec<OrderEvent>, BTreeSet<Uuid>) {
    let mut events = Vec::new();
    let mut expected = BTreeSet::new();
    for tenant in tenants {
        for n in 0..count {
            let order = format!("late-{n}");
            events.push(support::order_event(
                *tenant,
                &order,
                1,
                OrderEventType::Created,
                at,
            ));
            expected.insert(deadline_violation_id(*tenant, &order, "CREATED->CONFIRMED"));
        }
    }
    (events, expected)
}

/// The broker goes down after the deadlines are registered and before they are due: the timer
/// still stores the violations (Postgres is up), the publisher cannot send them (not ready,
/// `tenantstream_sla_publish_errors_total` rises, the outbox keeps them), and once the broker
/// is back every one is published and counted and the outbox is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn violations_stored_during_a_broker_outage_are_published_after_it() {
    let metrics = install_recorder();
    let publish_errors = || support::sample(&metrics.render(), SLA_PUBLISH_ERRORS, &[]);
    let mock = MockCluster::new(1).unwrap();
    let db = support::OwnDatabase::create("sla_outage").await;
    let settings = sla_settings(&mock, &db, "sla-outage", &[("CREATED->CONFIRMED", 60_000)]);
    let admin = db.admin.clone();
    let redis = support::redis().await;
    let start = Clock::system().now_ms();
    let clock = Clock::manual(start);
    let tenants: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let (events, expected) = unconfirmed_orders(&tenants, 8, start);

    let ends = support::send_orders(&settings, &events).await;
    let health = Health::default();
    let worker = RunningWorker::start_with_clock(&settings, health.clone(), clock.clone()).await;
    support::wait_for_offsets(&admin, &settings, &ends, Duration::from_secs(60)).await;
    assert_eq!(
        support::pending_deadlines(&admin, &tenants).await,
        expected.len() as i64
    );

    mock.broker_down(1).unwrap();
    let errors_before = publish_errors().unwrap_or(0.0);
    clock.advance(Duration::from_secs(120));
    support::wait_until(Duration::from_secs(30), "violations stored", || async {
        support::stored_violation_ids(&admin, &tenants).await.len() == expected.len()
    })
    .await;
    // A send waits for the broker up to the producer's message timeout (30 s), then fails.
    support::wait_until(
        Duration::from_secs(90),
        "publish errors counted",
        || async { publish_errors().unwrap_or(0.0) >= errors_before + expected.len() as f64 },
    )
    .await;
    assert!(!health.is_ready(), "ready while the broker is down");
    assert!(health.is_failing(Component::Kafka));
    assert!(health.report().contains("kafka: "));
    let queued = support::outbox(&admin, &tenants).await;
    let queued_ids: BTreeSet<Uuid> = queued.iter().map(|(id, _)| *id).collect();
    assert_eq!(queued_ids, expected, "every violation waits in the outbox");
    assert!(queued.iter().all(|(_, published)| !published));

    mock.broker_up(1).unwrap();
    support::wait_until(Duration::from_secs(90), "outbox drained", || async {
        support::outbox(&admin, &tenants).await.is_empty()
    })
    .await;
    let stored = support::stored_violation_ids(&admin, &tenants).await;
    assert_eq!(stored, expected.iter().copied().collect::<Vec<_>>());
    let published = support::published_ids(&settings, expected.len(), LIMIT).await;
    assert_eq!(published, expected);
    support::assert_counted(&admin, &redis, &tenants).await;
    // Readiness after the outage is not asserted: an idle worker (nothing left to consume) can
    // stay not ready with a receive error 'all brokers down' long after the broker is back.
    worker.stop().await;
    db.drop().await;
}

/// The worker binary (on the system clock) with `settings` (its SLA settings too), serving its
/// metrics on `port`, logging to `log` (a file: a pipe nobody reads could block it).
fn spawn_sla_worker(settings: &Settings, port: u16, log: &Path) -> WorkerProcess {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    support::binary("run", settings)
        .env("TENANTSTREAM_HTTP_LISTEN", format!("127.0.0.1:{port}"))
        .env("TENANTSTREAM_SESSION_TIMEOUT_MS", "6000")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(WorkerProcess)
        .expect("start worker process")
}

/// `tenantstream_sla_publish_errors_total` of the worker process serving metrics on `port`
/// (`None` until it answers).
async fn process_publish_errors(port: u16) -> Option<f64> {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let rendered = reqwest::get(url).await.ok()?.text().await.ok()?;
    support::sample(&rendered, SLA_PUBLISH_ERRORS, &[])
}

/// A worker process stores violations it cannot publish (the broker refuses the violations
/// topic), and is killed with SIGKILL: the violations wait in the outbox, the topic is empty.
/// Once the broker accepts the topic, a new worker process publishes each of them (to the
/// same topic), counts them in Redis and empties the outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_violation_stored_before_a_sigkill_is_published_after_the_restart() {
    let mock = MockCluster::new(1).unwrap();
    let db = support::OwnDatabase::create("sla_kill").await;
    // Real time: deadlines of one second after events that occur now.
    let settings = sla_settings(&mock, &db, "sla-kill", &[("CREATED->CONFIRMED", 1_000)]);
    let admin = db.admin.clone();
    let redis = support::redis().await;
    let topic = settings.kafka.sla_violations_topic.clone();
    // The broker refuses the violations topic, as it would a producer not granted to write it
    // (a topic that is missing would be created by the producer's request).
    let refused = RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED;
    mock.topic_error(&topic, refused).unwrap();

    let now = Clock::system().now_ms();
    let tenant = Uuid::new_v4();
    let (mut events, expected) = unconfirmed_orders(&[tenant], 2, now);
    for (version, kind) in [(1, OrderEventType::Created), (2, OrderEventType::Confirmed)] {
        events.push(support::order_event(tenant, "on-time", version, kind, now));
    }
    support::send_orders(&settings, &events).await;

    let log = std::env::temp_dir().join(format!("{}.log", settings.kafka.group_id));
    let port = support::free_port();
    let mut first = spawn_sla_worker(&settings, port, &log);
    let limit = Duration::from_secs(60);
    support::wait_until(limit, "violations stored and refused", || async {
        let queued = support::outbox(&admin, &[tenant]).await;
        support::stored_violation_ids(&admin, &[tenant]).await.len() == expected.len()
            && queued.len() == expected.len()
            && process_publish_errors(port).await >= Some(expected.len() as f64)
    })
    .await;
    first.0.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix.
    first.0.wait().unwrap();

    // Stored, not published: every violation still waits, and the topic holds nothing.
    let queued = support::outbox(&admin, &[tenant]).await;
    let queued_ids: BTreeSet<Uuid> = queued.iter().map(|(id, _)| *id).collect();
    assert_eq!(queued_ids, expected);
    assert!(queued.iter().all(|(_, published)| !published));
    let no_error = RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR;
    mock.topic_error(&topic, no_error).unwrap();
    let brokers = &settings.kafka.brokers;
    assert_eq!(support::end_offsets(brokers, &topic, 1)[&0], 0);

    // A claim taken just before the kill holds its violations for its lease (60 s).
    let mut second = spawn_sla_worker(&settings, support::free_port(), &log);
    support::wait_until(Duration::from_secs(120), "outbox drained", || async {
        support::outbox(&admin, &[tenant]).await.is_empty()
    })
    .await;
    let stored = support::stored_violation_ids(&admin, &[tenant]).await;
    assert_eq!(stored, expected.iter().copied().collect::<Vec<_>>());
    let end = support::end_offsets(brokers, &topic, 1)[&0];
    assert!(end >= expected.len() as i64, "{end} messages published");
    let published = support::published_ids(&settings, end as usize, LIMIT).await;
    assert_eq!(published, expected);
    support::assert_counted(&admin, &redis, &[tenant]).await;

    support::stop_cleanly(&mut second.0);
    db.drop().await;
}
