//! What each tenant's events became, in memory: the figures behind `/tenants/{id}/health`,
//! `/tenants` and the per-tenant series of `/metrics`.
//!
//! Bounded: a tenant's entry is a fixed-size pair of time rings ([`window`]) plus its totals
//! (about 2.6 KB), entries idle for longer than the idle period are evicted, and the table
//! holds at most [`MAX_TENANTS`]: beyond it (a producer inventing tenant ids, say) new tenants
//! are counted together in one overflow entry, shown as `tenant="other"`. The figures
//! are this worker's own: with several workers in a group, each sees the tenants of its
//! partitions (and the violations it published).

mod export;
mod report;
pub mod window;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use uuid::Uuid;

use crate::clock::Clock;
use crate::config::HttpSettings;
use window::{Counts, LastMinute, LastQuarter};

#[cfg_attr(not(feature = "test-support"), allow(unused_imports))] // for the tests
pub use export::TENANT_METRICS;
pub use report::Sort;

/// Most tenants with an entry of their own: about 52 MB.
pub const MAX_TENANTS: usize = 20_000;
/// A stored status is read again after this long (another worker, or an operator, may have
/// changed it).
const STATUS_TTL_MS: i64 = 60_000;

/// The per-tenant table; cheap to clone and share.
#[derive(Clone)]
pub struct TenantMonitor {
    inner: Arc<Mutex<Table>>,
    clock: Clock,
    top_k: usize,
    idle_evict: Duration,
}

#[derive(Default)]
struct Table {
    tenants: HashMap<Uuid, TenantEntry>,
    /// The tenants that found the table full, counted together.
    overflow: TenantEntry,
}

impl Table {
    /// The tenant's entry (created when there is room), or the overflow entry.
    fn entry(&mut self, tenant: Uuid, now_ms: i64) -> &mut TenantEntry {
        let room = self.tenants.len() < MAX_TENANTS;
        let entry = match self.tenants.entry(tenant) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) if room => e.insert(TenantEntry::default()),
            Entry::Vacant(_) => &mut self.overflow,
        };
        entry.last_seen_ms = now_ms;
        entry
    }
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
    /// As stored in `tenants`; `None` when not registered or not read yet.
    status: Option<String>,
    /// When the status was last read (ms); `None`: to be read.
    status_read_ms: Option<i64>,
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
    /// A table for the settings of the HTTP port (`tenant_metrics_top`, `tenant_idle_seconds`).
    pub fn for_settings(settings: &HttpSettings, clock: Clock) -> Self {
        let idle = Duration::from_secs(settings.tenant_idle_seconds);
        Self::new(clock, settings.tenant_metrics_top, idle)
    }

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
            let entry = table.entry(share.tenant, now);
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
        let entry = table.entry(tenant, now);
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
        let entry = table.entry(tenant, now);
        let mut counts = Counts::default();
        match kind {
            ViolationCount::DeadlineMissed => counts.deadline_missed = 1,
            ViolationCount::ProcessingLag => counts.processing_lag = 1,
        }
        entry.add(now, &counts);
    }

    /// The statuses read for `asked` (`found`: those registered, with their stored status;
    /// the others are not registered).
    pub fn statuses_read(&self, asked: &[Uuid], found: &[(Uuid, String)]) {
        let now = self.now_ms();
        let found: HashMap<Uuid, &str> = found.iter().map(|(t, s)| (*t, s.as_str())).collect();
        let mut table = self.lock();
        for tenant in asked {
            if let Some(entry) = table.tenants.get_mut(tenant) {
                entry.status = found.get(tenant).map(|s| (*s).to_owned());
                entry.status_read_ms = Some(now);
            }
        }
    }

    /// Makes the tenant's status due to be read again (its profile was just written).
    pub fn forget_status(&self, tenant: Uuid) {
        if let Some(entry) = self.lock().tenants.get_mut(&tenant) {
            entry.status_read_ms = None;
        }
    }

    /// At most `max` tenants whose status is due to be read: never read first, then the
    /// longest ago, among those not read for [`STATUS_TTL_MS`].
    pub fn statuses_due(&self, max: usize) -> Vec<Uuid> {
        let due_before = self.now_ms() - STATUS_TTL_MS;
        let table = self.lock();
        let mut due: Vec<(Option<i64>, Uuid)> = table
            .tenants
            .iter()
            .map(|(tenant, entry)| (entry.status_read_ms, *tenant))
            .filter(|(read, _)| read.is_none_or(|read| read < due_before))
            .collect();
        drop(table);
        due.sort_unstable();
        due.into_iter()
            .take(max)
            .map(|(_, tenant)| tenant)
            .collect()
    }

    /// Every tenant in memory.
    pub fn tenants(&self) -> Vec<Uuid> {
        self.lock().tenants.keys().copied().collect()
    }

    /// Forgets the tenants idle for longer than the idle period; returns how many remain.
    pub fn evict_idle(&self) -> usize {
        let horizon = self.now_ms() - self.idle_evict.as_millis() as i64;
        let mut table = self.lock();
        table
            .tenants
            .retain(|_, entry| entry.last_seen_ms >= horizon);
        if table.overflow.last_seen_ms < horizon {
            table.overflow = TenantEntry::default();
        }
        table.tenants.len()
    }

    /// Tenants in memory.
    pub fn len(&self) -> usize {
        self.lock().tenants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
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
    fn beyond_the_cap_new_tenants_share_the_overflow_entry_shown_as_other() {
        let monitor = monitor(&Clock::manual(0));
        let batches: Vec<TenantBatch> = (0..=MAX_TENANTS as u128)
            .map(|n| TenantBatch {
                tenant: Uuid::from_u128(n + 1),
                events: 1,
                ..TenantBatch::default()
            })
            .collect();
        monitor.batch_committed(&batches);
        monitor.dead_lettered(Uuid::from_u128(u128::MAX), "invalid_field");
        assert_eq!(monitor.len(), MAX_TENANTS);
        assert!(monitor
            .health(Uuid::from_u128(MAX_TENANTS as u128 + 1))
            .is_none());
        let text = monitor.render_prometheus();
        // Three of top-K (3 per ranking) by volume, all tied at 1 event: the rest, with the
        // overflowed tenant and the dead letter, are other's.
        let other = text
            .lines()
            .find(|l| {
                l.starts_with("tenantstream_tenant_dead_letters_per_second{tenant=\"other\"}")
            })
            .unwrap();
        assert!(!other.ends_with(" 0"), "{other}");
    }

    #[test]
    fn statuses_are_due_unread_first_then_after_a_minute() {
        let clock = Clock::manual(1_000_000);
        let monitor = monitor(&clock);
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        for tenant in [a, b] {
            monitor.dead_lettered(tenant, "invalid_field");
        }
        let mut due = monitor.statuses_due(10);
        due.sort();
        assert_eq!(due, [a, b]);
        // a is registered, b is not: both are read and not due again for a minute.
        monitor.statuses_read(&[a, b], &[(a, "active".to_owned())]);
        assert!(monitor.statuses_due(10).is_empty());
        assert_eq!(monitor.health(a).unwrap().status.as_deref(), Some("active"));
        assert_eq!(monitor.health(b).unwrap().status, None);
        monitor.forget_status(b);
        assert_eq!(monitor.statuses_due(10), [b]);
        clock.advance(Duration::from_secs(61));
        assert_eq!(monitor.statuses_due(1), [b], "never read again comes first");
        assert_eq!(monitor.statuses_due(10).len(), 2);
    }

    #[test]
    fn an_entry_stays_near_its_documented_size() {
        // README documents about 2.6 KB per tenant (the entry plus the map's slot).
        let size = std::mem::size_of::<TenantEntry>() + std::mem::size_of::<Uuid>();
        assert!(size < 2_700, "{size} bytes");
    }
}
