//! The JSON of the tenant health API: one tenant's figures with a verdict, and the worst
//! tenants first. Field names are stable (README, "Tenant health API").

use std::collections::BTreeMap;

use serde::Serialize;
use uuid::Uuid;

use super::window::{Counts, LastMinute, LastQuarter};
use super::{TenantEntry, TenantMonitor};

/// A p99 latency over the last minute above this makes a tenant `degraded`.
pub const DEGRADED_P99_MS: u32 = 5_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Nothing below happened.
    Ok,
    /// Dead letters in the last 15 minutes, or a p99 latency over the last minute above
    /// [`DEGRADED_P99_MS`].
    Degraded,
    /// SLA violations published in the last 15 minutes.
    Violating,
}

/// `GET /tenants/{id}/health`.
#[derive(Clone, Debug, Serialize)]
pub struct TenantHealth {
    pub tenant_id: Uuid,
    /// `provisional`, `active` or `suspended` as stored in Postgres; `null` until read.
    pub status: Option<String>,
    pub verdict: Verdict,
    pub reason: String,
    /// When this worker last consumed an event of the tenant (ms since the epoch).
    pub last_event_at_ms: Option<i64>,
    /// Since this worker began tracking the tenant.
    pub totals: Figures,
    pub last_1m: Figures,
    pub last_15m: Figures,
}

/// What a tenant's events became over a window.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Figures {
    /// Events consumed: written + superseded + stale + dead-lettered.
    pub events: u64,
    pub written: u64,
    pub superseded: u64,
    pub stale: u64,
    pub dead_letters: u64,
    /// Totals only: dead letters by error code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letters_by_code: Option<BTreeMap<&'static str, u64>>,
    /// Published by this worker, by kind.
    pub sla_violations: BTreeMap<&'static str, u64>,
    /// Postgres statement time attributed to the tenant (its share of each batch's statements,
    /// by event count).
    pub postgres_seconds: f64,
    /// Windows only: events per second over the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_per_second: Option<f64>,
    /// Windows only: end-to-end latency (occurred_at → commit), upper bucket bounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_p50_ms: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_p99_ms: Option<u32>,
}

impl Figures {
    fn of(counts: &Counts) -> Self {
        let mut sla = BTreeMap::new();
        sla.insert("DEADLINE_MISSED", u64::from(counts.deadline_missed));
        sla.insert("PROCESSING_LAG", u64::from(counts.processing_lag));
        Self {
            events: counts.events.into(),
            written: counts.written.into(),
            superseded: counts.superseded.into(),
            stale: counts.stale.into(),
            dead_letters: counts.dead_letters.into(),
            dead_letters_by_code: None,
            sla_violations: sla,
            postgres_seconds: counts.postgres_us as f64 / 1e6,
            events_per_second: None,
            latency_p50_ms: None,
            latency_p99_ms: None,
        }
    }

    fn window(counts: &Counts, covered_seconds: f64) -> Self {
        Self {
            events_per_second: Some(counts.events as f64 / covered_seconds),
            latency_p50_ms: counts.latency_quantile_ms(0.50),
            latency_p99_ms: counts.latency_quantile_ms(0.99),
            ..Self::of(counts)
        }
    }
}

/// One line of `GET /tenants`.
#[derive(Clone, Debug, Serialize)]
pub struct TenantSummary {
    pub tenant_id: Uuid,
    pub status: Option<String>,
    pub verdict: Verdict,
    /// Over the last minute.
    pub events_per_second: f64,
    /// Over the last minute.
    pub latency_p99_ms: Option<u32>,
    /// Over the last 15 minutes.
    pub dead_letters: u64,
    /// Over the last 15 minutes.
    pub sla_violations: u64,
    /// Over the last minute.
    pub postgres_seconds: f64,
    pub last_event_at_ms: Option<i64>,
}

/// The order of `GET /tenants?sort=`: the worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    /// p99 latency over the last minute.
    Lag,
    /// Dead letters over the last 15 minutes.
    Errors,
    /// SLA violations over the last 15 minutes.
    Violations,
    /// Events over the last minute.
    Volume,
}

impl Sort {
    pub const NAMES: &'static str = "lag, errors, violations, volume";

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "lag" => Some(Self::Lag),
            "errors" => Some(Self::Errors),
            "violations" => Some(Self::Violations),
            "volume" => Some(Self::Volume),
            _ => None,
        }
    }
}

fn verdict(minute: &Counts, quarter: &Counts) -> (Verdict, String) {
    let violations = quarter.violations();
    if violations > 0 {
        let reason = format!(
            "{violations} SLA violations in the last 15 minutes ({} DEADLINE_MISSED, {} \
             PROCESSING_LAG)",
            quarter.deadline_missed, quarter.processing_lag
        );
        return (Verdict::Violating, reason);
    }
    if quarter.dead_letters > 0 {
        let reason = format!(
            "{} dead letters in the last 15 minutes",
            quarter.dead_letters
        );
        return (Verdict::Degraded, reason);
    }
    let p99 = minute.latency_quantile_ms(0.99);
    if let Some(p99) = p99.filter(|p99| *p99 > DEGRADED_P99_MS) {
        let reason =
            format!("p99 latency {p99} ms over the last minute, above {DEGRADED_P99_MS} ms");
        return (Verdict::Degraded, reason);
    }
    let reason = "no SLA violations or dead letters in the last 15 minutes".to_owned();
    (Verdict::Ok, reason)
}

impl TenantMonitor {
    /// The tenant's health, `None` when it is not in memory (never seen, or evicted).
    pub fn health(&self, tenant: Uuid) -> Option<TenantHealth> {
        let now = self.now_ms();
        let table = self.lock();
        let entry = table.tenants.get(&tenant)?;
        let (minute, quarter) = (entry.minute.sum(now), entry.quarter.sum(now));
        let (verdict, reason) = verdict(&minute, &quarter);
        let mut totals = Figures::of(&entry.totals);
        totals.dead_letters_by_code = Some(entry.dead_letters_by_code.clone());
        Some(TenantHealth {
            tenant_id: tenant,
            status: entry.status.clone(),
            verdict,
            reason,
            last_event_at_ms: entry.last_event_ms,
            totals,
            last_1m: Figures::window(&minute, LastMinute::covered_seconds(now)),
            last_15m: Figures::window(&quarter, LastQuarter::covered_seconds(now)),
        })
    }

    /// The `limit` worst tenants by `sort`, ties by tenant id.
    pub fn ranking(&self, sort: Sort, limit: usize) -> Vec<TenantSummary> {
        let now = self.now_ms();
        let seconds = LastMinute::covered_seconds(now);
        let mut all: Vec<TenantSummary> = {
            let table = self.lock();
            table
                .tenants
                .iter()
                .map(|(tenant, entry)| summary(*tenant, entry, now, seconds))
                .collect()
        };
        let key = |s: &TenantSummary| -> f64 {
            match sort {
                Sort::Lag => s.latency_p99_ms.map_or(-1.0, f64::from),
                Sort::Errors => s.dead_letters as f64,
                Sort::Violations => s.sla_violations as f64,
                Sort::Volume => s.events_per_second,
            }
        };
        all.sort_by(|a, b| {
            key(b)
                .total_cmp(&key(a))
                .then_with(|| a.tenant_id.cmp(&b.tenant_id))
        });
        all.truncate(limit);
        all
    }
}

fn summary(tenant: Uuid, entry: &TenantEntry, now: i64, minute_seconds: f64) -> TenantSummary {
    let (minute, quarter) = (entry.minute.sum(now), entry.quarter.sum(now));
    let (verdict, _) = verdict(&minute, &quarter);
    TenantSummary {
        tenant_id: tenant,
        status: entry.status.clone(),
        verdict,
        events_per_second: minute.events as f64 / minute_seconds,
        latency_p99_ms: minute.latency_quantile_ms(0.99),
        dead_letters: quarter.dead_letters.into(),
        sla_violations: quarter.violations().into(),
        postgres_seconds: minute.postgres_us as f64 / 1e6,
        last_event_at_ms: entry.last_event_ms,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::Clock;
    use crate::monitor::{TenantBatch, ViolationCount};

    #[test]
    fn the_verdict_names_violations_first_then_dead_letters_then_latency() {
        let clock = Clock::manual(10_000_000);
        let monitor = TenantMonitor::new(clock.clone(), 10, Duration::from_secs(1_800));
        let tenant = Uuid::from_u128(7);
        monitor.batch_committed(&[TenantBatch {
            tenant,
            events: 4,
            written: 2,
            superseded: 1,
            stale: 1,
            latencies_ms: vec![3, 4, 30, 6_000],
            postgres: Duration::from_millis(2),
        }]);
        let health = monitor.health(tenant).unwrap();
        assert_eq!(health.verdict, Verdict::Degraded, "{}", health.reason);
        assert_eq!(health.last_1m.latency_p99_ms, Some(6_000));
        assert_eq!(health.last_1m.latency_p50_ms, Some(5));
        assert_eq!((health.totals.written, health.totals.stale), (2, 1));
        monitor.dead_lettered(tenant, "invalid_field");
        monitor.violation_published(tenant, ViolationCount::DeadlineMissed);
        let health = monitor.health(tenant).unwrap();
        assert_eq!(health.verdict, Verdict::Violating);
        assert_eq!(health.totals.events, 5);
        assert_eq!(health.totals.sla_violations["DEADLINE_MISSED"], 1);
        let codes = health.totals.dead_letters_by_code.unwrap();
        assert_eq!(codes["invalid_field"], 1);
        // 16 minutes later the windows are empty and the tenant is ok again.
        clock.advance(Duration::from_secs(16 * 60));
        let health = monitor.health(tenant).unwrap();
        assert_eq!(health.verdict, Verdict::Ok);
        assert_eq!(health.last_15m.events, 0);
        assert_eq!(health.totals.events, 5);
        assert!(monitor.health(Uuid::from_u128(8)).is_none());
    }

    #[test]
    fn the_ranking_puts_the_worst_first() {
        let monitor = TenantMonitor::new(Clock::manual(0), 10, Duration::from_secs(1_800));
        for (n, events) in [(1u128, 5u32), (2, 50), (3, 20)] {
            monitor.batch_committed(&[TenantBatch {
                tenant: Uuid::from_u128(n),
                events,
                ..TenantBatch::default()
            }]);
        }
        let volume: Vec<u128> = monitor
            .ranking(Sort::Volume, 2)
            .iter()
            .map(|s| s.tenant_id.as_u128())
            .collect();
        assert_eq!(volume, [2, 3]);
    }
}
