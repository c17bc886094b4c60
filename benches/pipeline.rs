//! End-to-end benchmark of the whole pipeline (mock Kafka → decode → Postgres under RLS →
//! Redis), for each tenant count:
//!
//! 1. Throughput: a backlog of BENCH_EVENTS order events drained from a fresh consumer group,
//!    events/s from the worker holding its partitions to the last offset stored; with the
//!    worker's CPU seconds per 100,000 events and its peak RSS. The worker runs as a process of
//!    its own (`tenantstream run`), as in production.
//! 2. Latency at half that throughput, from the moment a message is produced to its key being
//!    visible in Redis (seen by a keyspace-notification subscriber on a Redis of the
//!    benchmark's own): half the traffic from the other tenants every BENCH_ROUND_MS (10 ms),
//!    half from one neighbour tenant, first sent smoothly, then as one burst per second (noisy
//!    neighbour).
//! 3. The ceiling: the same events written straight to Postgres by the worker's own statements,
//!    as the same RLS-bound role, with the same batch size and partition concurrency, and no
//!    Kafka, decoding or Redis.
//! 4. The server-side ceiling issue 10 defines: the same shape's rows (fresh tenants) written by
//!    Postgres alone as the RLS-bound role, each tenant's newest rows in one upsert with the
//!    version guard under its context, no outbox, deadlines, offsets or batches
//!    (`support::server_ceiling`).
//!
//! The SLA engine's deadline bookkeeping (kept by the same statements that write the orders)
//! is off by default, as for tenants without a policy. BENCH_SLA=on gives every tenant a
//! default policy with a deadline on every transition (`support::SLA_POLICY_EVERY_TRANSITION`),
//! both in the worker and in the ceiling; BENCH_SLA=both runs each tenant count off, then on,
//! back to back, and ends with the ratios.
//!
//! Run: `cargo bench --bench pipeline` (needs the local Postgres and `redis-server`).
//! Knobs: BENCH_EVENTS (default 100000), BENCH_TENANTS (tenant counts to run, one after the
//! other: default `20,500,5000`), BENCH_PARTITIONS (4), BENCH_LINGER_MS, BENCH_BATCH and
//! BENCH_BUFFERED_BYTES (the worker's defaults), BENCH_BROKERS (a broker process instead of
//! the in-process mock cluster), BENCH_SLA (`off`, `on` or `both`; default `off`),
//! BENCH_ROUND_MS (10: how often the latency runs send; 1 to 1000), BENCH_LATENCY_RATE (events/s
//! of the latency runs; default half the measured throughput).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use fred::prelude::*;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rdkafka::producer::FutureProducer;
use tenantstream::testing::decode::{Decoder, Encoder, SchemaStore};
use tenantstream::testing::domain::{Event, OrderEvent, TenantPolicy, ValidOrder};
use tenantstream::testing::probe;
use tenantstream::testing::sink::{self, Batch, PartitionKey, SlaTracking};
use tenantstream::testing::traffic::{self, EndOffsets, TrafficSpec, WireFormat};
use tenantstream::{Clock, Secret, Settings};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod support;

use support::server_ceiling::server_side_ceiling;
use support::{knob, OwnRedis, Percentiles};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    if support::probing() {
        return Ok(());
    }
    // Read per run, the last ones after the throughput run.
    support::check_knobs(&[
        "BENCH_LINGER_MS",
        "BENCH_BATCH",
        "BENCH_BUFFERED_BYTES",
        "BENCH_LATENCY_RATE",
        "BENCH_ROUND_MS",
    ])?;
    let events = knob("BENCH_EVENTS", 100_000)?;
    let partitions = knob("BENCH_PARTITIONS", 4)? as i32;
    let tenant_counts = std::env::var("BENCH_TENANTS").unwrap_or_else(|_| "20,500,5000".into());
    let sla_modes: &[bool] = match std::env::var("BENCH_SLA").as_deref() {
        Err(_) | Ok("off") => &[false],
        Ok("on") => &[true],
        Ok("both") => &[false, true],
        Ok(other) => anyhow::bail!("BENCH_SLA: {other:?} is not off, on or both"),
    };
    println!("== tenantstream pipeline benchmark ==");
    let mut compared = Vec::new();
    for tenants in tenant_counts.split(',') {
        let tenants = tenants
            .trim()
            .parse()
            .with_context(|| format!("BENCH_TENANTS: {tenants:?} is not a tenant count"))?;
        let mut figures = Vec::new();
        for &deadlines in sla_modes {
            figures.push(run(events, tenants, partitions, deadlines).await?);
        }
        if let [off, on] = figures[..] {
            compared.push((tenants, off, on));
        }
    }
    for (tenants, off, on) in compared {
        println!(
            "-- deadline bookkeeping at {tenants} tenants (on / off): pipeline {:.0} / {:.0} events/s = {:.2}; ceiling {:.0} / {:.0} events/s = {:.2}",
            on.pipeline,
            off.pipeline,
            on.pipeline / off.pipeline,
            on.ceiling,
            off.ceiling,
            on.ceiling / off.ceiling
        );
    }
    Ok(())
}

/// The throughputs of one run, in events/s.
#[derive(Clone, Copy)]
struct Figures {
    pipeline: f64,
    ceiling: f64,
}

/// One run at `tenants` tenants: throughput, latency at half of it (or at BENCH_LATENCY_RATE),
/// and the ceiling; with `deadlines`, every tenant's default SLA policy has a deadline on every
/// transition.
async fn run(
    events: usize,
    tenants: usize,
    partitions: i32,
    deadlines: bool,
) -> anyhow::Result<Figures> {
    // Keyspace notifications for string commands: every SET of an order key is announced.
    let redis_server = OwnRedis::start(&["--notify-keyspace-events", "K$"])?;
    let (admin, _mock, mut settings) = support::setup("bench", partitions).await?;
    settings.redis.url = Secret::new(format!("redis://127.0.0.1:{}", redis_server.1));
    if deadlines {
        settings.sla.default_policy = support::SLA_POLICY_EVERY_TRANSITION.into();
    }
    let kafka_defaults = settings.kafka.clone();
    settings.kafka.batch_linger_ms =
        knob("BENCH_LINGER_MS", kafka_defaults.batch_linger_ms as usize)? as u64;
    settings.kafka.batch_max_events = knob("BENCH_BATCH", kafka_defaults.batch_max_events)?;
    settings.limits.max_buffered_bytes =
        knob("BENCH_BUFFERED_BYTES", settings.limits.max_buffered_bytes)?;
    let encoder = Arc::new(Encoder::for_event::<ValidOrder>(&settings.schemas)?);
    let spec = TrafficSpec {
        count: events,
        tenants,
        malformed: 0.0,
        format: WireFormat::Confluent,
        seed: rand::random(),
        ..Default::default()
    };

    // 1. Throughput: the backlog is in Kafka before the worker starts.
    let (messages, expected) = traffic::generate(&spec, &encoder);
    let producer = support::producer(&settings)?;
    let sent = traffic::send(&producer, &settings.kafka.orders_topic, &messages, 0, None).await?;
    support::ensure_nothing_dropped(&settings, &settings.kafka.orders_topic, partitions)?;
    let worker = WorkerProcess::start(&settings)?;
    // Time the pipeline, not the consumer group join.
    worker.wait_ready().await?;
    let started = Instant::now();
    let cpu_started = worker.cpu_seconds();
    let topic = settings.kafka.orders_topic.clone();
    let shutdown = CancellationToken::new();
    probe::wait_until_consumed(&admin, &settings, &topic, &sent.ends, &shutdown).await?;
    let pipeline_secs = started.elapsed().as_secs_f64();
    let cpu_per_100k = (worker.cpu_seconds() - cpu_started) * 100_000.0 / messages.len() as f64;
    let peak_rss = worker.peak_rss_bytes();
    let pipeline_rate = messages.len() as f64 / pipeline_secs;
    // Printed at once: the runs below take as long again, and a 1,000,000-event run may not
    // reach their end.
    let batch = settings.kafka.batch_max_events;
    println!(
        "-- traffic             {} events, {tenants} tenants, {partitions} partitions, batch {batch}, buffered bytes {}, linger {} ms, {}, SLA deadlines {}",
        messages.len(),
        settings.limits.max_buffered_bytes,
        settings.kafka.batch_linger_ms,
        support::broker_name(&settings),
        if deadlines { "on (every transition)" } else { "off" }
    );
    println!(
        "pipeline throughput    {pipeline_rate:.0} events/s ({pipeline_secs:.2}s: Kafka → decode → Postgres → Redis)"
    );
    println!(
        "worker process         {cpu_per_100k:.2} CPU s per 100k events, peak RSS {:.0} MiB",
        peak_rss as f64 / MIB
    );
    let (batches, batched, tenant_batches) = worker.batches(&topic).await?;
    println!(
        "batches                {batches:.0}: {:.0} events and {:.0} tenants each on average; {:.0} tenants of a batch per 1,000 events (each costs work under its context)",
        batched / batches,
        tenant_batches / batches,
        tenant_batches * 1000.0 / batched
    );

    // 2. Latency at half that rate (or BENCH_LATENCY_RATE, to compare workers at one rate),
    // first with a smooth neighbour, then a bursty one.
    let half = (pipeline_rate / 2.0) as usize;
    let rate = knob("BENCH_LATENCY_RATE", half)?.max(100) as f64;
    let load = Load {
        producer,
        neighbour_producer: support::producer(&settings)?,
        topic: topic.clone(),
        encoder: encoder.clone(),
        others: expected.tenants.clone(),
        neighbour: Uuid::new_v4(),
        rate,
        round: Duration::from_millis(knob("BENCH_ROUND_MS", 10)?.clamp(1, 1000) as u64),
        seed: spec.seed,
    };
    let seen = KeyWatcher::start(settings.redis.url.expose()).await?;
    let mut ends = sent.ends.clone();
    let mut latencies = Vec::new();
    for (run, bursty) in [false, true].into_iter().enumerate() {
        let sent_at = load.send(bursty, run, &seen, &mut ends).await?;
        probe::wait_until_consumed(&admin, &settings, &topic, &ends, &shutdown).await?;
        // The last batch's keys are written just after its offset is stored.
        tokio::time::sleep(Duration::from_millis(500)).await;
        latencies.push(sent_at.latencies(&seen)?);
    }
    worker.stop()?;
    let [smooth, bursty]: [Latencies; 2] = latencies.try_into().ok().expect("two runs");

    // 3. Ceiling: the same traffic shape (fresh tenants), decoded up front, written straight
    //    to Postgres with the worker's statements, batch size and partition concurrency.
    let ceiling_rate = ceiling(&settings, &spec, &encoder, partitions).await?;
    // 4. The server-side ceiling (issue 10's): the same shape's rows, each tenant's in one
    //    upsert, no client round trip per tenant, over as many sessions as partitions.
    let fresh: Vec<ValidOrder> = fresh_orders(&settings, &spec, &encoder, 11)
        .await?
        .into_iter()
        .map(|(_, order)| order)
        .collect();
    let (server_secs, server_rows) =
        server_side_ceiling(&settings, &admin, &fresh, partitions as usize).await?;
    let server_rate = fresh.len() as f64 / server_secs;

    println!(
        "Postgres ceiling       {ceiling_rate:.0} events/s (same statements and batches as the RLS role, no Kafka/decode/Redis)"
    );
    println!(
        "ratio                  {:.2} of the ceiling",
        pipeline_rate / ceiling_rate
    );
    println!(
        "server-side ceiling    {server_rate:.0} events/s: their {server_rows} rows in {server_secs:.2}s, {:.0} rows/s (each tenant's newest rows in one upsert; no outbox, deadlines or batches)",
        server_rows as f64 / server_secs
    );
    println!(
        "ratio                  {:.2} of the server-side ceiling",
        pipeline_rate / server_rate
    );
    println!(
        "to cache-visible at {rate:.0} ev/s, smooth: others {}; neighbour {}",
        smooth.others, smooth.neighbour
    );
    println!(
        "noisy neighbour (half the traffic, a burst per second): others {}; neighbour {}",
        bursty.others, bursty.neighbour
    );
    println!(
        "others' p99 with the bursty neighbour: {:.2}× the smooth one",
        bursty.others.p99 / smooth.others.p99
    );
    Ok(Figures {
        pipeline: pipeline_rate,
        ceiling: ceiling_rate,
    })
}

const MIB: f64 = 1024.0 * 1024.0;

/// Traffic at a fixed rate for the latency runs.
struct Load {
    /// The other tenants' producer, and the neighbour's own: a burst queued in one producer
    /// must not delay the other tenants' messages before they even reach the broker.
    producer: FutureProducer,
    neighbour_producer: FutureProducer,
    topic: String,
    encoder: Arc<Encoder>,
    /// The other tenants (those of the throughput run).
    others: Vec<Uuid>,
    neighbour: Uuid,
    /// Events/s of both together.
    rate: f64,
    /// How often the other tenants' traffic is sent (BENCH_ROUND_MS): each message's latency
    /// is counted from its round's start, so a round's own sending counts against it.
    round: Duration,
    seed: u64,
}

/// How long each latency run sends.
const LATENCY_RUN: Duration = Duration::from_secs(3);

/// When each order of a latency run was sent, by (tenant, order id), and by whom.
struct SentAt {
    others: HashMap<(Uuid, String), u64>,
    neighbour: HashMap<(Uuid, String), u64>,
}

impl Load {
    /// Sends one latency run: every round (10 ms by default) a round's traffic of the other
    /// tenants, and the neighbour's half either alongside (smooth) or a second's worth at once
    /// (bursty).
    /// Each order is new, so its key is written once the pipeline has it.
    async fn send(
        &self,
        bursty: bool,
        run: usize,
        seen: &KeyWatcher,
        ends: &mut EndOffsets,
    ) -> anyhow::Result<SentAt> {
        seen.clear();
        let rounds = (LATENCY_RUN.as_millis() / self.round.as_millis()) as usize;
        let per_second = (1000 / self.round.as_millis()).max(1) as usize;
        let per_round = (self.rate / 2.0 * self.round.as_secs_f64()).ceil() as usize;
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed ^ run as u64);
        // Every round's traffic is generated before the clock starts, so that encoding a burst
        // delays neither the sends nor the notification subscriber.
        let mut generated_rounds = Vec::with_capacity(rounds);
        for round in 0..rounds {
            let mut others = self.others.clone();
            others.shuffle(&mut rng);
            let neighbour_count = match (bursty, round % per_second) {
                (false, _) => per_round,
                (true, 0) => per_round * per_second,
                (true, _) => 0,
            };
            // Order numbers far apart, so that no round names an order of the throughput run
            // (numbered from 0) or of another round.
            let first_order = (1 + run * rounds + round) * 1_000_000;
            let parts = [
                (false, others, per_round),
                (true, vec![self.neighbour], neighbour_count),
            ];
            let mut generated = Vec::new();
            for (is_neighbour, tenant_ids, count) in parts {
                if count == 0 {
                    continue;
                }
                let spec = TrafficSpec {
                    count,
                    tenants: tenant_ids.len(),
                    tenant_ids,
                    first_order,
                    malformed: 0.0,
                    duplicates: 0.0,
                    reorder: 0.0,
                    seed: rand::Rng::gen(&mut rng),
                    ..Default::default()
                };
                let (messages, expected) = traffic::generate(&spec, &self.encoder);
                generated.push((is_neighbour, messages, expected));
            }
            generated_rounds.push(generated);
        }
        let mut sends = Vec::new();
        let started = Instant::now();
        for (round, generated) in generated_rounds.into_iter().enumerate() {
            for (is_neighbour, messages, expected) in generated {
                let producer = if is_neighbour {
                    self.neighbour_producer.clone()
                } else {
                    self.producer.clone()
                };
                let topic = self.topic.clone();
                sends.push(tokio::spawn(async move {
                    let at = now_micros();
                    let sent = traffic::send(&producer, &topic, &messages, 0, None).await?;
                    let orders: Vec<(Uuid, String)> = expected.orders.into_keys().collect();
                    anyhow::Ok((is_neighbour, at, orders, sent.ends))
                }));
            }
            tokio::time::sleep_until((started + self.round * (round as u32 + 1)).into()).await;
        }
        let mut sent_at = SentAt {
            others: HashMap::new(),
            neighbour: HashMap::new(),
        };
        for send in futures::future::join_all(sends).await {
            let (is_neighbour, at, orders, sent_ends) = send??;
            let into = if is_neighbour {
                &mut sent_at.neighbour
            } else {
                &mut sent_at.others
            };
            into.extend(orders.into_iter().map(|order| (order, at)));
            for (partition, end) in sent_ends {
                let e = ends.entry(partition).or_insert(0);
                *e = (*e).max(end);
            }
        }
        Ok(sent_at)
    }
}

impl SentAt {
    fn latencies(&self, seen: &KeyWatcher) -> anyhow::Result<Latencies> {
        Ok(Latencies {
            others: visible_after(seen, &self.others)?,
            neighbour: visible_after(seen, &self.neighbour)?,
        })
    }
}

struct Latencies {
    others: Percentiles,
    neighbour: Percentiles,
}

/// Milliseconds from each message's production to its key's last write in Redis.
fn visible_after(
    seen: &KeyWatcher,
    sent: &HashMap<(Uuid, String), u64>,
) -> anyhow::Result<Percentiles> {
    let written = seen.written.lock().expect("not poisoned");
    let mut ms: Vec<f64> = Vec::with_capacity(sent.len());
    for (order, at) in sent {
        let Some(visible) = written.get(order) else {
            anyhow::bail!("order {order:?} never became visible in Redis");
        };
        ms.push(visible.saturating_sub(*at) as f64 / 1000.0);
    }
    Ok(Percentiles::of(ms, "orders"))
}

/// Records when each order key was last written, from Redis keyspace notifications.
struct KeyWatcher {
    written: Arc<Mutex<HashMap<(Uuid, String), u64>>>,
    _client: Client,
}

impl KeyWatcher {
    async fn start(url: &str) -> anyhow::Result<Self> {
        let client = Builder::from_config(Config::from_url(url)?)
            // A notification the subscriber misses would count as a key never written.
            .with_performance_config(|c| c.broadcast_channel_capacity = 1 << 20)
            .build()?;
        client.init().await?;
        let mut events = client.keyspace_event_rx();
        client.psubscribe("__keyspace@0__:t:*").await?;
        let written: Arc<Mutex<HashMap<(Uuid, String), u64>>> = Arc::default();
        let record = written.clone();
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                let at = now_micros();
                if let Some(order) = event.key.as_str().and_then(order_of_key) {
                    record.lock().expect("not poisoned").insert(order, at);
                }
            }
        });
        Ok(Self {
            written,
            _client: client,
        })
    }

    fn clear(&self) {
        self.written.lock().expect("not poisoned").clear();
    }
}

/// The tenant and order of an order key, `t:{<tenant>}:g<generation>:order:<id>`.
fn order_of_key(key: &str) -> Option<(Uuid, String)> {
    let rest = key.strip_prefix("t:{")?;
    let (tenant, rest) = rest.split_once('}')?;
    let (_, order) = rest.split_once(":order:")?;
    Some((Uuid::parse_str(tenant).ok()?, order.to_owned()))
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Traffic of the same shape as `spec` for fresh tenants (the seed moved by `seed_offset`),
/// decoded and validated up front: each order event with its Kafka key.
async fn fresh_orders(
    settings: &Settings,
    spec: &TrafficSpec,
    encoder: &Encoder,
    seed_offset: u64,
) -> anyhow::Result<Vec<(Vec<u8>, ValidOrder)>> {
    let fresh = TrafficSpec {
        seed: spec.seed.wrapping_add(seed_offset),
        ..spec.clone()
    };
    let (messages, _) = traffic::generate(&fresh, encoder);
    let store = Arc::new(SchemaStore::load(&settings.schemas.dir, None)?);
    let decoder = Decoder::new(store, ValidOrder::SCHEMA_FILE, &settings.limits)?;
    let mut orders = Vec::with_capacity(messages.len());
    for message in messages {
        let event: OrderEvent = decoder.decode(&message.value).await?;
        orders.push((message.key, event.validate()?));
    }
    Ok(orders)
}

/// The same traffic shape as `spec` (fresh tenants), written straight to Postgres with the
/// worker's statements, batch size, partition concurrency and SLA tracking (the worker's
/// default policy, lag window and system clock): events/s.
async fn ceiling(
    settings: &Settings,
    spec: &TrafficSpec,
    encoder: &Encoder,
    partitions: i32,
) -> anyhow::Result<f64> {
    let orders = fresh_orders(settings, spec, encoder, 7).await?;
    let events = orders.len();
    let mut lanes: Vec<Vec<ValidOrder>> = vec![Vec::new(); partitions as usize];
    for (key, order) in orders {
        // Producers key by order id, so one order's events stay in one lane, as in Kafka.
        lanes[fxhash(&key) % partitions as usize].push(order);
    }
    // A connection per lane, so that every lane writes side by side (the worker writes at most
    // `max_connections` - 1 batches at once: 7 by default, more than the default 4 partitions).
    let database = tenantstream::DatabaseSettings {
        max_connections: (partitions as u32).max(2),
        ..settings.database.clone()
    };
    let pool = sink::connect_worker(&database).await?;
    let sla = Arc::new(SlaTracking {
        default_policy: settings
            .sla
            .default_policy_json()
            .map(serde_json::from_str)
            .transpose()?,
        lag_window_ms: settings.sla.lag_window_ms as i64,
        clock: Clock::system(),
    });
    let group = format!("ceiling-{}", Uuid::new_v4());
    // Cut by events only: with a byte budget small enough to cut the worker's batches first
    // (BENCH_BUFFERED_BYTES), the ceiling's batches are bigger than the worker's.
    let batch = settings.kafka.batch_max_events;
    let started = Instant::now();
    let writers = lanes.into_iter().enumerate().map(|(partition, lane)| {
        let pool = pool.clone();
        let sla = sla.clone();
        let key = PartitionKey {
            group: group.clone(),
            topic: "ceiling".into(),
            partition: partition as i32,
        };
        tokio::spawn(async move {
            let mut stored = None;
            for (i, chunk) in lane.chunks(batch).enumerate() {
                let next = ((i + 1) * batch) as i64;
                let batch = Batch {
                    key: &key,
                    expected: stored,
                    next_offset: next,
                    rows: chunk.into(),
                    tenant_policy: TenantPolicy::RegisterUnknown,
                    applied: &Default::default(),
                    sla: Some(&sla),
                };
                // Lanes that register the same fresh tenants wait for each other's
                // uncommitted rows; a wait past lock_timeout is retried (a few times), as the
                // worker does, and its time counts.
                let mut tries = 1;
                while let Err(error) = sink::write_batch(&pool, &batch).await {
                    let waited = error.sqlstate().as_deref() == Some(LOCK_NOT_AVAILABLE);
                    if !waited || tries == LOCK_TRIES {
                        return Err(error.into());
                    }
                    tries += 1;
                    println!("ceiling: lane {partition} retries a batch after lock_timeout");
                }
                stored = Some(next);
            }
            anyhow::Ok(())
        })
    });
    for writer in futures::future::join_all(writers).await {
        writer??;
    }
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

/// SQLSTATE of a wait that ran past `lock_timeout`, and how often the ceiling tries a batch
/// that fails with it.
const LOCK_NOT_AVAILABLE: &str = "55P03";
const LOCK_TRIES: u32 = 5;

/// A stable hash for spreading keys over lanes.
fn fxhash(bytes: &[u8]) -> usize {
    bytes.iter().fold(0usize, |h, b| {
        (h.rotate_left(5) ^ usize::from(*b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95)
    })
}

/// The worker as a process of its own (`tenantstream run`, configured through its environment
/// variables), so that its CPU time and peak RSS are its own: the traffic, the mock broker and
/// this benchmark's bookkeeping live in the benchmark's process.
struct WorkerProcess {
    child: std::process::Child,
    readyz: String,
    metrics: String,
}

impl WorkerProcess {
    fn start(settings: &Settings) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let k = &settings.kafka;
        let child = support::worker_command(settings, port)
            .env(
                "TENANTSTREAM_SLA_DEFAULT_POLICY",
                &settings.sla.default_policy,
            )
            .env(
                "TENANTSTREAM_BATCH_MAX_EVENTS",
                k.batch_max_events.to_string(),
            )
            .env(
                "TENANTSTREAM_BATCH_LINGER_MS",
                k.batch_linger_ms.to_string(),
            )
            .env(
                "TENANTSTREAM_MAX_BUFFERED_BYTES",
                settings.limits.max_buffered_bytes.to_string(),
            )
            .env(
                "TENANTSTREAM_ADMIN_DATABASE_URL",
                settings.database.admin_url.expose(),
            )
            .env("RUST_LOG", "warn")
            .spawn()
            .context("starting `tenantstream run`")?;
        Ok(Self {
            child,
            readyz: format!("http://127.0.0.1:{port}/readyz"),
            metrics: format!("http://127.0.0.1:{port}/metrics"),
        })
    }

    /// Waits until the worker holds its partitions and its dependencies answer.
    async fn wait_ready(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let ready = reqwest::get(&self.readyz)
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "the worker was not ready within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Its batches of `topic`: how many, their events and the tenants they held, summed
    /// (each tenant of a batch costs work under its context). Waits up to 5 s for every batch
    /// taken to be committed: a batch's figures are recorded just after its offset is stored.
    async fn batches(&self, topic: &str) -> anyhow::Result<(f64, f64, f64)> {
        let label = format!("topic=\"{topic}\"");
        let started = Instant::now();
        loop {
            let m = support::scrape(&self.metrics).await;
            let get = |name| support::metric_value(&m, name, &label).unwrap_or(0.0);
            let taken = get("tenantstream_batch_size_events_count");
            let committed = get("tenantstream_batch_tenants_count");
            if taken > 0.0 && committed >= taken {
                return Ok((
                    committed,
                    get("tenantstream_batch_size_events_sum"),
                    get("tenantstream_batch_tenants_sum"),
                ));
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(5),
                "{committed} of {taken} batches committed 5 s after the drain"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// CPU seconds (user and system) the worker has used.
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // After the command name (in parentheses), utime and stime are the 12th and 13th
        // fields, in clock ticks of 1/100 s.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (ticks(11) + ticks(12)) / 100.0
    }

    /// The worker's peak resident memory so far (VmHWM).
    fn peak_rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    fn stop(mut self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.child.try_wait()?.is_none(),
            "the worker exited during the benchmark"
        );
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
