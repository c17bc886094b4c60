//! The background drainer: deletes the outbox rows batches applied (the sweep), and applies the
//! cache work a crash or a Redis outage left behind, from the current rows.
//!
//! Guarantee: claimed outbox rows are locked, and deleted in the same transaction that reads
//! their rows, committed only after Redis answered; a failure rolls the claim back and the work
//! stays queued. The rows of a key Redis refused (of the wrong type, say) stay queued alone.
//! Every 5 s it also reads the Postgres pool's connections and the outbox's size and age into
//! their gauges.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use sqlx::PgPool;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cache::{self, CacheError, CacheLedger, Ttl};
use crate::domain::{CacheRef, Keyspace};
use crate::health::{Component, Health};
use crate::metrics::{self, Stage};
use crate::retry::RetryPolicy;
use crate::sink::cache_outbox::{self, Claimed};
use crate::sink::{self, SinkError};

/// How old queued work must be before the drainer takes it: younger work is normally being
/// applied by its own batch right now.
const MIN_AGE: Duration = Duration::from_secs(2);

/// How long the drainer sleeps between passes when all is well.
const IDLE: Duration = Duration::from_secs(1);

/// Outbox rows claimed per tenant (or for the shared data) in one transaction.
const PER_SCOPE: i64 = 500;

/// Tenants with leftover work drained per transaction.
const TENANTS_PER_PAGE: i32 = 20;

/// How often the pool and outbox gauges are read.
const GAUGES_EVERY: Duration = Duration::from_secs(5);

/// A failed drain pass: always waited out (the work stays queued), never fatal.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error(transparent)]
    Postgres(#[from] SinkError),
    #[error(transparent)]
    Redis(#[from] CacheError),
}

impl From<sqlx::Error> for DrainError {
    fn from(error: sqlx::Error) -> Self {
        Self::Postgres(error.into())
    }
}

impl DrainError {
    fn component(&self) -> Component {
        match self {
            Self::Postgres(_) => Component::Postgres,
            Self::Redis(_) => Component::Redis,
        }
    }
}

/// Applies cache work left behind by a crash or a Redis outage, until shutdown.
pub struct CacheDrainer {
    pub pool: PgPool,
    pub redis: Client,
    pub group: String,
    pub ttl: Ttl,
    pub ledger: Arc<CacheLedger>,
    pub health: Health,
    /// Woken by the batch path when its own cache write failed.
    pub wake: Arc<Notify>,
}

impl CacheDrainer {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = RetryPolicy::DRAIN.backoff();
        let mut pause = IDLE;
        let mut gauges_due = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
                _ = self.wake.notified() => {}
            }
            if Instant::now() >= gauges_due {
                gauges_due = Instant::now() + GAUGES_EVERY;
                self.refresh_gauges().await;
            }
            match self.drain_once().await {
                Ok(()) => {
                    self.health.recovered(Component::Redis);
                    backoff.reset();
                    pause = IDLE;
                }
                Err(error) => {
                    // A failed pass is reported against Redis: its readiness is what the
                    // batch path reads to leave the cache work to the drainer.
                    self.health.failed(Component::Redis, &error);
                    pause = backoff.advance();
                    self.health
                        .transient(error.component(), Stage::Drain, &error, pause);
                }
            }
        }
    }

    /// Reads the Postgres pool's connections and the outbox's size and age into their gauges;
    /// a failed read leaves the outbox gauges as they were (the pass reports Postgres failures).
    async fn refresh_gauges(&self) {
        metrics::postgres_pool(self.pool.size(), self.pool.num_idle());
        if let Ok(state) = cache_outbox::outbox_state(&self.pool, &self.group).await {
            metrics::cache_outbox(state.rows, state.oldest_ms);
        }
    }

    /// Deletes what batches applied, then applies what is left (older than [`MIN_AGE`]).
    pub async fn drain_once(&self) -> Result<(), DrainError> {
        let applied = self.ledger.take_all();
        if let Err(error) = cache_outbox::delete_applied(&self.pool, &applied).await {
            // The rows stay queued and are applied again later, which changes nothing.
            tracing::warn!(%error, "Could not delete applied cache work.");
        }
        // Shared work (few keys), then one pass over every tenant with leftover work, a page
        // of tenants at a time. A page that fails (a key Redis refuses, say) stays queued; the
        // pass goes on with the next page, so one tenant's bad key does not hold back every
        // tenant after it. Three failing pages in a row end the pass.
        const GIVE_UP_AFTER: usize = 3;
        let mut first_error = self.drain(&[], true).await.err();
        let mut failing_in_a_row = usize::from(first_error.is_some());
        let mut after = None;
        let mut tenants_seen = 0;
        loop {
            let tenants = cache_outbox::pending_tenants(
                &self.pool,
                &self.group,
                MIN_AGE,
                after,
                TENANTS_PER_PAGE,
            )
            .await?;
            let Some(last) = tenants.last().copied() else {
                break;
            };
            tenants_seen += tenants.len();
            match self.drain(&tenants, false).await {
                Ok(()) => failing_in_a_row = 0,
                Err(error) => {
                    tracing::warn!(%error, first = %tenants[0], last = %last, "A page of cache work failed; going on with the next.");
                    failing_in_a_row += 1;
                    first_error.get_or_insert(error);
                    if failing_in_a_row == GIVE_UP_AFTER {
                        break;
                    }
                }
            }
            after = Some(last);
        }
        metrics::cache_backlog(tenants_seen);
        // Prove Redis answers even when nothing was queued, so readiness tells the truth: only
        // an outage marks Redis failing (which sends the batches' cache work here), not a page
        // that failed while Redis answers.
        let _: Value = self.redis.ping(None).await.map_err(|error| {
            metrics::redis_error(Stage::Drain);
            CacheError::from(error)
        })?;
        if let Some(error) = first_error {
            let component = error.component();
            self.health
                .failure_without_readiness(component, Stage::Drain, &error, Some(IDLE));
        }
        Ok(())
    }

    /// Applies the queued work of `tenants` (and, with `shared`, the shared work), up to
    /// [`PER_SCOPE`] rows each, older than [`MIN_AGE`], in one transaction, from the current
    /// rows. Redis first: if it fails, the rollback puts the work back in the outbox.
    async fn drain(&self, tenants: &[Uuid], shared: bool) -> Result<(), DrainError> {
        let started = Instant::now();
        let mut tx = self.pool.begin().await?;
        let mut claimed: Vec<(Keyspace, Claimed)> = Vec::new();
        let scopes = tenants
            .iter()
            .map(|t| Some(*t))
            .chain(shared.then_some(None));
        for tenant in scopes {
            if let Some(tenant) = tenant {
                sink::set_tenant(&mut tx, tenant).await?;
            }
            let space = tenant.map_or(Keyspace::Reference, Keyspace::Tenant);
            let group = &self.group;
            let rows = cache_outbox::claim(&mut tx, group, tenant, MIN_AGE, PER_SCOPE).await?;
            claimed.extend(rows.into_iter().map(|row| (space, row)));
        }
        let refs: BTreeSet<CacheRef> = claimed
            .iter()
            .filter_map(|(_, row)| row.cache_ref.clone())
            .collect();
        let tx = Mutex::new(tx);
        let (applied, _) =
            cache::refresh(&self.redis, refs.into_iter().collect(), &self.ttl, |refs| {
                let tx = &tx;
                async move {
                    let mut tx = tx.lock().await;
                    Ok::<_, DrainError>(sink::read_current(&mut tx, &refs).await?)
                }
            })
            .await
            .inspect_err(|error| {
                if let DrainError::Redis(_) = error {
                    metrics::redis_error(Stage::Drain);
                }
            })?;
        if !applied.failed.is_empty() {
            metrics::redis_error(Stage::Drain);
        }
        // The rows of keys Redis refused stay queued; the others are done.
        let refused: HashSet<&CacheRef> = applied.failed.iter().map(|f| &f.item).collect();
        let mut done: HashMap<Keyspace, Vec<i64>> = HashMap::new();
        for (space, row) in &claimed {
            if row.cache_ref.as_ref().is_none_or(|r| !refused.contains(r)) {
                done.entry(*space).or_default().push(row.id);
            }
        }
        let mut tx = tx.into_inner();
        cache_outbox::delete_claimed(&mut tx, &done).await?;
        tx.commit().await?;
        metrics::cache_keys_written(applied.written, applied.skipped_older, started.elapsed());
        Ok(())
    }
}
