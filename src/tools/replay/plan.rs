//! What replay reads: each partition's range (from `--from` to the high watermark seen at
//! start), read by a [`RangeReader`], a consumer that joins no group, up to those ends. The
//! `dead-letters` and `status` commands plan and read the same way.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::StartFrom;
use crate::config::Settings;
use crate::domain::PartitionRange;
use crate::retry::{Backoff, RetryPolicy};
use crate::source;

/// Offsets read per partition, as the summaries print them: `[0] 120..400 [1] 7..7`.
pub(crate) fn offsets_read<'a>(ranges: impl IntoIterator<Item = &'a PartitionRange>) -> String {
    let ranges: Vec<String> = ranges
        .into_iter()
        .map(|r| format!("[{}] {}..{}", r.partition, r.start, r.end))
        .collect();
    ranges.join(" ")
}

/// Each partition's range: from `from` to the high watermark now. A topic the broker does not
/// have is an error naming it and the broker.
pub(crate) async fn plan_ranges(
    settings: &Settings,
    topics: &[String],
    from: StartFrom,
) -> anyhow::Result<Vec<PartitionRange>> {
    let consumer = replay_consumer(settings)?;
    let topics = topics.to_vec();
    let brokers = settings.kafka.brokers.clone();
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
                "topic {topic} does not exist at {brokers} (check the topic name, or create it)"
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
fn replay_consumer(settings: &Settings) -> anyhow::Result<StreamConsumer> {
    source::consumer_config(&settings.kafka)
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

/// Reads ranges of one topic, each up to its end, with a consumer that joins no group.
pub(crate) struct RangeReader {
    consumer: StreamConsumer,
    topic: String,
    /// Partitions not yet at their end → their end.
    remaining: HashMap<i32, i64>,
    last_check: Instant,
    backoff: Backoff,
    /// Never cancelled: readers have no graceful stop (Ctrl-C ends the process), so their
    /// waits after a Kafka error are never cut short.
    never: CancellationToken,
}

impl RangeReader {
    /// Assigns the non-empty `ranges` (all of one topic) at their starts.
    pub fn assign(settings: &Settings, ranges: &[PartitionRange]) -> anyhow::Result<Self> {
        let consumer = replay_consumer(settings)?;
        let topic = ranges.first().map(|r| r.topic.clone()).unwrap_or_default();
        let mut tpl = TopicPartitionList::new();
        let mut remaining = HashMap::new();
        for range in ranges.iter().filter(|r| !r.is_empty()) {
            tpl.add_partition_offset(&topic, range.partition, Offset::Offset(range.start))?;
            remaining.insert(range.partition, range.end);
        }
        if tpl.count() > 0 {
            consumer.assign(&tpl)?;
        }
        Ok(Self {
            consumer,
            topic,
            remaining,
            last_check: Instant::now(),
            backoff: RetryPolicy::REPLAY_CONSUME.backoff(),
            never: CancellationToken::new(),
        })
    }

    /// The next message inside the ranges; `None` once every partition reached its end. Kafka
    /// errors are logged and waited out.
    pub async fn next(&mut self) -> Option<OwnedMessage> {
        while !self.remaining.is_empty() {
            // A partition whose end is a transaction marker or a compacted gap never delivers
            // its last offset; the consumer's position tells, checked every second.
            if self.last_check.elapsed() >= Duration::from_secs(1) {
                self.last_check = Instant::now();
                finish(&self.consumer, &self.topic, &mut self.remaining, |_, _| {
                    false
                });
                if self.remaining.is_empty() {
                    break;
                }
            }
            let message =
                match tokio::time::timeout(Duration::from_secs(1), self.consumer.recv()).await {
                    Ok(Ok(message)) => message.detach(),
                    Ok(Err(error)) => {
                        let topic = &self.topic;
                        tracing::warn!(%error, topic, "Kafka error while reading; retrying.");
                        self.backoff.wait(&self.never).await;
                        continue;
                    }
                    Err(_) => continue,
                };
            let partition = message.partition();
            let Some(end) = self.remaining.get(&partition).copied() else {
                continue;
            };
            if message.offset() + 1 >= end {
                finish(&self.consumer, &self.topic, &mut self.remaining, |p, _| {
                    p == partition
                });
            }
            if message.offset() < end {
                return Some(message);
            }
        }
        None
    }
}

/// Marks partitions finished: those `done(partition, position)` selects (the position is the
/// consumer's next offset, if known) or whose position reached their end; pauses them so a
/// finished partition stops fetching while others go on.
fn finish(
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
