//! SLA policies (the JSON of an SLA_POLICY configuration value) and violations (the records of
//! `schemas/sla_violation.avsc`, with their deterministic ids).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::order::OrderEventType;

/// How late an event may be processed, and how long an order may take from one status to a
/// later one (keys `FROM->TO`, e.g. `CREATED->CONFIRMED`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaPolicy {
    pub lag_threshold_ms: u64,
    #[serde(default)]
    pub deadlines_ms: BTreeMap<String, u64>,
}

/// A step forward in an order's life, written `FROM->TO`: both are lifecycle statuses
/// (CREATED, CONFIRMED, SHIPPED, DELIVERED) and TO comes after FROM. UPDATED and CANCELLED
/// neither start nor end a wait; CANCELLED clears every pending one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Transition {
    pub from: OrderEventType,
    pub to: OrderEventType,
}

impl Transition {
    /// Parses `FROM->TO` (e.g. `CREATED->CONFIRMED`); `None` unless it is a step forward.
    pub fn parse(text: &str) -> Option<Self> {
        let (from, to) = text.split_once("->")?;
        let from: OrderEventType = serde_json::from_value(from.into()).ok()?;
        let to: OrderEventType = serde_json::from_value(to.into()).ok()?;
        (lifecycle_rank(from)? < lifecycle_rank(to)?).then_some(Self { from, to })
    }
}

/// How far a status takes an order towards its end, as the database's `sla_status_rank`:
/// the lifecycle's place, and CANCELLED beyond every target (it ends every wait); `None` for
/// UPDATED, which neither starts nor ends a wait.
pub fn sla_rank(status: OrderEventType) -> Option<u8> {
    match status {
        OrderEventType::Cancelled => Some(100),
        other => lifecycle_rank(other),
    }
}

/// The place of a status in the lifecycle, cancellation aside; `None` for UPDATED and
/// CANCELLED.
fn lifecycle_rank(status: OrderEventType) -> Option<u8> {
    use OrderEventType::*;
    match status {
        Created => Some(1),
        Confirmed => Some(2),
        Shipped => Some(3),
        Delivered => Some(4),
        Updated | Cancelled => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ViolationKind {
    /// An order stayed in a status longer than its policy's deadline for the next one.
    DeadlineMissed,
    /// A tenant's events were committed later than its lag threshold after they occurred.
    ProcessingLag,
}

impl ViolationKind {
    pub const ALL: [Self; 2] = [Self::DeadlineMissed, Self::ProcessingLag];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::DeadlineMissed => "DEADLINE_MISSED",
            Self::ProcessingLag => "PROCESSING_LAG",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// `io.tenantstream.SlaViolation` (schemas/sla_violation.avsc).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlaViolation {
    pub violation_id: String,
    pub tenant_id: String,
    pub order_id: Option<String>,
    pub kind: ViolationKind,
    pub transition: Option<String>,
    pub threshold_ms: i64,
    pub observed_ms: i64,
    pub event_count: i64,
    pub policy_version: i64,
    /// Milliseconds since the Unix epoch (timestamp-millis).
    pub detected_at: i64,
}

impl SlaViolation {
    /// Its schema in the schemas folder.
    pub const SCHEMA_FILE: &'static str = "sla_violation.avsc";
}

/// The namespace of violation ids (the database's `sla_violation_id` uses the same).
const VIOLATION_NAMESPACE: Uuid = Uuid::from_u128(0x3d0c5b8e_7f4a_4f1e_9b2d_6a8c1e5f7a90);

/// The id of a violation: UUIDv5 over `tenant/kind/subject`. The database computes it
/// (`sla_violation_id`); this mirror lets tests and the demo know the ids to expect.
fn violation_id(tenant: Uuid, kind: ViolationKind, subject: &str) -> Uuid {
    let name = format!("{tenant}/{}/{subject}", kind.as_str());
    Uuid::new_v5(&VIOLATION_NAMESPACE, name.as_bytes())
}

/// The id of the DEADLINE_MISSED violation of `order_id`'s `transition` (`FROM->TO`).
pub fn deadline_violation_id(tenant: Uuid, order_id: &str, transition: &str) -> Uuid {
    violation_id(
        tenant,
        ViolationKind::DeadlineMissed,
        &format!("{order_id}/{transition}"),
    )
}

/// The id of `tenant`'s PROCESSING_LAG violation of the window starting at `window_start_ms`.
#[cfg(any(test, feature = "test-support"))]
pub fn lag_violation_id(tenant: Uuid, window_start_ms: i64) -> Uuid {
    violation_id(
        tenant,
        ViolationKind::ProcessingLag,
        &window_start_ms.to_string(),
    )
}

/// The UTC day (`YYYY-MM-DD`) of a time in milliseconds since the epoch: the day a violation
/// counts for.
pub fn utc_day(ms: i64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let z = ms.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_parse_only_steps_forward_in_the_lifecycle() {
        assert_eq!(
            Transition::parse("CREATED->CONFIRMED"),
            Some(Transition {
                from: OrderEventType::Created,
                to: OrderEventType::Confirmed
            })
        );
        assert!(Transition::parse("CREATED->DELIVERED").is_some());
        for bad in [
            "CREATED->CREATED",
            "SHIPPED->CONFIRMED",
            "CREATED->CANCELLED",
            "UPDATED->CONFIRMED",
            "CREATED->NOPE",
            "CREATED",
            "created->confirmed",
        ] {
            assert_eq!(Transition::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn violation_ids_are_deterministic_and_differ_by_subject() {
        let tenant = Uuid::from_u128(7);
        let a = deadline_violation_id(tenant, "o-1", "CREATED->CONFIRMED");
        assert_eq!(
            a,
            deadline_violation_id(tenant, "o-1", "CREATED->CONFIRMED")
        );
        assert_eq!(a.get_version_num(), 5);
        assert_ne!(
            a,
            deadline_violation_id(tenant, "o-1", "CONFIRMED->SHIPPED")
        );
        assert_ne!(
            lag_violation_id(tenant, 0),
            lag_violation_id(tenant, 60_000)
        );
        assert_eq!(
            ViolationKind::parse("PROCESSING_LAG"),
            Some(ViolationKind::ProcessingLag)
        );
    }

    #[test]
    fn utc_days_of_known_instants() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(86_399_999), "1970-01-01");
        assert_eq!(utc_day(951_782_400_000), "2000-02-29");
        // 2026-11-29T23:59:59.999Z and the next millisecond.
        assert_eq!(utc_day(1_795_996_799_999), "2026-11-29");
        assert_eq!(utc_day(1_795_996_800_000), "2026-11-30");
    }
}
