//! Reads one topic's ranges and rebuilds, a chunk of events at a time, the keys they name from
//! the committed rows (optionally rewriting the rows first).

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::Context;
use futures::StreamExt;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::plan::RangeReader;
use super::progress::Progress;
use super::{ReplayOptions, ReplaySummary};
use crate::cache::{self, Ttl};
use crate::config::Settings;
use crate::decode::{decode_message, Decoder, SchemaStore};
use crate::domain::{
    unregistered_tenants, CacheItem, CacheRef, Event, Keyspace, PartitionRange, TenantPolicy,
};
use crate::retry::{self, Classify, RetryPolicy};
use crate::sink::{self, Rows};
use crate::source;
use crate::validate::{KeyPolicy, Validate};

/// What this run has done so far.
#[derive(Default)]
pub(super) struct RunState {
    /// Keyspaces already flushed.
    flushed: HashSet<Keyspace>,
    /// Keys already rebuilt: an order's later events name the same key again, and the row was
    /// read when it was rebuilt (anything newer since then, the live worker writes).
    rebuilt: HashSet<CacheRef>,
}

/// Bound on [`RunState::rebuilt`]; past it the set starts over (keys are then only rebuilt
/// again, which changes nothing).
const MAX_REMEMBERED_KEYS: usize = 2_000_000;

/// Messages handed from the receiving task to decoding at once: at most this many, or the
/// first that reach [`RECEIVED_BATCH_BYTES`] of keys and values (up to 8 batches wait).
const RECEIVED_BATCH: usize = 1_000;
const RECEIVED_BATCH_BYTES: usize = 1 << 20;

/// Most keys per slice of a chunk (a slice is a tenth of the chunk's events, at least one
/// key): a slice's rows are read in one round trip and its keys written in pipelines.
const MAX_SLICE: usize = 2_000;

/// Slices refreshed at once (at most `database.max_connections`: each holds a connection
/// while it reads).
const SLICES_AT_ONCE: usize = 3;

/// What refreshing a slice of keys counted.
struct Refreshed {
    missing_rows: u64,
    keys_written: u64,
    skipped_older: u64,
}

pub(super) struct Replayer<'a> {
    settings: &'a Settings,
    options: &'a ReplayOptions,
    pool: PgPool,
    redis: fred::prelude::Client,
    store: Arc<SchemaStore>,
    ttl: Ttl,
    /// Never cancelled: replay has no graceful stop (Ctrl-C ends the process), so its waits for
    /// Kafka and the schema registry are never cut short.
    shutdown: CancellationToken,
}

impl<'a> Replayer<'a> {
    pub async fn connect(
        settings: &'a Settings,
        options: &'a ReplayOptions,
    ) -> anyhow::Result<Self> {
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
            shutdown: CancellationToken::new(),
        })
    }

    /// Reads `ranges` (one topic) to their ends, rebuilding a chunk of events at a time.
    pub async fn replay_topic<E>(
        &self,
        ranges: &[PartitionRange],
        state: &mut RunState,
        summary: &mut ReplaySummary,
        progress: &Progress,
    ) -> anyhow::Result<()>
    where
        E: Validate,
        for<'r> Rows<'r>: From<&'r [E]>,
    {
        if ranges.iter().all(PartitionRange::is_empty) {
            return Ok(());
        }
        let decoder = Decoder::new(self.store.clone(), E::SCHEMA_FILE, &self.settings.limits)?;
        let mut reader = RangeReader::assign(self.settings, ranges)?;
        // Receiving from Kafka runs in a task of its own, so that librdkafka's queue is drained
        // on another thread while this one decodes; messages come over in batches, in order.
        let (received, mut to_decode) = tokio::sync::mpsc::channel::<Vec<OwnedMessage>>(8);
        let receiving = tokio::spawn(async move {
            let (mut batch, mut bytes) = (Vec::with_capacity(RECEIVED_BATCH), 0);
            while let Some(message) = reader.next().await {
                bytes += source::message_bytes(&message);
                batch.push(message);
                if batch.len() >= RECEIVED_BATCH || bytes >= RECEIVED_BATCH_BYTES {
                    bytes = 0;
                    if received.send(std::mem::take(&mut batch)).await.is_err() {
                        return; // decoding stopped: the rebuild failed
                    }
                }
            }
            let _ = received.send(batch).await;
        });
        let stop_receiving = receiving.abort_handle();
        // Reading and decoding the next chunk overlaps rebuilding the previous one (Postgres
        // and Redis round trips); chunks are rebuilt one at a time, in order.
        let (chunks, mut to_rebuild) = tokio::sync::mpsc::channel::<Vec<E>>(1);
        let mut read = ReplaySummary::default();
        let reading = async {
            let mut chunk: Vec<E> = Vec::with_capacity(self.options.chunk);
            while let Some(batch) = to_decode.recv().await {
                for message in batch {
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
            }
            let _ = chunks.send(chunk).await;
            drop(chunks);
        };
        let rebuilding = async {
            while let Some(chunk) = to_rebuild.recv().await {
                if let Err(error) = self.rebuild(chunk, state, summary).await {
                    // Unblocks the reading side, whose next send now fails, and stops
                    // receiving (which may be waiting on Kafka).
                    to_rebuild.close();
                    stop_receiving.abort();
                    return Err(error);
                }
            }
            anyhow::Ok(())
        };
        let ((), rebuilt) = tokio::join!(reading, rebuilding);
        match receiving.await {
            // Aborted after a failed rebuild, whose error is the one reported.
            Err(error) if error.is_cancelled() => {}
            // A panic: decoding took the closed channel for the end of the ranges, so the
            // chunk it sent last was rebuilt (harmlessly: rebuilds are idempotent).
            Err(error) => return Err(error).context("receiving from Kafka"),
            Ok(()) => {}
        }
        summary.events_read += read.events_read;
        summary.filtered += read.filtered;
        summary.dead += read.dead;
        rebuilt
    }

    /// Decodes one message into `chunk`, or counts it as another tenant's or dead (by the
    /// worker's own rules, `tenants.key_must_match` included). While the schema registry is
    /// down it waits for it, as the worker does.
    async fn accept<E: Validate>(
        &self,
        decoder: &Decoder,
        message: &OwnedMessage,
        chunk: &mut Vec<E>,
        summary: &mut ReplaySummary,
    ) {
        let mut backoff = RetryPolicy::REPLAY.backoff();
        let keys = KeyPolicy::key_must_match(self.settings.tenants.key_must_match);
        let decode = || async {
            match decode_message::<E>(decoder, message.payload(), message.key(), keys).await {
                Err((error, _)) if error.is_transient() => Err(error),
                decoded => Ok(decoded),
            }
        };
        let report = |error: &_, _| tracing::warn!(%error, "Cannot decode yet; retrying.");
        let Some(decoded) = retry::until_ok(&mut backoff, &self.shutdown, report, decode).await
        else {
            return;
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
        for<'r> Rows<'r>: From<&'r [E]>,
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
        // Slices of the chunk's keys are refreshed concurrently, so that one slice's Postgres
        // read (on a connection of its own) overlaps another's Redis writes.
        let at_once = SLICES_AT_ONCE.min(self.settings.database.max_connections as usize);
        let slice = (self.options.chunk / 10).clamp(1, MAX_SLICE);
        let mut done = futures::stream::iter(slices(refs, slice))
            .map(|slice| self.refresh_slice(slice))
            .buffer_unordered(at_once);
        while let Some(slice) = done.next().await {
            let slice = slice?;
            summary.missing_rows += slice.missing_rows;
            summary.keys_written += slice.keys_written;
            summary.skipped_older += slice.skipped_older;
        }
        Ok(())
    }

    /// Refreshes the keys of `refs` from their current rows (a dry run only reads the rows).
    async fn refresh_slice(&self, refs: Vec<CacheRef>) -> anyhow::Result<Refreshed> {
        let total = refs.len() as u64;
        if self.options.dry_run {
            let found = self.current_items(refs).await?.len() as u64;
            return Ok(Refreshed {
                missing_rows: total - found,
                keys_written: found,
                skipped_older: 0,
            });
        }
        let (applied, found) = cache::refresh(&self.redis, refs, &self.ttl, |refs| async move {
            let mut items = self.current_items(refs).await?;
            // A suspension was applied (and its keyspace retired) by the live path when it
            // happened; a rebuild writes the current rows and retires nothing by itself.
            for item in &mut items {
                if let CacheItem::Profile { suspended, .. } = item {
                    *suspended = false;
                }
            }
            anyhow::Ok(items)
        })
        .await
        .context("writing Redis")?;
        // A key Redis refuses (of the wrong type, say) stops the replay, naming it.
        applied.failures().context("writing Redis")?;
        Ok(Refreshed {
            missing_rows: total - found as u64,
            keys_written: applied.written as u64,
            skipped_older: applied.skipped_older as u64,
        })
    }

    /// Retires `space` (bumps its generation) and remembers it was flushed.
    pub async fn flush(
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
    /// worker's drainer too. Events the worker dead-letters are counted dead: with strict
    /// tenants those of unregistered tenants (dropped), and rows Postgres rejects (left
    /// unwritten). Returns the refs of the rows written.
    async fn rewrite<E>(
        &self,
        events: &mut Vec<E>,
        summary: &mut ReplaySummary,
    ) -> anyhow::Result<Vec<CacheRef>>
    where
        E: Event,
        for<'r> Rows<'r>: From<&'r [E]>,
    {
        let tenant_policy = TenantPolicy::strict(self.settings.tenants.strict);
        if tenant_policy == TenantPolicy::RequireKnown {
            let required = unregistered_tenants(events.iter());
            let known = sink::known_tenants(&self.pool, &required).await?;
            let before = events.len();
            events.retain(|e| {
                e.tenant()
                    .is_none_or(|t| known.contains(&t) || required.binary_search(&t).is_err())
            });
            summary.dead += (before - events.len()) as u64;
        }
        let group = &self.settings.kafka.group_id;
        let rows = events.as_slice().into();
        let rewritten = sink::rewrite_rows(&self.pool, group, rows, tenant_policy)
            .await
            .context("rewriting rows in Postgres")?;
        // Their keys are still rebuilt from whatever row Postgres holds.
        summary.dead += rewritten.rejected as u64;
        Ok(rewritten.refs)
    }

    /// The current rows behind `refs`, each tenant's read under its own context.
    async fn current_items(&self, refs: Vec<CacheRef>) -> Result<Vec<CacheItem>, sink::SinkError> {
        let mut tx = self.pool.begin().await?;
        let items = sink::read_current(&mut tx, &refs).await?;
        tx.rollback().await?;
        Ok(items)
    }
}

/// `refs` cut into slices of at most `size`, in order.
fn slices(refs: Vec<CacheRef>, size: usize) -> impl Iterator<Item = Vec<CacheRef>> {
    let mut refs = refs.into_iter();
    std::iter::from_fn(move || {
        let slice: Vec<CacheRef> = refs.by_ref().take(size).collect();
        (!slice.is_empty()).then_some(slice)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_keep_every_ref_once_in_order() {
        let tenant = uuid::Uuid::from_u128(7);
        let refs: Vec<CacheRef> = (0..5)
            .map(|n| CacheRef::Order {
                tenant,
                order_id: n.to_string(),
            })
            .collect();
        let cut: Vec<Vec<CacheRef>> = slices(refs.clone(), 2).collect();
        assert_eq!(cut.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
        assert_eq!(cut.concat(), refs);
        assert_eq!(slices(Vec::new(), 2).count(), 0);
    }
}
