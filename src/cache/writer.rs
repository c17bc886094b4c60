//! Writes committed rows to Redis with their version checks, in each keyspace's current
//! generation: a key never goes back to an older version, so a replay or a slow drainer cannot
//! regress it, and a value read before its keyspace's generation moved is read again.

use std::collections::HashMap;

use fred::prelude::*;

use super::ledger::CacheLedger;
use super::scripts::{apply_item, evalsha, Script, ScriptCall, BUMP_GENERATION};
use super::CacheError;
use crate::config::RedisSettings;
use crate::domain::{CacheItem, CacheRef, Keyspace, QueuedCache};
use crate::metrics;

/// Key lifetimes in seconds (0: no expiry). Retired generations' keys expire by these.
#[derive(Debug, Clone, Copy)]
pub struct Ttl {
    pub orders: u64,
    pub config: u64,
}

impl From<&RedisSettings> for Ttl {
    fn from(settings: &RedisSettings) -> Self {
        Self {
            orders: settings.order_ttl_seconds,
            config: settings.config_ttl_seconds,
        }
    }
}

/// What applying cache items did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub written: usize,
    pub skipped_older: usize,
    /// Items Redis answered with an error of their own (a key of the wrong type, say): the
    /// other items of their pipeline are applied.
    pub failed: Vec<FailedItem>,
}

/// An item Redis refused, and its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedItem {
    pub item: CacheRef,
    pub error: String,
}

impl Applied {
    fn add(&mut self, other: Applied) {
        self.written += other.written;
        self.skipped_older += other.skipped_older;
        self.failed.extend(other.failed);
    }

    /// An error naming the failed items, if any.
    pub fn failures(&self) -> Result<(), CacheError> {
        match self.failed.first() {
            None => Ok(()),
            Some(first) => Err(CacheError::other(format!(
                "{} keys refused, first {:?}: {}",
                self.failed.len(),
                first.item,
                first.error
            ))),
        }
    }
}

/// Script calls per Redis pipeline, and bytes of values: small enough to answer well within
/// [`COMMAND_TIMEOUT`](super::COMMAND_TIMEOUT) however large the values.
const PIPELINE_CHUNK: usize = 1000;
const PIPELINE_BYTES: usize = 4 * 1024 * 1024;

/// How often items are tried again when their keyspace's generation moved under them.
const GENERATION_RETRIES: usize = 10;

/// Applies items of committed batches with their version checks: first the generation bumps
/// of suspended profiles, then every write in the keyspace's current generation. A batch's item
/// is the newest version of its key until the batch is done (one batch per partition at a
/// time), so an item that met a moved generation is simply written again in the new one. On
/// an error some items may have been applied; applying them again changes nothing.
pub async fn apply(redis: &Client, items: &[CacheItem], ttl: &Ttl) -> Result<Applied, CacheError> {
    let mut applied = Applied::default();
    let mut pending: Vec<CacheItem> = items.to_vec();
    for _ in 0..GENERATION_RETRIES {
        if pending.is_empty() {
            return Ok(applied);
        }
        let generations = read_generations(redis, pending.iter().map(|i| i.keyspace())).await?;
        let (done, moved) = apply_read_after(redis, &pending, &generations, ttl).await?;
        applied.add(done);
        pending = moved;
    }
    Err(moving_generation(pending.len()))
}

fn moving_generation(count: usize) -> CacheError {
    CacheError::other(format!("{count} writes kept meeting a moving generation"))
}

/// Applies items whose rows were read after `generations` was read: first the generation bumps
/// of suspended profiles, then each write in the generation it was read for. An item whose
/// generation moved since is not written, because its row may have changed after it was read
/// (a newer value written into the old generation, then retired); it is returned, for the
/// caller to read again.
pub async fn apply_read_after(
    redis: &Client,
    items: &[CacheItem],
    generations: &HashMap<Keyspace, i64>,
    ttl: &Ttl,
) -> Result<(Applied, Vec<CacheItem>), CacheError> {
    let suspensions: Vec<(Keyspace, i64)> = items
        .iter()
        .filter_map(|item| match item {
            CacheItem::Profile {
                tenant,
                version,
                suspended: true,
                ..
            } => Some((Keyspace::Tenant(*tenant), *version)),
            _ => None,
        })
        .collect();
    bump_generations(redis, &suspensions).await?;
    let mut applied = Applied::default();
    let mut moved = Vec::new();
    for chunk in pipeline_chunks(items) {
        let calls: Vec<ScriptCall> = chunk
            .iter()
            .map(|item| {
                let generation = generations.get(&item.keyspace()).copied().unwrap_or(0);
                apply_item(item, generation, ttl)
            })
            .collect();
        let results = run_scripts(redis, &calls).await?;
        if let Some(outage) = results
            .iter()
            .find_map(|r| r.as_ref().err().filter(|e| is_outage(e)))
        {
            return Err(outage.clone().into());
        }
        if results.len() != chunk.len() {
            // Never treat a partial answer as success: the outbox rows would be deleted.
            return Err(CacheError::other(format!(
                "{} answers to {} writes",
                results.len(),
                chunk.len()
            )));
        }
        for (item, result) in chunk.iter().zip(results) {
            match result {
                Ok(1) => applied.written += 1,
                Ok(0) => applied.skipped_older += 1,
                Ok(_) => moved.push(item.clone()),
                Err(error) => {
                    let item = item.cache_ref();
                    let tenant = item.tenant().map_or("shared".to_owned(), |t| t.to_string());
                    tracing::warn!(
                        target: "tenantstream::cache",
                        tenant,
                        %error,
                        "Redis refused a cache write; it stays queued, the others go on."
                    );
                    let error = error.to_string();
                    applied.failed.push(FailedItem { item, error });
                }
            }
        }
    }
    Ok((applied, moved))
}

/// Whether an error is Redis (or the way to it) failing, rather than an answer about one key.
fn is_outage(error: &fred::error::Error) -> bool {
    use fred::error::ErrorKind;
    // Still unknown after loading its script: Redis is not answering as itself.
    is_noscript(error)
        || matches!(
            error.kind(),
            ErrorKind::IO
                | ErrorKind::Timeout
                | ErrorKind::Canceled
                | ErrorKind::Cluster
                | ErrorKind::Backpressure
                | ErrorKind::Routing
                | ErrorKind::Auth
                | ErrorKind::Unknown
        )
}

/// `items` cut into pipelines of at most [`PIPELINE_CHUNK`] items and [`PIPELINE_BYTES`] of
/// values (an item larger than that goes alone).
fn pipeline_chunks(items: &[CacheItem]) -> Vec<&[CacheItem]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        let size = item.value_len();
        if i > start && (i - start == PIPELINE_CHUNK || bytes + size > PIPELINE_BYTES) {
            chunks.push(&items[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < items.len() {
        chunks.push(&items[start..]);
    }
    chunks
}

/// Reads the current rows behind `refs` and applies them, reading again those whose
/// generation moved meanwhile. Keys Redis refuses are in [`Applied::failed`]. `read` reads rows
/// (under the right tenant contexts); its error type is the caller's. Returns what was applied
/// and how many refs had a row.
pub async fn refresh<F, Fut, E>(
    redis: &Client,
    refs: Vec<CacheRef>,
    ttl: &Ttl,
    mut read: F,
) -> Result<(Applied, usize), E>
where
    F: FnMut(Vec<CacheRef>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<CacheItem>, E>>,
    E: From<CacheError>,
{
    let mut applied = Applied::default();
    let mut found = 0;
    let mut pending = refs;
    for attempt in 0..GENERATION_RETRIES {
        if pending.is_empty() {
            return Ok((applied, found));
        }
        let spaces = pending.iter().map(CacheRef::keyspace);
        let generations = read_generations(redis, spaces).await?;
        let items = read(pending).await?;
        if attempt == 0 {
            found = items.len();
        }
        let (done, moved) = apply_read_after(redis, &items, &generations, ttl).await?;
        applied.add(done);
        pending = moved.iter().map(CacheItem::cache_ref).collect();
    }
    Err(moving_generation(pending.len()).into())
}

/// Bumps each keyspace's generation; with a version, at most once per version.
pub async fn bump_generations(redis: &Client, bumps: &[(Keyspace, i64)]) -> Result<(), CacheError> {
    if bumps.is_empty() {
        return Ok(());
    }
    let calls: Vec<ScriptCall> = bumps
        .iter()
        .map(|(space, version)| ScriptCall {
            script: &BUMP_GENERATION,
            keys: vec![space.generation_key(), space.bumped_for_key()],
            args: vec![(*version).into()],
        })
        .collect();
    let results = run_scripts(redis, &calls).await?;
    if results.len() != calls.len() {
        return Err(CacheError::other(format!(
            "{} answers to {} generation bumps",
            results.len(),
            calls.len()
        )));
    }
    for result in results {
        result?;
    }
    Ok(())
}

/// Runs script calls in one pipeline, by SHA1 (EVALSHA). Redis forgets its scripts when it
/// restarts (or on SCRIPT FLUSH): the calls it answers NOSCRIPT did nothing, and are run again
/// once their scripts are loaded. One answer per call, in order; fewer only when the
/// connection failed midway, which the caller checks.
async fn run_scripts(
    redis: &Client,
    calls: &[ScriptCall],
) -> Result<Vec<Result<i64, fred::error::Error>>, CacheError> {
    let pipeline = redis.pipeline();
    for call in calls {
        let () = pipeline.custom(evalsha(), call.evalsha_args()).await?;
    }
    let mut results: Vec<Result<i64, fred::error::Error>> = pipeline.try_all().await;
    let unknown: Vec<usize> = (0..results.len())
        .filter(|&i| results[i].as_ref().is_err_and(is_noscript))
        .collect();
    if unknown.is_empty() {
        return Ok(results);
    }
    let mut scripts: Vec<&Script> = unknown.iter().map(|&i| calls[i].script).collect();
    scripts.sort_by_key(|s| s.sha().to_owned());
    scripts.dedup_by_key(|s| s.sha().to_owned());
    for script in scripts {
        let _sha: String = if redis.is_clustered() {
            redis.script_load_cluster(script.body).await?
        } else {
            redis.script_load(script.body).await?
        };
    }
    let pipeline = redis.pipeline();
    for &i in &unknown {
        let () = pipeline.custom(evalsha(), calls[i].evalsha_args()).await?;
    }
    let mut again: Vec<Result<i64, fred::error::Error>> = pipeline.try_all().await;
    if again.len() != unknown.len() {
        // The connection failed (fred then answers one error): report it for the whole call.
        let error = again.pop().and_then(Result::err).unwrap_or_else(|| {
            fred::error::Error::new(fred::error::ErrorKind::IO, "a partial answer from Redis")
        });
        results[unknown[0]] = Err(error);
        return Ok(results);
    }
    for (i, result) in unknown.into_iter().zip(again) {
        results[i] = result;
    }
    Ok(results)
}

fn is_noscript(error: &fred::error::Error) -> bool {
    error.details().starts_with("NOSCRIPT")
}

/// The current generation of each keyspace (absent: 0).
pub async fn read_generations(
    redis: &Client,
    spaces: impl IntoIterator<Item = Keyspace>,
) -> Result<HashMap<Keyspace, i64>, CacheError> {
    let mut spaces: Vec<Keyspace> = spaces.into_iter().collect();
    spaces.sort();
    spaces.dedup();
    let pipeline = redis.pipeline();
    for space in &spaces {
        let () = pipeline.get(space.generation_key()).await?;
    }
    let values: Vec<Option<i64>> = if spaces.is_empty() {
        Vec::new()
    } else {
        pipeline.all().await?
    };
    Ok(spaces
        .into_iter()
        .zip(values)
        .map(|(space, generation)| (space, generation.unwrap_or(0)))
        .collect())
}

/// Writes a committed batch's rows to Redis and notes the applied outbox rows in `ledger`. The
/// rows of keys Redis refused are not noted: they stay queued for the drainer, and the call
/// returns those keys. An error means Redis is not answering.
pub async fn apply_queued(
    redis: &Client,
    ledger: &CacheLedger,
    queued: &[QueuedCache],
    ttl: &Ttl,
) -> Result<std::collections::HashSet<CacheRef>, CacheError> {
    let started = std::time::Instant::now();
    let items: Vec<CacheItem> = queued.iter().map(|q| q.item.clone()).collect();
    let applied = apply(redis, &items, ttl).await?;
    let failed: std::collections::HashSet<CacheRef> =
        applied.failed.iter().map(|f| f.item.clone()).collect();
    let done: Vec<QueuedCache> = queued
        .iter()
        .filter(|q| !failed.contains(&q.item.cache_ref()))
        .cloned()
        .collect();
    ledger.record(&done);
    metrics::cache_keys_written(applied.written, applied.skipped_older, started.elapsed());
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(bytes: usize) -> CacheItem {
        CacheItem::Order {
            tenant: uuid::Uuid::nil(),
            order_id: "o".into(),
            version: 1,
            json: "x".repeat(bytes),
        }
    }

    #[test]
    fn pipelines_are_bounded_by_count_and_by_bytes() {
        let sizes = |items: &[CacheItem]| -> Vec<usize> {
            pipeline_chunks(items).iter().map(|c| c.len()).collect()
        };
        assert_eq!(sizes(&vec![order(10); 2_500]), [1000, 1000, 500]);
        let big = PIPELINE_BYTES / 2 + 1;
        assert_eq!(sizes(&vec![order(big); 3]), [1, 1, 1]);
        assert_eq!(
            sizes(&[order(PIPELINE_BYTES * 3), order(1), order(1)]),
            [1, 2]
        );
        assert!(sizes(&[]).is_empty());
    }
}
