//! `dead-letters`: what the dead-letter topic holds: how many, how many of each error code, and
//! the newest few with their reasons and the source message they stand for. Reads only, with a
//! consumer that joins no group (as replay does), each partition from its first offset to the
//! end it saw at start; `--follow` then prints each new dead letter as it arrives.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;

use super::replay::plan::{offsets_read, plan_ranges, RangeReader};
use super::replay::StartFrom;
use super::table::{Align, Table};
use crate::config::Settings;
use crate::domain::PartitionRange;
use crate::pipeline::dead_letter::{
    header_text, HEADER_ERROR_CODE, HEADER_ERROR_REASON, HEADER_ERROR_SQLSTATE, HEADER_ERROR_STAGE,
    HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC,
};

/// Shown for a header a dead letter lacks (a message some other producer wrote to the topic).
const ABSENT: &str = "-";

/// Reasons longer than this are cut in listings (a reason can be up to 1 KiB).
const MAX_SHOWN_REASON_CHARS: usize = 200;

/// One dead letter, as its headers describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterEntry {
    /// The dead letter's own partition and offset in the dead-letter topic.
    pub partition: i32,
    pub offset: i64,
    /// When it was dead-lettered (ms since the epoch), if the broker says.
    pub timestamp_ms: Option<i64>,
    pub code: Option<String>,
    pub stage: Option<String>,
    pub reason: Option<String>,
    /// The SQLSTATE of a row Postgres rejected.
    pub sqlstate: Option<String>,
    pub source_topic: Option<String>,
    pub source_partition: Option<String>,
    pub source_offset: Option<String>,
}

impl DeadLetterEntry {
    pub fn from_message(message: &OwnedMessage) -> Self {
        let header = |key: &str| {
            message
                .headers()
                .and_then(|h| header_text(h, key))
                .map(str::to_owned)
        };
        Self {
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
            code: header(HEADER_ERROR_CODE),
            stage: header(HEADER_ERROR_STAGE),
            reason: header(HEADER_ERROR_REASON),
            sqlstate: header(HEADER_ERROR_SQLSTATE),
            source_topic: header(HEADER_SOURCE_TOPIC),
            source_partition: header(HEADER_SOURCE_PARTITION),
            source_offset: header(HEADER_SOURCE_OFFSET),
        }
    }

    /// The error code, with the SQLSTATE of a row Postgres rejected.
    fn code_shown(&self) -> String {
        let code = self.code.as_deref().unwrap_or(ABSENT);
        match &self.sqlstate {
            Some(sqlstate) => format!("{code} ({sqlstate})"),
            None => code.to_owned(),
        }
    }

    /// `topic/partition@offset` of the source message.
    fn source_shown(&self) -> String {
        let part = |value: &Option<String>| value.as_deref().unwrap_or(ABSENT).to_owned();
        format!(
            "{}/{}@{}",
            part(&self.source_topic),
            part(&self.source_partition),
            part(&self.source_offset)
        )
    }

    /// The reason on one line, cut to [`MAX_SHOWN_REASON_CHARS`].
    fn reason_shown(&self) -> String {
        let reason = self.reason.as_deref().unwrap_or(ABSENT);
        let mut shown: String = reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(MAX_SHOWN_REASON_CHARS)
            .collect();
        if reason.chars().count() > MAX_SHOWN_REASON_CHARS {
            shown.push('…');
        }
        shown
    }

    fn time_shown(&self) -> String {
        self.timestamp_ms
            .and_then(|ms| u64::try_from(ms).ok())
            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
            .map_or_else(
                || ABSENT.to_owned(),
                |t| humantime::format_rfc3339_seconds(t).to_string(),
            )
    }

    const COLUMNS: [(&'static str, Align); 7] = [
        ("partition", Align::Right),
        ("offset", Align::Right),
        ("time", Align::Left),
        ("code", Align::Left),
        ("stage", Align::Left),
        ("source (topic/partition@offset)", Align::Left),
        ("reason", Align::Left),
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.partition.to_string(),
            self.offset.to_string(),
            self.time_shown(),
            self.code_shown(),
            self.stage.as_deref().unwrap_or(ABSENT).to_owned(),
            self.source_shown(),
            self.reason_shown(),
        ]
    }

    /// The entry on one line, as `--follow` prints it.
    pub fn line(&self) -> String {
        self.cells().join("  ")
    }
}

/// What the dead-letter topic held when the command started.
#[derive(Clone, Debug, Default)]
pub struct DeadLetterSummary {
    pub topic: String,
    /// Each partition's offsets read.
    pub ranges: Vec<PartitionRange>,
    pub total: u64,
    /// Dead letters by error code (`-`: no code header).
    pub by_code: HashMap<String, u64>,
    /// The newest dead letters (by time, then position), oldest first.
    pub last: Vec<DeadLetterEntry>,
}

impl DeadLetterSummary {
    /// Counts by code, most first (ties by code).
    pub fn codes(&self) -> Vec<(&str, u64)> {
        let mut codes: Vec<(&str, u64)> =
            self.by_code.iter().map(|(c, n)| (c.as_str(), *n)).collect();
        codes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        codes
    }
}

impl fmt::Display for DeadLetterSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "dead-letter topic {}: {} dead letters (offsets read: {})",
            self.topic,
            self.total,
            offsets_read(&self.ranges)
        )?;
        if self.total == 0 {
            return Ok(());
        }
        let mut codes = Table::new(&[("code", Align::Left), ("count", Align::Right)]);
        for (code, count) in self.codes() {
            codes.push(vec![code.to_owned(), count.to_string()]);
        }
        writeln!(f, "\nby error code:\n{}", indented(&codes))?;
        if self.last.is_empty() {
            return Ok(());
        }
        let mut last = Table::new(&DeadLetterEntry::COLUMNS);
        for entry in &self.last {
            last.push(entry.cells());
        }
        write!(
            f,
            "\nlast {}, oldest first:\n{}",
            self.last.len(),
            indented(&last)
        )
    }
}

fn indented(table: &Table) -> String {
    table
        .to_string()
        .lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads the dead-letter topic from its start to the end seen now; keeps the newest `last`.
pub async fn summarise(settings: &Settings, last: usize) -> anyhow::Result<DeadLetterSummary> {
    let topic = settings.kafka.dead_letter_topic.clone();
    let ranges = plan_ranges(settings, std::slice::from_ref(&topic), StartFrom::Earliest)
        .await
        .context(
            "reading the dead-letter topic (set by --dead-letter-topic or \
             TENANTSTREAM_DEAD_LETTER_TOPIC)",
        )?;
    let mut summary = DeadLetterSummary {
        topic,
        ranges: ranges.clone(),
        ..Default::default()
    };
    let mut newest: BTreeMap<(i64, i32, i64), DeadLetterEntry> = BTreeMap::new();
    let mut reader = RangeReader::assign(settings, &ranges)?;
    while let Some(message) = reader.next().await {
        let entry = DeadLetterEntry::from_message(&message);
        summary.total += 1;
        let code = entry.code.clone().unwrap_or_else(|| ABSENT.to_owned());
        *summary.by_code.entry(code).or_default() += 1;
        if last > 0 {
            let at = (
                entry.timestamp_ms.unwrap_or(-1),
                entry.partition,
                entry.offset,
            );
            newest.insert(at, entry);
            if newest.len() > last {
                newest.pop_first();
            }
        }
    }
    summary.last = newest.into_values().collect();
    Ok(summary)
}

/// After `summary`, calls `print` with each dead letter that arrives, until the process ends.
/// Partitions added to the topic since the summary are not followed.
pub async fn follow(
    settings: &Settings,
    summary: &DeadLetterSummary,
    mut print: impl FnMut(&DeadLetterEntry),
) -> anyhow::Result<()> {
    let from_ends: Vec<PartitionRange> = summary
        .ranges
        .iter()
        .map(|r| PartitionRange {
            start: r.end,
            end: i64::MAX,
            ..r.clone()
        })
        .collect();
    let mut reader = RangeReader::assign(settings, &from_ends)?;
    while let Some(message) = reader.next().await {
        print(&DeadLetterEntry::from_message(&message));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, OwnedHeaders, Timestamp};

    use super::*;

    fn dead_letter(code: &str, reason: &str) -> OwnedMessage {
        let headers = [
            (HEADER_ERROR_CODE, code),
            (HEADER_ERROR_STAGE, "validate"),
            (HEADER_ERROR_REASON, reason),
            (HEADER_SOURCE_TOPIC, "orders"),
            (HEADER_SOURCE_PARTITION, "3"),
            (HEADER_SOURCE_OFFSET, "1207"),
        ]
        .into_iter()
        .fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value),
            })
        });
        OwnedMessage::new(
            None,
            None,
            "dead-letters".into(),
            Timestamp::CreateTime(1_790_000_000_000),
            0,
            42,
            Some(headers),
        )
    }

    #[test]
    fn an_entry_reads_its_headers_and_shows_one_line() {
        let entry = DeadLetterEntry::from_message(&dead_letter(
            "invalid_field",
            "currency: \"XX\"\nis not ISO 4217",
        ));
        assert_eq!(entry.source_offset.as_deref(), Some("1207"));
        assert_eq!(
            entry.line(),
            "0  42  2026-09-21T14:13:20Z  invalid_field  validate  orders/3@1207  \
             currency: \"XX\" is not ISO 4217"
        );
        let long = DeadLetterEntry::from_message(&dead_letter("x", &"é".repeat(500)));
        assert_eq!(
            long.reason_shown().chars().count(),
            MAX_SHOWN_REASON_CHARS + 1
        );
        let bare = OwnedMessage::new(None, None, "dl".into(), Timestamp::NotAvailable, 1, 7, None);
        let bare = DeadLetterEntry::from_message(&bare);
        assert_eq!(bare.line(), "1  7  -  -  -  -/-@-  -");
    }

    #[test]
    fn codes_are_listed_most_first() {
        let summary = DeadLetterSummary {
            topic: "dead-letters".into(),
            ranges: vec![PartitionRange {
                topic: "dead-letters".into(),
                partition: 0,
                start: 0,
                end: 9,
            }],
            total: 9,
            by_code: [("undecodable", 2), ("invalid_field", 5), ("too_large", 2)]
                .into_iter()
                .map(|(c, n)| (c.to_owned(), n))
                .collect(),
            last: vec![],
        };
        assert_eq!(
            summary.codes(),
            [("invalid_field", 5), ("too_large", 2), ("undecodable", 2)]
        );
        let text = summary.to_string();
        assert!(
            text.starts_with(
                "dead-letter topic dead-letters: 9 dead letters (offsets read: [0] 0..9)"
            ),
            "{text}"
        );
        assert!(
            text.contains("  code           count\n  invalid_field      5\n"),
            "{text}"
        );
    }
}
