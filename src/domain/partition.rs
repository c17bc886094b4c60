//! Kafka positions, named: a topic's partition and a range of its offsets.

use std::fmt;

/// One partition of one topic.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// The offsets `start..end` of one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionRange {
    pub topic: String,
    pub partition: i32,
    /// The first offset in the range.
    pub start: i64,
    /// The offset after the last one in the range.
    pub end: i64,
}

impl PartitionRange {
    /// How many offsets the range holds (0 when empty).
    pub fn len(&self) -> i64 {
        (self.end - self.start).max(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
