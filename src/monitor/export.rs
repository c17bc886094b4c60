//! The per-tenant series of `/metrics`, with a bound that holds at any tenant count.
//!
//! Each scrape ranks the tenants in memory over the last minute by volume, p99 latency, dead
//! letters and SLA violations; the top K of each ranking (only tenants with a non-zero figure)
//! get their own `tenant` label value, and every other tenant is folded into `tenant="other"`.
//! So each metric has at most `4K + 1` series (41 at the default K = 10), whatever the number
//! of tenants. The series are rendered from memory at each scrape, so a tenant that leaves the
//! top K leaves `/metrics` at once, and a gauge never needs resetting.

use std::collections::BTreeSet;
use std::fmt::Write;

use uuid::Uuid;

use super::window::{Counts, LastMinute};
use super::TenantMonitor;

pub const TENANT_EVENTS: &str = "tenantstream_tenant_events_per_second";
pub const TENANT_LATENCY_P99: &str = "tenantstream_tenant_latency_p99_seconds";
pub const TENANT_DEAD_LETTERS: &str = "tenantstream_tenant_dead_letters_per_second";
pub const TENANT_VIOLATIONS: &str = "tenantstream_tenant_sla_violations_per_second";
pub const TENANT_POSTGRES: &str = "tenantstream_tenant_postgres_seconds_per_second";
pub const TENANTS_TRACKED: &str = "tenantstream_tenants_tracked";

/// The per-tenant metrics (all gauges over the last minute, label `tenant`) and the tracked
/// count, with their HELP text: for `/metrics` and the README catalogue.
pub const TENANT_METRICS: &[(&str, &str)] = &[
    (TENANT_EVENTS, "Events consumed per second over the last minute, per top tenant (the rest as tenant=\"other\")."),
    (TENANT_LATENCY_P99, "p99 end-to-end latency (occurred_at to commit) over the last minute, per top tenant (upper bucket bound)."),
    (TENANT_DEAD_LETTERS, "Dead letters per second over the last minute, per top tenant."),
    (TENANT_VIOLATIONS, "SLA violations published per second over the last minute, per top tenant."),
    (TENANT_POSTGRES, "Seconds of Postgres statement time per second attributed to the tenant over the last minute, per top tenant."),
    (TENANTS_TRACKED, "Tenants held in the worker's per-tenant table (evicted after the idle period)."),
];

/// A tenant's last-minute figures as exported.
struct Row {
    label: String,
    counts: Counts,
}

type SeriesValue = fn(&Counts, f64) -> Option<f64>;

/// Each per-tenant series: its name and its value from a tenant's last-minute counts and the
/// seconds they cover (`None`: no sample, a p99 without events).
const SERIES: [(&str, SeriesValue); 5] = [
    (TENANT_EVENTS, |c, seconds| {
        Some(f64::from(c.events) / seconds)
    }),
    (TENANT_LATENCY_P99, |c, _| {
        c.latency_quantile_ms(0.99).map(|ms| f64::from(ms) / 1000.0)
    }),
    (TENANT_DEAD_LETTERS, |c, seconds| {
        Some(f64::from(c.dead_letters) / seconds)
    }),
    (TENANT_VIOLATIONS, |c, seconds| {
        Some(f64::from(c.violations()) / seconds)
    }),
    (TENANT_POSTGRES, |c, seconds| {
        Some(c.postgres_us as f64 / 1e6 / seconds)
    }),
];

impl TenantMonitor {
    /// The per-tenant series in the Prometheus text format.
    pub fn render_prometheus(&self) -> String {
        let now = self.now_ms();
        let (tracked, minute, overflow) = {
            let table = self.lock();
            let minute: Vec<(Uuid, Counts)> = table
                .tenants
                .iter()
                .map(|(tenant, entry)| (*tenant, entry.minute.sum(now)))
                .collect();
            (table.tenants.len(), minute, table.overflow.minute.sum(now))
        };
        let rows = self.top_rows(minute, overflow);
        let seconds = LastMinute::covered_seconds(now);
        let mut out = String::new();
        for (name, help) in TENANT_METRICS {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            if *name == TENANTS_TRACKED {
                let _ = writeln!(out, "{name} {tracked}");
                continue;
            }
            let (_, value) = SERIES
                .iter()
                .find(|(series, _)| series == name)
                .expect("every per-tenant metric but the count has a series");
            for row in &rows {
                if let Some(value) = value(&row.counts, seconds) {
                    let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {value}", row.label);
                }
            }
        }
        out
    }

    /// The top K tenants of each ranking, each on its own row, then `other` with the rest
    /// (and the overflow's counts).
    fn top_rows(&self, mut minute: Vec<(Uuid, Counts)>, overflow: Counts) -> Vec<Row> {
        let rankings: [fn(&Counts) -> u64; 4] = [
            |c| c.events.into(),
            |c| c.latency_quantile_ms(0.99).map_or(0, u64::from),
            |c| c.dead_letters.into(),
            |c| c.violations().into(),
        ];
        let mut top = BTreeSet::new();
        for rank in rankings {
            minute.sort_by(|a, b| rank(&b.1).cmp(&rank(&a.1)).then(a.0.cmp(&b.0)));
            let leaders = minute.iter().take(self.top_k).filter(|(_, c)| rank(c) > 0);
            top.extend(leaders.map(|(tenant, _)| *tenant));
        }
        let mut rows = Vec::with_capacity(top.len() + 1);
        let mut other = overflow;
        for (tenant, counts) in minute {
            if top.contains(&tenant) {
                let label = tenant.to_string();
                rows.push(Row { label, counts });
            } else {
                other.add(&counts);
            }
        }
        rows.sort_by(|a, b| a.label.cmp(&b.label));
        rows.push(Row {
            label: "other".to_owned(),
            counts: other,
        });
        rows
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::Clock;
    use crate::monitor::TenantBatch;

    #[test]
    fn only_the_top_tenants_get_a_label_and_the_rest_fold_into_other() {
        let monitor = TenantMonitor::new(Clock::manual(0), 2, Duration::from_secs(1_800));
        let batches: Vec<TenantBatch> = (1..=50u32)
            .map(|n| TenantBatch {
                tenant: Uuid::from_u128(n.into()),
                events: n,
                written: n,
                ..TenantBatch::default()
            })
            .collect();
        monitor.batch_committed(&batches);
        monitor.dead_lettered(Uuid::from_u128(3), "malformed");
        let text = monitor.render_prometheus();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(TENANT_EVENTS))
            .collect();
        // Volume: tenants 50 and 49; dead letters: tenant 3; then other.
        assert_eq!(series.len(), 4, "{text}");
        assert!(text.contains(&format!("tenant=\"{}\"", Uuid::from_u128(50))));
        assert!(text.contains(&format!("tenant=\"{}\"", Uuid::from_u128(3))));
        let seconds = LastMinute::covered_seconds(0);
        let other_events = (1..=48u32).sum::<u32>() - 3;
        let expected = format!(
            "{TENANT_EVENTS}{{tenant=\"other\"}} {}",
            f64::from(other_events) / seconds
        );
        assert!(text.contains(&expected), "{text}");
        assert!(text.contains(&format!("{TENANTS_TRACKED} 50")));
    }
}
