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
//! Key layout (see README "Redis read contract"): `t:{<tenant_id>}:g<generation>:order:<id>`,
//! `…:profile`, `…:config`, `…:sla`, and `ref:{category}:g<generation>:cat:<id>`, `…:ids`. The
//! braces are a Redis Cluster hash tag, so a keyspace's keys share a slot; bumping the keyspace's
//! `…:gen` counter retires all of them at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::events::{ConfigTarget, TenantMap};
use crate::http::Health;
use crate::sink::{
    claim_outbox, current_items, delete_outbox_rows, set_tenant, CacheRef, QueuedCache, SinkError,
};

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

/// Writes an order's JSON unless the cached value's `version` is already >= the new one.
/// KEYS: generation, order key. ARGV: the generation the key belongs to, JSON, version, TTL
/// (seconds, 0: none). Returns 1 written, 0 skipped as older, -1 when the generation moved
/// (the caller reads it again and rebuilds the key).
pub const SET_IF_NEWER: &str = r#"
if tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[1]) then
  return -1
end
local current = redis.call('GET', KEYS[2])
if current then
  local ok, decoded = pcall(cjson.decode, current)
  if ok and type(decoded) == 'table' then
    local cached = tonumber(decoded['version'])
    if cached and cached >= tonumber(ARGV[3]) then
      return 0
    end
  end
end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ttl)
else
  redis.call('SET', KEYS[2], ARGV[2])
end
return 1
"#;

/// Sets or deletes one versioned entry: a hash field (settings, SLA policies) or a whole key
/// (profile, category, with an optional index set). Its version lives in the keyspace's
/// `versions` hash, which also keeps the version of a deletion, so an older write cannot bring a
/// deleted entry back.
/// KEYS: generation, versions hash, target, [index set]. ARGV: generation, versions field,
/// version, TTL, 'hash' or 'string', '1' when there is a value, value, hash field or index member.
/// Returns 1 written, 0 skipped as older, -1 when the generation moved.
pub const APPLY_ENTRY: &str = r#"
if tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[1]) then
  return -1
end
local present = ARGV[6] == '1'
local current = tonumber(redis.call('HGET', KEYS[2], ARGV[2]))
if current and current >= tonumber(ARGV[3]) then
  -- The same version may be written again when its value expired or was evicted while the
  -- versions hash lived on; anything older is skipped.
  local gone = false
  if present and current == tonumber(ARGV[3]) then
    if ARGV[5] == 'hash' then
      gone = redis.call('HEXISTS', KEYS[3], ARGV[8]) == 0
    else
      gone = redis.call('EXISTS', KEYS[3]) == 0
    end
  end
  if not gone then
    return 0
  end
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
if ARGV[5] == 'hash' then
  if present then
    redis.call('HSET', KEYS[3], ARGV[8], ARGV[7])
  else
    redis.call('HDEL', KEYS[3], ARGV[8])
  end
elseif present then
  redis.call('SET', KEYS[3], ARGV[7])
else
  redis.call('DEL', KEYS[3])
end
if KEYS[4] then
  if present then
    redis.call('SADD', KEYS[4], ARGV[8])
  else
    redis.call('SREM', KEYS[4], ARGV[8])
  end
end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  for i = 2, #KEYS do
    redis.call('EXPIRE', KEYS[i], ttl)
  end
end
return 1
"#;

/// Retires a keyspace's keys in O(1): increments its generation. With a version (> 0), only once
/// per version (a suspension applied again, by the drainer or a replay, does not bump again).
/// KEYS: generation, last bumped version. ARGV: version or 0. Returns the generation.
pub const BUMP_GENERATION: &str = r#"
local version = tonumber(ARGV[1])
if version > 0 then
  local last = tonumber(redis.call('GET', KEYS[2]) or '-1')
  if last >= version then
    return tonumber(redis.call('GET', KEYS[1]) or '0')
  end
  redis.call('SET', KEYS[2], ARGV[1])
end
return redis.call('INCR', KEYS[1])
"#;

/// How long one Redis round trip may take before it counts as a failure.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// A set of keys retired together by bumping one generation counter: one tenant's keys, or the
/// shared reference data. All keys of one keyspace share a Redis Cluster hash slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Keyspace {
    Tenant(Uuid),
    Reference,
}

impl Keyspace {
    fn prefix(&self) -> String {
        match self {
            Self::Tenant(tenant) => format!("t:{{{tenant}}}"),
            Self::Reference => "ref:{category}".to_owned(),
        }
    }

    /// The keyspace's current generation (absent: 0). Never expires.
    pub fn generation_key(&self) -> String {
        format!("{}:gen", self.prefix())
    }

    /// The profile version that last bumped the generation. Never expires.
    fn bumped_for_key(&self) -> String {
        format!("{}:gen:bumped_for", self.prefix())
    }

    /// A key of generation `generation`: `t:{<tenant>}:g<generation>:<suffix>`.
    pub fn key(&self, generation: i64, suffix: &str) -> String {
        format!("{}:g{generation}:{suffix}", self.prefix())
    }
}

/// The cache key of one order in generation `generation`.
pub fn order_key(tenant: &Uuid, generation: i64, order_id: &str) -> String {
    Keyspace::Tenant(*tenant).key(generation, &format!("order:{order_id}"))
}

/// The cache key of one category in generation `generation` (its own prefix, so no id can
/// collide with the keyspace's `versions` or `ids`).
pub fn category_key(generation: i64, id: &str) -> String {
    Keyspace::Reference.key(generation, &format!("cat:{id}"))
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

/// One Redis change, derived from a committed row (its current value and version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheItem {
    Order {
        tenant: Uuid,
        order_id: String,
        version: i64,
        json: String,
    },
    /// The tenant profile; a suspended one first retires the tenant's keyspace.
    Profile {
        tenant: Uuid,
        version: i64,
        json: String,
        suspended: bool,
    },
    /// A setting or an SLA policy; `None` deletes it.
    Entry {
        tenant: Uuid,
        map: TenantMap,
        key: String,
        version: i64,
        value: Option<String>,
    },
    /// A category of the shared reference data; `None` deletes it.
    Category {
        id: String,
        version: i64,
        value: Option<String>,
    },
}

impl CacheItem {
    pub fn keyspace(&self) -> Keyspace {
        match self {
            Self::Order { tenant, .. }
            | Self::Profile { tenant, .. }
            | Self::Entry { tenant, .. } => Keyspace::Tenant(*tenant),
            Self::Category { .. } => Keyspace::Reference,
        }
    }

    /// The script, keys and arguments that apply this item in generation `generation`.
    fn command(&self, generation: i64, ttl: &Ttl) -> (&'static str, Vec<String>, Vec<Value>) {
        let space = self.keyspace();
        let gen_key = space.generation_key();
        let versions = space.key(generation, "versions");
        let entry =
            |field: String, mode: &str, value: &Option<String>, member: &str| -> Vec<Value> {
                vec![
                    generation.into(),
                    field.into(),
                    self.version().into(),
                    (ttl.config as i64).into(),
                    mode.into(),
                    if value.is_some() { "1" } else { "0" }.into(),
                    value.clone().unwrap_or_default().into(),
                    member.into(),
                ]
            };
        match self {
            Self::Order {
                tenant,
                order_id,
                version,
                json,
            } => (
                SET_IF_NEWER,
                vec![gen_key, order_key(tenant, generation, order_id)],
                vec![
                    generation.into(),
                    json.as_str().into(),
                    (*version).into(),
                    (ttl.orders as i64).into(),
                ],
            ),
            Self::Profile { json, .. } => (
                APPLY_ENTRY,
                vec![gen_key, versions, space.key(generation, "profile")],
                entry("profile".into(), "string", &Some(json.clone()), ""),
            ),
            Self::Entry {
                map, key, value, ..
            } => (
                APPLY_ENTRY,
                vec![gen_key, versions, space.key(generation, map.name())],
                entry(format!("{}:{key}", map.name()), "hash", value, key),
            ),
            Self::Category { id, value, .. } => (
                APPLY_ENTRY,
                vec![
                    gen_key,
                    versions,
                    category_key(generation, id),
                    space.key(generation, "ids"),
                ],
                entry(id.clone(), "string", value, id),
            ),
        }
    }

    /// The row this item was read from.
    pub fn cache_ref(&self) -> CacheRef {
        match self {
            Self::Order {
                tenant, order_id, ..
            } => CacheRef::Order {
                tenant: *tenant,
                order_id: order_id.clone(),
            },
            Self::Profile { tenant, .. } => {
                CacheRef::Config(ConfigTarget::Profile { tenant: *tenant })
            }
            Self::Entry {
                tenant, map, key, ..
            } => CacheRef::Config(ConfigTarget::Entry {
                tenant: *tenant,
                map: *map,
                key: key.clone(),
            }),
            Self::Category { id, .. } => {
                CacheRef::Config(ConfigTarget::Category { id: id.clone() })
            }
        }
    }

    pub fn version(&self) -> i64 {
        match self {
            Self::Order { version, .. }
            | Self::Profile { version, .. }
            | Self::Entry { version, .. }
            | Self::Category { version, .. } => *version,
        }
    }
}

/// Key lifetimes in seconds (0: no expiry). Retired generations' keys expire by these.
#[derive(Debug, Clone, Copy)]
pub struct Ttl {
    pub orders: u64,
    pub config: u64,
}

impl From<&crate::config::RedisSettings> for Ttl {
    fn from(settings: &crate::config::RedisSettings) -> Self {
        Self {
            orders: settings.order_ttl_seconds,
            config: settings.config_ttl_seconds,
        }
    }
}

/// What applying cache items did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub written: usize,
    pub skipped_older: usize,
}

/// Script calls per Redis pipeline: small enough to answer well within [`COMMAND_TIMEOUT`].
const PIPELINE_CHUNK: usize = 1000;

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
        applied.written += done.written;
        applied.skipped_older += done.skipped_older;
        pending = moved;
    }
    Err(moving_generation(pending.len()))
}

fn moving_generation(count: usize) -> CacheError {
    CacheError::Redis(fred::error::Error::new(
        fred::error::ErrorKind::Unknown,
        format!("{count} writes kept meeting a moving generation"),
    ))
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
    for chunk in items.chunks(PIPELINE_CHUNK) {
        let pipeline = redis.pipeline();
        for item in chunk {
            let generation = generations.get(&item.keyspace()).copied().unwrap_or(0);
            let (script, keys, args) = item.command(generation, ttl);
            let () = pipeline
                .custom(eval(), eval_args(script, keys, args))
                .await?;
        }
        let results: Vec<i64> = pipeline.all().await?;
        if results.len() != chunk.len() {
            // Never treat a partial answer as success: the outbox rows would be deleted.
            return Err(CacheError::Redis(fred::error::Error::new(
                fred::error::ErrorKind::Unknown,
                format!("{} answers to {} writes", results.len(), chunk.len()),
            )));
        }
        for (item, result) in chunk.iter().zip(results) {
            match result {
                1 => applied.written += 1,
                0 => applied.skipped_older += 1,
                _ => moved.push(item.clone()),
            }
        }
    }
    Ok((applied, moved))
}

/// Reads the current rows behind `refs` and applies them, reading again those whose
/// generation moved meanwhile. `read` reads rows (under the right tenant contexts).
pub async fn refresh<F, Fut>(
    redis: &Client,
    refs: Vec<CacheRef>,
    ttl: &Ttl,
    mut read: F,
) -> Result<(Applied, usize), CacheError>
where
    F: FnMut(Vec<CacheRef>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<CacheItem>, CacheError>>,
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
        applied.written += done.written;
        applied.skipped_older += done.skipped_older;
        pending = moved.iter().map(CacheItem::cache_ref).collect();
    }
    Err(moving_generation(pending.len()))
}

/// EVAL as a custom command, because fred pipelines have no Lua interface; the first key
/// (argument 2: script, numkeys, key) picks the cluster node.
fn eval() -> CustomCommand {
    CustomCommand::new("EVAL", ClusterHash::Offset(2), false)
}

fn eval_args(script: &str, keys: Vec<String>, args: Vec<Value>) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::with_capacity(2 + keys.len() + args.len());
    all.push(script.into());
    all.push((keys.len() as i64).into());
    all.extend(keys.into_iter().map(Value::from));
    all.extend(args);
    all
}

/// Bumps each keyspace's generation; with a version, at most once per version.
pub async fn bump_generations(redis: &Client, bumps: &[(Keyspace, i64)]) -> Result<(), CacheError> {
    if bumps.is_empty() {
        return Ok(());
    }
    let pipeline = redis.pipeline();
    for (space, version) in bumps {
        let keys = vec![space.generation_key(), space.bumped_for_key()];
        let () = pipeline
            .custom(
                eval(),
                eval_args(BUMP_GENERATION, keys, vec![(*version).into()]),
            )
            .await?;
    }
    let _: Vec<i64> = pipeline.all().await?;
    Ok(())
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

/// How old queued work must be before the drainer takes it: younger work is normally being
/// applied by its own batch right now.
const MIN_AGE: Duration = Duration::from_secs(2);

/// Applies the queued cache work of consumer group `group` for `tenants` (and, with
/// `shared`, the shared work), up to `per_scope` rows each, older than [`MIN_AGE`], in one
/// transaction, from the current rows.
pub async fn drain(
    pool: &PgPool,
    redis: &Client,
    group: &str,
    tenants: &[Uuid],
    shared: bool,
    ttl: &Ttl,
    per_scope: i64,
) -> Result<(), CacheError> {
    let started = std::time::Instant::now();
    let mut tx = pool.begin().await?;
    let mut claimed = Vec::new();
    let scopes = tenants
        .iter()
        .map(|t| Some(*t))
        .chain(shared.then_some(None));
    for tenant in scopes {
        if let Some(tenant) = tenant {
            set_tenant(&mut tx, tenant).await?;
        }
        claimed.extend(claim_outbox(&mut tx, group, tenant, MIN_AGE, per_scope).await?);
    }
    // Redis first: if it fails, the rollback puts the work back in the outbox.
    let tx_owner = tokio::sync::Mutex::new(tx);
    let tx = &tx_owner;
    let (applied, _) = refresh(redis, claimed, ttl, |refs| async move {
        let mut tx = tx.lock().await;
        Ok(read_current(&mut tx, &refs).await?)
    })
    .await?;
    let tx = tx_owner.into_inner();
    tx.commit().await?;
    crate::metrics::cache_keys_written(applied.written, applied.skipped_older, started.elapsed());
    Ok(())
}

/// The current cache values behind `refs`, each tenant's read under its own context in `tx`.
pub async fn read_current(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    refs: &[CacheRef],
) -> Result<Vec<CacheItem>, SinkError> {
    let mut by_tenant: std::collections::BTreeMap<Option<Uuid>, Vec<CacheRef>> = Default::default();
    for r in refs {
        by_tenant.entry(r.tenant()).or_default().push(r.clone());
    }
    let mut items = Vec::new();
    for (tenant, refs) in by_tenant {
        if let Some(tenant) = tenant {
            set_tenant(tx, tenant).await?;
        }
        items.extend(current_items(tx, tenant, &refs).await?);
    }
    Ok(items)
}

/// Outbox rows whose Redis write succeeded and that still have to be deleted.
#[derive(Default)]
pub struct CacheLedger {
    applied: Mutex<HashMap<Keyspace, Vec<i64>>>,
}

impl CacheLedger {
    fn record(&self, queued: &[QueuedCache]) {
        let mut applied = self.applied.lock().expect("ledger lock");
        for q in queued {
            applied
                .entry(q.item.keyspace())
                .or_default()
                .push(q.outbox_id);
        }
    }

    /// The applied rows of `tenants`, handed to the next batch to delete.
    pub fn take_for(&self, tenants: impl IntoIterator<Item = Uuid>) -> HashMap<Uuid, Vec<i64>> {
        let mut applied = self.applied.lock().expect("ledger lock");
        tenants
            .into_iter()
            .filter_map(|t| applied.remove(&Keyspace::Tenant(t)).map(|ids| (t, ids)))
            .collect()
    }

    fn take_all(&self) -> HashMap<Keyspace, Vec<i64>> {
        std::mem::take(&mut *self.applied.lock().expect("ledger lock"))
    }
}

/// Writes a committed batch's rows to Redis and notes the applied outbox rows in `ledger`.
pub async fn apply_queued(
    redis: &Client,
    ledger: &CacheLedger,
    queued: &[QueuedCache],
    ttl: &Ttl,
) -> Result<(), CacheError> {
    let started = std::time::Instant::now();
    let items: Vec<CacheItem> = queued.iter().map(|q| q.item.clone()).collect();
    let applied = apply(redis, &items, ttl).await?;
    ledger.record(queued);
    crate::metrics::cache_keys_written(applied.written, applied.skipped_older, started.elapsed());
    Ok(())
}

/// Deletes outbox rows already applied to Redis, each tenant's under its own context.
pub async fn delete_applied(
    pool: &PgPool,
    applied: &HashMap<Keyspace, Vec<i64>>,
) -> Result<(), CacheError> {
    if applied.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    for (space, ids) in applied {
        delete_outbox_rows(&mut tx, *space, ids).await?;
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
    pub ttl: Ttl,
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
        // Shared work (few keys), then one pass over every tenant with leftover work, a page
        // of tenants at a time.
        drain(
            &self.pool,
            &self.redis,
            &self.group,
            &[],
            true,
            &self.ttl,
            500,
        )
        .await?;
        let mut after = None;
        let mut tenants_seen = 0;
        loop {
            let tenants = pending_tenants(&self.pool, &self.group, after, 20).await?;
            let Some(last) = tenants.last().copied() else {
                break;
            };
            tenants_seen += tenants.len();
            drain(
                &self.pool,
                &self.redis,
                &self.group,
                &tenants,
                false,
                &self.ttl,
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

    const TENANT: &str = "6f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b";

    #[test]
    fn keys_of_a_keyspace_share_its_hash_tag_and_name_their_generation() {
        let tenant = Uuid::parse_str(TENANT).unwrap();
        assert_eq!(
            order_key(&tenant, 3, "o-1"),
            format!("t:{{{TENANT}}}:g3:order:o-1")
        );
        let space = Keyspace::Tenant(tenant);
        assert_eq!(space.generation_key(), format!("t:{{{TENANT}}}:gen"));
        assert_eq!(space.key(0, "config"), format!("t:{{{TENANT}}}:g0:config"));
        assert_eq!(category_key(2, "ids"), "ref:{category}:g2:cat:ids");
        assert_eq!(Keyspace::Reference.generation_key(), "ref:{category}:gen");
    }

    #[test]
    fn every_script_key_of_an_item_is_in_its_keyspace() {
        let tenant = Uuid::parse_str(TENANT).unwrap();
        let ttl = Ttl {
            orders: 10,
            config: 20,
        };
        let items = [
            CacheItem::Entry {
                tenant,
                map: TenantMap::SlaPolicies,
                key: "default".into(),
                version: 4,
                value: None,
            },
            CacheItem::Category {
                id: "books".into(),
                version: 1,
                value: Some("{}".into()),
            },
        ];
        for item in items {
            let (_, keys, args) = item.command(7, &ttl);
            let tag = match item.keyspace() {
                Keyspace::Tenant(_) => format!("{{{TENANT}}}"),
                Keyspace::Reference => "{category}".to_owned(),
            };
            assert!(keys.iter().all(|k| k.contains(&tag)), "{keys:?}");
            assert_eq!(args[0], Value::from(7_i64));
            assert_eq!(args[3], Value::from(20_i64));
        }
    }
}
