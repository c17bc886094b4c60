//! The demo's end state, counted in Postgres (as the owner, who sees every tenant's rows),
//! Redis and the dead-letter topic, next to what the traffic should produce.

use std::collections::BTreeSet;
use std::time::Duration;

use fred::prelude::Client;
use sqlx::PgPool;
use uuid::Uuid;

use crate::cache::{self, inspect};
use crate::config::Settings;
use crate::domain::{utc_day, Keyspace, SlaViolation, TenantMap};
use crate::sink::audit;
use crate::tools::probe;
use crate::tools::traffic::{Expected, ExpectedConfig};

/// Found and expected counts.
pub(super) struct Checked {
    orders: Counted<OrderCounts>,
    config: Counted<ConfigCounts>,
    dead_letters: i64,
    expected_dead: Vec<(&'static str, usize)>,
}

struct Counted<T> {
    found: T,
    expected: T,
}

#[derive(PartialEq)]
struct OrderCounts {
    rows: usize,
    at_version: usize,
    tenants: usize,
    keys: usize,
}

#[derive(PartialEq)]
struct ConfigCounts {
    profiles: usize,
    profile_keys: usize,
    entries: usize,
    hash_fields: usize,
    categories: usize,
    category_keys: usize,
}

/// Counts the end state of the demo's traffic.
pub(super) async fn check(
    admin: &PgPool,
    redis: &Client,
    settings: &Settings,
    expected: &Expected,
    config: &ExpectedConfig,
) -> anyhow::Result<Checked> {
    let mut expected_dead: Vec<_> = expected
        .dead_letters
        .iter()
        .map(|(c, n)| (*c, *n))
        .collect();
    expected_dead.sort();
    Ok(Checked {
        orders: count_orders(admin, redis, expected).await?,
        config: count_config(admin, redis, settings, config).await?,
        dead_letters: probe::message_count(settings, &settings.kafka.dead_letter_topic)?,
        expected_dead,
    })
}

async fn count_orders(
    admin: &PgPool,
    redis: &Client,
    expected: &Expected,
) -> anyhow::Result<Counted<OrderCounts>> {
    let want: Vec<(Uuid, String, i64)> = expected
        .orders
        .iter()
        .map(|((tenant, order_id), event)| (*tenant, order_id.clone(), event.version))
        .collect();
    let spaces = expected.tenants.iter().map(|t| Keyspace::Tenant(*t));
    let generations = cache::read_generations(redis, spaces).await?;
    let mut keys = 0;
    for tenant in &expected.tenants {
        let generation = generations[&Keyspace::Tenant(*tenant)];
        keys += inspect::count_keys(redis, &cache::order_key_pattern(tenant, generation)).await?;
    }
    let orders = expected.orders.len();
    Ok(Counted {
        found: OrderCounts {
            rows: audit::orders_of(admin, &expected.tenants).await? as usize,
            at_version: audit::orders_at(admin, &want).await? as usize,
            tenants: expected.tenants.len(),
            keys,
        },
        expected: OrderCounts {
            rows: orders,
            at_version: orders,
            tenants: expected.tenants.len(),
            keys: orders,
        },
    })
}

async fn count_config(
    admin: &PgPool,
    redis: &Client,
    settings: &Settings,
    expected: &ExpectedConfig,
) -> anyhow::Result<Counted<ConfigCounts>> {
    let tenants: Vec<Uuid> = expected.profiles.keys().copied().collect();
    let profiles: Vec<(Uuid, i64)> = tenants
        .iter()
        .map(|t| (*t, expected.profiles[t].0))
        .collect();
    let mut entries = 0;
    for map in TenantMap::ALL {
        let want: Vec<(Uuid, String, i64)> = expected
            .entries
            .iter()
            .filter(|((_, m, _), _)| *m == map)
            .map(|((tenant, _, key), (version, _))| (*tenant, key.clone(), *version))
            .collect();
        entries += audit::entries_at(admin, map, &want).await? as usize;
    }
    let categories: Vec<(String, i64)> = expected
        .categories
        .iter()
        .map(|(id, (version, _))| (id.clone(), *version))
        .collect();
    // Redis: every live entry is a field of its tenant's hash, every profile a key.
    let spaces = tenants.iter().map(|t| Keyspace::Tenant(*t));
    let generations = cache::read_generations(redis, spaces.chain([Keyspace::Reference])).await?;
    let mut hash_fields = 0;
    let mut profile_keys = 0;
    for tenant in &tenants {
        let generation = generations[&Keyspace::Tenant(*tenant)];
        for map in TenantMap::ALL {
            let key = cache::entries_key(tenant, map, generation);
            hash_fields += inspect::hash_len(redis, &key).await?;
        }
        profile_keys += inspect::count_keys(redis, &cache::profile_key(tenant, generation)).await?;
    }
    let prefix = format!("{}-cat-*", settings.kafka.group_id);
    let pattern = cache::category_key(generations[&Keyspace::Reference], &prefix);
    let live = |values: &mut dyn Iterator<Item = bool>| values.filter(|live| *live).count();
    Ok(Counted {
        found: ConfigCounts {
            profiles: audit::profiles_at(admin, &profiles).await? as usize,
            profile_keys,
            entries,
            hash_fields,
            categories: audit::categories_at(admin, &categories).await? as usize,
            category_keys: inspect::count_keys(redis, &pattern).await?,
        },
        expected: ConfigCounts {
            profiles: tenants.len(),
            profile_keys: tenants.len(),
            entries: expected.entries.len(),
            hash_fields: live(&mut expected.entries.values().map(|(_, v)| v.is_some())),
            categories: categories.len(),
            category_keys: live(&mut expected.categories.values().map(|(_, v)| v.is_some())),
        },
    })
}

impl Checked {
    pub fn matches(&self) -> bool {
        self.orders_match() && self.config_matches()
    }

    fn orders_match(&self) -> bool {
        let expected_dead: usize = self.expected_dead.iter().map(|(_, n)| n).sum();
        self.orders.found == self.orders.expected && self.dead_letters as usize == expected_dead
    }

    fn config_matches(&self) -> bool {
        self.config.found == self.config.expected
    }

    /// The summary the demo prints.
    pub fn render(&self, produced: usize, elapsed: Duration) -> String {
        let (o, want) = (&self.orders.found, &self.orders.expected);
        let (c, cwant) = (&self.config.found, &self.config.expected);
        let expected_dead: usize = self.expected_dead.iter().map(|(_, n)| n).sum();
        let config_verdict = if self.config_matches() {
            "OK: configuration rows and keys match the traffic"
        } else {
            "MISMATCH: see the configuration lines above"
        };
        let verdict = if self.orders_match() {
            "OK: rows, versions, cache keys and dead letters match the traffic"
        } else {
            "MISMATCH: see the counts above (order lines)"
        };
        format!(
            "\n== tenantstream demo ==\n\
             messages produced     {produced}\n\
             orders in Postgres    {} (expected {}, {} at the expected version)\n\
             tenants               {}\n\
             cache keys in Redis   {}\n\
             tenant profiles       {} in Postgres, {} in Redis (expected {})\n\
             settings + SLA        {} rows at the expected version (expected {}), {} hash fields in Redis (expected {}; the rest deleted)\n\
             categories            {} rows (expected {}), {} keys in Redis (expected {})\n\
             {config_verdict}\n\
             dead letters          {} (expected {expected_dead}: {:?})\n\
             elapsed               {:.2}s\n\
             throughput            {:.0} events/s (produce → committed)\n\
             {verdict}",
            o.rows,
            want.rows,
            o.at_version,
            o.tenants,
            o.keys,
            c.profiles,
            c.profile_keys,
            cwant.profiles,
            c.entries,
            cwant.entries,
            c.hash_fields,
            cwant.hash_fields,
            c.categories,
            cwant.categories,
            c.category_keys,
            cwant.category_keys,
            self.dead_letters,
            self.expected_dead,
            elapsed.as_secs_f64(),
            produced as f64 / elapsed.as_secs_f64(),
        )
    }
}

/// The SLA tenants' violations: published (distinct ids), stored and counted in Redis, next to
/// the ids expected.
pub(super) struct SlaChecked {
    expected: BTreeSet<Uuid>,
    published: BTreeSet<Uuid>,
    /// Messages read, copies included (publishing is at least once).
    messages: usize,
    stored: BTreeSet<Uuid>,
    counted: BTreeSet<Uuid>,
}

/// Counts what became of the SLA tenants' violations.
pub(super) async fn check_sla(
    admin: &PgPool,
    redis: &Client,
    tenants: &[Uuid],
    expected: &BTreeSet<Uuid>,
    violations: &[SlaViolation],
) -> anyhow::Result<SlaChecked> {
    let ids = |texts: &mut dyn Iterator<Item = &str>| -> BTreeSet<Uuid> {
        texts.filter_map(|t| t.parse().ok()).collect()
    };
    let published = ids(&mut violations.iter().map(|v| v.violation_id.as_str()));
    let days: BTreeSet<String> = violations.iter().map(|v| utc_day(v.detected_at)).collect();
    let mut members = Vec::new();
    for tenant in tenants {
        for day in &days {
            members.extend(inspect::set_members(redis, &cache::violations_key(tenant, day)).await?);
        }
    }
    Ok(SlaChecked {
        expected: expected.clone(),
        published,
        messages: violations.len(),
        stored: audit::violations_of(admin, tenants)
            .await?
            .into_iter()
            .collect(),
        counted: ids(&mut members.iter().map(String::as_str)),
    })
}

impl SlaChecked {
    pub fn matches(&self) -> bool {
        self.published == self.expected
            && self.stored == self.expected
            && self.counted == self.expected
    }

    pub fn render(&self) -> String {
        let verdict = if self.matches() {
            "OK: every missed deadline is stored, published and counted once"
        } else {
            "MISMATCH: see the SLA line above"
        };
        format!(
            "SLA violations        {} (expected {}): {} messages, {} stored in Postgres, {} counted in Redis\n{verdict}",
            self.published.len(),
            self.expected.len(),
            self.messages,
            self.stored.len(),
            self.counted.len(),
        )
    }
}
