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
                        "lag_threshold_ms": rng.gen_range(1..600) * 1000,
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
