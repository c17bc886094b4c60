//! The CLI commands `run`, `migrate`, `produce` and `check` (`demo` lives in [`crate::demo`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::decode::{Decoder, SchemaStore};
use crate::events::{Event, ValidConfig, ValidOrder};
use crate::http::{self, Health};
use crate::produce::{self, Encoder, TrafficSpec, WireFormat};
use crate::worker::Worker;
use crate::{cache, metrics, sink, source};

/// Cancels `token` on SIGTERM or SIGINT.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received."),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received."),
        }
        token.cancel();
    });
}

/// `tenantstream run`: the HTTP port, then the worker, until a signal.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    let health = Health::default();
    health.failed("startup", "connecting to dependencies");
    let listen = settings.http.listen.parse().context("http.listen")?;
    let (addr, http_task) = http::serve(
        listen,
        health.clone(),
        metrics::install_recorder(),
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%addr, "Serving /metrics, /healthz and /readyz.");
    if let Some(worker) = Worker::connect_retrying(settings, health, &shutdown).await? {
        worker.run(shutdown.clone()).await?;
    }
    shutdown.cancel();
    let _ = http_task.await;
    tracing::info!("Stopped.");
    Ok(())
}

/// `tenantstream migrate`.
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    sink::migrate(settings.database.admin_url.expose())
        .await
        .with_context(|| format!("migrating {}", settings.database.admin_url))?;
    println!("migrations applied to {}", settings.database.admin_url);
    Ok(())
}

/// Flags of `tenantstream produce`.
#[derive(Args, Debug, Clone)]
pub struct ProduceArgs {
    /// Messages to send in all (valid, duplicates and malformed).
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// Messages per second; 0 sends as fast as the broker takes them.
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// Number of tenants.
    #[arg(long, default_value_t = 10)]
    pub tenants: usize,
    /// Share of malformed messages (0.0 to 1.0), which must end in the dead-letter topic.
    #[arg(long, default_value_t = 0.01)]
    pub malformed: f64,
    /// Share of events sent twice.
    #[arg(long, default_value_t = 0.05)]
    pub duplicates: f64,
    /// Share of orders whose two newest versions arrive swapped.
    #[arg(long, default_value_t = 0.05)]
    pub reorder: f64,
    /// Wire format of the values.
    #[arg(long, value_enum, default_value_t = WireFormat::Confluent)]
    pub format: WireFormat,
    /// Seed for repeatable traffic (random when absent).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl ProduceArgs {
    pub fn spec(&self) -> anyhow::Result<TrafficSpec> {
        for (name, share) in [
            ("--malformed", self.malformed),
            ("--duplicates", self.duplicates),
            ("--reorder", self.reorder),
        ] {
            anyhow::ensure!(
                (0.0..=1.0).contains(&share),
                "{name} must be between 0 and 1"
            );
        }
        anyhow::ensure!(self.tenants > 0, "--tenants must be at least 1");
        Ok(TrafficSpec {
            count: self.count,
            tenants: self.tenants,
            malformed: self.malformed,
            duplicates: self.duplicates,
            reorder: self.reorder,
            format: self.format,
            seed: self.seed.unwrap_or_else(rand::random),
            start_ms: None,
        })
    }
}

/// The encoder for the order schema, framed with its id from `registry.json`.
pub fn order_encoder(settings: &Settings) -> anyhow::Result<Encoder> {
    encoder_for(settings, ValidOrder::SCHEMA_FILE)
}

/// The encoder for the configuration-change schema, framed with its id from `registry.json`.
pub fn config_encoder(settings: &Settings) -> anyhow::Result<Encoder> {
    encoder_for(settings, ValidConfig::SCHEMA_FILE)
}

fn encoder_for(settings: &Settings, file: &str) -> anyhow::Result<Encoder> {
    let store = SchemaStore::load(&settings.schemas.dir, None)?;
    let id = store.local_id_of(file).with_context(|| {
        format!(
            "{file} in {} has no schema id in registry.json",
            settings.schemas.dir.display()
        )
    })?;
    Ok(Encoder::new(store.local_schema(file)?, id))
}

/// `tenantstream produce`.
pub async fn produce(settings: &Settings, args: &ProduceArgs) -> anyhow::Result<()> {
    let spec = args.spec()?;
    let (messages, expected) = produce::generate(&spec, &order_encoder(settings)?);
    let producer = source::producer(&settings.kafka)?;
    let topic = &settings.kafka.orders_topic;
    let started = std::time::Instant::now();
    let sent = produce::send(
        &producer,
        topic,
        &messages,
        args.rate,
        Some(Duration::from_secs(2)),
    )
    .await
    .with_context(|| format!("producing to {topic} at {}", settings.kafka.brokers))?;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "sent {} messages to {topic} in {elapsed:.1}s ({:.0} msg/s): {} orders of {} tenants, {} malformed (seed {})",
        messages.len(),
        messages.len() as f64 / elapsed,
        expected.orders.len(),
        expected.tenants.len(),
        expected.dead_letters.values().sum::<usize>(),
        spec.seed,
    );
    let mut ends: Vec<_> = sent.ends.into_iter().collect();
    ends.sort();
    println!("end offsets by partition: {ends:?}");
    Ok(())
}

/// `tenantstream check`: configuration, schemas, and each dependency, one line each.
pub async fn check(settings: &Settings) -> anyhow::Result<()> {
    println!("ok   configuration: {settings:?}");
    let mut failures = 0;
    let mut report = |name: &str, result: anyhow::Result<String>| match result {
        Ok(detail) => println!("ok   {name}: {detail}"),
        Err(error) => {
            failures += 1;
            println!("FAIL {name}: {error:#}");
        }
    };
    report("schemas", check_schemas(settings));
    report("postgres", check_postgres(settings).await);
    report("redis", check_redis(settings).await);
    report("kafka", check_kafka(settings).await);
    anyhow::ensure!(failures == 0, "{failures} check(s) failed");
    Ok(())
}

fn check_schemas(settings: &Settings) -> anyhow::Result<String> {
    let store = Arc::new(SchemaStore::load(
        &settings.schemas.dir,
        settings.schemas.registry_url.as_deref(),
    )?);
    Decoder::new(store.clone(), ValidOrder::SCHEMA_FILE)?;
    Decoder::new(store, ValidConfig::SCHEMA_FILE)?;
    order_encoder(settings)?;
    config_encoder(settings)?;
    Ok(format!(
        "{} readable, readers {} and {}",
        settings.schemas.dir.display(),
        ValidOrder::SCHEMA_FILE,
        ValidConfig::SCHEMA_FILE
    ))
}

async fn check_postgres(settings: &Settings) -> anyhow::Result<String> {
    let pool = sink::connect_worker(&settings.database).await?;
    sink::ensure_rls_applies(&pool).await?;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM consumer_offsets")
        .fetch_one(&pool)
        .await
        .context("is the database migrated? run `tenantstream migrate`")?;
    Ok(format!(
        "{} reachable, worker role subject to RLS, {stored} stored partition offsets",
        settings.database.url
    ))
}

async fn check_redis(settings: &Settings) -> anyhow::Result<String> {
    let redis = tokio::time::timeout(
        Duration::from_secs(5),
        cache::connect(settings.redis.url.expose()),
    )
    .await
    .context("timed out")??;
    let _: fred::types::Value = fred::interfaces::ClientLike::ping(&redis, None).await?;
    Ok(format!("{} answers PING", settings.redis.url))
}

async fn check_kafka(settings: &Settings) -> anyhow::Result<String> {
    let kafka = settings.kafka.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = source::client_config(&kafka).create()?;
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(5))?;
        let topics: Vec<String> = [
            &kafka.orders_topic,
            &kafka.config_topic,
            &kafka.dead_letter_topic,
        ]
        .into_iter()
        .map(|topic| {
            let present = metadata.topics().iter().any(|m| m.name() == topic);
            format!("{topic}: {}", if present { "present" } else { "missing" })
        })
        .collect();
        Ok(format!(
            "{} answers; topics {}",
            kafka.brokers,
            topics.join(", ")
        ))
    })
    .await?
}
