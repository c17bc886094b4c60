//! `tenantstream replay`: rebuilds Redis from the topics.
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

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use sqlx::PgPool;
use uuid::Uuid;

use crate::cache::{self, CacheItem, Keyspace, Ttl};
use crate::config::Settings;
use crate::decode::{Decoder, SchemaStore};
use crate::events::{unregistered_tenants, Event, ValidConfig, ValidOrder};
use crate::sink::{self, CacheRef};
use crate::worker::decode_event;

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
    /// Events per round of Postgres reads and Redis writes.
    pub chunk: usize,
}

/// Flags of `tenantstream replay`.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Replay")]
pub struct ReplayArgs {
    /// Topic to replay; repeat for several. Default: the configuration topic, then the orders
    /// topic.
    #[arg(long = "topic", value_name = "TOPIC")]
    pub topics: Vec<String>,
    /// Where to start in each partition: `earliest`, or an RFC 3339 time (the first message at
    /// or after it), e.g. 2026-11-27T10:00:00Z.
    #[arg(long, default_value = "earliest", value_name = "earliest|TIME")]
    pub from: StartFrom,
    /// Rebuild only this tenant's keys (shared keys are left alone).
    #[arg(long, value_name = "UUID")]
    pub tenant: Option<Uuid>,
    /// Retire each affected keyspace first (bump its generation; old keys expire by TTL).
    #[arg(long)]
    pub flush: bool,
    /// Read and count what would be rebuilt; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also write the events to Postgres (idempotent: newer rows are kept).
    #[arg(long)]
    pub rewrite_db: bool,
    /// Events per round of Postgres reads and Redis writes.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub chunk: u32,
}

impl From<&ReplayArgs> for ReplayOptions {
    fn from(args: &ReplayArgs) -> Self {
        Self {
            topics: args.topics.clone(),
            from: args.from,
            tenant: args.tenant,
            flush: args.flush,
            dry_run: args.dry_run,
            rewrite_db: args.rewrite_db,
            chunk: args.chunk as usize,
        }
    }
}

/// `tenantstream replay`: runs the replay and prints its summary.
pub async fn command(settings: &Settings, args: &ReplayArgs) -> anyhow::Result<()> {
    let summary = run(settings, &args.into()).await?;
    println!("{summary}");
    Ok(())
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
    /// Per partition: (topic, partition, start offset, end offset), as seen at start.
    pub ranges: Vec<(String, i32, i64, i64)>,
    pub seconds: f64,
}

impl std::fmt::Display for ReplaySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = self.events_read as f64 / self.seconds.max(1e-9);
        writeln!(
            f,
            "replayed {} events in {:.1} s ({rate:.0} events/s)",
            self.events_read, self.seconds
        )?;
        writeln!(f, "  keys written:        {}", self.keys_written)?;
        writeln!(f, "  skipped as older:    {}", self.skipped_older)?;
        writeln!(f, "  dead (undecodable):  {}", self.dead)?;
        writeln!(f, "  other tenants:       {}", self.filtered)?;
        writeln!(f, "  no row in Postgres:  {}", self.missing_rows)?;
        writeln!(f, "  keyspaces flushed:   {}", self.keyspaces_flushed)?;
        write!(f, "  rows rewritten:      {}", self.rows_rewritten)
    }
}

/// Replays `options.topics` and returns the summary. `progress` draws a bar on a terminal and
/// prints a line every few seconds otherwise.
pub async fn run(settings: &Settings, options: &ReplayOptions) -> anyhow::Result<ReplaySummary> {
    let started = Instant::now();
    let replay = Replayer::connect(settings, options).await?;
    let mut summary = ReplaySummary::default();
    let topics = ordered_topics(settings, options)?;
    if options.flush && (options.from != StartFrom::Earliest || topics.len() < 2) {
        anyhow::bail!(
            "--flush retires whole keyspaces, so it must rebuild them from every topic from the \
             earliest offset: drop --topic and --from, or drop --flush"
        );
    }
    let plans = plan_ranges(settings, &topics, options.from).await?;
    let total: i64 = plans.iter().map(|r| r.3 - r.2).sum();
    summary.ranges = plans.clone();
    let progress = Progress::new(total.max(0) as u64, options.dry_run);
    let mut state = RunState::default();
    if let (Some(tenant), true, false) = (options.tenant, options.flush, options.dry_run) {
        replay
            .flush(&mut state, Keyspace::Tenant(tenant), &mut summary)
            .await?;
    }
    for topic in &topics {
        let ranges: Vec<_> = plans.iter().filter(|r| &r.0 == topic).cloned().collect();
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

/// Each partition's (topic, partition, start, end): end is the high watermark now.
async fn plan_ranges(
    settings: &Settings,
    topics: &[String],
    from: StartFrom,
) -> anyhow::Result<Vec<(String, i32, i64, i64)>> {
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
                ranges.push((topic.clone(), partition, start, high));
            }
        }
        Ok(ranges)
    })
    .await?
}

/// A consumer that joins no group and commits nothing: it is only ever assigned partitions.
fn replay_consumer(settings: &Settings) -> anyhow::Result<StreamConsumer> {
    crate::source::client_config(&settings.kafka)
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

/// What this run has done so far.
#[derive(Default)]
struct RunState {
    /// Keyspaces already flushed.
    flushed: HashSet<Keyspace>,
    /// Keys already rebuilt: an order's later events name the same key again, and the row was
    /// read when it was rebuilt (anything newer since then, the live worker writes).
    rebuilt: HashSet<CacheRef>,
}

/// Bound on [`RunState::rebuilt`]; past it the set starts over (keys are then only rebuilt
/// again, which changes nothing).
const MAX_REMEMBERED_KEYS: usize = 2_000_000;

struct Replayer<'a> {
    settings: &'a Settings,
    options: &'a ReplayOptions,
    pool: PgPool,
    redis: fred::prelude::Client,
    store: Arc<SchemaStore>,
    ttl: Ttl,
}

impl<'a> Replayer<'a> {
    async fn connect(settings: &'a Settings, options: &'a ReplayOptions) -> anyhow::Result<Self> {
        let store = Arc::new(SchemaStore::load(
            &settings.schemas.dir,
            settings.schemas.registry_url.as_deref(),
        )?);
        let pool = sink::connect_worker(&settings.database).await?;
        sink::ensure_rls_applies(&pool).await?;
        let redis = cache::connect(settings.redis.url.expose())
            .await
            .with_context(|| format!("connecting to Redis at {}", settings.redis.url))?;
        Ok(Self {
            settings,
            options,
            pool,
            redis,
            store,
            ttl: (&settings.redis).into(),
        })
    }

    /// Reads `ranges` (one topic) to their ends, rebuilding a chunk of events at a time.
    async fn replay_topic<E>(
        &self,
        ranges: &[(String, i32, i64, i64)],
        state: &mut RunState,
        summary: &mut ReplaySummary,
        progress: &Progress,
    ) -> anyhow::Result<()>
    where
        E: Event,
        for<'r> sink::Rows<'r>: From<&'r [E]>,
    {
        let mut remaining: HashMap<i32, i64> = ranges
            .iter()
            .filter(|r| r.2 < r.3)
            .map(|r| (r.1, r.3))
            .collect();
        let Some((topic, ..)) = ranges.first() else {
            return Ok(());
        };
        if remaining.is_empty() {
            return Ok(());
        }
        let decoder = Decoder::new(self.store.clone(), E::SCHEMA_FILE)?;
        let consumer = replay_consumer(self.settings)?;
        let mut tpl = TopicPartitionList::new();
        for (_, partition, start, end) in ranges {
            if start < end {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*start))?;
            }
        }
        consumer.assign(&tpl)?;
        // Reading and decoding the next chunk overlaps rebuilding the previous one (Postgres
        // and Redis round trips); chunks are rebuilt one at a time, in order.
        let (chunks, mut to_rebuild) = tokio::sync::mpsc::channel::<Vec<E>>(1);
        let mut read = ReplaySummary::default();
        let reading = async {
            let mut chunk: Vec<E> = Vec::with_capacity(self.options.chunk);
            let mut last_check = Instant::now();
            while !remaining.is_empty() {
                // A partition whose end is a transaction marker or a compacted gap never
                // delivers its last offset; the consumer's position tells, checked every second.
                if last_check.elapsed() >= Duration::from_secs(1) {
                    last_check = Instant::now();
                    finish(&consumer, topic, &mut remaining, |_, _| false);
                    if remaining.is_empty() {
                        break;
                    }
                }
                let message =
                    match tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
                        Ok(Ok(message)) => message.detach(),
                        Ok(Err(error)) => {
                            tracing::warn!(%error, "Kafka error during replay; retrying.");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                        Err(_) => continue,
                    };
                let partition = message.partition();
                let Some(end) = remaining.get(&partition).copied() else {
                    continue;
                };
                if message.offset() >= end {
                    finish(&consumer, topic, &mut remaining, |p, _| p == partition);
                    continue;
                }
                if message.offset() + 1 >= end {
                    finish(&consumer, topic, &mut remaining, |p, _| p == partition);
                }
                read.events_read += 1;
                progress.inc();
                self.accept::<E>(&decoder, &message, &mut chunk, &mut read)
                    .await;
                if chunk.len() >= self.options.chunk
                    && chunks.send(std::mem::take(&mut chunk)).await.is_err()
                {
                    return; // the rebuild failed; its error is reported
                }
            }
            let _ = chunks.send(chunk).await;
            drop(chunks);
        };
        let rebuilding = async {
            while let Some(chunk) = to_rebuild.recv().await {
                if let Err(error) = self.rebuild(chunk, state, summary).await {
                    // Unblocks the reading side, whose next send now fails.
                    to_rebuild.close();
                    return Err(error);
                }
            }
            anyhow::Ok(())
        };
        let ((), rebuilt) = tokio::join!(reading, rebuilding);
        summary.events_read += read.events_read;
        summary.filtered += read.filtered;
        summary.dead += read.dead;
        rebuilt
    }

    async fn accept<E: Event>(
        &self,
        decoder: &Decoder,
        message: &OwnedMessage,
        chunk: &mut Vec<E>,
        summary: &mut ReplaySummary,
    ) {
        let mut backoff = Duration::from_millis(200);
        let decoded = loop {
            match decode_event::<E>(decoder, message).await {
                // The schema registry is down: wait for it, as the worker does.
                Err(error) if error.is_transient() => {
                    tracing::warn!(%error, "Cannot decode yet; retrying.");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                other => break other,
            }
        };
        match decoded {
            Ok(event)
                if self
                    .options
                    .tenant
                    .is_none_or(|t| event.tenant() == Some(t)) =>
            {
                chunk.push(event)
            }
            Ok(_) => summary.filtered += 1,
            Err(_) => summary.dead += 1,
        }
    }

    /// Rewrites rows if asked, then refreshes every key the events name from the current rows.
    async fn rebuild<E>(
        &self,
        events: Vec<E>,
        state: &mut RunState,
        summary: &mut ReplaySummary,
    ) -> anyhow::Result<()>
    where
        E: Event,
        for<'r> sink::Rows<'r>: From<&'r [E]>,
    {
        if events.is_empty() {
            return Ok(());
        }
        let mut events = events;
        if self.options.rewrite_db && !self.options.dry_run {
            let rewritten = self.rewrite(&mut events, summary).await?;
            summary.rows_rewritten += rewritten.len() as u64;
            // Rows this chunk changed must be read again, even if rebuilt before.
            for r in &rewritten {
                state.rebuilt.remove(r);
            }
        }
        if state.rebuilt.len() > MAX_REMEMBERED_KEYS {
            state.rebuilt.clear();
        }
        let mut refs: Vec<CacheRef> = events
            .iter()
            .map(|e| e.cache_ref())
            .filter(|r| !state.rebuilt.contains(r))
            .collect();
        refs.sort();
        refs.dedup();
        state.rebuilt.extend(refs.iter().cloned());
        if self.options.flush && !self.options.dry_run {
            // Retire before reading: a value the live worker writes into the old generation
            // meanwhile is then re-read here, never left newer than the rebuilt one.
            let mut spaces: Vec<Keyspace> = refs.iter().map(CacheRef::keyspace).collect();
            spaces.dedup();
            for space in spaces {
                if !state.flushed.contains(&space) {
                    self.flush(state, space, summary).await?;
                }
            }
        }
        if self.options.dry_run {
            let items = self.current_items(refs.clone()).await?;
            summary.missing_rows += (refs.len() - items.len()) as u64;
            summary.keys_written += items.len() as u64;
            return Ok(());
        }
        let total = refs.len();
        let (applied, found) = cache::refresh(&self.redis, refs, &self.ttl, |refs| async move {
            let mut items = self.current_items(refs).await?;
            // A suspension was applied (and its keyspace retired) by the live path when it
            // happened; a rebuild writes the current rows and retires nothing by itself.
            for item in &mut items {
                if let CacheItem::Profile { suspended, .. } = item {
                    *suspended = false;
                }
            }
            Ok(items)
        })
        .await
        .context("writing Redis")?;
        summary.missing_rows += (total - found) as u64;
        summary.keys_written += applied.written as u64;
        summary.skipped_older += applied.skipped_older as u64;
        Ok(())
    }

    async fn flush(
        &self,
        state: &mut RunState,
        space: Keyspace,
        summary: &mut ReplaySummary,
    ) -> anyhow::Result<()> {
        cache::bump_generations(&self.redis, &[(space, 0)])
            .await
            .context("retiring a keyspace")?;
        state.flushed.insert(space);
        summary.keyspaces_flushed += 1;
        Ok(())
    }

    /// Writes the events' rows (newer ones win), queueing their cache work for the live
    /// worker's drainer too. With strict tenants, events of unregistered tenants are dropped
    /// (counted dead: the worker dead-letters them). Returns the refs of the rows written.
    async fn rewrite<E>(
        &self,
        events: &mut Vec<E>,
        summary: &mut ReplaySummary,
    ) -> anyhow::Result<Vec<CacheRef>>
    where
        E: Event,
        for<'r> sink::Rows<'r>: From<&'r [E]>,
    {
        let strict = self.settings.tenants.strict;
        if strict {
            let required = unregistered_tenants(events.iter());
            let known = sink::known_tenants(&self.pool, &required).await?;
            let before = events.len();
            events.retain(|e| {
                e.tenant()
                    .is_none_or(|t| known.contains(&t) || required.binary_search(&t).is_err())
            });
            summary.dead += (before - events.len()) as u64;
        }
        sink::rewrite_rows(
            &self.pool,
            &self.settings.kafka.group_id,
            events.as_slice().into(),
            !strict,
        )
        .await
        .context("rewriting rows in Postgres")
    }

    /// The current rows behind `refs`, each tenant's read under its own context.
    async fn current_items(&self, refs: Vec<CacheRef>) -> Result<Vec<CacheItem>, sink::SinkError> {
        let mut tx = self.pool.begin().await?;
        let items = cache::read_current(&mut tx, &refs).await?;
        tx.rollback().await?;
        Ok(items)
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

/// Progress on a terminal (a bar with events/s and ETA) or as a line every 5 s.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    done: std::sync::atomic::AtomicU64,
    started: Instant,
    last_line: std::sync::Mutex<Instant>,
}

impl Progress {
    const LINE_EVERY: Duration = Duration::from_secs(5);

    fn new(total: u64, dry_run: bool) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix}[{bar:40}] {human_pos}/{human_len} events  {per_sec}  ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            if dry_run {
                bar.set_prefix("dry run ");
            }
            bar
        });
        if bar.is_none() {
            eprintln!(
                "replaying {total} events{}",
                if dry_run { " (dry run)" } else { "" }
            );
        }
        Self {
            bar,
            total,
            done: Default::default(),
            started: Instant::now(),
            last_line: std::sync::Mutex::new(Instant::now()),
        }
    }

    fn inc(&self) {
        let done = self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if let Some(bar) = &self.bar {
            bar.inc(1);
            return;
        }
        let mut last = self.last_line.lock().expect("progress lock");
        if last.elapsed() >= Self::LINE_EVERY {
            *last = Instant::now();
            let rate = done as f64 / self.started.elapsed().as_secs_f64();
            let eta = (self.total.saturating_sub(done)) as f64 / rate.max(1e-9);
            eprintln!(
                "replayed {done}/{} events ({rate:.0} events/s, ETA {eta:.0} s)",
                self.total
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
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
}
