//! The demo: the whole pipeline on librdkafka's in-process mock cluster, against the local
//! Postgres and Redis, with generated traffic; ends with a summary checked against what the
//! traffic should produce.

mod sla;
mod summary;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::mocking::MockCluster;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cache;
use crate::clock::Clock;
use crate::config::Settings;
use crate::decode::Encoder;
use crate::domain::{SlaViolation, ValidConfig, ValidOrder};
use crate::health::Health;
use crate::pipeline::Worker;
use crate::sink;
use crate::source;
use crate::tools::probe;
use crate::tools::traffic::{self, ConfigSpec, TrafficSpec, WireFormat};

/// What the demo produces.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Order messages to produce.
    pub count: usize,
    /// Tenants in the traffic.
    pub tenants: usize,
    /// Partitions of the orders and configuration topics.
    pub partitions: i32,
    /// Share of malformed messages.
    pub malformed: f64,
}

/// Runs the demo and prints its summary; fails when the end state does not match the traffic.
pub async fn run(
    mut settings: Settings,
    options: &DemoOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let admin = preflight(&settings).await?;

    let mock = MockCluster::new(1).context("starting the in-process Kafka mock cluster")?;
    let orders_topic = settings.kafka.orders_topic.clone();
    mock.create_topic(&orders_topic, options.partitions, 1)?;
    mock.create_topic(&settings.kafka.config_topic, options.partitions, 1)?;
    mock.create_topic(&settings.kafka.dead_letter_topic, 1, 1)?;
    mock.create_topic(&settings.kafka.sla_violations_topic, 1, 1)?;
    settings.kafka.brokers = mock.bootstrap_servers();
    settings.kafka.group_id = format!("demo-{}", Uuid::new_v4());
    println!(
        "demo: mock Kafka at {}, {} partitions; Postgres {}; Redis {}",
        settings.kafka.brokers, options.partitions, settings.database.url, settings.redis.url
    );

    let health = Health::default();
    let worker = Worker::connect(settings.clone(), health.clone()).await?;
    let worker_task = tokio::spawn(worker.run(shutdown.clone()));
    probe::wait_until_ready(&health, &shutdown).await?;

    let spec = TrafficSpec {
        count: options.count,
        tenants: options.tenants,
        malformed: options.malformed,
        format: WireFormat::Mixed,
        seed: rand::random(),
        ..Default::default()
    };
    let order_encoder = Encoder::for_event::<ValidOrder>(&settings.schemas)?;
    let (messages, expected) = traffic::generate(&spec, &order_encoder);
    let config_spec = ConfigSpec {
        tenants: expected.tenants.clone(),
        changes_per_tenant: 10,
        categories: 10,
        category_prefix: format!("{}-cat-", &settings.kafka.group_id),
        suspended: 0.0,
        seed: spec.seed,
        start_ms: None,
    };
    let config_encoder = Encoder::for_event::<ValidConfig>(&settings.schemas)?;
    let (config, expected_config) = traffic::generate_config(&config_spec, &config_encoder);
    let producer = source::producer(&settings.kafka)?;
    let config_topic = settings.kafka.config_topic.clone();

    // The SLA tenants' policies are committed before their orders arrive.
    let now_ms = Clock::system().now_ms();
    let sla = sla::generate(SLA_TENANTS, now_ms, &order_encoder, &config_encoder);
    let policies_sent = traffic::send(&producer, &config_topic, &sla.policies, 0, None).await?;
    probe::wait_until_consumed(
        &admin,
        &settings,
        &config_topic,
        &policies_sent.ends,
        &shutdown,
    )
    .await?;

    let started = Instant::now();
    let sent = traffic::send(&producer, &orders_topic, &messages, 0, None).await?;
    let sla_sent = traffic::send(&producer, &orders_topic, &sla.orders, 0, None).await?;
    let config_sent = traffic::send(&producer, &config_topic, &config, 0, None).await?;
    println!(
        "demo: produced {} order and {} configuration messages in {:.2}s; waiting for the worker",
        messages.len() + sla.orders.len(),
        config.len() + sla.policies.len(),
        started.elapsed().as_secs_f64()
    );
    let order_ends = ends_of(&sent.ends, &sla_sent.ends);
    for (topic, ends) in [
        (&orders_topic, &order_ends),
        (&config_topic, &config_sent.ends),
    ] {
        probe::wait_until_consumed(&admin, &settings, topic, ends, &shutdown).await?;
    }
    let elapsed = started.elapsed();
    probe::wait_until_cache_drained(&admin, &settings.kafka.group_id, &shutdown).await?;
    println!(
        "demo: waiting for the SLA tenants' {} missed deadlines ({:?} each)",
        sla.expected.len(),
        sla::DEADLINE
    );
    let violation_encoder = Encoder::for_file(&settings.schemas, SlaViolation::SCHEMA_FILE)?;
    let read_violations = {
        let (settings, tenants, expected) =
            (settings.clone(), sla.tenants.clone(), sla.expected.clone());
        tokio::task::spawn_blocking(move || {
            sla::wait_for_violations(
                &settings,
                &violation_encoder,
                &tenants,
                &expected,
                SLA_LIMIT,
            )
        })
    };
    let violations = read_violations.await??;
    shutdown.cancel();
    worker_task.await??;

    let redis = cache::connect(settings.redis.url.expose()).await?;
    let produced = messages.len() + config.len() + sla.orders.len() + sla.policies.len();
    let checked = summary::check(&admin, &redis, &settings, &expected, &expected_config).await?;
    let slas = summary::check_sla(&admin, &redis, &sla.tenants, &sla.expected, &violations).await?;
    println!("{}", checked.render(produced, elapsed));
    println!("{}", slas.render());
    anyhow::ensure!(
        checked.matches() && slas.matches(),
        "the end state does not match the traffic"
    );
    Ok(())
}

/// Tenants of the demo's own SLA traffic.
const SLA_TENANTS: usize = 3;

/// How long the demo waits for its SLA violations after the traffic is consumed.
const SLA_LIMIT: Duration = Duration::from_secs(60);

/// The end offsets of two sends to the same topic: the later end of each partition.
fn ends_of(a: &traffic::EndOffsets, b: &traffic::EndOffsets) -> traffic::EndOffsets {
    let mut ends = a.clone();
    for (partition, end) in b {
        let kept = ends.entry(*partition).or_insert(*end);
        *kept = (*kept).max(*end);
    }
    ends
}

/// Connects as the owner and to Redis once, with an error naming what is missing, and migrates.
async fn preflight(settings: &Settings) -> anyhow::Result<PgPool> {
    let admin_url = settings.database.admin_url.expose();
    // The server, not the database: `migrate` creates the database if it is missing.
    let server_url = admin_url.rsplit_once('/').map_or(admin_url, |(s, _)| s);
    if let Err(error) = sink::check_reachable(server_url).await {
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
            "Redis is not reachable at {}: {}\n  start it (e.g. `redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no`) or set REDIS_URL",
            settings.redis.url,
            super::describe_error(&error)
        );
    }
    sink::migrate(admin_url).await?;
    Ok(sink::connect_owner(admin_url).await?)
}
