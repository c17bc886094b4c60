//! Configuration traffic: each tenant gets a profile (some end suspended), settings and SLA
//! policies (some deleted, some updates arriving out of order), and the shared categories
//! change too.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use super::{uuid_from, Generated};
use crate::clock::Clock;
use crate::decode::Encoder;
use crate::domain::{ConfigChangeEvent, ConfigKind, ConfigScope, TenantMap};

/// Configuration traffic for a set of tenants: each tenant gets a profile (some end
/// suspended), settings and SLA policies (some deleted, some updates arriving out of order), and
/// the shared categories change too.
#[derive(Clone, Debug)]
pub struct ConfigSpec {
    pub tenants: Vec<Uuid>,
    /// Changes per tenant (profile, settings, SLA policies).
    pub changes_per_tenant: usize,
    pub categories: usize,
    /// Category ids are `<prefix><n>`.
    pub category_prefix: String,
    /// Share of tenants whose newest profile is suspended (rounded to a whole count).
    pub suspended: f64,
    pub seed: u64,
    /// occurred_at of the first events (ms since epoch); `None`: now.
    pub start_ms: Option<i64>,
}

/// The newest value of each configuration entry a correct worker ends with (`None`: deleted).
#[derive(Clone, Debug, Default)]
pub struct ExpectedConfig {
    /// tenant → (version, profile JSON).
    pub profiles: HashMap<Uuid, (i64, serde_json::Value)>,
    pub entries: HashMap<(Uuid, TenantMap, String), (i64, Option<serde_json::Value>)>,
    pub categories: HashMap<String, (i64, Option<serde_json::Value>)>,
}

impl ExpectedConfig {
    fn record(&mut self, event: &ConfigChangeEvent) {
        let value = event
            .value
            .as_deref()
            .map(|v| serde_json::from_str(v).expect("generated JSON"));
        let tenant = event
            .tenant_id
            .as_deref()
            .map(|t| Uuid::parse_str(t).expect("generated uuid"));
        let newer = |kept: Option<i64>| kept.is_none_or(|v| v < event.version);
        match (event.kind, tenant) {
            (ConfigKind::TenantProfile, Some(t)) => {
                if newer(self.profiles.get(&t).map(|p| p.0)) {
                    self.profiles
                        .insert(t, (event.version, value.expect("profiles have values")));
                }
            }
            (ConfigKind::Category, None) => {
                if newer(self.categories.get(&event.key).map(|c| c.0)) {
                    self.categories
                        .insert(event.key.clone(), (event.version, value));
                }
            }
            (kind, Some(t)) => {
                let map = if kind == ConfigKind::Setting {
                    TenantMap::Settings
                } else {
                    TenantMap::SlaPolicies
                };
                let key = (t, map, event.key.clone());
                if newer(self.entries.get(&key).map(|e| e.0)) {
                    self.entries.insert(key, (event.version, value));
                }
            }
            _ => unreachable!("generated scopes match kinds"),
        }
    }
}

const TIERS: &[&str] = &["free", "pro", "enterprise"];
const SETTING_KEYS: &[&str] = &["checkout.max_items", "locale", "webhooks.url", "currency"];

/// Builds configuration traffic and the end state a correct worker must reach. Messages are
/// keyed by tenant id (categories: by `CATEGORY:<id>`), as producers must key them.
pub fn generate_config(spec: &ConfigSpec, encoder: &Encoder) -> (Vec<Generated>, ExpectedConfig) {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let start_ms = spec.start_ms.unwrap_or_else(|| Clock::system().now_ms());
    let mut streams: Vec<(Vec<u8>, Vec<ConfigChangeEvent>)> = Vec::new();
    let change = |rng: &mut StdRng, tenant: Option<Uuid>, kind, key: &str, version, value| {
        ConfigChangeEvent {
            event_id: uuid_from(rng).to_string(),
            scope: if tenant.is_some() {
                ConfigScope::Tenant
            } else {
                ConfigScope::Global
            },
            tenant_id: tenant.map(|t| t.to_string()),
            kind,
            key: key.to_owned(),
            value,
            version,
            occurred_at: start_ms + version,
        }
    };
    // Exactly this many tenants end suspended (the first ones; their ids are random).
    let suspended = (spec.tenants.len() as f64 * spec.suspended).round() as usize;
    for (index, tenant) in spec.tenants.iter().enumerate() {
        let mut events = Vec::new();
        let mut versions: HashMap<(ConfigKind, String), i64> = HashMap::new();
        let mut next_version = |kind, key: &str| {
            let v = versions.entry((kind, key.to_owned())).or_insert(0);
            *v += 1;
            *v
        };
        let tier = TIERS[rng.gen_range(0..TIERS.len())];
        let profile = |status: &str, tier: &str| {
            Some(serde_json::json!({"name": format!("Tenant {tenant}"), "tier": tier, "status": status}).to_string())
        };
        let v = next_version(ConfigKind::TenantProfile, "profile");
        events.push(change(
            &mut rng,
            Some(*tenant),
            ConfigKind::TenantProfile,
            "profile",
            v,
            profile("active", tier),
        ));
        for _ in 1..spec.changes_per_tenant.max(1) {
            let (kind, key, value) = match rng.gen_range(0..10) {
                0..=5 => {
                    let key = SETTING_KEYS[rng.gen_range(0..SETTING_KEYS.len())];
                    let value = (!rng.gen_bool(0.15))
                        .then(|| serde_json::json!({"value": rng.gen_range(0..1000)}).to_string());
                    (ConfigKind::Setting, key, value)
                }
                6..=8 => {
                    let value = serde_json::json!({
                        // Lag thresholds of 10 minutes or more and deadlines of an hour or
                        // more: generated traffic never violates them (the demo's SLA
                        // traffic has tenants of its own).
                        "lag_threshold_ms": rng.gen_range(10..600) * 60_000,
                        "deadlines_ms": {"CREATED->CONFIRMED": rng.gen_range(1..48) * 3_600_000_u64},
                    });
                    (ConfigKind::SlaPolicy, "default", Some(value.to_string()))
                }
                _ => {
                    let tier = TIERS[rng.gen_range(0..TIERS.len())];
                    (
                        ConfigKind::TenantProfile,
                        "profile",
                        profile("active", tier),
                    )
                }
            };
            let v = next_version(kind, key);
            events.push(change(&mut rng, Some(*tenant), kind, key, v, value));
        }
        if index < suspended {
            let v = next_version(ConfigKind::TenantProfile, "profile");
            events.push(change(
                &mut rng,
                Some(*tenant),
                ConfigKind::TenantProfile,
                "profile",
                v,
                profile("suspended", tier),
            ));
        }
        // An update overtaken by the next one of the same entry: the older must not win.
        if events.len() >= 3 && rng.gen_bool(0.5) {
            let n = events.len();
            events.swap(n - 2, n - 1);
        }
        streams.push((tenant.to_string().into_bytes(), events));
    }
    for c in 0..spec.categories {
        let id = format!("{}{c}", spec.category_prefix);
        let mut events: Vec<ConfigChangeEvent> = (1..=rng.gen_range(1..4))
            .map(|v| {
                let value = serde_json::json!({"name": format!("Category {c} v{v}")}).to_string();
                change(&mut rng, None, ConfigKind::Category, &id, v, Some(value))
            })
            .collect();
        if rng.gen_bool(0.2) {
            let v = events.len() as i64 + 1;
            events.push(change(&mut rng, None, ConfigKind::Category, &id, v, None));
        }
        streams.push((format!("CATEGORY:{id}").into_bytes(), events));
    }
    let mut expected = ExpectedConfig::default();
    let mut messages = Vec::new();
    // Interleave the streams, keeping each stream's order.
    let mut cursors: Vec<(Vec<u8>, std::collections::VecDeque<ConfigChangeEvent>)> = streams
        .into_iter()
        .map(|(key, events)| (key, events.into()))
        .collect();
    while !cursors.is_empty() {
        let pick = rng.gen_range(0..cursors.len());
        let event = cursors[pick].1.pop_front().expect("non-empty cursor");
        expected.record(&event);
        messages.push(Generated {
            key: cursors[pick].0.clone(),
            value: encoder.encode(&event, false),
            malformed: None,
        });
        if cursors[pick].1.is_empty() {
            cursors.swap_remove(pick);
        }
    }
    (messages, expected)
}

/// Configuration traffic of an exact size for `tenants`, as `produce --config-changes` sends it.
#[derive(Clone, Debug, Default)]
pub struct SizedConfig {
    pub messages: Vec<Generated>,
    /// The tenants that get a profile (status `active`): all of them when `count` allows one
    /// each, else the first `count`.
    pub profiled: usize,
    /// Further changes of those tenants: settings, SLA policies, profile updates.
    pub tenant_changes: usize,
    /// Changes of shared categories.
    pub category_changes: usize,
}

/// Exactly `count` configuration changes: first a profile for as many of `tenants` as `count`
/// allows, then about a tenth of what is left for shared categories (`<category_prefix><n>`),
/// the rest spread evenly over the profiled tenants as settings, SLA policies and profile
/// updates. Each entry's versions are in order except for [`generate_config`]'s deliberate
/// swaps; the parts are interleaved. `tenants` must not be empty unless `count` is 0.
pub fn generate_config_sized(
    tenants: &[Uuid],
    count: usize,
    category_prefix: &str,
    seed: u64,
    encoder: &Encoder,
) -> SizedConfig {
    let profiled = count.min(tenants.len());
    let spec = |tenants: &[Uuid], changes_per_tenant, categories, seed| ConfigSpec {
        tenants: tenants.to_vec(),
        changes_per_tenant,
        categories,
        category_prefix: category_prefix.to_owned(),
        suspended: 0.0,
        seed,
        start_ms: None,
    };
    // A category makes at most four changes, so these fit beside one profile per tenant.
    let categories = (count - profiled) / 40;
    // Seeds of their own (not the order traffic's), so that event ids differ between parts.
    let part_seed = |part: u64| seed.wrapping_add(part);
    let (shared, _) = generate_config(&spec(&[], 1, categories, part_seed(1)), encoder);
    let for_tenants = count - shared.len();
    let (per_tenant, extra) = match profiled {
        0 => (0, 0),
        n => (for_tenants / n, for_tenants % n),
    };
    // The first `extra` tenants make one change more than the others.
    let (more, fewer) = tenants[..profiled].split_at(extra);
    let mut parts = vec![shared];
    for (part, group, changes) in [(2, more, per_tenant + 1), (3, fewer, per_tenant)] {
        if !group.is_empty() {
            let group_spec = spec(group, changes, 0, part_seed(part));
            parts.push(generate_config(&group_spec, encoder).0);
        }
    }
    let category_changes = parts[0].len();
    let messages = interleave(parts, &mut StdRng::seed_from_u64(part_seed(4)));
    debug_assert_eq!(messages.len(), count, "tenants: {}", tenants.len());
    SizedConfig {
        tenant_changes: count - profiled - category_changes,
        messages,
        profiled,
        category_changes,
    }
}

/// Merges the parts at random, keeping each part's order (so each key's order).
fn interleave(parts: Vec<Vec<Generated>>, rng: &mut StdRng) -> Vec<Generated> {
    let total = parts.iter().map(Vec::len).sum();
    let mut parts: Vec<std::vec::IntoIter<Generated>> =
        parts.into_iter().map(Vec::into_iter).collect();
    let mut merged = Vec::with_capacity(total);
    while merged.len() < total {
        // Weighted by what each part has left, so that the parts end together.
        let mut pick = rng.gen_range(0..total - merged.len());
        for part in &mut parts {
            if pick < part.len() {
                merged.extend(part.next());
                break;
            }
            pick -= part.len();
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoder() -> Encoder {
        super::super::test_encoder::<crate::domain::ValidConfig>()
    }

    #[test]
    fn sized_traffic_has_the_exact_count_and_profiles_as_many_tenants_as_it_can() {
        let tenants: Vec<Uuid> = (0..7).map(|_| Uuid::new_v4()).collect();
        for (count, profiled) in [(0, 0), (3, 3), (7, 7), (40, 7), (401, 7), (5_000, 7)] {
            let sized = generate_config_sized(&tenants, count, "c-", 7, &encoder());
            assert_eq!(sized.messages.len(), count);
            assert_eq!(sized.profiled, profiled, "{count}");
            assert_eq!(
                sized.profiled + sized.tenant_changes + sized.category_changes,
                count
            );
            let keys = |category: bool| {
                let keys: Vec<Vec<u8>> = sized
                    .messages
                    .iter()
                    .filter(|m| m.key.starts_with(b"CATEGORY:") == category)
                    .map(|m| m.key.clone())
                    .collect();
                let distinct: std::collections::BTreeSet<Vec<u8>> = keys.iter().cloned().collect();
                (keys.len(), distinct)
            };
            let (tenant_messages, tenant_keys) = keys(false);
            let profiled_keys = tenants[..profiled]
                .iter()
                .map(|t| t.to_string().into_bytes())
                .collect();
            assert_eq!(tenant_keys, profiled_keys, "{count}");
            assert_eq!(tenant_messages, sized.profiled + sized.tenant_changes);
            assert_eq!(keys(true).0, sized.category_changes);
        }
        let many = generate_config_sized(&tenants, 5_000, "c-", 7, &encoder());
        assert!(many.category_changes > 0 && many.category_changes <= 500);
    }
}
