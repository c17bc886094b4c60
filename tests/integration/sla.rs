//! The SLA engine's behaviour: PROCESSING_LAG per tenant per window, order deadlines met,
//! missed, cancelled and overtaken, policies changing under registered deadlines, tenant
//! isolation of what it stores, replay creating nothing, and its violation counter.
//!
//! Brokers: librdkafka's mock cluster (exact offsets, in process), except one end-to-end test on
//! tansu. SLA time is a manual clock the test moves; the worker reads it in its batches, its
//! deadline timer and its violation publisher. Each test has a database of its own, because
//! the deadline timer fires every due deadline of its database: a test moving its clock far
//! ahead must not fire another test's deadlines, nor another's system clock fire its own.

use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use sqlx::PgPool;
use tenantstream::replay::{self, ReplayOptions, StartFrom};
use tenantstream::testing::domain::{
    deadline_violation_id, lag_violation_id, utc_day, ConfigChangeEvent, OrderEvent,
    OrderEventType, SlaViolation, ViolationKind,
};
use tenantstream::testing::sink;
use tenantstream::{Clock, Health, Settings};
use uuid::Uuid;

use crate::support::{self, OwnDatabase, RunningWorker, StoredDeadline};

use OrderEventType::{Cancelled, Confirmed, Created, Shipped, Updated};

/// Where every test's clock starts: the start of a lag window (a multiple of [`WINDOW_MS`]),
/// in 2027, after any deadline a system-clock worker could register soon.
const START_MS: i64 = 1_800_000_000_000;
/// The lag window (the default `sla.lag_window_ms`).
const WINDOW_MS: i64 = 60_000;
/// How long after its window closes a lag violation is published.
const LAG_GRACE_MS: i64 = 5_000;
/// CREATED->CONFIRMED in the deadline tests' policy.
const CONFIRM_MS: i64 = 600_000;
/// CONFIRMED->SHIPPED in the deadline tests' policy.
const SHIP_MS: i64 = 3_600_000;
/// How long background work (a batch, a timer pass, a publication) may take.
const LIMIT: Duration = Duration::from_secs(60);

/// A global default policy with only a lag threshold.
fn lag_policy(threshold_ms: i64) -> String {
    serde_json::json!({ "lag_threshold_ms": threshold_ms }).to_string()
}

/// The deadline tests' global default policy: CREATED->CONFIRMED and CONFIRMED->SHIPPED, and a
/// lag threshold of a day, which no event here reaches.
fn deadline_policy() -> String {
    serde_json::json!({
        "lag_threshold_ms": 86_400_000,
        "deadlines_ms": {"CREATED->CONFIRMED": CONFIRM_MS, "CONFIRMED->SHIPPED": SHIP_MS},
    })
    .to_string()
}

/// The DEADLINE_MISSED violation of `tenant`'s order `order_id` that the timer stores when it
/// fires at `detected_at` a CREATED->CONFIRMED deadline registered at `started_at`.
fn confirm_missed(
    tenant: Uuid,
    order_id: &str,
    started_at: i64,
    detected_at: i64,
    policy_version: i64,
) -> SlaViolation {
    SlaViolation {
        violation_id: deadline_violation_id(tenant, order_id, "CREATED->CONFIRMED").to_string(),
        tenant_id: tenant.to_string(),
        order_id: Some(order_id.into()),
        kind: ViolationKind::DeadlineMissed,
        transition: Some("CREATED->CONFIRMED".into()),
        threshold_ms: CONFIRM_MS,
        observed_ms: detected_at - started_at,
        event_count: 1,
        policy_version,
        detected_at,
    }
}

/// One test's world: its own topics (mock cluster or tansu) and database, the shared Redis, a
/// manual clock at [`START_MS`] and, once started, a worker reading that clock.
struct World {
    settings: Settings,
    database: OwnDatabase,
    redis: fred::prelude::Client,
    clock: Clock,
    worker: Option<RunningWorker>,
    _mock: Option<MockCluster<'static, DefaultProducerContext>>,
}

impl World {
    /// A world on the mock cluster whose global default policy is `default_policy` (JSON or
    /// `none`); no worker yet. `name` is the test's own (its database's prefix).
    async fn on_mock(name: &str, default_policy: &str) -> Self {
        let mock = MockCluster::new(1).unwrap();
        let settings = support::mock_settings(&mock, name);
        Self::with(settings, Some(mock), name, default_policy).await
    }

    /// [`World::on_mock`] on tansu, the real broker.
    async fn on_tansu(name: &str, default_policy: &str) -> Self {
        let (settings, _, _) = support::tansu_setup(name).await;
        Self::with(settings, None, name, default_policy).await
    }

    async fn with(
        mut settings: Settings,
        mock: Option<MockCluster<'static, DefaultProducerContext>>,
        name: &str,
        default_policy: &str,
    ) -> Self {
        let database = OwnDatabase::create(&format!("tenantstream_sla_{name}")).await;
        database.use_in(&mut settings);
        settings.sla.default_policy = default_policy.into();
        settings.sla.lag_window_ms = WINDOW_MS as u64;
        settings.sla.poll_interval_ms = 50;
        Self {
            settings,
            database,
            redis: support::redis().await,
            clock: Clock::manual(START_MS),
            worker: None,
            _mock: mock,
        }
    }

    /// [`World::on_mock`] with its worker running.
    async fn running(name: &str, default_policy: &str) -> Self {
        let mut world = Self::on_mock(name, default_policy).await;
        world.start_worker().await;
        world
    }

    async fn start_worker(&mut self) {
        assert!(self.worker.is_none(), "one worker at a time");
        let clock = self.clock.clone();
        let worker = RunningWorker::start_with_clock(&self.settings, Health::default(), clock);
        self.worker = Some(worker.await);
    }

    async fn stop_worker(&mut self) {
        self.worker.take().expect("a running worker").stop().await;
    }

    /// The owner's pool of the test's database: every tenant's rows.
    fn admin(&self) -> &PgPool {
        &self.database.admin
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Moves the clock forward to `at_ms`.
    fn advance_to(&self, at_ms: i64) {
        let by = at_ms - self.now();
        assert!(by >= 0, "the clock only moves forward");
        self.clock.advance(Duration::from_millis(by as u64));
    }

    /// Sends `events` and waits until the worker has committed them.
    async fn send(&self, events: &[OrderEvent]) {
        let ends = support::send_orders(&self.settings, events).await;
        support::wait_for_offsets(self.admin(), &self.settings, &ends, LIMIT).await;
    }

    /// Sends configuration `changes` and waits until the worker has committed them.
    async fn configure(&self, changes: &[ConfigChangeEvent]) {
        let ends = support::send_config_changes(&self.settings, changes).await;
        let topic = &self.settings.kafka.config_topic;
        support::wait_for_topic_offsets(self.admin(), &self.settings, topic, &ends, LIMIT).await;
    }

    /// Waits until the engine has caught up with the clock: no deadline is due and no
    /// violation due for publishing is left in the outbox (each was published and counted).
    async fn settle(&self) {
        let started = Instant::now();
        loop {
            let now = self.now() as f64 / 1000.0;
            let (due, publishable): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM sla_deadlines WHERE due_at <= to_timestamp($1)),
                        (SELECT count(*) FROM sla_outbox WHERE publish_after <= to_timestamp($1))",
            )
            .bind(now)
            .fetch_one(self.admin())
            .await
            .unwrap();
            if (due, publishable) == (0, 0) {
                return;
            }
            assert!(
                started.elapsed() < LIMIT,
                "{due} deadlines due and {publishable} violations unpublished after {LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn deadlines(&self, tenant: Uuid) -> Vec<StoredDeadline> {
        support::stored_deadlines(self.admin(), tenant).await
    }

    async fn violations(&self, tenant: Uuid) -> Vec<SlaViolation> {
        support::stored_violations(self.admin(), tenant).await
    }

    async fn wait_for_violations(&self, tenant: Uuid, count: usize) -> Vec<SlaViolation> {
        support::wait_for_violations(self.admin(), tenant, count, LIMIT).await
    }

    /// The violations on the topic (exactly `count`: the read waits a grace period for more).
    async fn published(&self, count: usize) -> Vec<SlaViolation> {
        let published = support::read_violations(&self.settings, count, LIMIT).await;
        assert_eq!(published.len(), count, "{published:?}");
        published.into_iter().map(|p| p.violation).collect()
    }

    /// Asserts that Redis counts `violations` on their days, each under its tenant.
    async fn assert_counted(&self, violations: &[SlaViolation]) {
        for violation in violations {
            let tenant: Uuid = violation.tenant_id.parse().unwrap();
            let day = utc_day(violation.detected_at);
            let counted = support::counted_violations(&self.redis, tenant, &day).await;
            assert!(
                counted.contains(&violation.violation_id),
                "Redis counts {counted:?} for {tenant} on {day}, not {violation:?}"
            );
        }
    }

    async fn finish(mut self) {
        if self.worker.is_some() {
            self.stop_worker().await;
        }
        self.database.drop().await;
    }
}

fn order(tenant: Uuid, id: &str, version: i64, kind: OrderEventType, at: i64) -> OrderEvent {
    support::order_event(tenant, id, version, kind, at)
}

/// How many rows of `table` belong to `tenant` (as the owner).
async fn rows_of_tenant(pool: &PgPool, table: &str, tenant: Uuid) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {table} WHERE tenant_id = $1"
    ))
    .bind(tenant)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// How many violations of `kind` the database stores, of every tenant.
async fn violations_of_kind(pool: &PgPool, kind: &str) -> f64 {
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM sla_violations WHERE kind = $1")
        .bind(kind)
        .fetch_one(pool)
        .await
        .unwrap();
    count as f64
}

fn deadline(order_id: &str, transition: &str, started: i64, ms: i64, v: i64) -> StoredDeadline {
    StoredDeadline {
        order_id: order_id.into(),
        transition: transition.into(),
        started_ms: started,
        due_ms: started + ms,
        threshold_ms: ms,
        policy_version: v,
    }
}

// ---------------------------------------------------------------------------------------------
// PROCESSING_LAG

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lag_counts_only_events_strictly_over_the_threshold() {
    let world = World::running("lag_threshold", &lag_policy(10_000)).await;
    let (at, under, over) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    world
        .send(&[
            order(at, "o-1", 1, Created, START_MS - 10_000),
            order(under, "o-1", 1, Created, START_MS - 9_999),
            order(over, "o-1", 1, Created, START_MS - 10_001),
        ])
        .await;

    assert!(
        world.violations(at).await.is_empty(),
        "exactly at the threshold"
    );
    assert!(world.violations(under).await.is_empty(), "just under");
    let late = SlaViolation {
        violation_id: lag_violation_id(over, START_MS).to_string(),
        tenant_id: over.to_string(),
        order_id: None,
        kind: ViolationKind::ProcessingLag,
        transition: None,
        threshold_ms: 10_000,
        observed_ms: 10_001,
        event_count: 1,
        policy_version: 0,
        detected_at: START_MS,
    };
    assert_eq!(world.violations(over).await, [late]);
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_of_late_events_makes_one_lag_violation_per_window() {
    let mut world = World::on_mock("lag_backlog", &lag_policy(10_000)).await;
    world.settings.kafka.batch_max_events = 500;
    world.start_worker().await;
    let tenant = Uuid::new_v4();
    // 10,000 late events (at most 500 a batch), the oldest 29,999 ms late.
    let backlog: Vec<OrderEvent> = (0..10_000)
        .map(|i| order(tenant, &format!("o-{i}"), 1, Created, START_MS - 20_000 - i))
        .collect();
    world.send(&backlog).await;

    let first = SlaViolation {
        violation_id: lag_violation_id(tenant, START_MS).to_string(),
        tenant_id: tenant.to_string(),
        order_id: None,
        kind: ViolationKind::ProcessingLag,
        transition: None,
        threshold_ms: 10_000,
        observed_ms: 29_999,
        event_count: 10_000,
        policy_version: 0,
        detected_at: START_MS,
    };
    assert_eq!(world.violations(tenant).await, vec![first.clone()]);
    let day = utc_day(START_MS);
    assert!(
        support::counted_violations(&world.redis, tenant, &day)
            .await
            .is_empty(),
        "published only when its window has closed"
    );

    // The window closes: published once, after the grace for batches committing late.
    world.advance_to(START_MS + WINDOW_MS + LAG_GRACE_MS - 1);
    world.settle().await;
    assert!(
        world.published(0).await.is_empty(),
        "published within the grace"
    );
    world.advance_to(START_MS + WINDOW_MS + LAG_GRACE_MS);
    world.settle().await;
    assert_eq!(world.published(1).await, vec![first.clone()]);
    world.assert_counted(std::slice::from_ref(&first)).await;

    // A late event in the next window makes that window's violation.
    world
        .send(&[order(tenant, "o-next", 1, Created, world.now() - 15_000)])
        .await;
    let second = SlaViolation {
        violation_id: lag_violation_id(tenant, START_MS + WINDOW_MS).to_string(),
        observed_ms: 15_000,
        event_count: 1,
        detected_at: START_MS + WINDOW_MS + LAG_GRACE_MS,
        ..first.clone()
    };
    assert_eq!(
        world.violations(tenant).await,
        [first.clone(), second.clone()]
    );
    world.advance_to(START_MS + 2 * WINDOW_MS + LAG_GRACE_MS);
    world.settle().await;
    assert_eq!(world.published(2).await, [first, second.clone()]);
    world.assert_counted(&[second]).await;
    world.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Deadlines

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deadline_met_in_time_is_gone_and_never_fires() {
    let world = World::running("deadline_met", &deadline_policy()).await;
    let tenant = Uuid::new_v4();
    world
        .send(&[
            order(tenant, "on-time", 1, Created, START_MS),
            order(tenant, "never", 1, Created, START_MS),
        ])
        .await;
    let confirmed_at = START_MS + CONFIRM_MS / 2;
    world.advance_to(confirmed_at);
    world
        .send(&[order(tenant, "on-time", 2, Confirmed, confirmed_at)])
        .await;
    assert_eq!(
        world.deadlines(tenant).await,
        [
            deadline("never", "CREATED->CONFIRMED", START_MS, CONFIRM_MS, 0),
            deadline("on-time", "CONFIRMED->SHIPPED", confirmed_at, SHIP_MS, 0),
        ]
    );

    // Past the due time only the order never confirmed fires.
    world.advance_to(START_MS + CONFIRM_MS);
    world.settle().await;
    let missed = confirm_missed(tenant, "never", START_MS, START_MS + CONFIRM_MS, 0);
    assert_eq!(world.violations(tenant).await, [missed]);
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missed_deadline_fires_once_when_due_and_is_published_and_counted() {
    let world = World::running("deadline_missed", &deadline_policy()).await;
    let tenant = Uuid::new_v4();
    world
        .send(&[order(tenant, "o-1", 1, Created, START_MS)])
        .await;
    let registered = deadline("o-1", "CREATED->CONFIRMED", START_MS, CONFIRM_MS, 0);
    assert_eq!(world.deadlines(tenant).await, vec![registered.clone()]);

    world.advance_to(START_MS + CONFIRM_MS - 1);
    world.settle().await;
    assert!(world.violations(tenant).await.is_empty(), "not yet due");
    assert_eq!(world.deadlines(tenant).await, [registered]);

    world.advance_to(START_MS + CONFIRM_MS);
    let missed = confirm_missed(tenant, "o-1", START_MS, START_MS + CONFIRM_MS, 0);
    assert_eq!(
        world.wait_for_violations(tenant, 1).await,
        vec![missed.clone()]
    );
    world.settle().await;
    assert!(
        world.deadlines(tenant).await.is_empty(),
        "a fired deadline is gone"
    );
    let published = support::read_violations(&world.settings, 1, LIMIT).await;
    assert_eq!(published.len(), 1, "published once: {published:?}");
    assert_eq!(published[0].key, tenant.to_string(), "keyed by tenant");
    assert_eq!(published[0].violation, missed);
    world.assert_counted(&[missed]).await;
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deadline_missed_while_no_worker_runs_fires_when_one_starts() {
    let mut world = World::running("deadline_down", &deadline_policy()).await;
    let tenant = Uuid::new_v4();
    world
        .send(&[order(tenant, "o-1", 1, Created, START_MS)])
        .await;
    world.stop_worker().await;

    let restarted_at = START_MS + CONFIRM_MS + 300_000;
    world.advance_to(restarted_at);
    assert!(world.violations(tenant).await.is_empty(), "no timer runs");
    world.start_worker().await;
    let missed = confirm_missed(tenant, "o-1", START_MS, restarted_at, 0);
    assert_eq!(
        world.wait_for_violations(tenant, 1).await,
        vec![missed.clone()]
    );
    world.settle().await;
    assert_eq!(world.published(1).await, vec![missed.clone()]);
    world.assert_counted(&[missed]).await;
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deadline_met_after_it_fired_keeps_its_one_violation() {
    let world = World::running("deadline_late", &deadline_policy()).await;
    let tenant = Uuid::new_v4();
    world
        .send(&[order(tenant, "o-1", 1, Created, START_MS)])
        .await;
    world.advance_to(START_MS + CONFIRM_MS);
    let missed = confirm_missed(tenant, "o-1", START_MS, START_MS + CONFIRM_MS, 0);
    assert_eq!(
        world.wait_for_violations(tenant, 1).await,
        vec![missed.clone()]
    );

    let confirmed_at = START_MS + CONFIRM_MS + 60_000;
    world.advance_to(confirmed_at);
    world
        .send(&[order(tenant, "o-1", 2, Confirmed, confirmed_at)])
        .await;
    assert_eq!(
        world.deadlines(tenant).await,
        [deadline(
            "o-1",
            "CONFIRMED->SHIPPED",
            confirmed_at,
            SHIP_MS,
            0
        )],
        "only the next step waits"
    );
    // Later, short of the next step's deadline: nothing more fired.
    world.advance_to(START_MS + 3 * CONFIRM_MS);
    world.settle().await;
    assert_eq!(world.violations(tenant).await, vec![missed.clone()]);
    assert_eq!(world.published(1).await, [missed]);
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_order_has_no_deadline_to_miss() {
    let world = World::running("deadline_cancelled", &deadline_policy()).await;
    let tenant = Uuid::new_v4();
    world
        .send(&[
            order(tenant, "cancelled", 1, Created, START_MS),
            order(tenant, "control", 1, Created, START_MS),
        ])
        .await;
    world.advance_to(START_MS + 60_000);
    world
        .send(&[order(tenant, "cancelled", 2, Cancelled, START_MS + 60_000)])
        .await;
    assert_eq!(
        world.deadlines(tenant).await,
        [deadline(
            "control",
            "CREATED->CONFIRMED",
            START_MS,
            CONFIRM_MS,
            0
        )]
    );

    world.advance_to(START_MS + 2 * CONFIRM_MS);
    world.settle().await;
    let control = confirm_missed(tenant, "control", START_MS, START_MS + 2 * CONFIRM_MS, 0);
    assert_eq!(world.violations(tenant).await, [control]);
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_later_status_first_meets_the_deadline_and_the_stale_one_registers_nothing() {
    let world = World::running("deadline_out_of_order", &deadline_policy()).await;
    let tenant = Uuid::new_v4();
    world
        .send(&[
            order(tenant, "o-1", 1, Created, START_MS),
            order(tenant, "control", 1, Created, START_MS),
        ])
        .await;
    world.advance_to(START_MS + 120_000);
    // SHIPPED (version 3) overtakes CONFIRMED (version 2), which arrives after it.
    world
        .send(&[order(tenant, "o-1", 3, Shipped, START_MS + 120_000)])
        .await;
    let control = deadline("control", "CREATED->CONFIRMED", START_MS, CONFIRM_MS, 0);
    assert_eq!(world.deadlines(tenant).await, vec![control.clone()]);
    world
        .send(&[order(tenant, "o-1", 2, Confirmed, START_MS + 60_000)])
        .await;
    assert_eq!(
        world.deadlines(tenant).await,
        [control],
        "the stale CONFIRMED starts no CONFIRMED->SHIPPED"
    );

    world.advance_to(START_MS + 2 * SHIP_MS);
    world.settle().await;
    let missed = confirm_missed(tenant, "control", START_MS, START_MS + 2 * SHIP_MS, 0);
    assert_eq!(world.violations(tenant).await, [missed]);
    world.finish().await;
}

/// Several events of one order in one batch: the batch writes only the newest, but the
/// deadlines follow all of them. CREATED then UPDATED still starts CREATED->CONFIRMED (from
/// CREATED's time); CONFIRMED then UPDATED still meets it and starts CONFIRMED->SHIPPED.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_update_after_a_status_in_the_same_batch_hides_nothing() {
    let world = World::running("deadline_same_batch", &deadline_policy()).await;
    let tenant = Uuid::new_v4();
    world
        .send(&[
            order(tenant, "o-1", 1, Created, START_MS),
            order(tenant, "o-1", 2, Updated, START_MS + 1_000),
            order(tenant, "o-2", 1, Created, START_MS),
        ])
        .await;
    let o1 = deadline("o-1", "CREATED->CONFIRMED", START_MS, CONFIRM_MS, 0);
    let o2 = deadline("o-2", "CREATED->CONFIRMED", START_MS, CONFIRM_MS, 0);
    assert_eq!(world.deadlines(tenant).await, vec![o1.clone(), o2]);
    let confirmed_at = START_MS + 60_000;
    world
        .send(&[
            order(tenant, "o-2", 2, Confirmed, confirmed_at),
            order(tenant, "o-2", 3, Updated, confirmed_at + 1_000),
        ])
        .await;
    let shipping = deadline("o-2", "CONFIRMED->SHIPPED", confirmed_at, SHIP_MS, 0);
    assert_eq!(world.deadlines(tenant).await, vec![o1, shipping]);

    world.advance_to(START_MS + CONFIRM_MS + 1);
    world.settle().await;
    let missed = confirm_missed(tenant, "o-1", START_MS, START_MS + CONFIRM_MS + 1, 0);
    assert_eq!(world.violations(tenant).await, [missed]);
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registered_deadline_keeps_the_policy_it_was_registered_with() {
    let world = World::running("deadline_policy_change", "none").await;
    let tenant = Uuid::new_v4();
    let policy = |confirm_ms: i64| {
        serde_json::json!({
            "lag_threshold_ms": 86_400_000,
            "deadlines_ms": {"CREATED->CONFIRMED": confirm_ms},
        })
    };
    let (v1_ms, v2_ms) = (CONFIRM_MS, 2 * CONFIRM_MS);
    world
        .configure(&[support::sla_policy_change(
            tenant,
            1,
            &policy(v1_ms),
            START_MS,
        )])
        .await;
    world
        .send(&[order(tenant, "before", 1, Created, START_MS)])
        .await;
    let before = deadline("before", "CREATED->CONFIRMED", START_MS, v1_ms, 1);
    assert_eq!(world.deadlines(tenant).await, vec![before.clone()]);

    let changed_at = START_MS + 60_000;
    world.advance_to(changed_at);
    world
        .configure(&[support::sla_policy_change(
            tenant,
            2,
            &policy(v2_ms),
            changed_at,
        )])
        .await;
    world
        .send(&[order(tenant, "after", 1, Created, changed_at)])
        .await;
    let after = deadline("after", "CREATED->CONFIRMED", changed_at, v2_ms, 2);
    assert_eq!(world.deadlines(tenant).await, [after, before]);

    // Each fires by its own policy: `before` at v1's deadline, `after` at v2's.
    world.advance_to(START_MS + v1_ms);
    let before_missed = confirm_missed(tenant, "before", START_MS, START_MS + v1_ms, 1);
    assert_eq!(
        world.wait_for_violations(tenant, 1).await,
        vec![before_missed.clone()]
    );
    world.advance_to(changed_at + v2_ms);
    let after_missed = SlaViolation {
        threshold_ms: v2_ms,
        ..confirm_missed(tenant, "after", changed_at, changed_at + v2_ms, 2)
    };
    assert_eq!(
        world.wait_for_violations(tenant, 2).await,
        [before_missed, after_missed]
    );
    world.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Isolation, replay, metrics, and the real broker

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_worker_role_sees_only_the_violations_and_deadlines_of_its_tenant() {
    let world = World::running("isolation", &deadline_policy()).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let events: Vec<OrderEvent> = [a, b]
        .iter()
        .flat_map(|t| {
            [
                order(*t, "missed", 1, Created, START_MS),
                order(*t, "pending", 1, Created, START_MS + CONFIRM_MS),
            ]
        })
        .collect();
    world.advance_to(START_MS + CONFIRM_MS);
    world.send(&events).await;
    world.wait_for_violations(a, 1).await;
    world.wait_for_violations(b, 1).await;

    let role = sink::connect_worker(&world.settings.database)
        .await
        .unwrap();
    let seen = |tenant: Option<Uuid>, table: &'static str| {
        let role = role.clone();
        async move {
            let mut tx = role.begin().await.unwrap();
            if let Some(tenant) = tenant {
                sink::set_tenant(&mut tx, tenant).await.unwrap();
            }
            let sql = format!("SELECT DISTINCT tenant_id FROM {table} ORDER BY tenant_id");
            let tenants: Vec<Uuid> = sqlx::query_scalar(&sql).fetch_all(&mut *tx).await.unwrap();
            tenants
        }
    };
    for table in ["sla_violations", "sla_deadlines"] {
        assert_eq!(seen(Some(a), table).await, [a], "{table} under a");
        assert_eq!(seen(Some(b), table).await, [b], "{table} under b");
        assert!(
            seen(None, table).await.is_empty(),
            "{table} without a context"
        );
    }
    let mut tx = role.begin().await.unwrap();
    sink::set_tenant(&mut tx, a).await.unwrap();
    let others: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sla_violations WHERE tenant_id = $1")
            .bind(b)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    assert_eq!(others, 0, "a's context reads none of b's violations");
    drop(tx);
    role.close().await;
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_rewriting_postgres_creates_no_deadline_and_no_violation() {
    let world = World::on_mock("replay", &deadline_policy()).await;
    let tenant = Uuid::new_v4();
    let long_ago = Clock::system().now_ms() - 86_400_000;
    let tight = serde_json::json!({
        "lag_threshold_ms": 1,
        "deadlines_ms": {"CREATED->CONFIRMED": 1, "CONFIRMED->SHIPPED": 1},
    });
    support::send_config_changes(
        &world.settings,
        &[support::sla_policy_change(tenant, 1, &tight, long_ago)],
    )
    .await;
    // A day late, and each order's deadline long past: the live worker would record both.
    let orders: Vec<OrderEvent> = (0..20)
        .flat_map(|i| {
            let id = format!("o-{i}");
            [
                order(tenant, &id, 1, Created, long_ago),
                order(tenant, &id, 2, Confirmed, long_ago + 1),
            ]
        })
        .collect();
    support::send_orders(&world.settings, &orders).await;

    let options = ReplayOptions {
        topics: Vec::new(),
        from: StartFrom::Earliest,
        tenant: None,
        flush: false,
        dry_run: false,
        rewrite_db: true,
        chunk: 700,
    };
    let summary = replay::run(&world.settings, &options).await.unwrap();
    assert_eq!(summary.events_read, 41, "{summary}");
    let rows_of = |table: &'static str| rows_of_tenant(world.admin(), table, tenant);
    assert_eq!(rows_of("orders").await, 20, "replay wrote the orders");
    assert_eq!(rows_of("sla_policies").await, 1, "and the tenant's policy");
    for table in ["sla_deadlines", "sla_violations", "sla_outbox"] {
        assert_eq!(rows_of(table).await, 0, "{table}");
    }
    world.finish().await;
}

/// The counter is read from the binary's own /metrics: every process has one recorder, and in
/// this test process other tests' workers count their violations too. The binary runs on the
/// system clock, so the events are made late and their deadlines past by their times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_violation_counter_counts_each_violation_stored() {
    use tenantstream::testing::metrics::{SLA_VIOLATIONS, SLA_VIOLATIONS_PUBLISHED};
    let mut world = World::on_mock("metrics", &deadline_policy()).await;
    world.settings.sla.default_policy = serde_json::json!({
        "lag_threshold_ms": 60_000,
        "deadlines_ms": {"CREATED->CONFIRMED": CONFIRM_MS},
    })
    .to_string();
    let http = format!("127.0.0.1:{}", support::free_port());
    world.settings.http.listen = http.clone();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let hour_ago = Clock::system().now_ms() - 3_600_000;
    // 3 + 2 orders never confirmed: 5 deadlines missed; each tenant late: 2 lag violations.
    let events: Vec<OrderEvent> = [(a, 3), (b, 2)]
        .into_iter()
        .flat_map(|(tenant, orders)| {
            (0..orders).map(move |i| order(tenant, &format!("o-{i}"), 1, Created, hour_ago))
        })
        .collect();
    let ends = support::send_orders(&world.settings, &events).await;
    let child = support::spawn_run(&world.settings);
    support::wait_for_offsets(world.admin(), &world.settings, &ends, LIMIT).await;
    // Every late event is committed; the timer fires all five deadlines in one statement.
    world.wait_for_violations(a, 4).await;
    world.wait_for_violations(b, 3).await;

    let stored = |kind: &'static str| violations_of_kind(world.admin(), kind);
    let (missed, lag) = (
        stored("DEADLINE_MISSED").await,
        stored("PROCESSING_LAG").await,
    );
    assert_eq!(missed, 5.0);
    assert!(
        lag >= 2.0,
        "one a tenant, or two if a batch crossed a window: {lag}"
    );
    let url = format!("http://{http}/metrics");
    let counted = |rendered: &str, name: &str, kind: &str| {
        support::sample(rendered, name, &[("kind", kind)]).unwrap_or(0.0)
    };
    let started = Instant::now();
    let rendered = loop {
        let rendered = reqwest::get(&url).await.unwrap().text().await.unwrap();
        let published = counted(&rendered, SLA_VIOLATIONS_PUBLISHED, "DEADLINE_MISSED");
        let lag_counted = counted(&rendered, SLA_VIOLATIONS, "PROCESSING_LAG");
        if published >= missed && lag_counted >= lag {
            break rendered;
        }
        assert!(started.elapsed() < LIMIT, "{rendered}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    support::terminate(child);
    assert_eq!(
        counted(&rendered, SLA_VIOLATIONS, "DEADLINE_MISSED"),
        missed
    );
    assert_eq!(counted(&rendered, SLA_VIOLATIONS, "PROCESSING_LAG"), lag);
    assert_eq!(
        counted(&rendered, SLA_VIOLATIONS_PUBLISHED, "DEADLINE_MISSED"),
        missed
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_tansu_a_missed_deadline_is_published_as_its_avro_record_keyed_by_tenant() {
    let mut world = World::on_tansu("tansu", &deadline_policy()).await;
    world.start_worker().await;
    let tenant = Uuid::new_v4();
    world
        .send(&[order(tenant, "o-1", 1, Created, START_MS)])
        .await;
    world.advance_to(START_MS + CONFIRM_MS);
    world.wait_for_violations(tenant, 1).await;
    world.settle().await;

    let published = support::read_violations(&world.settings, 1, LIMIT).await;
    let expected = support::PublishedViolation {
        key: tenant.to_string(),
        schema_id: 3,
        violation: confirm_missed(tenant, "o-1", START_MS, START_MS + CONFIRM_MS, 0),
    };
    assert_eq!(published, [expected]);
    world.finish().await;
}
