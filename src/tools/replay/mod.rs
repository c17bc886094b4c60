//! Replay: rebuilds Redis from the topics (`tenantstream replay`).
//!
//! Guarantee: replay reads with its own consumer, by assignment (it joins no group and commits
//! nothing, so the live worker's offsets never move), and stops at the end offsets it saw when it
//! started. The events it reads say which keys to rebuild; the values come from the committed
//! rows in Postgres through the same functions the live path uses, written with the same version
//! checks, so replaying beside the live worker never puts an older value over a newer one.
//! Postgres is written only with `--rewrite-db` (idempotent through the version guard).
//!
//! Replay retires nothing by itself (a suspension retired its keyspace when the live worker
//! applied it); `--flush` retires each keyspace before rebuilding it, which is why it needs every
//! topic from the earliest offset. The configuration topic is replayed first.

pub(crate) mod plan;
mod progress;
mod replayer;

use std::time::{Instant, SystemTime};

use uuid::Uuid;

use crate::config::Settings;
use crate::domain::{Keyspace, PartitionRange, ValidConfig, ValidOrder};
use plan::plan_ranges;
use progress::Progress;
use replayer::{Replayer, RunState};

/// Where replay starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    Earliest,
    /// The first offset whose timestamp is at or after this time.
    Time(SystemTime),
}

impl std::str::FromStr for StartFrom {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "earliest" {
            return Ok(Self::Earliest);
        }
        humantime::parse_rfc3339_weak(s)
            .map(Self::Time)
            .map_err(|e| {
                format!("{s:?} is neither \"earliest\" nor an RFC 3339 time such as 2026-11-27T10:00:00Z ({e})")
            })
    }
}

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Topics to read; the configuration topic is always read first.
    pub topics: Vec<String>,
    pub from: StartFrom,
    /// Only this tenant's keys (shared keys are left alone).
    pub tenant: Option<Uuid>,
    /// Retire each affected keyspace (bump its generation) before rebuilding it.
    pub flush: bool,
    /// Read and count, but write nothing.
    pub dry_run: bool,
    /// Write the events to Postgres first (the version guard keeps newer rows).
    pub rewrite_db: bool,
    /// Events read before their keys are rebuilt (in slices of a tenth of it, at most 2,000
    /// keys, up to three at once).
    pub chunk: usize,
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReplaySummary {
    pub events_read: u64,
    /// Events of other tenants (with `--tenant`).
    pub filtered: u64,
    /// Events that do not decode or validate (the live worker dead-letters them).
    pub dead: u64,
    pub keys_written: u64,
    pub skipped_older: u64,
    /// Keys named by events but without a row in Postgres (not yet written by the live worker).
    pub missing_rows: u64,
    /// Keyspaces retired by `--flush`.
    pub keyspaces_flushed: u64,
    /// Rows `--rewrite-db` wrote because they were newer than Postgres's.
    pub rows_rewritten: u64,
    /// Each partition's offsets, as planned at start.
    pub ranges: Vec<PartitionRange>,
    pub seconds: f64,
    /// A dry run: the keys were counted, not written.
    pub dry_run: bool,
    /// `--tenant`: the tenant the replay was limited to.
    pub tenant: Option<Uuid>,
}

impl std::fmt::Display for ReplaySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = self.events_read as f64 / self.seconds.max(1e-9);
        let dry = if self.dry_run { " (dry run)" } else { "" };
        writeln!(
            f,
            "replayed {} events in {:.1} s ({rate:.0} events/s){dry}",
            self.events_read, self.seconds
        )?;
        if self.dry_run {
            writeln!(f, "  keys it would write: {}", self.keys_written)?;
        } else {
            writeln!(f, "  keys written:        {}", self.keys_written)?;
            writeln!(f, "  skipped as older:    {}", self.skipped_older)?;
        }
        writeln!(f, "  dead letters:        {}", self.dead)?;
        writeln!(f, "  other tenants:       {}", self.filtered)?;
        writeln!(f, "  no row in Postgres:  {}", self.missing_rows)?;
        writeln!(f, "  keyspaces flushed:   {}", self.keyspaces_flushed)?;
        write!(f, "  rows rewritten:      {}", self.rows_rewritten)?;
        // The offsets `--from` resolved to, so that a wrong answer of the broker shows.
        let mut topics: Vec<&str> = self.ranges.iter().map(|r| r.topic.as_str()).collect();
        topics.dedup();
        for topic in topics {
            let ranges = plan::offsets_read(self.ranges.iter().filter(|r| r.topic == topic));
            write!(f, "\n  offsets read, {topic}: {ranges}")?;
        }
        if let Some(tenant) = self.tenant.filter(|_| self.tenant_events() == 0) {
            write!(
                f,
                "\nwarning: no event of tenant {tenant} in the replayed offsets (check the id, \
                 and --from and --topic)"
            )?;
        }
        Ok(())
    }
}

impl ReplaySummary {
    /// Events of the tenant the replay was limited to (or of every tenant), decoded or not.
    fn tenant_events(&self) -> u64 {
        self.events_read.saturating_sub(self.filtered)
    }
}

/// Replays `options.topics` and returns the summary. Progress: a bar on a terminal, a line every
/// few seconds otherwise.
pub async fn run(settings: &Settings, options: &ReplayOptions) -> anyhow::Result<ReplaySummary> {
    let started = Instant::now();
    let replay = Replayer::connect(settings, options).await?;
    let mut summary = ReplaySummary {
        dry_run: options.dry_run,
        tenant: options.tenant,
        ..Default::default()
    };
    let topics = ordered_topics(settings, options)?;
    if options.flush && (options.from != StartFrom::Earliest || topics.len() < 2) {
        anyhow::bail!(
            "--flush retires whole keyspaces, so it must rebuild them from every topic from the \
             earliest offset: drop --topic and --from, or drop --flush"
        );
    }
    let plans = plan_ranges(settings, &topics, options.from).await?;
    let total: i64 = plans.iter().map(PartitionRange::len).sum();
    summary.ranges = plans.clone();
    let progress = Progress::new(total.max(0) as u64, options.dry_run);
    let mut state = RunState::default();
    if let (Some(tenant), true, false) = (options.tenant, options.flush, options.dry_run) {
        replay
            .flush(&mut state, Keyspace::Tenant(tenant), &mut summary)
            .await?;
    }
    for topic in &topics {
        let ranges: Vec<_> = plans
            .iter()
            .filter(|r| &r.topic == topic)
            .cloned()
            .collect();
        if topic == &settings.kafka.config_topic {
            replay
                .replay_topic::<ValidConfig>(&ranges, &mut state, &mut summary, &progress)
                .await?;
        } else {
            replay
                .replay_topic::<ValidOrder>(&ranges, &mut state, &mut summary, &progress)
                .await?;
        }
    }
    progress.finish();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The configuration topic first, then the rest as given; every topic must be one the worker
/// reads.
fn ordered_topics(settings: &Settings, options: &ReplayOptions) -> anyhow::Result<Vec<String>> {
    let known = [&settings.kafka.config_topic, &settings.kafka.orders_topic];
    let mut topics: Vec<String> = if options.topics.is_empty() {
        known.iter().map(|t| t.to_string()).collect()
    } else {
        options.topics.clone()
    };
    for topic in &topics {
        anyhow::ensure!(
            known.contains(&topic),
            "--topic {topic}: replay reads the orders topic ({}) and the configuration topic ({})",
            settings.kafka.orders_topic,
            settings.kafka.config_topic
        );
    }
    topics.sort_by_key(|t| t != &settings.kafka.config_topic);
    topics.dedup();
    Ok(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_parses_earliest_and_rfc3339_and_names_bad_input() {
        assert_eq!("earliest".parse::<StartFrom>(), Ok(StartFrom::Earliest));
        assert!(matches!(
            "2026-11-27T10:00:00Z".parse::<StartFrom>(),
            Ok(StartFrom::Time(_))
        ));
        let err = "yesterday".parse::<StartFrom>().unwrap_err();
        assert!(err.contains("yesterday"), "{err}");
    }

    #[test]
    fn configuration_topic_goes_first_and_unknown_topics_are_refused() {
        let settings = Settings::default();
        let options = ReplayOptions {
            topics: vec!["orders".into(), "config-changes".into()],
            from: StartFrom::Earliest,
            tenant: None,
            flush: false,
            dry_run: false,
            rewrite_db: false,
            chunk: 10,
        };
        assert_eq!(
            ordered_topics(&settings, &options).unwrap(),
            vec!["config-changes", "orders"]
        );
        let bad = ReplayOptions {
            topics: vec!["dead-letters".into()],
            ..options
        };
        let err = ordered_topics(&settings, &bad).unwrap_err().to_string();
        assert!(err.contains("dead-letters"), "{err}");
    }

    #[test]
    fn the_summary_says_what_a_dry_run_would_write_and_warns_of_an_absent_tenant() {
        let tenant = Uuid::new_v4();
        let dry = ReplaySummary {
            events_read: 10,
            filtered: 10,
            keys_written: 0,
            dry_run: true,
            tenant: Some(tenant),
            ..Default::default()
        };
        let text = dry.to_string();
        assert!(text.contains("keys it would write: 0"), "{text}");
        assert!(!text.contains("keys written"), "{text}");
        assert!(
            text.contains(&format!("no event of tenant {tenant}")),
            "{text}"
        );
        let found = ReplaySummary {
            filtered: 7,
            keys_written: 3,
            dry_run: false,
            ..dry
        };
        let text = found.to_string();
        assert!(text.contains("keys written:        3"), "{text}");
        assert!(!text.contains("warning"), "{text}");
        let range = |partition, start, end| PartitionRange {
            topic: "orders".into(),
            partition,
            start,
            end,
        };
        let from_time = ReplaySummary {
            ranges: vec![range(0, 120, 400), range(1, 7, 7)],
            ..found
        };
        let text = from_time.to_string();
        assert!(
            text.contains("offsets read, orders: [0] 120..400 [1] 7..7"),
            "{text}"
        );
    }
}
