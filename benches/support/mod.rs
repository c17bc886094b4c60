//! Setup shared by the benchmarks: knobs, the bench database, a broker with the topics (the
//! mock cluster, or a broker process at BENCH_BROKERS), a Redis of their own, the SLA policy
//! the SLA measurements use.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer};
use tenantstream::testing::{kafka, sink};
use tenantstream::{Secret, Settings};
use uuid::Uuid;

pub mod server_ceiling;

/// The binary's allocator (see `src/main.rs`), so that what the benchmarks run in their own
/// process (replay, the ceilings' statements, the traffic) allocates as the binary does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The benchmarks' database (created and migrated by [`setup`]), not the tests' one.
pub const DATABASE: &str = "tenantstream_bench";

/// The owner's URL of `database` on the local Postgres.
pub fn admin_url(database: &str) -> String {
    format!("postgres://postgres@127.0.0.1:5432/{database}")
}

/// The worker role's URL of `database` on the local Postgres.
pub fn worker_url(database: &str) -> String {
    format!("postgres://tenantstream_worker@127.0.0.1:5432/{database}")
}

/// An SLA policy with a deadline on every forward step of the generated orders' lives (an
/// hour each, so none fires during a run) and an hour's lag threshold: every order event
/// registers or clears deadlines, which is the most deadline bookkeeping a batch does.
pub const SLA_POLICY_EVERY_TRANSITION: &str = r#"{"lag_threshold_ms": 3600000, "deadlines_ms": {"CREATED->CONFIRMED": 3600000, "CONFIRMED->SHIPPED": 3600000, "SHIPPED->DELIVERED": 3600000}}"#;

/// An environment knob with a default: a value that is not a whole number is an error that
/// names it (silently running with the default would measure something else).
pub fn knob(name: &str, default: usize) -> anyhow::Result<usize> {
    Ok(read_knob(name)?.unwrap_or(default))
}

/// The knob's value, if it is set.
fn read_knob(name: &str) -> anyhow::Result<Option<usize>> {
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(error) => Err(error).with_context(|| name.to_string()),
        Ok(value) => value
            .trim()
            .parse()
            .map(Some)
            .with_context(|| format!("{name}: {value:?} is not a whole number")),
    }
}

/// Checks at the start that each of the knobs `names` that is set is a whole number, so that
/// a mistyped knob read only after minutes of work stops the benchmark at once instead.
pub fn check_knobs(names: &[&str]) -> anyhow::Result<()> {
    for name in names {
        read_knob(name)?;
    }
    Ok(())
}

/// True when cargo only probes the binary (`cargo bench -- --list`, `cargo test --benches`).
pub fn probing() -> bool {
    std::env::args().any(|a| a == "--list")
}

/// The migrated bench database (owner pool), the broker with the orders and configuration
/// topics (`partitions` each), the dead-letter topic and the SLA violations topic, and
/// settings pointing at both.
///
/// The broker is librdkafka's in-process mock cluster, or the broker process at BENCH_BROKERS
/// (e.g. tansu on 127.0.0.1:9092), where the topics get names of their own.
pub async fn setup(
    name: &str,
    partitions: i32,
) -> anyhow::Result<(
    sqlx::PgPool,
    Option<MockCluster<'static, DefaultProducerContext>>,
    Settings,
)> {
    setup_on(DATABASE, name, partitions).await
}

/// Truncates every table the migrations made, except their own record; fails after 10 s if
/// another session (a benchmark running meanwhile on the same database, say) holds them.
const EMPTY_TABLES: &str = "DO $$ BEGIN
    PERFORM set_config('lock_timeout', '10s', true);
    EXECUTE (SELECT 'TRUNCATE ' || string_agg(format('%I.%I', schemaname, tablename), ', ')
                    || ' CASCADE'
               FROM pg_tables
              WHERE schemaname = 'public' AND tablename <> '_sqlx_migrations');
END $$";

/// [`setup`] on the local Postgres database `database` (created and migrated if need be), its
/// tables emptied.
pub async fn setup_on(
    database: &str,
    name: &str,
    partitions: i32,
) -> anyhow::Result<(
    sqlx::PgPool,
    Option<MockCluster<'static, DefaultProducerContext>>,
    Settings,
)> {
    let admin_url = admin_url(database);
    sink::migrate(&admin_url)
        .await
        .with_context(|| format!("migrate the database {database}"))?;
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&admin_url)
        .await?;
    // Every run starts from empty tables: what earlier runs left (a million-event run leaves
    // hundreds of thousands of orders, and their deadlines) slows this run's statements, which
    // biased comparisons between runs.
    sqlx::query(EMPTY_TABLES)
        .execute(&admin)
        .await
        .with_context(|| format!("empty the tables of {database}"))?;
    let mut settings = Settings::default();
    let run = Uuid::new_v4();
    settings.kafka.group_id = format!("{name}-{run}");
    settings.database.url = Secret::new(worker_url(database));
    settings.database.admin_url = Secret::new(admin_url);
    let mock = match std::env::var("BENCH_BROKERS") {
        Ok(brokers) => {
            settings.kafka.brokers = brokers;
            for topic in [
                &mut settings.kafka.orders_topic,
                &mut settings.kafka.config_topic,
                &mut settings.kafka.dead_letter_topic,
                &mut settings.kafka.sla_violations_topic,
            ] {
                *topic = format!("{topic}-{run}");
            }
            create_topics(&settings, partitions).await?;
            None
        }
        Err(_) => {
            let mock = MockCluster::new(1)?;
            settings.kafka.brokers = mock.bootstrap_servers();
            mock.create_topic(&settings.kafka.orders_topic, partitions, 1)?;
            mock.create_topic(&settings.kafka.config_topic, partitions, 1)?;
            mock.create_topic(&settings.kafka.dead_letter_topic, 1, 1)?;
            // Keyed by tenant: as many partitions as the orders, so that a run's violations
            // fit the mock cluster's 5 MB per partition for longer.
            mock.create_topic(&settings.kafka.sla_violations_topic, partitions, 1)?;
            Some(mock)
        }
    };
    Ok((admin, mock, settings))
}

/// Fails when the mock cluster has dropped the oldest messages of a partition of `topic`: it
/// keeps at most 5 MB (and 100,000 message sets) per partition, and a benchmark that read only
/// the rest would overstate its rate. (Not checked on a broker process: tansu's watermarks are
/// not exact.)
pub fn ensure_nothing_dropped(
    settings: &Settings,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    if std::env::var("BENCH_BROKERS").is_ok() {
        return Ok(());
    }
    let consumer: BaseConsumer = kafka::client_config(&settings.kafka)
        .set("group.id", "bench-watermarks")
        .create()?;
    for partition in 0..partitions {
        let (low, _) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        anyhow::ensure!(
            low == 0,
            "the mock cluster dropped the first {low} messages of {topic} [{partition}] (it keeps \
             5 MB per partition): use more partitions (BENCH_PARTITIONS) or fewer events"
        );
    }
    Ok(())
}

/// Which broker the run uses, for its report.
pub fn broker_name(settings: &Settings) -> String {
    match std::env::var("BENCH_BROKERS") {
        Ok(_) => format!("broker process at {}", settings.kafka.brokers),
        Err(_) => "in-process mock cluster".to_owned(),
    }
}

async fn create_topics(settings: &Settings, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka::client_config(&settings.kafka)
        .create()
        .context("admin client")?;
    let k = &settings.kafka;
    let new = [
        NewTopic::new(&k.orders_topic, partitions, TopicReplication::Fixed(1)),
        NewTopic::new(&k.config_topic, partitions, TopicReplication::Fixed(1)),
        NewTopic::new(&k.dead_letter_topic, 1, TopicReplication::Fixed(1)),
        NewTopic::new(
            &k.sla_violations_topic,
            partitions,
            TopicReplication::Fixed(1),
        ),
    ];
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &options).await? {
        result.map_err(|(topic, e)| anyhow::anyhow!("creating topic {topic}: {e}"))?;
    }
    Ok(())
}

/// The producer of the benchmark's traffic. On a broker process it writes one record per
/// batch: tansu 0.6.0 answers a fetch from an offset inside a multi-record batch with the next
/// batch, and the worker resumes paused partitions at such offsets (real Kafka returns the
/// containing batch). On the mock cluster, the crate's producer.
pub fn producer(settings: &Settings) -> anyhow::Result<FutureProducer> {
    if std::env::var("BENCH_BROKERS").is_err() {
        return Ok(kafka::producer(&settings.kafka)?);
    }
    Ok(kafka::client_config(&settings.kafka)
        .set("batch.num.messages", "1")
        .set("linger.ms", "0")
        .set("acks", "all")
        .create()?)
}

/// A redis-server of the benchmark's own (its port is `.1`), so FLUSHALL or a server setting
/// touches nothing else.
pub struct OwnRedis(std::process::Child, pub u16);

impl OwnRedis {
    /// Starts one on a free loopback port, with `extra` arguments (e.g. server settings).
    pub fn start(extra: &[&str]) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self(child, port))
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Percentiles of a sample of milliseconds (latencies), for a report line.
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    /// What was counted, e.g. `orders`.
    pub unit: &'static str,
}

impl Percentiles {
    /// Of `ms`, one value per `unit` (at least one value).
    pub fn of(mut ms: Vec<f64>, unit: &'static str) -> Self {
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
        Self {
            count: ms.len(),
            p50: at(0.5),
            p99: at(0.99),
            max: at(1.0),
            unit,
        }
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.1} / p99 {:.1} / max {:.1} ms ({} {})",
            self.p50, self.p99, self.max, self.count, self.unit
        )
    }
}

/// `tenantstream run` for `settings`: the brokers, consumer group, topics, Postgres and Redis
/// of the benchmark, its rebalance protocol and its HTTP port, and nothing else of the
/// benchmark's environment (each benchmark adds what it varies).
pub fn worker_command(settings: &Settings, http_port: u16) -> std::process::Command {
    let k = &settings.kafka;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tenantstream"));
    command
        .arg("run")
        .env_clear()
        .env("KAFKA_BROKERS", &k.brokers)
        .env("TENANTSTREAM_GROUP_ID", &k.group_id)
        .env("TENANTSTREAM_ORDERS_TOPIC", &k.orders_topic)
        .env("TENANTSTREAM_CONFIG_TOPIC", &k.config_topic)
        .env("TENANTSTREAM_DEAD_LETTER_TOPIC", &k.dead_letter_topic)
        .env("TENANTSTREAM_SLA_VIOLATIONS_TOPIC", &k.sla_violations_topic)
        .env(
            "TENANTSTREAM_REBALANCE_PROTOCOL",
            k.rebalance_protocol.to_string(),
        )
        .env("DATABASE_URL", settings.database.url.expose())
        .env("REDIS_URL", settings.redis.url.expose())
        .env("TENANTSTREAM_HTTP_LISTEN", format!("127.0.0.1:{http_port}"))
        .stdout(std::process::Stdio::null());
    command
}

/// A worker's `/metrics` at `url` (empty when it does not answer).
pub async fn scrape(url: &str) -> String {
    match reqwest::get(url).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The value of the first sample of `name` whose labels contain `label` (`""`: any).
pub fn metric_value(metrics: &str, name: &str, label: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (labels, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels.contains(label).then(|| value.trim().parse().ok())?
    })
}
