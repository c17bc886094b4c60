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

use crate::config::DatabaseSettings;
use crate::events::ValidOrder;

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

/// One cache refresh recorded in `cache_outbox` by a committed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedCache {
    pub outbox_id: i64,
    pub tenant: Uuid,
    pub order_id: String,
    pub version: i64,
    /// The committed row as the cache stores it (`order_cache_json`).
    pub json: String,
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
        Postgres::create_database(admin_url).await?;
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

/// Writes one partition batch: fence the offset, upsert each tenant's orders, record cache work.
///
/// `expected` is the next offset this worker believes is stored (`None`: nothing stored yet);
/// `next_offset` is the offset after the batch's last message. `applied` holds, per tenant, the
/// outbox rows whose Redis write already succeeded; they are deleted in the same statement as the
/// tenant's upsert, which saves a round trip per tenant (left undeleted, a row is only applied
/// again, harmlessly, by the drainer).
pub async fn write_batch(
    pool: &PgPool,
    key: &PartitionKey,
    expected: Option<i64>,
    next_offset: i64,
    orders: &[ValidOrder],
    register_tenants: bool,
    applied: &HashMap<Uuid, Vec<i64>>,
) -> Result<BatchOutcome, SinkError> {
    let mut tx = pool.begin().await?;
    if !advance_offset(&mut tx, key, expected, next_offset).await? {
        tx.rollback().await?;
        return Ok(BatchOutcome::Fenced);
    }
    let mut outcome = BatchWrite::default();
    for (tenant, latest) in latest_per_order(orders) {
        set_tenant(&mut tx, tenant).await?;
        let no_ids = Vec::new();
        let done = applied.get(&tenant).unwrap_or(&no_ids);
        let queued =
            upsert_orders(&mut tx, &key.group, tenant, &latest, register_tenants, done).await?;
        outcome.written += queued.len();
        outcome.cache.extend(queued);
    }
    outcome.stale = orders.len() - outcome.written;
    tx.commit().await?;
    Ok(BatchOutcome::Committed(outcome))
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
            tenant,
            order_id,
            version,
            json,
        })
        .collect())
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
