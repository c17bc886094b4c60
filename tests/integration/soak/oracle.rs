//! The soak's traffic on its way to the broker, and the checks of the end state that are the
//! soak's own (rows and cache keys are checked by the suite's shared assertions).

use std::collections::BTreeSet;
use std::time::Duration;

use sqlx::PgPool;
use tenantstream::testing::domain::{self, OrderEventType, ViolationKind};
use tenantstream::testing::traffic::{self, EndOffsets, Expected, Generated, Sent};
use tenantstream::Settings;
use uuid::Uuid;

use crate::support;

/// The one deadline of the stuck orders' tenants.
const TRANSITION: &str = "CREATED->CONFIRMED";

/// Tenants whose orders stay CREATED under a policy with a 1 s deadline: each such order must
/// give exactly one violation, whose id is known. (The other tenants' generated policies have
/// deadlines of an hour or more, which the soak never reaches.)
pub struct StuckOrders {
    pub tenants: Vec<Uuid>,
    pub violations: BTreeSet<Uuid>,
}

impl StuckOrders {
    /// Sends each stuck tenant's policy and waits until the workers have stored them all (their
    /// offsets are stored), so that every stuck order is written under its policy.
    pub async fn set_policies(&self, settings: &Settings, admin: &PgPool) -> EndOffsets {
        let now = tenantstream::Clock::system().now_ms();
        let policy: serde_json::Value =
            serde_json::from_str(&support::deadline_policy(&[(TRANSITION, 1_000)])).unwrap();
        let changes: Vec<_> = self
            .tenants
            .iter()
            .map(|tenant| support::sla_policy_change(*tenant, 1, &policy, now))
            .collect();
        let ends = support::send_config_changes(settings, &changes).await;
        // A batch stores its rows and its next offset together: the offsets at these ends
        // mean the policies are stored.
        let topic = &settings.kafka.config_topic;
        support::wait_for_topic_offsets(admin, settings, topic, &ends, Duration::from_secs(120))
            .await;
        ends
    }
}

/// Adds three orders that never leave CREATED for each of `tenants` new tenants, spread evenly
/// among `messages` and added to `expected`.
pub fn stuck_orders(
    settings: &Settings,
    tenants: usize,
    messages: &mut Vec<Generated>,
    expected: &mut Expected,
) -> StuckOrders {
    let encoder = support::order_encoder(settings);
    let now = tenantstream::Clock::system().now_ms();
    let mut stuck = StuckOrders {
        tenants: (0..tenants).map(|_| Uuid::new_v4()).collect(),
        violations: BTreeSet::new(),
    };
    let events: Vec<_> = stuck
        .tenants
        .iter()
        .flat_map(|tenant| (0..3).map(move |n| (*tenant, format!("stuck-{n}"))))
        .map(|(tenant, order_id)| {
            support::order_event(tenant, &order_id, 1, OrderEventType::Created, now)
        })
        .collect();
    for (i, event) in events.iter().enumerate() {
        let tenant: Uuid = event.tenant_id.parse().unwrap();
        stuck.violations.insert(domain::deadline_violation_id(
            tenant,
            &event.order_id,
            TRANSITION,
        ));
        expected
            .orders
            .insert((tenant, event.order_id.clone()), event.clone());
        let at = (i + 1) * messages.len() / (events.len() + 1);
        messages.insert(
            at,
            Generated {
                key: event.order_id.clone().into_bytes(),
                value: encoder.encode(event, false),
                malformed: None,
            },
        );
    }
    expected.tenants.extend(&stuck.tenants);
    stuck
}

/// Sends `messages` to `topic`, spread evenly over `over`, from a task of its own, with an
/// idempotent producer: a retry after the broker's outage adds no copy to the topic, so each
/// message has exactly the position the oracle records.
pub fn produce(
    settings: &Settings,
    topic: &str,
    messages: Vec<Generated>,
    over: Duration,
) -> tokio::task::JoinHandle<Sent> {
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "120000")
        // The broker's outage leaves requests unanswered (the mock cluster drops them), which
        // librdkafka gives up after this; the workers keep its default (60 s).
        .set("socket.timeout.ms", "5000")
        .create()
        .expect("producer");
    let topic = topic.to_owned();
    let rate = (messages.len() as f64 / over.as_secs_f64()).ceil().max(1.0) as u32;
    tokio::spawn(async move {
        traffic::send(&producer, &topic, &messages, rate, None)
            .await
            .expect("the traffic is sent")
    })
}

/// Waits until every stuck order's violation is stored and no violation of `tenants` waits in
/// the outbox (published and counted); returns the ids stored for `tenants`.
pub async fn wait_for_violations(
    admin: &PgPool,
    stuck: &StuckOrders,
    tenants: &[Uuid],
) -> BTreeSet<Uuid> {
    support::wait_until(
        Duration::from_secs(120),
        "stuck orders' violations",
        || async {
            let stored = support::stored_violation_ids(admin, &stuck.tenants).await;
            stored.len() >= stuck.violations.len()
        },
    )
    .await;
    support::wait_until(
        Duration::from_secs(120),
        "the SLA outbox drained",
        || async { support::outbox(admin, tenants).await.is_empty() },
    )
    .await;
    support::stored_violation_ids(admin, tenants)
        .await
        .into_iter()
        .collect()
}

/// Asserts the missed deadlines stored for `tenants` are exactly the stuck orders', with no
/// deadline left; that every violation stored is on the topic (at least once, and nothing else
/// is) and counted once in Redis. Returns how many are stored. (A long soak that falls behind
/// by more than the generated policies' lag thresholds, 10 minutes or more, may also store
/// lag violations: they are checked as stored, published and counted, not predicted.)
pub async fn assert_violations(
    admin: &PgPool,
    redis: &fred::prelude::Client,
    settings: &Settings,
    stuck: &StuckOrders,
    stored: &BTreeSet<Uuid>,
    tenants: &[Uuid],
) -> usize {
    let missed: BTreeSet<Uuid> = sqlx::query_scalar(
        "SELECT violation_id FROM sla_violations WHERE tenant_id = ANY($1) AND kind = $2",
    )
    .bind(tenants)
    .bind(ViolationKind::DeadlineMissed.as_str())
    .fetch_all(admin)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(
        missed, stuck.violations,
        "the missed deadlines are the stuck orders'"
    );
    assert_eq!(support::pending_deadlines(admin, &stuck.tenants).await, 0);
    let published = support::published_ids(settings, stored.len(), Duration::from_secs(120)).await;
    assert_eq!(
        &published, stored,
        "published violations are the stored ones"
    );
    support::assert_counted(admin, redis, tenants).await;
    stored.len()
}
