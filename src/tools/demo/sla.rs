//! The demo's SLA traffic: tenants of its own whose policy has short deadlines, and per tenant
//! one order stalled in each waiting status (each misses exactly one deadline), one that is
//! delivered and one that is cancelled (neither misses any). The violations a correct worker
//! publishes are known in advance by their ids.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::bail;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use uuid::Uuid;

use crate::config::Settings;
use crate::decode::Encoder;
use crate::domain::{
    deadline_violation_id, ConfigChangeEvent, ConfigKind, ConfigScope, LineItem, OrderEvent,
    OrderEventType, SlaViolation,
};
use crate::source;
use crate::tools::traffic::Generated;

/// The deadline of every transition of the demo's policy.
pub(super) const DEADLINE: Duration = Duration::from_secs(3);

/// The demo's SLA traffic and the violations it must produce.
pub(super) struct SlaTraffic {
    /// One SLA_POLICY change per tenant: sent, and committed, before the orders.
    pub policies: Vec<Generated>,
    pub orders: Vec<Generated>,
    pub expected: BTreeSet<Uuid>,
    pub tenants: Vec<Uuid>,
}

/// The policy of the demo's SLA tenants: every step of the lifecycle within [`DEADLINE`]; lag
/// allowed up to an hour, so only deadlines are missed.
fn policy() -> String {
    let ms = DEADLINE.as_millis() as u64;
    serde_json::json!({
        "lag_threshold_ms": 3_600_000,
        "deadlines_ms": {
            "CREATED->CONFIRMED": ms,
            "CONFIRMED->SHIPPED": ms,
            "SHIPPED->DELIVERED": ms,
        },
    })
    .to_string()
}

/// Traffic for `tenants` new tenants, every event occurring at `now_ms`.
pub(super) fn generate(
    tenants: usize,
    now_ms: i64,
    orders: &Encoder,
    config: &Encoder,
) -> SlaTraffic {
    use OrderEventType::*;
    // (order, its statuses in order, the transition it misses)
    let lives: [(&str, &[OrderEventType], Option<&str>); 5] = [
        (
            "sla-stalled-created",
            &[Created],
            Some("CREATED->CONFIRMED"),
        ),
        (
            "sla-stalled-confirmed",
            &[Created, Confirmed],
            Some("CONFIRMED->SHIPPED"),
        ),
        (
            "sla-stalled-shipped",
            &[Created, Confirmed, Shipped],
            Some("SHIPPED->DELIVERED"),
        ),
        (
            "sla-delivered",
            &[Created, Confirmed, Shipped, Delivered],
            None,
        ),
        ("sla-cancelled", &[Created, Cancelled], None),
    ];
    let mut traffic = SlaTraffic {
        policies: Vec::new(),
        orders: Vec::new(),
        expected: BTreeSet::new(),
        tenants: (0..tenants).map(|_| Uuid::new_v4()).collect(),
    };
    for tenant in &traffic.tenants {
        let change = ConfigChangeEvent {
            event_id: Uuid::new_v4().to_string(),
            scope: ConfigScope::Tenant,
            tenant_id: Some(tenant.to_string()),
            kind: ConfigKind::SlaPolicy,
            key: "default".into(),
            value: Some(policy()),
            version: 1,
            occurred_at: now_ms,
        };
        traffic.policies.push(Generated {
            key: tenant.to_string().into_bytes(),
            value: config.encode(&change, false),
            malformed: None,
        });
        for (order_id, statuses, missed) in lives {
            for (i, status) in statuses.iter().enumerate() {
                let event = order_event(*tenant, order_id, i as i64 + 1, *status, now_ms);
                traffic.orders.push(Generated {
                    key: order_id.as_bytes().to_vec(),
                    value: orders.encode(&event, false),
                    malformed: None,
                });
            }
            if let Some(transition) = missed {
                let id = deadline_violation_id(*tenant, order_id, transition);
                traffic.expected.insert(id);
            }
        }
    }
    traffic
}

/// One event of an order of one line item.
fn order_event(
    tenant: Uuid,
    order_id: &str,
    version: i64,
    event_type: OrderEventType,
    occurred_at: i64,
) -> OrderEvent {
    OrderEvent {
        event_id: Uuid::new_v4().to_string(),
        tenant_id: tenant.to_string(),
        order_id: order_id.to_owned(),
        version,
        event_type,
        occurred_at,
        customer_id: "cust-sla".into(),
        currency: "EUR".into(),
        total_cents: 1_000,
        items: vec![LineItem {
            sku: "sku-sla".into(),
            category_id: "cat-sla".into(),
            quantity: 1,
            unit_price_cents: 1_000,
        }],
    }
}

/// Reads the violations topic from its start until every `expected` id is there, then to its
/// end; returns the violations of `tenants` (other tenants' are an earlier demo's). Fails after
/// `limit`.
pub(super) fn wait_for_violations(
    settings: &Settings,
    encoder: &Encoder,
    tenants: &[Uuid],
    expected: &BTreeSet<Uuid>,
    limit: Duration,
) -> anyhow::Result<Vec<SlaViolation>> {
    let topic = &settings.kafka.sla_violations_topic;
    let consumer: BaseConsumer = source::client_config(&settings.kafka)
        .set(
            "group.id",
            format!("{}-demo-reader", settings.kafka.group_id),
        )
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        assignment.add_partition_offset(topic, partition.id(), Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let tenant_ids: BTreeSet<String> = tenants.iter().map(Uuid::to_string).collect();
    let mut found = Vec::new();
    let started = Instant::now();
    let mut quiet_since: Option<Instant> = None;
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(message) => {
                quiet_since = None;
                let Some(value) = message?.payload().map(<[u8]>::to_vec) else {
                    continue;
                };
                let violation: SlaViolation = encoder.decode(&value)?;
                if tenant_ids.contains(&violation.tenant_id) {
                    found.push(violation);
                }
            }
            None => {
                let seen: BTreeSet<Uuid> = found
                    .iter()
                    .filter_map(|v| v.violation_id.parse().ok())
                    .collect();
                // All expected are in: read on until the topic stays quiet for a second, so
                // that an unexpected violation published meanwhile is counted too.
                if expected.is_subset(&seen) {
                    let quiet = *quiet_since.get_or_insert_with(Instant::now);
                    if quiet.elapsed() > Duration::from_secs(1) {
                        return Ok(found);
                    }
                }
            }
        }
        if started.elapsed() > limit {
            bail!(
                "{} of {} expected SLA violations on {topic} after {limit:?}",
                found.len(),
                expected.len()
            );
        }
    }
}
