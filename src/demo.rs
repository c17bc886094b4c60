//! `tenantstream demo`: the whole pipeline on librdkafka's in-process mock cluster, against the
//! local Postgres and Redis, with generated traffic; ends with a summary checked against what
//! the traffic should produce.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::commands::{config_encoder, order_encoder};
use crate::config::Settings;
use crate::events::TenantMap;
use crate::http::Health;
use crate::produce::{self, ConfigSpec, Expected, ExpectedConfig, TrafficSpec, WireFormat};
use crate::worker::Worker;
use crate::{cache, sink, source};

/// Flags of `tenantstream demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Messages to produce.
    #[arg(long, default_value_t = 20_000)]
    pub count: usize,
    /// Tenants in the traffic.
    #[arg(long, default_value_t = 20)]
    pub tenants: usize,
    /// Partitions of the orders topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Share of malformed messages.
    #[arg(long, default_value_t = 0.01)]
    pub malformed: f64,
}

pub async fn run(mut settings: Settings, args: &DemoArgs) -> anyhow::Result<()> {
    let admin = preflight(&settings).await?;

    let mock = MockCluster::new(1).context("starting the in-process Kafka mock cluster")?;
    let orders_topic = settings.kafka.orders_topic.clone();
    mock.create_topic(&orders_topic, args.partitions, 1)?;
    mock.create_topic(&settings.kafka.config_topic, args.partitions, 1)?;
    mock.create_topic(&settings.kafka.dead_letter_topic, 1, 1)?;
    settings.kafka.brokers = mock.bootstrap_servers();
    settings.kafka.group_id = format!("demo-{}", Uuid::new_v4());
    println!(
        "demo: mock Kafka at {}, {} partitions; Postgres {}; Redis {}",
        settings.kafka.brokers, args.partitions, settings.database.url, settings.redis.url
    );

    let shutdown = CancellationToken::new();
    crate::commands::cancel_on_signals(shutdown.clone());
    let health = Health::default();
    let worker = Worker::connect(settings.clone(), health.clone()).await?;
    let worker_task = tokio::spawn(worker.run(shutdown.clone()));
    wait_until_ready(&health, &shutdown).await?;

    let spec = TrafficSpec {
        count: args.count,
        tenants: args.tenants,
        malformed: args.malformed,
        format: WireFormat::Mixed,
        seed: rand::random(),
        ..Default::default()
    };
    let (messages, expected) = produce::generate(&spec, &order_encoder(&settings)?);
    let config_spec = ConfigSpec {
        tenants: expected.tenants.clone(),
        changes_per_tenant: 10,
        categories: 10,
        category_prefix: format!("{}-cat-", &settings.kafka.group_id),
        suspended: 0.0,
        seed: spec.seed,
        start_ms: None,
    };
    let (config, expected_config) =
        produce::generate_config(&config_spec, &config_encoder(&settings)?);
    let producer = source::producer(&settings.kafka)?;
    let started = Instant::now();
    let sent = produce::send(&producer, &orders_topic, &messages, 0, None).await?;
    let config_topic = settings.kafka.config_topic.clone();
    let config_sent = produce::send(&producer, &config_topic, &config, 0, None).await?;
    println!(
        "demo: produced {} order and {} configuration messages in {:.2}s; waiting for the worker",
        messages.len(),
        config.len(),
        started.elapsed().as_secs_f64()
    );
    wait_until_consumed(&admin, &settings, &orders_topic, &sent.ends, &shutdown).await?;
    wait_until_consumed(
        &admin,
        &settings,
        &config_topic,
        &config_sent.ends,
        &shutdown,
    )
    .await?;
    let elapsed = started.elapsed();
    wait_until_cache_drained(&admin, &settings.kafka.group_id, &shutdown).await?;
    shutdown.cancel();
    worker_task.await??;

    let (config_summary, config_matches) =
        summarize_config(&admin, &settings, &expected_config).await?;
    let (summary, matches) = summarize(
        &admin,
        &settings,
        &expected,
        messages.len() + config.len(),
        elapsed,
        &config_summary,
    )
    .await?;
    let matches = matches && config_matches;
    println!("{summary}");
    anyhow::ensure!(matches, "the end state does not match the traffic");
    Ok(())
}

/// Connects as the owner and to Redis once, with an error naming what is missing.
async fn preflight(settings: &Settings) -> anyhow::Result<PgPool> {
    let server_url = settings.database.admin_url.expose();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(server_url.rsplit_once('/').map_or(server_url, |(s, _)| s))
        .await;
    if let Err(error) = pool {
        bail!(
            "PostgreSQL is not reachable at {}: {error}\n  start it (e.g. `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`) or set TENANTSTREAM_ADMIN_DATABASE_URL and DATABASE_URL",
            settings.database.admin_url
        );
    }
    if let Err(error) = tokio::time::timeout(
        Duration::from_secs(5),
        cache::connect(settings.redis.url.expose()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out"))
    .and_then(|r| r.map_err(anyhow::Error::from))
    {
        bail!(
            "Redis is not reachable at {}: {error:#}\n  start it (e.g. `redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no`) or set REDIS_URL",
            settings.redis.url
        );
    }
    sink::migrate(server_url).await?;
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(server_url)
        .await?)
}

/// Waits until Postgres stores `ends` as the group's next offsets of `topic`, printing progress.
pub async fn wait_until_consumed(
    pool: &PgPool,
    settings: &Settings,
    topic: &str,
    ends: &produce::EndOffsets,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let partitions: Vec<i32> = ends.keys().copied().collect();
    let total: i64 = ends.values().sum();
    let mut last_print = Instant::now();
    let mut last_progress = (0, Instant::now());
    loop {
        let stored =
            sink::load_stored_offsets(pool, &settings.kafka.group_id, topic, &partitions).await?;
        let done: i64 = ends
            .iter()
            .map(|(p, end)| stored.get(p).copied().unwrap_or(0).min(*end))
            .sum();
        if done == total {
            return Ok(());
        }
        if done > last_progress.0 {
            last_progress = (done, Instant::now());
        } else if last_progress.1.elapsed() > STALL_LIMIT {
            bail!("no progress for {STALL_LIMIT:?} at {done}/{total} committed messages; see the worker's log above");
        }
        if last_print.elapsed() > Duration::from_secs(2) {
            println!("demo: {done}/{total} messages committed");
            last_print = Instant::now();
        }
        tokio::select! {
            _ = shutdown.cancelled() => bail!("interrupted"),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// Waits until the worker has joined the group and has its partitions, so that the measured
/// time is the pipeline's, not the group join's.
async fn wait_until_ready(health: &Health, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let started = Instant::now();
    while !health.is_ready() {
        if started.elapsed() > STALL_LIMIT {
            bail!("the worker did not get ready in {STALL_LIMIT:?}; see the log above");
        }
        tokio::select! {
            _ = shutdown.cancelled() => bail!("interrupted"),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    Ok(())
}

/// How long a wait may see no progress before the demo gives up.
const STALL_LIMIT: Duration = Duration::from_secs(60);

async fn wait_until_cache_drained(
    pool: &PgPool,
    group: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM cache_outbox WHERE consumer_group = $1")
                .bind(group)
                .fetch_one(pool)
                .await?;
        if pending == 0 {
            return Ok(());
        }
        if started.elapsed() > STALL_LIMIT {
            bail!("{pending} cache updates still queued after {STALL_LIMIT:?}; see the worker's log above");
        }
        tokio::select! {
            _ = shutdown.cancelled() => bail!("interrupted"),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

async fn summarize(
    admin: &PgPool,
    settings: &Settings,
    expected: &Expected,
    messages: usize,
    elapsed: Duration,
    config_summary: &str,
) -> anyhow::Result<(String, bool)> {
    // The owner bypasses RLS, so the summary can count across the demo's tenants.
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE tenant_id = ANY($1)")
        .bind(&expected.tenants)
        .fetch_one(admin)
        .await?;
    let matching: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders o
           JOIN UNNEST($1::uuid[], $2::text[], $3::int8[]) AS e(tenant_id, order_id, version)
             ON o.tenant_id = e.tenant_id AND o.order_id = e.order_id AND o.version = e.version",
    )
    .bind(expected.orders.keys().map(|(t, _)| *t).collect::<Vec<_>>())
    .bind(
        expected
            .orders
            .keys()
            .map(|(_, o)| o.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        expected
            .orders
            .values()
            .map(|e| e.version)
            .collect::<Vec<_>>(),
    )
    .fetch_one(admin)
    .await?;
    let redis = cache::connect(settings.redis.url.expose()).await?;
    let spaces = expected.tenants.iter().map(|t| cache::Keyspace::Tenant(*t));
    let generations = cache::read_generations(&redis, spaces).await?;
    let mut keys = 0usize;
    for (space, generation) in generations {
        keys += count_keys(&redis, &space.key(generation, "order:*")).await?;
    }
    let dead = dead_letter_count(settings)?;
    let expected_dead: usize = expected.dead_letters.values().sum();
    let mut codes: Vec<_> = expected.dead_letters.iter().collect();
    codes.sort();
    let matches = rows as usize == expected.orders.len()
        && matching as usize == expected.orders.len()
        && keys == expected.orders.len()
        && dead as usize == expected_dead;
    let verdict = if matches {
        "OK: rows, versions, cache keys and dead letters match the traffic"
    } else {
        "MISMATCH: see the counts above (order lines)"
    };
    let summary = format!(
        "\n== tenantstream demo ==\n\
         messages produced     {messages}\n\
         orders in Postgres    {rows} (expected {}, {matching} at the expected version)\n\
         tenants               {}\n\
         cache keys in Redis   {keys}\n\
         {config_summary}\n\
         dead letters          {dead} (expected {expected_dead}: {codes:?})\n\
         elapsed               {:.2}s\n\
         throughput            {:.0} events/s (produce → committed)\n\
         {verdict}",
        expected.orders.len(),
        expected.tenants.len(),
        elapsed.as_secs_f64(),
        messages as f64 / elapsed.as_secs_f64(),
    );
    Ok((summary, matches))
}

/// Checks the configuration rows and keys against the traffic: one line per kind.
async fn summarize_config(
    admin: &PgPool,
    settings: &Settings,
    expected: &ExpectedConfig,
) -> anyhow::Result<(String, bool)> {
    let redis = cache::connect(settings.redis.url.expose()).await?;
    let tenants: Vec<Uuid> = expected.profiles.keys().copied().collect();
    let profiles: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tenants t
           JOIN UNNEST($1::uuid[], $2::int8[]) AS e(tenant_id, version)
             ON t.tenant_id = e.tenant_id AND t.profile_version = e.version",
    )
    .bind(&tenants)
    .bind(
        tenants
            .iter()
            .map(|t| expected.profiles[t].0)
            .collect::<Vec<_>>(),
    )
    .fetch_one(admin)
    .await?;
    let mut entries = 0;
    for map in [TenantMap::Settings, TenantMap::SlaPolicies] {
        let want: Vec<_> = expected
            .entries
            .iter()
            .filter(|((_, m, _), _)| *m == map)
            .collect();
        let table = match map {
            TenantMap::Settings => "tenant_settings",
            TenantMap::SlaPolicies => "sla_policies",
        };
        let found: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} s
               JOIN UNNEST($1::uuid[], $2::text[], $3::int8[]) AS e(tenant_id, key, version)
                 ON s.tenant_id = e.tenant_id AND s.key = e.key AND s.version = e.version"
        ))
        .bind(want.iter().map(|((t, _, _), _)| *t).collect::<Vec<_>>())
        .bind(
            want.iter()
                .map(|((_, _, k), _)| k.clone())
                .collect::<Vec<_>>(),
        )
        .bind(want.iter().map(|(_, (v, _))| *v).collect::<Vec<_>>())
        .fetch_one(admin)
        .await?;
        entries += found as usize;
    }
    let ids: Vec<String> = expected.categories.keys().cloned().collect();
    let categories: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM categories c
           JOIN UNNEST($1::text[], $2::int8[]) AS e(id, version)
             ON c.category_id = e.id AND c.version = e.version",
    )
    .bind(&ids)
    .bind(
        ids.iter()
            .map(|id| expected.categories[id].0)
            .collect::<Vec<_>>(),
    )
    .fetch_one(admin)
    .await?;
    // Redis: every live entry is a field of its tenant's hash, every profile a key.
    let spaces = tenants.iter().map(|t| cache::Keyspace::Tenant(*t));
    let generations =
        cache::read_generations(&redis, spaces.chain([cache::Keyspace::Reference])).await?;
    let mut fields = 0usize;
    let mut profile_keys = 0usize;
    for tenant in &tenants {
        let space = cache::Keyspace::Tenant(*tenant);
        let generation = generations[&space];
        for map in [TenantMap::Settings, TenantMap::SlaPolicies] {
            let n: usize =
                fred::interfaces::HashesInterface::hlen(&redis, space.key(generation, map.name()))
                    .await?;
            fields += n;
        }
        profile_keys += count_keys(&redis, &space.key(generation, "profile")).await?;
    }
    let live_entries = expected
        .entries
        .values()
        .filter(|(_, v)| v.is_some())
        .count();
    let reference = cache::Keyspace::Reference;
    let category_keys = count_keys(
        &redis,
        &cache::category_key(
            generations[&reference],
            &format!("{}-cat-*", settings.kafka.group_id),
        ),
    )
    .await?;
    let live_categories = expected
        .categories
        .values()
        .filter(|(_, v)| v.is_some())
        .count();
    let matches = profiles as usize == tenants.len()
        && entries == expected.entries.len()
        && categories as usize == ids.len()
        && profile_keys == tenants.len()
        && fields == live_entries
        && category_keys == live_categories;
    let summary = format!(
        "tenant profiles       {profiles} in Postgres, {profile_keys} in Redis (expected {})\n\
         settings + SLA        {entries} rows at the expected version (expected {}), {fields} hash fields in Redis (expected {live_entries}; the rest deleted)\n\
         categories            {categories} rows (expected {}), {category_keys} keys in Redis (expected {live_categories})\n\
         {}",
        tenants.len(),
        expected.entries.len(),
        ids.len(),
        if matches { "OK: configuration rows and keys match the traffic" } else { "MISMATCH: see the configuration lines above" },
    );
    Ok((summary, matches))
}

/// Counts keys matching `pattern` with SCAN (never KEYS).
pub async fn count_keys(redis: &fred::prelude::Client, pattern: &str) -> anyhow::Result<usize> {
    Ok(scan_keys(redis, pattern).await?.len())
}

/// The keys matching `pattern` on a single Redis server, by SCAN (never KEYS).
pub async fn scan_keys(
    redis: &fred::prelude::Client,
    pattern: &str,
) -> Result<Vec<String>, fred::error::Error> {
    use fred::prelude::*;
    let mut cursor = "0".to_owned();
    let mut all = Vec::new();
    loop {
        let (next, keys): (String, Vec<String>) = redis
            .custom(
                fred::cmd!("SCAN"),
                vec![
                    cursor.clone(),
                    "MATCH".into(),
                    pattern.into(),
                    "COUNT".into(),
                    "1000".into(),
                ],
            )
            .await?;
        all.extend(keys);
        if next == "0" {
            return Ok(all);
        }
        cursor = next;
    }
}

/// Messages in the dead-letter topic (high minus low watermark).
fn dead_letter_count(settings: &Settings) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = source::client_config(&settings.kafka).create()?;
    let (low, high) =
        consumer.fetch_watermarks(&settings.kafka.dead_letter_topic, 0, Duration::from_secs(5))?;
    Ok(high - low)
}
