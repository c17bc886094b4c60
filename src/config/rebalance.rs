//! Which rebalance protocol the consumer group uses (README "Rebalancing").

use serde::{Deserialize, Serialize};

/// How partitions move between the workers of a group when one joins or leaves. Every worker
/// of a group must use the same one: librdkafka does not mix eager and cooperative assignors,
/// so switching means stopping every worker of the group first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RebalanceProtocol {
    /// Every rebalance revokes every partition of every worker, then assigns them all again
    /// (librdkafka's default `partition.assignment.strategy`, `range,roundrobin`).
    #[default]
    Eager,
    /// The `cooperative-sticky` assignor: a rebalance revokes only the partitions that move;
    /// the others go on being processed.
    Cooperative,
}

impl RebalanceProtocol {
    /// The names accepted by [`RebalanceProtocol::from_str`](std::str::FromStr::from_str).
    pub const NAMES: [&'static str; 2] = ["eager", "cooperative"];

    /// librdkafka's `partition.assignment.strategy` for it; `None`: librdkafka's default.
    pub fn assignment_strategy(self) -> Option<&'static str> {
        match self {
            Self::Eager => None,
            Self::Cooperative => Some("cooperative-sticky"),
        }
    }
}

impl std::fmt::Display for RebalanceProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Eager => "eager",
            Self::Cooperative => "cooperative",
        })
    }
}

impl std::str::FromStr for RebalanceProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "eager" => Ok(Self::Eager),
            "cooperative" => Ok(Self::Cooperative),
            other => Err(format!(
                "{other:?} is neither \"eager\" nor \"cooperative\""
            )),
        }
    }
}
