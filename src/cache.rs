//! Redis: per-tenant cache keys derived from committed rows.
//!
//! Guarantee: the cache follows commits. Each batch records its cache work in `cache_outbox`
//! inside the batch transaction, and gets back the committed rows' JSON. After the commit the
//! batch writes them to Redis with a version check (a key never goes back to an older version,
//! so a replay or a slow drainer cannot regress it) and notes the applied outbox rows in the
//! [`CacheLedger`]; they are deleted later, in the next write of the same tenant or by the
//! drainer's sweep. An outbox row is deleted only after Redis has answered for it. A crash or a
//! Redis outage leaves work queued; [`CacheDrainer`] reads the current rows behind it and applies
//! it ([`drain_tenants`]). Applying a row twice is harmless: the version check skips it.
//!
//! Key layout: `t:{<tenant_id>}:order:<order_id>` (the braces are a Redis Cluster hash tag, so a
//! tenant's keys share a slot); value: the order row as JSON, including `version`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::http::Health;
use crate::sink::{set_tenant, QueuedCache, SinkError};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("Redis unavailable: {0}")]
    Redis(#[from] fred::error::Error),
    #[error(transparent)]
    Postgres(#[from] SinkError),
}

impl From<sqlx::Error> for CacheError {
    fn from(e: sqlx::Error) -> Self {
        Self::Postgres(SinkError::Database(e))
    }
}

/// Sets KEYS[1] to ARGV[1] unless the cached value's `version` is already >= ARGV[2].
/// ARGV[3] is the TTL in seconds (0: none). Returns 1 when written, 0 when skipped as older.
pub const SET_IF_NEWER: &str = r#"
local current = redis.call('GET', KEYS[1])
if current then
  local ok, decoded = pcall(cjson.decode, current)
  if ok and type(decoded) == 'table' then
    local cached = tonumber(decoded['version'])
    if cached and cached >= tonumber(ARGV[2]) then
      return 0
    end
  end
end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"#;

/// How long one Redis round trip may take before it counts as a failure.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// The cache key of one order.
pub fn order_key(tenant: &Uuid, order_id: &str) -> String {
    format!("t:{{{tenant}}}:order:{order_id}")
}

/// Connects to a single Redis (`redis://`) or a cluster (`redis-cluster://`).
pub async fn connect(url: &str) -> Result<Client, CacheError> {
    let config = Config::from_url(url)?;
    let client = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(3);
            c.internal_command_timeout = Duration::from_secs(5);
        })
        // Without a timeout, commands queue while the client reconnects and a Redis outage
        // would hold the batch path (and its Postgres transaction) indefinitely.
        .with_performance_config(|c| c.default_command_timeout = COMMAND_TIMEOUT)
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .build()?;
    client.init().await?;
    Ok(client)
}

/// A key and value to write if newer.
#[derive(Debug, Clone)]
pub struct CacheEntry {
    pub key: String,
    pub version: i64,
    pub json: String,
}

/// Entries per Redis pipeline: small enough to answer well within [`COMMAND_TIMEOUT`].
const PIPELINE_CHUNK: usize = 1000;

/// Writes entries with the version check, pipelined in chunks. Returns (written, skipped as
/// older). On an error some chunks may have been written; writing them again changes nothing.
pub async fn set_if_newer(
    redis: &Client,
    entries: &[CacheEntry],
    ttl_seconds: u64,
) -> Result<(usize, usize), CacheError> {
    let (mut written, mut skipped) = (0, 0);
    for chunk in entries.chunks(PIPELINE_CHUNK) {
        let (w, s) = set_if_newer_pipelined(redis, chunk, ttl_seconds).await?;
        written += w;
        skipped += s;
    }
    Ok((written, skipped))
}

async fn set_if_newer_pipelined(
    redis: &Client,
    entries: &[CacheEntry],
    ttl_seconds: u64,
) -> Result<(usize, usize), CacheError> {
    // EVAL as a custom command, because fred pipelines have no Lua interface; the key (argument
    // 2: script, numkeys, key) picks the cluster node.
    let eval = CustomCommand::new("EVAL", ClusterHash::Offset(2), false);
    let pipeline = redis.pipeline();
    for entry in entries {
        let args: Vec<Value> = vec![
            SET_IF_NEWER.into(),
            1.into(),
            entry.key.as_str().into(),
            entry.json.as_str().into(),
            entry.version.into(),
            (ttl_seconds as i64).into(),
        ];
        let () = pipeline.custom(eval.clone(), args).await?;
    }
    let results: Vec<i64> = pipeline.all().await?;
    if results.len() != entries.len() {
        // Never treat a partial answer as success: the outbox rows would be deleted.
        return Err(CacheError::Redis(fred::error::Error::new(
            fred::error::ErrorKind::Unknown,
            format!("{} answers to {} writes", results.len(), entries.len()),
        )));
    }
    let written = results.iter().filter(|r| **r == 1).count();
    Ok((written, results.len() - written))
}

/// How old queued work must be before the drainer takes it: younger work is normally being
/// applied by its own batch right now.
const MIN_AGE: Duration = Duration::from_secs(2);

/// Applies the queued cache work of consumer group `group` for `tenants` (up to `per_tenant`
/// rows each, older than [`MIN_AGE`]) in one transaction, from the current rows.
pub async fn drain_tenants(
    pool: &PgPool,
    redis: &Client,
    group: &str,
    tenants: &[Uuid],
    ttl_seconds: u64,
    per_tenant: i64,
) -> Result<(), CacheError> {
    let started = std::time::Instant::now();
    let mut tx = pool.begin().await?;
    let mut entries = Vec::new();
    for tenant in tenants {
        set_tenant(&mut tx, *tenant).await?;
        let rows: Vec<(String, i64, String)> = sqlx::query_as(
            "WITH claimed AS (
                 DELETE FROM cache_outbox
                  WHERE id IN (SELECT id FROM cache_outbox
                                WHERE consumer_group = $2 AND tenant_id = $4 AND kind = 'order'
                                  AND created_at < now() - make_interval(secs => $3)
                                ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
                 RETURNING key_id
             )
             SELECT o.order_id, o.version, order_cache_json(o)
               FROM orders o
              WHERE o.tenant_id = $4 AND o.order_id IN (SELECT key_id FROM claimed)",
        )
        .bind(per_tenant)
        .bind(group)
        .bind(MIN_AGE.as_secs_f64())
        .bind(tenant)
        .fetch_all(&mut *tx)
        .await?;
        entries.extend(
            rows.into_iter()
                .map(|(order_id, version, json)| CacheEntry {
                    key: order_key(tenant, &order_id),
                    version,
                    json,
                }),
        );
    }
    // Redis first: if it fails, the rollback puts the work back in the outbox.
    let (written, skipped_older) = set_if_newer(redis, &entries, ttl_seconds).await?;
    tx.commit().await?;
    crate::metrics::cache_keys_written(written, skipped_older, started.elapsed());
    Ok(())
}

/// Outbox rows whose Redis write succeeded and that still have to be deleted, per tenant.
#[derive(Default)]
pub struct CacheLedger {
    applied: Mutex<HashMap<Uuid, Vec<i64>>>,
}

impl CacheLedger {
    fn record(&self, queued: &[QueuedCache]) {
        let mut applied = self.applied.lock().expect("ledger lock");
        for q in queued {
            applied.entry(q.tenant).or_default().push(q.outbox_id);
        }
    }

    /// The applied rows of `tenants`, handed to the next batch to delete.
    pub fn take_for(&self, tenants: impl IntoIterator<Item = Uuid>) -> HashMap<Uuid, Vec<i64>> {
        let mut applied = self.applied.lock().expect("ledger lock");
        tenants
            .into_iter()
            .filter_map(|t| applied.remove(&t).map(|ids| (t, ids)))
            .collect()
    }

    fn take_all(&self) -> HashMap<Uuid, Vec<i64>> {
        std::mem::take(&mut *self.applied.lock().expect("ledger lock"))
    }
}

/// Writes a committed batch's rows to Redis and notes the applied outbox rows in `ledger`.
pub async fn apply_queued(
    redis: &Client,
    ledger: &CacheLedger,
    queued: &[QueuedCache],
    ttl_seconds: u64,
) -> Result<(), CacheError> {
    let started = std::time::Instant::now();
    let entries: Vec<CacheEntry> = queued
        .iter()
        .map(|q| CacheEntry {
            key: order_key(&q.tenant, &q.order_id),
            version: q.version,
            json: q.json.clone(),
        })
        .collect();
    let (written, skipped_older) = set_if_newer(redis, &entries, ttl_seconds).await?;
    ledger.record(queued);
    crate::metrics::cache_keys_written(written, skipped_older, started.elapsed());
    Ok(())
}

/// Deletes outbox rows already applied to Redis, each tenant under its own context.
pub async fn delete_applied(
    pool: &PgPool,
    applied: &HashMap<Uuid, Vec<i64>>,
) -> Result<(), CacheError> {
    if applied.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    for (tenant, ids) in applied {
        set_tenant(&mut tx, *tenant).await?;
        sqlx::query("DELETE FROM cache_outbox WHERE id = ANY($1)")
            .bind(ids)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Tenants after `after` (in id order) with cache work queued by consumer group `group` and
/// older than [`MIN_AGE`] (at most `max`).
pub async fn pending_tenants(
    pool: &PgPool,
    group: &str,
    after: Option<Uuid>,
    max: i32,
) -> Result<Vec<Uuid>, CacheError> {
    Ok(sqlx::query_scalar(
        "SELECT cache_outbox_pending_tenants($1, make_interval(secs => $2), $3, $4)",
    )
    .bind(group)
    .bind(MIN_AGE.as_secs_f64())
    .bind(after)
    .bind(max)
    .fetch_all(pool)
    .await?)
}

/// Background loop that applies cache work left behind by a crash or a Redis outage.
pub struct CacheDrainer {
    pub pool: PgPool,
    pub redis: Client,
    pub group: String,
    pub ttl_seconds: u64,
    pub ledger: std::sync::Arc<CacheLedger>,
    pub health: Health,
    /// Woken by the batch path when its own drain failed.
    pub wake: std::sync::Arc<tokio::sync::Notify>,
}

impl CacheDrainer {
    const IDLE: Duration = Duration::from_secs(1);
    const MAX_BACKOFF: Duration = Duration::from_secs(10);

    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Self::IDLE;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
                _ = self.wake.notified() => {}
            }
            match self.drain_once().await {
                Ok(()) => {
                    self.health.recovered("redis");
                    backoff = Self::IDLE;
                }
                Err(error) => {
                    self.health.failed("redis", &error);
                    backoff = (backoff * 2).min(Self::MAX_BACKOFF);
                    crate::metrics::transient_error("cache", &error, backoff);
                }
            }
        }
    }

    /// Deletes what batches applied, then applies what is left (older than [`MIN_AGE`]).
    pub async fn drain_once(&self) -> Result<(), CacheError> {
        let applied = self.ledger.take_all();
        if let Err(error) = delete_applied(&self.pool, &applied).await {
            // The rows stay queued and are applied again later, which changes nothing.
            tracing::warn!(%error, "Could not delete applied cache work.");
        }
        // One pass over every tenant with leftover work, a page of tenants at a time.
        let mut after = None;
        let mut tenants_seen = 0;
        loop {
            let tenants = pending_tenants(&self.pool, &self.group, after, 20).await?;
            let Some(last) = tenants.last().copied() else {
                break;
            };
            tenants_seen += tenants.len();
            drain_tenants(
                &self.pool,
                &self.redis,
                &self.group,
                &tenants,
                self.ttl_seconds,
                500,
            )
            .await?;
            after = Some(last);
        }
        crate::metrics::cache_backlog(tenants_seen);
        // Prove Redis answers even when nothing was queued, so readiness tells the truth.
        let _: Value = self.redis.ping(None).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_keys_share_the_tenant_hash_tag() {
        let tenant = Uuid::parse_str("6f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b").unwrap();
        assert_eq!(
            order_key(&tenant, "o-1"),
            "t:{6f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b}:order:o-1"
        );
    }
}
