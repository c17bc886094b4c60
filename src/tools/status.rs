//! `status`: how far the consumer group has come in each partition of the topics the worker
//! reads: the next offset stored in Postgres (the worker's own progress, not Kafka's committed
//! offset), the broker's end offset (high watermark) and the lag between them. Reads only.

use std::collections::HashMap;
use std::fmt;

use anyhow::Context;

use super::replay::plan::plan_ranges;
use super::replay::StartFrom;
use super::table::{Align, Table};
use crate::config::Settings;
use crate::sink;

/// One partition's progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    /// The first offset the broker still holds (low watermark).
    pub log_start: i64,
    /// The next offset stored for the group; `None`: the worker has committed nothing here.
    pub stored: Option<i64>,
    /// The offset after the last message (high watermark).
    pub end: i64,
}

impl PartitionStatus {
    /// Messages the worker has yet to read, counted from where it will start: the stored
    /// offset, or the log's start when nothing is stored, when retention deleted the stored
    /// offset, or when the stored offset is beyond the end (a recreated topic: the worker reads
    /// the log again from its start).
    pub fn lag(&self) -> i64 {
        let from = match self.stored {
            Some(stored) if (self.log_start..=self.end).contains(&stored) => stored,
            _ => self.log_start,
        };
        (self.end - from).max(0)
    }

    /// Why the lag is not `end - stored`, when it is not.
    fn note(&self) -> &'static str {
        match self.stored {
            None => "nothing stored: starts at the log start",
            Some(stored) if stored > self.end => "stored beyond the end: rereads from the start",
            Some(stored) if stored < self.log_start => "stored offset deleted by retention",
            Some(_) => "",
        }
    }
}

/// The group's progress in every partition of the orders and configuration topics.
#[derive(Clone, Debug)]
pub struct Status {
    pub group: String,
    /// Where the offsets were read (password redacted).
    pub database: String,
    pub partitions: Vec<PartitionStatus>,
}

impl Status {
    pub fn total_lag(&self) -> i64 {
        self.partitions.iter().map(PartitionStatus::lag).sum()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "consumer group {}: offsets stored in {}, end offsets from the broker",
            self.group, self.database
        )?;
        let mut table = Table::new(&[
            ("topic", Align::Left),
            ("partition", Align::Right),
            ("log start", Align::Right),
            ("stored", Align::Right),
            ("end", Align::Right),
            ("lag", Align::Right),
            ("", Align::Left),
        ]);
        for p in &self.partitions {
            table.push(vec![
                p.topic.clone(),
                p.partition.to_string(),
                p.log_start.to_string(),
                p.stored
                    .map_or_else(|| "none".to_owned(), |s| s.to_string()),
                p.end.to_string(),
                p.lag().to_string(),
                p.note().to_owned(),
            ]);
        }
        writeln!(f, "{table}")?;
        write!(
            f,
            "total lag: {} messages in {} partitions",
            self.total_lag(),
            self.partitions.len()
        )
    }
}

/// Reads the partitions from the broker, then the stored offsets from Postgres, then the end
/// offsets: in that order, a worker committing meanwhile never makes a stored offset look
/// beyond its end.
pub async fn status(settings: &Settings) -> anyhow::Result<Status> {
    let kafka = &settings.kafka;
    let topics = [kafka.orders_topic.clone(), kafka.config_topic.clone()];
    let known = plan_ranges(settings, &topics, StartFrom::Earliest).await?;
    let pool = sink::connect_worker(&settings.database).await?;
    let database = settings.database.url.to_string();
    let mut stored: HashMap<(String, i32), i64> = HashMap::new();
    for topic in &topics {
        let ids: Vec<i32> = known
            .iter()
            .filter(|r| &r.topic == topic)
            .map(|r| r.partition)
            .collect();
        let offsets = sink::load_stored_offsets(&pool, &kafka.group_id, topic, &ids)
            .await
            .with_context(|| {
                format!(
                    "reading stored offsets from {database} (is the database migrated? run \
                     `tenantstream migrate`)"
                )
            })?;
        stored.extend(offsets.into_iter().map(|(p, o)| ((topic.clone(), p), o)));
    }
    pool.close().await;
    let ends = plan_ranges(settings, &topics, StartFrom::Earliest).await?;
    let partitions = ends
        .into_iter()
        .map(|r| PartitionStatus {
            stored: stored.get(&(r.topic.clone(), r.partition)).copied(),
            topic: r.topic,
            partition: r.partition,
            log_start: r.start,
            end: r.end,
        })
        .collect();
    Ok(Status {
        group: kafka.group_id.clone(),
        database,
        partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(log_start: i64, stored: Option<i64>, end: i64) -> PartitionStatus {
        PartitionStatus {
            topic: "orders".into(),
            partition: 0,
            log_start,
            stored,
            end,
        }
    }

    #[test]
    fn lag_counts_from_where_the_worker_will_start() {
        assert_eq!(partition(0, Some(40), 100).lag(), 60);
        assert_eq!(partition(0, Some(100), 100).lag(), 0);
        assert_eq!(partition(10, None, 100).lag(), 90, "nothing stored");
        assert_eq!(
            partition(10, Some(5), 100).lag(),
            90,
            "deleted by retention"
        );
        assert_eq!(partition(10, Some(500), 100).lag(), 90, "a recreated topic");
        assert_eq!(partition(0, None, 0).lag(), 0, "an empty partition");
    }

    #[test]
    fn the_table_says_none_for_nothing_stored_and_totals_the_lag() {
        let status = Status {
            group: "tenantstream".into(),
            database: "postgres://tenantstream_worker@db/tenantstream".into(),
            partitions: vec![partition(0, Some(40), 100), partition(0, None, 7)],
        };
        let text = status.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "topic   partition  log start  stored  end  lag");
        assert_eq!(lines[2], "orders          0          0      40  100   60");
        assert_eq!(
            lines[3],
            "orders          0          0    none    7    7  nothing stored: starts at the log start"
        );
        assert_eq!(lines[4], "total lag: 67 messages in 2 partitions");
    }
}
