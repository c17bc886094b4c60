//! Postgres: the source of truth for rows and for consumer progress.
//!
//! Guarantee: one transaction per partition batch writes the orders (set-based, per tenant under
//! `set_config('app.tenant_id', …, true)`), the cache outbox rows and the partition's next offset.
//! The offset write is a compare-and-set on the offset this worker last saw, taken first in the
//! transaction: a worker that lost its partition to another cannot commit over the new owner.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::cache::{CacheItem, Keyspace};
use crate::config::DatabaseSettings;
use crate::events::{ConfigTarget, TenantMap, TenantStatus, ValidConfig, ValidOrder};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("Postgres unavailable: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Setup(String),
}

/// Where a partition's progress is stored.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PartitionKey {
    pub group: String,
    pub topic: String,
    pub partition: i32,
}

/// What a committed batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchWrite {
    pub written: usize,
    pub stale: usize,
    /// The cache work this batch queued: one entry per row written, with the row's JSON.
    pub cache: Vec<QueuedCache>,
}

/// One cache refresh recorded in `cache_outbox` (or `shared_cache_outbox`, for shared keys) by
/// a committed batch, with the committed row's cache value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedCache {
    pub outbox_id: i64,
    pub item: CacheItem,
}

/// The rows of one partition batch: each topic carries one event type.
#[derive(Debug, Clone, Copy)]
pub enum Rows<'a> {
    Orders(&'a [ValidOrder]),
    Config(&'a [ValidConfig]),
}

impl<'a> From<&'a [ValidOrder]> for Rows<'a> {
    fn from(rows: &'a [ValidOrder]) -> Self {
        Self::Orders(rows)
    }
}

impl<'a> From<&'a [ValidConfig]> for Rows<'a> {
    fn from(rows: &'a [ValidConfig]) -> Self {
        Self::Config(rows)
    }
}

impl Rows<'_> {
    fn len(&self) -> usize {
        match self {
            Self::Orders(rows) => rows.len(),
            Self::Config(rows) => rows.len(),
        }
    }
}

/// Which cached value a row stands behind: what the outbox records and what a replay reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CacheRef {
    Order { tenant: Uuid, order_id: String },
    Config(ConfigTarget),
}

impl CacheRef {
    pub fn tenant(&self) -> Option<Uuid> {
        match self {
            Self::Order { tenant, .. } => Some(*tenant),
            Self::Config(target) => target.tenant(),
        }
    }

    /// The keyspace of the key the ref names.
    pub fn keyspace(&self) -> Keyspace {
        self.tenant().map_or(Keyspace::Reference, Keyspace::Tenant)
    }

    /// From an outbox row's `kind` and `key_id`; `None` for a kind this version does not know.
    fn from_outbox(tenant: Option<Uuid>, kind: &str, key_id: String) -> Option<Self> {
        Some(match (tenant, kind) {
            (Some(tenant), "order") => Self::Order {
                tenant,
                order_id: key_id,
            },
            (Some(tenant), "profile") => Self::Config(ConfigTarget::Profile { tenant }),
            (Some(tenant), "config") => Self::Config(ConfigTarget::Entry {
                tenant,
                map: TenantMap::Settings,
                key: key_id,
            }),
            (Some(tenant), "sla") => Self::Config(ConfigTarget::Entry {
                tenant,
                map: TenantMap::SlaPolicies,
                key: key_id,
            }),
            (None, "category") => Self::Config(ConfigTarget::Category { id: key_id }),
            _ => return None,
        })
    }
}

impl TenantMap {
    /// The table that holds the map. A constant per variant, never input.
    fn table(self) -> &'static str {
        match self {
            Self::Settings => "tenant_settings",
            Self::SlaPolicies => "sla_policies",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOutcome {
    Committed(BatchWrite),
    /// The stored offset was not the one expected: another worker owns the partition now.
    Fenced,
}

fn connect_options(url: &str) -> Result<PgConnectOptions, SinkError> {
    let options: PgConnectOptions = url
        .parse()
        .map_err(|e| SinkError::Setup(format!("invalid Postgres URL: {e}")))?;
    Ok(options
        .application_name("tenantstream")
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(2)))
}

/// The worker's pool (lazy: connects on first use). A statement or lock wait that hangs (a
/// network partition, a stuck lock) fails after a bound and is retried, instead of holding the
/// batch, and shutdown, forever.
pub async fn connect_worker(settings: &DatabaseSettings) -> Result<PgPool, SinkError> {
    connect_worker_sized(settings, settings.max_connections)
}

/// [`connect_worker`] with its own size, for a separate small pool.
pub fn connect_worker_sized(
    settings: &DatabaseSettings,
    max_connections: u32,
) -> Result<PgPool, SinkError> {
    let options = connect_options(settings.url.expose())?
        .options([("statement_timeout", "30s"), ("lock_timeout", "10s")]);
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

/// Fails unless the pool's role is subject to RLS (not superuser, no BYPASSRLS, owns no table).
pub async fn ensure_rls_applies(pool: &PgPool) -> Result<(), SinkError> {
    let (role, bypasses, owned): (String, bool, i64) = sqlx::query_as(
        "SELECT r.rolname::text, r.rolsuper OR r.rolbypassrls,
                (SELECT count(*) FROM pg_class c WHERE c.relowner = r.oid AND c.relkind = 'r')
           FROM pg_roles r WHERE r.rolname = current_user",
    )
    .fetch_one(pool)
    .await?;
    if bypasses || owned > 0 {
        return Err(SinkError::Setup(format!(
            "the worker connects as {role:?}, which {} row-level security; set DATABASE_URL to the \
             tenantstream_worker role (see README)",
            if bypasses { "bypasses" } else { "owns tables and so could alter" }
        )));
    }
    Ok(())
}

/// Runs the migrations as the owner, creating the database first if it does not exist.
pub async fn migrate(admin_url: &str) -> Result<(), SinkError> {
    use sqlx::migrate::MigrateDatabase;
    if !Postgres::database_exists(admin_url).await? {
        match Postgres::create_database(admin_url).await {
            Ok(()) => {}
            // Another process created it between the check and the create.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(connect_options(admin_url)?)
        .await?;
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .map_err(|e| SinkError::Setup(format!("migration failed: {e}")))?;
    pool.close().await;
    Ok(())
}

/// The stored next offsets of `partitions` (absent: never written).
pub async fn load_stored_offsets(
    pool: &PgPool,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, i64>, SinkError> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, next_offset FROM consumer_offsets
          WHERE consumer_group = $1 AND topic = $2 AND partition = ANY($3)",
    )
    .bind(group)
    .bind(topic)
    .bind(partitions)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// The tenants among `tenants` that exist in `tenants` (each checked under its own context).
pub async fn known_tenants(pool: &PgPool, tenants: &[Uuid]) -> Result<HashSet<Uuid>, SinkError> {
    let mut tx = pool.begin().await?;
    let mut known = HashSet::new();
    for tenant in tenants {
        set_tenant(&mut tx, *tenant).await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE tenant_id = $1)")
                .bind(tenant)
                .fetch_one(&mut *tx)
                .await?;
        if exists {
            known.insert(*tenant);
        }
    }
    tx.commit().await?;
    Ok(known)
}

/// Sets the transaction-local tenant context that every RLS policy reads.
pub async fn set_tenant(tx: &mut Transaction<'_, Postgres>, tenant: Uuid) -> Result<(), SinkError> {
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(tenant.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Writes one partition batch: fence the offset, upsert each tenant's rows, record cache work.
///
/// `expected` is the next offset this worker believes is stored (`None`: nothing stored yet);
/// `next_offset` is the offset after the batch's last message. `applied` holds, per tenant, the
/// outbox rows whose Redis write already succeeded; they are deleted in the same transaction,
/// which saves a round trip per tenant (left undeleted, a row is only applied again,
/// harmlessly, by the drainer).
pub async fn write_batch(
    pool: &PgPool,
    key: &PartitionKey,
    expected: Option<i64>,
    next_offset: i64,
    rows: Rows<'_>,
    register_tenants: bool,
    applied: &HashMap<Uuid, Vec<i64>>,
) -> Result<BatchOutcome, SinkError> {
    let mut tx = pool.begin().await?;
    if !advance_offset(&mut tx, key, expected, next_offset).await? {
        tx.rollback().await?;
        return Ok(BatchOutcome::Fenced);
    }
    let cache = write_rows(&mut tx, &key.group, rows, register_tenants, applied).await?;
    tx.commit().await?;
    Ok(BatchOutcome::Committed(BatchWrite {
        written: cache.len(),
        stale: rows.len() - cache.len(),
        cache,
    }))
}

/// Upserts the rows of either event type and queues their cache work under `group`.
async fn write_rows(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    rows: Rows<'_>,
    register_tenants: bool,
    applied: &HashMap<Uuid, Vec<i64>>,
) -> Result<Vec<QueuedCache>, SinkError> {
    match rows {
        Rows::Orders(orders) => write_orders(tx, group, orders, register_tenants, applied).await,
        Rows::Config(changes) => write_config(tx, group, changes, register_tenants, applied).await,
    }
}

async fn write_orders(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    orders: &[ValidOrder],
    register_tenants: bool,
    applied: &HashMap<Uuid, Vec<i64>>,
) -> Result<Vec<QueuedCache>, SinkError> {
    let mut queued = Vec::new();
    for (tenant, latest) in latest_per_order(orders) {
        set_tenant(tx, tenant).await?;
        let done = applied.get(&tenant).map_or(&[][..], Vec::as_slice);
        queued.extend(upsert_orders(tx, group, tenant, &latest, register_tenants, done).await?);
    }
    Ok(queued)
}

/// Per tenant (and once for shared data): the profile first (it may create the tenant), then
/// each map's entries; categories outside any tenant context.
async fn write_config(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    changes: &[ValidConfig],
    register_tenants: bool,
    applied: &HashMap<Uuid, Vec<i64>>,
) -> Result<Vec<QueuedCache>, SinkError> {
    let mut by_tenant: BTreeMap<Option<Uuid>, Vec<&ValidConfig>> = BTreeMap::new();
    for change in latest_per_target(changes) {
        by_tenant
            .entry(change.target.tenant())
            .or_default()
            .push(change);
    }
    let mut queued = Vec::new();
    for (tenant, changes) in by_tenant {
        let Some(tenant) = tenant else {
            queued.extend(upsert_categories(tx, group, &changes).await?);
            continue;
        };
        set_tenant(tx, tenant).await?;
        if let Some(done) = applied.get(&tenant) {
            sqlx::query("DELETE FROM cache_outbox WHERE id = ANY($1)")
                .bind(done)
                .execute(&mut **tx)
                .await?;
        }
        let mut entries: BTreeMap<TenantMap, Vec<&ValidConfig>> = BTreeMap::new();
        for change in changes {
            match &change.target {
                ConfigTarget::Profile { .. } => {
                    queued.extend(upsert_profile(tx, group, tenant, change).await?)
                }
                ConfigTarget::Entry { map, .. } => entries.entry(*map).or_default().push(change),
                ConfigTarget::Category { .. } => unreachable!("grouped under no tenant"),
            }
        }
        for (map, changes) in entries {
            queued
                .extend(upsert_entries(tx, group, tenant, map, &changes, register_tenants).await?);
        }
    }
    Ok(queued)
}

/// The newest change of each target in the batch (one statement may touch a row only once).
fn latest_per_target(changes: &[ValidConfig]) -> Vec<&ValidConfig> {
    let mut newest: BTreeMap<&ConfigTarget, &ValidConfig> = BTreeMap::new();
    for change in changes {
        newest
            .entry(&change.target)
            .and_modify(|kept| {
                if change.version > kept.version {
                    *kept = change;
                }
            })
            .or_insert(change);
    }
    newest.into_values().collect()
}

/// Writes rows outside any partition's progress (no offset is read or moved), for
/// `replay --rewrite-db`. The cache work is queued under `group` (the live worker's), so its
/// drainer applies it even if the replay stops before writing Redis. Returns the refs of the
/// rows that were newer than the stored ones.
pub async fn rewrite_rows(
    pool: &PgPool,
    group: &str,
    rows: Rows<'_>,
    register_tenants: bool,
) -> Result<Vec<CacheRef>, SinkError> {
    let mut tx = pool.begin().await?;
    let queued = write_rows(&mut tx, group, rows, register_tenants, &HashMap::new()).await?;
    tx.commit().await?;
    Ok(queued.iter().map(|q| q.item.cache_ref()).collect())
}

/// Deletes outbox rows of one keyspace (a tenant's under its context).
pub async fn delete_outbox_rows(
    tx: &mut Transaction<'_, Postgres>,
    space: Keyspace,
    ids: &[i64],
) -> Result<(), SinkError> {
    let table = match space {
        Keyspace::Tenant(tenant) => {
            set_tenant(tx, tenant).await?;
            "cache_outbox"
        }
        Keyspace::Reference => "shared_cache_outbox",
    };
    sqlx::query(&format!("DELETE FROM {table} WHERE id = ANY($1)"))
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Compare-and-set of the stored offset; false when another writer moved it.
async fn advance_offset(
    tx: &mut Transaction<'_, Postgres>,
    key: &PartitionKey,
    expected: Option<i64>,
    next_offset: i64,
) -> Result<bool, SinkError> {
    let result = match expected {
        Some(expected) => {
            sqlx::query(
                "UPDATE consumer_offsets SET next_offset = $4, updated_at = now()
                  WHERE consumer_group = $1 AND topic = $2 AND partition = $3
                    AND next_offset = $5",
            )
            .bind(&key.group)
            .bind(&key.topic)
            .bind(key.partition)
            .bind(next_offset)
            .bind(expected)
            .execute(&mut **tx)
            .await?
        }
        None => {
            sqlx::query(
                "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(&key.group)
            .bind(&key.topic)
            .bind(key.partition)
            .bind(next_offset)
            .execute(&mut **tx)
            .await?
        }
    };
    Ok(result.rows_affected() == 1)
}

/// Per tenant, the newest event of each order in the batch. Older events of the same order in
/// the same batch could change nothing, and one statement may touch a row only once.
fn latest_per_order(orders: &[ValidOrder]) -> BTreeMap<Uuid, Vec<&ValidOrder>> {
    let mut newest: HashMap<(Uuid, &str), &ValidOrder> = HashMap::new();
    for order in orders {
        newest
            .entry((order.tenant_id, order.event.order_id.as_str()))
            .and_modify(|kept| {
                if order.event.version > kept.event.version {
                    *kept = order;
                }
            })
            .or_insert(order);
    }
    let mut by_tenant: BTreeMap<Uuid, Vec<&ValidOrder>> = BTreeMap::new();
    for ((tenant, _), order) in newest {
        by_tenant.entry(tenant).or_default().push(order);
    }
    by_tenant
}

/// One set-based statement: register the tenant if asked, upsert the orders whose version is
/// newer than the stored row, and queue a cache refresh for each row written.
async fn upsert_orders(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    tenant: Uuid,
    orders: &[&ValidOrder],
    register_tenant: bool,
    applied_outbox_ids: &[i64],
) -> Result<Vec<QueuedCache>, SinkError> {
    let mut order_ids = Vec::with_capacity(orders.len());
    let mut versions = Vec::with_capacity(orders.len());
    let mut statuses = Vec::with_capacity(orders.len());
    let mut customers = Vec::with_capacity(orders.len());
    let mut currencies = Vec::with_capacity(orders.len());
    let mut totals = Vec::with_capacity(orders.len());
    let mut items = Vec::with_capacity(orders.len());
    let mut occurred = Vec::with_capacity(orders.len());
    let mut event_ids = Vec::with_capacity(orders.len());
    for order in orders {
        let e = &order.event;
        order_ids.push(e.order_id.as_str());
        versions.push(e.version);
        statuses.push(e.event_type.status());
        customers.push(e.customer_id.as_str());
        currencies.push(e.currency.as_str());
        totals.push(e.total_cents);
        items.push(serde_json::to_string(&e.items).expect("line items serialize"));
        occurred.push(e.occurred_at);
        event_ids.push(order.event_id);
    }
    let queued: Vec<(i64, String, i64, String)> = sqlx::query_as(
        "WITH registered AS (
             INSERT INTO tenants (tenant_id) SELECT $1 WHERE $11
             ON CONFLICT (tenant_id) DO NOTHING
         ),
         upserted AS (
             INSERT INTO orders AS o (tenant_id, order_id, version, status, customer_id, currency,
                                      total_cents, items, occurred_at, last_event_id, updated_at)
             SELECT $1, i.order_id, i.version, i.status, i.customer_id, i.currency, i.total_cents,
                    i.items::jsonb, to_timestamp(i.occurred_ms / 1000.0), i.event_id, now()
               FROM UNNEST($2::text[], $3::int8[], $4::text[], $5::text[], $6::text[], $7::int8[],
                           $8::text[], $9::int8[], $10::uuid[])
                    AS i(order_id, version, status, customer_id, currency, total_cents,
                         items, occurred_ms, event_id)
             ON CONFLICT (tenant_id, order_id) DO UPDATE
                SET version = EXCLUDED.version, status = EXCLUDED.status,
                    customer_id = EXCLUDED.customer_id, currency = EXCLUDED.currency,
                    total_cents = EXCLUDED.total_cents, items = EXCLUDED.items,
                    occurred_at = EXCLUDED.occurred_at, last_event_id = EXCLUDED.last_event_id,
                    updated_at = now()
              WHERE o.version < EXCLUDED.version
             RETURNING o.order_id, o.version, order_cache_json(o) AS json
         ),
         queued AS (
             INSERT INTO cache_outbox (consumer_group, tenant_id, kind, key_id, version)
             SELECT $12, $1, 'order', order_id, version FROM upserted
             RETURNING id, key_id
         ),
         cleared AS (
             DELETE FROM cache_outbox WHERE id = ANY($13)
         )
         SELECT q.id, u.order_id, u.version, u.json
           FROM upserted u JOIN queued q ON q.key_id = u.order_id",
    )
    .bind(tenant)
    .bind(&order_ids)
    .bind(&versions)
    .bind(&statuses)
    .bind(&customers)
    .bind(&currencies)
    .bind(&totals)
    .bind(&items)
    .bind(&occurred)
    .bind(&event_ids)
    .bind(register_tenant)
    .bind(group)
    .bind(applied_outbox_ids)
    .fetch_all(&mut **tx)
    .await?;
    Ok(queued
        .into_iter()
        .map(|(outbox_id, order_id, version, json)| QueuedCache {
            outbox_id,
            item: CacheItem::Order {
                tenant,
                order_id,
                version,
                json,
            },
        })
        .collect())
}

/// The tenant's profile, if newer than the stored one; creates the tenant if needed.
async fn upsert_profile(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    tenant: Uuid,
    change: &ValidConfig,
) -> Result<Option<QueuedCache>, SinkError> {
    let profile: crate::events::TenantProfile =
        serde_json::from_str(change.value.as_deref().unwrap_or_default())
            .map_err(|e| SinkError::Setup(format!("profile validated but unreadable: {e}")))?;
    let row: Option<(i64, i64, String)> = sqlx::query_as(
        "WITH upserted AS (
             INSERT INTO tenants AS t (tenant_id, status, name, tier, profile_version, updated_at)
             VALUES ($1, $2, $3, $4, $5, now())
             ON CONFLICT (tenant_id) DO UPDATE
                SET status = EXCLUDED.status, name = EXCLUDED.name, tier = EXCLUDED.tier,
                    profile_version = EXCLUDED.profile_version, updated_at = now()
              WHERE t.profile_version < EXCLUDED.profile_version
             RETURNING t.profile_version, tenant_profile_json(t) AS json
         ),
         queued AS (
             INSERT INTO cache_outbox (consumer_group, tenant_id, kind, key_id, version)
             SELECT $6, $1, 'profile', 'profile', profile_version FROM upserted
             RETURNING id
         )
         SELECT q.id, u.profile_version, u.json FROM upserted u, queued q",
    )
    .bind(tenant)
    .bind(profile.status.as_str())
    .bind(&profile.name)
    .bind(&profile.tier)
    .bind(change.version)
    .bind(group)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|(outbox_id, version, json)| QueuedCache {
        outbox_id,
        item: CacheItem::Profile {
            tenant,
            version,
            json,
            suspended: profile.status == TenantStatus::Suspended,
        },
    }))
}

/// Column arrays of config changes, for UNNEST.
struct ChangeColumns<'a> {
    keys: Vec<&'a str>,
    values: Vec<Option<&'a str>>,
    versions: Vec<i64>,
    occurred: Vec<i64>,
    event_ids: Vec<Uuid>,
}

impl<'a> ChangeColumns<'a> {
    fn of(changes: &[&'a ValidConfig]) -> Self {
        let key = |c: &'a ValidConfig| match &c.target {
            ConfigTarget::Entry { key, .. } => key.as_str(),
            ConfigTarget::Category { id } => id.as_str(),
            ConfigTarget::Profile { .. } => "profile",
        };
        Self {
            keys: changes.iter().map(|c| key(c)).collect(),
            values: changes.iter().map(|c| c.value.as_deref()).collect(),
            versions: changes.iter().map(|c| c.version).collect(),
            occurred: changes.iter().map(|c| c.occurred_at).collect(),
            event_ids: changes.iter().map(|c| c.event_id).collect(),
        }
    }
}

/// Settings or SLA policies of one tenant: upsert the newer ones (a `None` value is kept as a
/// tombstone) and queue their cache work.
async fn upsert_entries(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    tenant: Uuid,
    map: TenantMap,
    changes: &[&ValidConfig],
    register_tenant: bool,
) -> Result<Vec<QueuedCache>, SinkError> {
    let c = ChangeColumns::of(changes);
    let sql = format!(
        "WITH registered AS (
             INSERT INTO tenants (tenant_id) SELECT $1 WHERE $7
             ON CONFLICT (tenant_id) DO NOTHING
         ),
         upserted AS (
             INSERT INTO {table} AS s (tenant_id, key, value, version, occurred_at,
                                      last_event_id, updated_at)
             SELECT $1, i.key, i.value::jsonb, i.version, to_timestamp(i.occurred_ms / 1000.0),
                    i.event_id, now()
               FROM UNNEST($2::text[], $3::text[], $4::int8[], $5::int8[], $6::uuid[])
                    AS i(key, value, version, occurred_ms, event_id)
             ON CONFLICT (tenant_id, key) DO UPDATE
                SET value = EXCLUDED.value, version = EXCLUDED.version,
                    occurred_at = EXCLUDED.occurred_at, last_event_id = EXCLUDED.last_event_id,
                    updated_at = now()
              WHERE s.version < EXCLUDED.version
             RETURNING s.key, s.version, s.value::text AS value
         ),
         queued AS (
             INSERT INTO cache_outbox (consumer_group, tenant_id, kind, key_id, version)
             SELECT $8, $1, '{kind}', key, version FROM upserted
             RETURNING id, key_id
         )
         SELECT q.id, u.key, u.version, u.value
           FROM upserted u JOIN queued q ON q.key_id = u.key",
        table = map.table(),
        kind = map.name(),
    );
    let rows: Vec<(i64, String, i64, Option<String>)> = sqlx::query_as(&sql)
        .bind(tenant)
        .bind(&c.keys)
        .bind(&c.values)
        .bind(&c.versions)
        .bind(&c.occurred)
        .bind(&c.event_ids)
        .bind(register_tenant)
        .bind(group)
        .fetch_all(&mut **tx)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(outbox_id, key, version, value)| QueuedCache {
            outbox_id,
            item: CacheItem::Entry {
                tenant,
                map,
                key,
                version,
                value,
            },
        })
        .collect())
}

/// Shared categories: upsert the newer ones and queue their cache work.
async fn upsert_categories(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    changes: &[&ValidConfig],
) -> Result<Vec<QueuedCache>, SinkError> {
    let c = ChangeColumns::of(changes);
    let rows: Vec<(i64, String, i64, Option<String>)> = sqlx::query_as(
        "WITH upserted AS (
             INSERT INTO categories AS s (category_id, value, version, occurred_at,
                                         last_event_id, updated_at)
             SELECT i.key, i.value::jsonb, i.version, to_timestamp(i.occurred_ms / 1000.0),
                    i.event_id, now()
               FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::uuid[])
                    AS i(key, value, version, occurred_ms, event_id)
             ON CONFLICT (category_id) DO UPDATE
                SET value = EXCLUDED.value, version = EXCLUDED.version,
                    occurred_at = EXCLUDED.occurred_at, last_event_id = EXCLUDED.last_event_id,
                    updated_at = now()
              WHERE s.version < EXCLUDED.version
             RETURNING s.category_id, s.version, s.value::text AS value
         ),
         queued AS (
             INSERT INTO shared_cache_outbox (consumer_group, kind, key_id, version)
             SELECT $6, 'category', category_id, version FROM upserted
             RETURNING id, key_id
         )
         SELECT q.id, u.category_id, u.version, u.value
           FROM upserted u JOIN queued q ON q.key_id = u.category_id",
    )
    .bind(&c.keys)
    .bind(&c.values)
    .bind(&c.versions)
    .bind(&c.occurred)
    .bind(&c.event_ids)
    .bind(group)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(outbox_id, id, version, value)| QueuedCache {
            outbox_id,
            item: CacheItem::Category { id, version, value },
        })
        .collect())
}

/// The current cache values behind `refs`, read under the context already set in `tx`
/// (`tenant`: the refs' tenant; `None`: shared refs). Refs without a row yield nothing.
pub async fn current_items(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Option<Uuid>,
    refs: &[CacheRef],
) -> Result<Vec<CacheItem>, SinkError> {
    let mut order_ids = Vec::new();
    let mut profile = false;
    let mut entries: BTreeMap<TenantMap, Vec<&str>> = BTreeMap::new();
    let mut categories = Vec::new();
    for r in refs {
        match r {
            CacheRef::Order { order_id, .. } => order_ids.push(order_id.as_str()),
            CacheRef::Config(ConfigTarget::Profile { .. }) => profile = true,
            CacheRef::Config(ConfigTarget::Entry { map, key, .. }) => {
                entries.entry(*map).or_default().push(key)
            }
            CacheRef::Config(ConfigTarget::Category { id }) => categories.push(id.as_str()),
        }
    }
    let mut items = Vec::new();
    if let Some(tenant) = tenant {
        if !order_ids.is_empty() {
            let rows: Vec<(String, i64, String)> = sqlx::query_as(
                "SELECT o.order_id, o.version, order_cache_json(o) FROM orders o
                  WHERE o.tenant_id = $1 AND o.order_id = ANY($2)",
            )
            .bind(tenant)
            .bind(&order_ids)
            .fetch_all(&mut **tx)
            .await?;
            items.extend(
                rows.into_iter()
                    .map(|(order_id, version, json)| CacheItem::Order {
                        tenant,
                        order_id,
                        version,
                        json,
                    }),
            );
        }
        if profile {
            let row: Option<(i64, String, String)> = sqlx::query_as(
                "SELECT t.profile_version, t.status, tenant_profile_json(t) FROM tenants t
                  WHERE t.tenant_id = $1 AND t.profile_version > 0",
            )
            .bind(tenant)
            .fetch_optional(&mut **tx)
            .await?;
            items.extend(row.map(|(version, status, json)| CacheItem::Profile {
                tenant,
                version,
                json,
                suspended: status == TenantStatus::Suspended.as_str(),
            }));
        }
        for (map, keys) in entries {
            let sql = format!(
                "SELECT key, version, value::text FROM {} WHERE tenant_id = $1 AND key = ANY($2)",
                map.table()
            );
            let rows: Vec<(String, i64, Option<String>)> = sqlx::query_as(&sql)
                .bind(tenant)
                .bind(&keys)
                .fetch_all(&mut **tx)
                .await?;
            items.extend(
                rows.into_iter()
                    .map(|(key, version, value)| CacheItem::Entry {
                        tenant,
                        map,
                        key,
                        version,
                        value,
                    }),
            );
        }
    }
    if !categories.is_empty() {
        let rows: Vec<(String, i64, Option<String>)> = sqlx::query_as(
            "SELECT category_id, version, value::text FROM categories
              WHERE category_id = ANY($1)",
        )
        .bind(&categories)
        .fetch_all(&mut **tx)
        .await?;
        items.extend(
            rows.into_iter()
                .map(|(id, version, value)| CacheItem::Category { id, version, value }),
        );
    }
    Ok(items)
}

/// Claims up to `max` of a tenant's (or, with `None`, the shared) outbox rows of consumer
/// group `group` older than `min_age`, deleting them in `tx`, and returns what they refer to.
pub async fn claim_outbox(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    tenant: Option<Uuid>,
    min_age: Duration,
    max: i64,
) -> Result<Vec<CacheRef>, SinkError> {
    let rows: Vec<(String, String)> = match tenant {
        Some(tenant) => {
            sqlx::query_as(
                "DELETE FROM cache_outbox
                  WHERE id IN (SELECT id FROM cache_outbox
                                WHERE consumer_group = $1 AND tenant_id = $2
                                  AND created_at < now() - make_interval(secs => $3)
                                ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED)
                 RETURNING kind, key_id",
            )
            .bind(group)
            .bind(tenant)
            .bind(min_age.as_secs_f64())
            .bind(max)
            .fetch_all(&mut **tx)
            .await?
        }
        None => {
            sqlx::query_as(
                "DELETE FROM shared_cache_outbox
                  WHERE id IN (SELECT id FROM shared_cache_outbox
                                WHERE consumer_group = $1
                                  AND created_at < now() - make_interval(secs => $2)
                                ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
                 RETURNING kind, key_id",
            )
            .bind(group)
            .bind(min_age.as_secs_f64())
            .bind(max)
            .fetch_all(&mut **tx)
            .await?
        }
    };
    let mut refs: Vec<CacheRef> = rows
        .into_iter()
        .filter_map(|(kind, key_id)| {
            let r = CacheRef::from_outbox(tenant, &kind, key_id);
            if r.is_none() {
                tracing::warn!(
                    kind,
                    "Dropped an outbox row of a kind this version does not know."
                );
            }
            r
        })
        .collect();
    refs.sort();
    refs.dedup();
    Ok(refs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::sample_order;

    #[test]
    fn latest_per_order_keeps_highest_version() {
        let mut a = sample_order();
        a.version = 3;
        let mut b = sample_order();
        b.version = 5;
        let mut c = sample_order();
        c.order_id = "o-2".into();
        let orders: Vec<ValidOrder> = [a, b, c]
            .into_iter()
            .map(|e| e.validate().unwrap())
            .collect();
        let grouped = latest_per_order(&orders);
        assert_eq!(grouped.len(), 1);
        let mut kept: Vec<(String, i64)> = grouped
            .values()
            .next()
            .unwrap()
            .iter()
            .map(|o| (o.event.order_id.clone(), o.event.version))
            .collect();
        kept.sort();
        assert_eq!(kept, vec![("o-1".into(), 5), ("o-2".into(), 1)]);
    }
}
