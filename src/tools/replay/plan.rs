//! What replay reads: each partition's range (from `--from` to the high watermark seen at
//! start), with a consumer that joins no group, and when a partition is done.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};

use super::StartFrom;
use crate::config::Settings;
use crate::domain::PartitionRange;
use crate::source;

/// Each partition's range: from `from` to the high watermark now.
pub(super) async fn plan_ranges(
    settings: &Settings,
    topics: &[String],
    from: StartFrom,
) -> anyhow::Result<Vec<PartitionRange>> {
    let consumer = replay_consumer(settings)?;
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(10);
        let mut ranges = Vec::new();
        for topic in topics {
            let metadata = consumer
                .fetch_metadata(Some(&topic), timeout)
                .with_context(|| format!("reading the partitions of {topic}"))?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            anyhow::ensure!(
                !partitions.is_empty(),
                "topic {topic} has no partitions (does it exist?)"
            );
            let starts = match from {
                StartFrom::Earliest => None,
                StartFrom::Time(at) => {
                    let ms = at
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .context("--from is before 1970")?
                        .as_millis() as i64;
                    let mut tpl = TopicPartitionList::new();
                    for p in &partitions {
                        tpl.add_partition_offset(&topic, *p, Offset::Offset(ms))?;
                    }
                    Some(consumer.offsets_for_times(tpl, timeout)?)
                }
            };
            for partition in partitions {
                let (low, high) = consumer.fetch_watermarks(&topic, partition, timeout)?;
                let start = match &starts {
                    None => low,
                    Some(tpl) => match tpl.find_partition(&topic, partition).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => o.max(low),
                        // No message at or after the time: nothing to replay.
                        _ => high,
                    },
                };
                ranges.push(PartitionRange {
                    topic: topic.clone(),
                    partition,
                    start,
                    end: high,
                });
            }
        }
        Ok(ranges)
    })
    .await?
}

/// A consumer that joins no group and commits nothing: it is only ever assigned partitions.
pub(super) fn replay_consumer(settings: &Settings) -> anyhow::Result<StreamConsumer> {
    source::client_config(&settings.kafka)
        .set("group.id", format!("{}-replay", settings.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // A start offset already deleted by retention starts at the earliest kept one.
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "50")
        .create()
        .context("creating the replay consumer")
}

/// Marks partitions finished: those `done(partition, position)` selects (the position is the
/// consumer's next offset, if known) or whose position reached their end; pauses them so a
/// finished partition stops fetching while others go on.
pub(super) fn finish(
    consumer: &StreamConsumer,
    topic: &str,
    remaining: &mut HashMap<i32, i64>,
    done: impl Fn(i32, Option<i64>) -> bool,
) {
    let positions = consumer.position().ok();
    let mut finished = TopicPartitionList::new();
    remaining.retain(|partition, end| {
        let position = positions
            .as_ref()
            .and_then(|tpl| tpl.find_partition(topic, *partition))
            .and_then(|e| match e.offset() {
                Offset::Offset(p) => Some(p),
                _ => None,
            });
        let over = done(*partition, position) || position.is_some_and(|p| p >= *end);
        if over {
            finished.add_partition(topic, *partition);
        }
        !over
    });
    if finished.count() > 0 {
        if let Err(error) = consumer.pause(&finished) {
            tracing::debug!(%error, "Pausing finished partitions failed.");
        }
    }
}
