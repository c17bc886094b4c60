//! SLA policies: the JSON of an SLA_POLICY configuration value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::order::OrderEventType;

/// How late an event may be processed, and how long an order may take from one status to the
/// next (keys `FROM->TO`, e.g. `CREATED->CONFIRMED`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaPolicy {
    pub lag_threshold_ms: u64,
    #[serde(default)]
    pub deadlines_ms: BTreeMap<String, u64>,
}

/// A step of an order's life between two different event types, written `FROM->TO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Transition {
    pub from: OrderEventType,
    pub to: OrderEventType,
}

impl Transition {
    /// Parses `FROM->TO` (e.g. `CREATED->CONFIRMED`); `None` unless both are order event types
    /// and they differ.
    pub fn parse(text: &str) -> Option<Self> {
        let (from, to) = text.split_once("->")?;
        let from: OrderEventType = serde_json::from_value(from.into()).ok()?;
        let to: OrderEventType = serde_json::from_value(to.into()).ok()?;
        (from != to).then_some(Self { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_parse_between_two_different_event_types() {
        assert_eq!(
            Transition::parse("CREATED->CONFIRMED"),
            Some(Transition {
                from: OrderEventType::Created,
                to: OrderEventType::Confirmed
            })
        );
        for bad in [
            "CREATED->CREATED",
            "CREATED->NOPE",
            "CREATED",
            "created->confirmed",
        ] {
            assert_eq!(Transition::parse(bad), None, "{bad}");
        }
    }
}
