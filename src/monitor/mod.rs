//! What each tenant's events became, in memory: the figures behind `/tenants/{id}/health`,
//! `/tenants` and the per-tenant series of `/metrics`.
//!
//! Bounded: a tenant's entry is a fixed-size pair of time rings ([`window`]) plus its totals
//! (about 2.6 KB), and entries idle for longer than the idle period are evicted, so memory
//! follows the tenants active in the last idle period, not the stream's length. The figures
//! are this worker's own: with several workers in a group, each sees the tenants of its
//! partitions (and the violations it published).

mod export;
mod report;
pub mod window;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use uuid::Uuid;

use crate::clock::Clock;
use window::{Counts, LastMinute, LastQuarter};

#[cfg_attr(not(feature = "test-support"), allow(unused_imports))] // for the tests
pub use export::TENANT_METRICS;
pub use report::Sort;

/// Default tenants per per-tenant metric and ranking: see [`export`].
pub const DEFAULT_TOP_K: usize = 10;
/// Default idle period after which a tenant's entry is evicted: longer than the 15-minute
/// window, so every figure of a tenant still in memory is complete.
pub const DEFAULT_IDLE_EVICT: Duration = Duration::from_secs(30 * 60);

/// The per-tenant table; cheap to clone and share.
#[derive(Clone)]
pub struct TenantMonitor {
    inner: Arc<Mutex<HashMap<Uuid, TenantEntry>>>,
    clock: Clock,
    top_k: usize,
    idle_evict: Duration,
}

/// One tenant's figures.
#[derive(Clone, Debug, Default)]
struct TenantEntry {
    minute: LastMinute,
    quarter: LastQuarter,
    totals: Counts,
    dead_letters_by_code: BTreeMap<&'static str, u64>,
    /// When its last event was consumed (ms), if any was.
    last_event_ms: Option<i64>,
    /// Its last activity of any kind, for eviction.
    last_seen_ms: i64,
    status: Option<String>,
}

/// One tenant's share of a committed batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantBatch {
    pub tenant: Uuid,
    pub events: u32,
    pub written: u32,
    pub superseded: u32,
    pub stale: u32,
    /// Each event's end-to-end latency at the commit, in ms.
    pub latencies_ms: Vec<i64>,
    /// The tenant's share of the batch's Postgres time.
    pub postgres: Duration,
}

/// An SLA violation's kind, as the monitor counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViolationCount {
    DeadlineMissed,
    ProcessingLag,
}

impl TenantMonitor {
    pub fn new(clock: Clock, top_k: usize, idle_evict: Duration) -> Self {
        Self {
            inner: Arc::default(),
            clock,
            top_k: top_k.max(1),
            idle_evict,
        }
    }

    /// The same table, timed by `clock` (a hand-driven one in tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// A committed batch's events, per tenant.
    pub fn batch_committed(&self, tenants: &[TenantBatch]) {
        let now = self.now_ms();
        let mut table = self.lock();
        for share in tenants {
            let entry = table.entry(share.tenant).or_default();
            entry.last_seen_ms = now;
            entry.last_event_ms = Some(now);
            let mut counts = Counts {
                events: share.events,
                written: share.written,
                superseded: share.superseded,
                stale: share.stale,
                postgres_us: share.postgres.as_micros() as u64,
                ..Counts::default()
            };
            for ms in &share.latencies_ms {
                counts.record_latency(*ms);
            }
            entry.add(now, &counts);
        }
    }

    /// A message of `tenant` was dead-lettered with `code`.
    pub fn dead_lettered(&self, tenant: Uuid, code: &'static str) {
        let now = self.now_ms();
        let mut table = self.lock();
        let entry = table.entry(tenant).or_default();
        entry.last_seen_ms = now;
        entry.last_event_ms = Some(now);
        *entry.dead_letters_by_code.entry(code).or_default() += 1;
        let counts = Counts {
            events: 1,
            dead_letters: 1,
            ..Counts::default()
        };
        entry.add(now, &counts);
    }

    /// This worker published an SLA violation of `tenant`.
    pub fn violation_published(&self, tenant: Uuid, kind: ViolationCount) {
        let now = self.now_ms();
        let mut table = self.lock();
        let entry = table.entry(tenant).or_default();
        entry.last_seen_ms = now;
        let mut counts = Counts::default();
        match kind {
            ViolationCount::DeadlineMissed => counts.deadline_missed = 1,
            ViolationCount::ProcessingLag => counts.processing_lag = 1,
        }
        entry.add(now, &counts);
    }

    /// The tenant's profile status (`provisional`, `active`, `suspended`), as last read.
    pub fn set_status(&self, tenant: Uuid, status: &str) {
        if let Some(entry) = self.lock().get_mut(&tenant) {
            if entry.status.as_deref() != Some(status) {
                entry.status = Some(status.to_owned());
            }
        }
    }

    /// Forgets the tenant's status, to be read again (its profile was just written).
    pub fn forget_status(&self, tenant: Uuid) {
        if let Some(entry) = self.lock().get_mut(&tenant) {
            entry.status = None;
        }
    }

    /// The tenants in memory whose status has not been read yet, at most `max`.
    pub fn without_status(&self, max: usize) -> Vec<Uuid> {
        let table = self.lock();
        table
            .iter()
            .filter(|(_, entry)| entry.status.is_none())
            .map(|(tenant, _)| *tenant)
            .take(max)
            .collect()
    }

    /// Every tenant in memory.
    pub fn tenants(&self) -> Vec<Uuid> {
        self.lock().keys().copied().collect()
    }

    /// Forgets the tenants idle for longer than the idle period; returns how many remain.
    pub fn evict_idle(&self) -> usize {
        let horizon = self.now_ms() - self.idle_evict.as_millis() as i64;
        let mut table = self.lock();
        table.retain(|_, entry| entry.last_seen_ms >= horizon);
        table.len()
    }

    /// Tenants in memory.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, TenantEntry>> {
        // A panic while holding the lock leaves counts, never a broken invariant.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl TenantEntry {
    fn add(&mut self, now_ms: i64, counts: &Counts) {
        self.minute.at(now_ms).add(counts);
        self.quarter.at(now_ms).add(counts);
        self.totals.add(counts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monitor(clock: &Clock) -> TenantMonitor {
        TenantMonitor::new(clock.clone(), 3, Duration::from_secs(1_800))
    }

    #[test]
    fn idle_tenants_are_evicted_and_active_ones_kept() {
        let clock = Clock::manual(1_000_000);
        let monitor = monitor(&clock);
        let (idle, busy) = (Uuid::from_u128(1), Uuid::from_u128(2));
        monitor.dead_lettered(idle, "malformed");
        clock.advance(Duration::from_secs(1_000));
        monitor.batch_committed(&[TenantBatch {
            tenant: busy,
            events: 1,
            written: 1,
            ..TenantBatch::default()
        }]);
        clock.advance(Duration::from_secs(900));
        assert_eq!(monitor.evict_idle(), 1);
        assert_eq!(monitor.tenants(), vec![busy]);
    }

    #[test]
    fn an_entry_stays_near_its_documented_size() {
        // README documents about 2.6 KB per tenant (the entry plus the map's slot).
        let size = std::mem::size_of::<TenantEntry>() + std::mem::size_of::<Uuid>();
        assert!(size < 2_700, "{size} bytes");
    }
}
