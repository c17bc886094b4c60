//! Per-tenant counts in time slots: a ring of the last minute (six 10-second slots) and one of the
//! last 15 minutes (fifteen 1-minute slots). Fixed size, so a tenant's memory does not grow with
//! its traffic.

/// Upper bounds (ms) of the latency buckets; a last, open bucket holds the rest.
pub const LATENCY_BOUNDS_MS: [u32; 14] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
];
const BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// What happened to a tenant's events in one slot (or summed over slots).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub events: u32,
    pub written: u32,
    pub superseded: u32,
    pub stale: u32,
    pub dead_letters: u32,
    pub deadline_missed: u32,
    pub processing_lag: u32,
    /// Microseconds of Postgres statement time attributed to the tenant.
    pub postgres_us: u64,
    /// End-to-end latency (occurred_at → commit) of each event, by bucket.
    pub(super) latency: [u32; BUCKETS],
    pub(super) latency_max_ms: u32,
}

impl Counts {
    pub fn record_latency(&mut self, ms: i64) {
        let ms = ms.clamp(0, u32::MAX as i64) as u32;
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .position(|bound| ms <= *bound)
            .unwrap_or(BUCKETS - 1);
        self.latency[bucket] = self.latency[bucket].saturating_add(1);
        self.latency_max_ms = self.latency_max_ms.max(ms);
    }

    pub fn add(&mut self, other: &Counts) {
        self.events = self.events.saturating_add(other.events);
        self.written = self.written.saturating_add(other.written);
        self.superseded = self.superseded.saturating_add(other.superseded);
        self.stale = self.stale.saturating_add(other.stale);
        self.dead_letters = self.dead_letters.saturating_add(other.dead_letters);
        self.deadline_missed = self.deadline_missed.saturating_add(other.deadline_missed);
        self.processing_lag = self.processing_lag.saturating_add(other.processing_lag);
        self.postgres_us = self.postgres_us.saturating_add(other.postgres_us);
        for (mine, theirs) in self.latency.iter_mut().zip(other.latency) {
            *mine = mine.saturating_add(theirs);
        }
        self.latency_max_ms = self.latency_max_ms.max(other.latency_max_ms);
    }

    pub fn violations(&self) -> u32 {
        self.deadline_missed.saturating_add(self.processing_lag)
    }

    /// The latency (ms) under which a fraction `q` of the events fell: the upper bound of the
    /// bucket holding that rank, or the largest latency seen when that is smaller (so an upper
    /// estimate, exact to the bucket). `None` without events.
    pub fn latency_quantile_ms(&self, q: f64) -> Option<u32> {
        let total: u64 = self.latency.iter().map(|c| u64::from(*c)).sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (bucket, count) in self.latency.iter().enumerate() {
            seen += u64::from(*count);
            if seen >= rank {
                let bound = LATENCY_BOUNDS_MS.get(bucket).copied().unwrap_or(u32::MAX);
                return Some(bound.min(self.latency_max_ms));
            }
        }
        Some(self.latency_max_ms)
    }
}

/// `N` slots of `WIDTH_MS` each; slot `i` holds the counts of time slot `now / WIDTH_MS == i`.
#[derive(Clone, Debug)]
pub struct Ring<const N: usize, const WIDTH_MS: i64> {
    slots: [(i64, Counts); N],
}

impl<const N: usize, const WIDTH_MS: i64> Default for Ring<N, WIDTH_MS> {
    fn default() -> Self {
        Self {
            slots: [(i64::MIN, Counts::default()); N],
        }
    }
}

impl<const N: usize, const WIDTH_MS: i64> Ring<N, WIDTH_MS> {
    /// The counts of the slot holding `now_ms`, emptied first if it held an older slot.
    pub fn at(&mut self, now_ms: i64) -> &mut Counts {
        let index = now_ms.div_euclid(WIDTH_MS);
        let (held, counts) = &mut self.slots[index.rem_euclid(N as i64) as usize];
        if *held != index {
            *held = index;
            *counts = Counts::default();
        }
        counts
    }

    /// The counts of the window ending at `now_ms` (the current slot and the `N - 1` before).
    pub fn sum(&self, now_ms: i64) -> Counts {
        let current = now_ms.div_euclid(WIDTH_MS);
        let mut sum = Counts::default();
        for (index, counts) in &self.slots {
            if *index <= current && *index > current - N as i64 {
                sum.add(counts);
            }
        }
        sum
    }

    /// Seconds the window ending at `now_ms` covers (its first slot's start to `now_ms`): the
    /// divisor of a rate over it.
    pub fn covered_seconds(now_ms: i64) -> f64 {
        let first = (now_ms.div_euclid(WIDTH_MS) - (N as i64 - 1)) * WIDTH_MS;
        ((now_ms - first).max(1)) as f64 / 1000.0
    }
}

/// The last minute in 10-second slots.
pub type LastMinute = Ring<6, 10_000>;
/// The last 15 minutes in 1-minute slots.
pub type LastQuarter = Ring<15, 60_000>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_forgets_what_it_held_when_the_ring_comes_round_again() {
        let mut ring = LastMinute::default();
        ring.at(5_000).events += 3;
        ring.at(15_000).events += 4;
        assert_eq!(ring.sum(15_000).events, 7);
        // 65 s: the slot of 5 s is reused; 15 s is still inside the minute.
        ring.at(65_000).events += 1;
        assert_eq!(ring.sum(65_000).events, 5);
        // Two minutes later nothing of the above is inside the window.
        assert_eq!(ring.sum(200_000).events, 0);
    }

    #[test]
    fn quantiles_are_bucket_upper_bounds_capped_by_the_largest_latency() {
        let mut counts = Counts::default();
        assert_eq!(counts.latency_quantile_ms(0.5), None);
        for ms in [1, 2, 3, 4, 7, 8, 9, 40, 45, 120] {
            counts.record_latency(ms);
        }
        assert_eq!(counts.latency_quantile_ms(0.5), Some(10));
        assert_eq!(counts.latency_quantile_ms(0.9), Some(50));
        assert_eq!(counts.latency_quantile_ms(0.99), Some(120));
        counts.record_latency(10_000_000);
        assert_eq!(counts.latency_quantile_ms(1.0), Some(10_000_000));
    }

    #[test]
    fn covered_seconds_run_from_the_first_slot_of_the_window() {
        assert_eq!(LastMinute::covered_seconds(125_000), 55.0);
        assert_eq!(LastQuarter::covered_seconds(930_000), 870.0);
    }
}
