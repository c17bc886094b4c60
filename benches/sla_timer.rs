//! Benchmark of the SLA engine's deadline timer: BENCH_DEADLINES pending deadlines (default
//! 1,000,000) across BENCH_TENANTS tenants (default 5,000), loaded server-side, on a database of
//! its own (`tenantstream_sla_bench`, emptied at the start; its SLA tables again at the end).
//!
//! 1. Fires per second: every deadline already due, the engine's timer passes
//!    (`DeadlineTimer::pass`, FIRE_BATCH deadlines per transaction) until none is left; then the
//!    same with two timers side by side, which must fire each deadline exactly once between them
//!    (checked on the stored violations: a correctness check, not a speed one).
//! 2. Firing latency: BENCH_DUE of the deadlines (default 60,000: 1,000 a second) come due
//!    evenly over BENCH_SPREAD_SECS (60) of real time, the others stay pending (due hours
//!    later), while a worker (in this process, on the mock cluster, with the default poll interval) runs
//!    the timer and the publisher, and the order pipeline runs at half its maximum rate
//!    (measured first on a backlog of BENCH_EVENTS orders, or BENCH_RATE events/s) through the
//!    same worker. Each violation's latency runs from its deadline's due_at to its arrival on
//!    the violations topic (read by a consumer in this process); also from due_at to detected_at
//!    (the timer's share).
//!
//! Every tenant's default policy has a deadline on every transition, so the order traffic
//! keeps deadlines too (an hour away: none of them fires during the run).
//!
//! Run: `cargo bench --bench sla_timer` (needs the local Postgres and `redis-server`).
//! BENCH_DUE=1000000 makes every deadline come due in the window: a burst far over what one
//! worker fires and publishes per second, whose latency is mostly the queue's.
//!
//! Knobs: BENCH_DEADLINES, BENCH_TENANTS, BENCH_DUE, BENCH_SPREAD_SECS, BENCH_EVENTS (50000),
//! BENCH_RATE, BENCH_PARTITIONS (4), BENCH_WAIT_SECS (how long the latency run waits for the
//! last violation once the last deadline is due: 300), BENCH_BROKERS (a broker process instead
//! of the in-process mock cluster).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use sqlx::PgPool;
use tenantstream::testing::decode::{Decoder, Encoder, SchemaStore};
use tenantstream::testing::domain::{SlaViolation, ValidOrder, ViolationKind};
use tenantstream::testing::sla::DeadlineTimer;
use tenantstream::testing::traffic::{self, EndOffsets, TrafficSpec};
use tenantstream::testing::{kafka, probe, sink};
use tenantstream::{Clock, Health, Secret, Settings, Worker, WorkerError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod support;

use support::{knob, OwnRedis, Percentiles};

/// The benchmark's own database: every benchmark empties its database's tables when it starts
/// (see `support::setup_on`), so this one and the others never empty each other's.
const DATABASE: &str = "tenantstream_sla_bench";

/// The loaded deadlines' transition; their orders are named `sla-<n>`.
const TRANSITION: &str = "CREATED->CONFIRMED";
const ORDER_PREFIX: &str = "sla-";

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    if support::probing() {
        return Ok(());
    }
    // Read after the firing runs.
    support::check_knobs(&["BENCH_EVENTS", "BENCH_WAIT_SECS"])?;
    let given_rate = match std::env::var("BENCH_RATE") {
        Ok(rate) => Some(
            rate.trim()
                .parse::<f64>()
                .with_context(|| format!("BENCH_RATE: {rate:?} is not a number of events/s"))?,
        ),
        Err(_) => None,
    };
    let deadlines = knob("BENCH_DEADLINES", 1_000_000)?;
    let tenant_count = knob("BENCH_TENANTS", 5_000)?;
    let due_in_window = knob("BENCH_DUE", 60_000)?.clamp(1, deadlines);
    let spread = Duration::from_secs(knob("BENCH_SPREAD_SECS", 60)? as u64);
    let partitions = knob("BENCH_PARTITIONS", 4)? as i32;
    let redis_server = OwnRedis::start(&[])?;
    let (admin, _mock, mut settings) = support::setup_on(DATABASE, "bench-sla", partitions).await?;
    settings.redis.url = Secret::new(format!("redis://127.0.0.1:{}", redis_server.1));
    settings.sla.default_policy = support::SLA_POLICY_EVERY_TRANSITION.into();
    let tenants: Vec<Uuid> = (0..tenant_count).map(|_| Uuid::new_v4()).collect();
    sqlx::query("INSERT INTO tenants (tenant_id, status) SELECT unnest($1::uuid[]), 'active'")
        .bind(&tenants)
        .execute(&admin)
        .await?;
    println!("== tenantstream SLA timer benchmark ==");
    println!(
        "-- {deadlines} deadlines across {tenant_count} tenants, {partitions} partitions, {}",
        support::broker_name(&settings)
    );

    // 1. Fires per second, by one timer and by two side by side.
    let mut load_secs = 0.0;
    for timers in [1, 2] {
        let due = Deadlines {
            count: deadlines,
            in_window: deadlines,
            first_due_ms: Clock::system().now_ms() - 3_600_000,
            spread_ms: 3_000_000,
        };
        load_secs = due.load(&admin, &tenants).await?;
        let fired = fire_all(&settings, timers).await?;
        check_fired_once(&admin, deadlines, &fired).await?;
        println!(
            "timer x{timers}               {:.0} deadlines/s ({} fired in {:.2}s, {} per timer; loading them took {load_secs:.1}s)",
            fired.total as f64 / fired.secs,
            fired.total,
            fired.secs,
            fired
                .per_timer
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" + "),
        );
        empty_sla_tables(&admin).await?;
    }

    // 2. Firing latency with the order pipeline at half its maximum: that maximum first, from
    //    a backlog in Kafka before the worker starts (unless given).
    let orders = OrderTraffic {
        producer: support::producer(&settings)?,
        topic: settings.kafka.orders_topic.clone(),
        encoder: Arc::new(Encoder::for_event::<ValidOrder>(&settings.schemas)?),
        tenants: tenants.clone(),
    };
    let backlog = match given_rate {
        Some(_) => Vec::new(),
        None => orders.generate(knob("BENCH_EVENTS", 50_000)?, 0),
    };
    let sent = traffic::send(&orders.producer, &orders.topic, &backlog, 0, None).await?;
    support::ensure_nothing_dropped(&settings, &orders.topic, partitions)?;
    let mut ends = sent.ends;
    let worker = RunningWorker::start(&settings).await?;
    let shutdown = CancellationToken::new();
    probe::wait_until_ready(&worker.health, &shutdown).await?;
    let started = Instant::now();
    probe::wait_until_consumed(&admin, &settings, &orders.topic, &ends, &shutdown).await?;
    let max_rate = backlog.len() as f64 / started.elapsed().as_secs_f64();
    let rate = given_rate.unwrap_or(max_rate / 2.0).max(100.0);
    let violations = ViolationReader::start(&settings, due_in_window).await?;
    // The first deadline is due once the loading is surely over (it took `load_secs` above).
    let lead_ms = (load_secs * 2_000.0) as i64 + 5_000;
    let due = Deadlines {
        count: deadlines,
        in_window: due_in_window,
        first_due_ms: Clock::system().now_ms() + lead_ms,
        spread_ms: spread.as_millis() as i64,
    };
    let traffic_stop = CancellationToken::new();
    let traffic = tokio::spawn(orders.clone().send_until(rate, traffic_stop.clone()));
    due.load(&admin, &tenants).await?;
    let wait = Duration::from_secs(knob("BENCH_WAIT_SECS", 300)? as u64);
    let last_due = due.due_ms(due_in_window - 1);
    let give_up_ms = last_due + wait.as_millis() as i64;
    let arrivals = violations.finish(give_up_ms).await?;
    traffic_stop.cancel();
    let (sent, traffic_ends) = traffic.await??;
    merge_ends(&mut ends, &traffic_ends);
    let drain = Instant::now();
    probe::wait_until_consumed(&admin, &settings, &orders.topic, &ends, &shutdown).await?;
    let drain_secs = drain.elapsed().as_secs_f64();
    worker.stop().await?;
    empty_sla_tables(&admin).await?;

    let max = match given_rate {
        Some(_) => "not measured (BENCH_RATE)".to_owned(),
        None => format!(
            "max {max_rate:.0} events/s ({} events of backlog drained by the same worker)",
            backlog.len()
        ),
    };
    println!(
        "order pipeline         {max}, run at {rate:.0} events/s: {sent} events sent, the last consumed {drain_secs:.1}s after the traffic stopped"
    );
    arrivals.report(&due, spread, settings.sla.poll_interval_ms);
    Ok(())
}

/// Deletes every deadline, violation and queued violation of the benchmark's database.
async fn empty_sla_tables(admin: &PgPool) -> anyhow::Result<()> {
    sqlx::query("TRUNCATE sla_deadlines, sla_violations, sla_outbox")
        .execute(admin)
        .await?;
    Ok(())
}

/// `count` deadlines of `TRANSITION`, of order `sla-<n>` of tenant n mod the tenant count (so
/// consecutive ones are of different tenants), started an hour before they are due: the
/// first `in_window` due evenly over `spread_ms` from `first_due_ms`, the others an hour
/// after that window.
struct Deadlines {
    count: usize,
    in_window: usize,
    first_due_ms: i64,
    spread_ms: i64,
}

impl Deadlines {
    /// When the n-th is due (as `load` computes it).
    fn due_ms(&self, n: usize) -> i64 {
        let n = n as i64;
        match self.in_window as i64 {
            window if n < window => self.first_due_ms + n * self.spread_ms / window,
            _ => self.first_due_ms + self.spread_ms + 3_600_000 + n,
        }
    }

    /// Inserts them as the owner, in one statement. Returns the seconds it took.
    async fn load(&self, admin: &PgPool, tenants: &[Uuid]) -> anyhow::Result<f64> {
        let started = Instant::now();
        sqlx::query(
            "INSERT INTO sla_deadlines (tenant_id, order_id, transition, started_at, due_at,
                                        threshold_ms, policy_version)
             SELECT $1[1 + n % cardinality($1)], $2 || n, $3,
                    to_timestamp((due - 3600000) / 1000.0), to_timestamp(due / 1000.0), 3600000, 0
               FROM generate_series(0::int8, $4 - 1) n,
                    LATERAL (SELECT CASE WHEN n < $7 THEN $5 + n * $6 / $7
                                         ELSE $5 + $6 + 3600000 + n END AS due) d",
        )
        .bind(tenants)
        .bind(ORDER_PREFIX)
        .bind(TRANSITION)
        .bind(self.count as i64)
        .bind(self.first_due_ms)
        .bind(self.spread_ms)
        .bind(self.in_window as i64)
        .execute(admin)
        .await
        .context("loading the deadlines")?;
        Ok(started.elapsed().as_secs_f64())
    }
}

/// What the timers of one run fired.
struct Fired {
    total: u64,
    violations: u64,
    per_timer: Vec<u64>,
    secs: f64,
}

/// Runs `timers` deadline timers side by side, each on its own connection pool, pass after
/// pass until a pass finds nothing due.
async fn fire_all(settings: &Settings, timers: usize) -> anyhow::Result<Fired> {
    let mut running = Vec::new();
    for _ in 0..timers {
        running.push(DeadlineTimer {
            pool: sink::connect_worker(&settings.database).await?,
            clock: Clock::system(),
            health: Health::default(),
            interval: Duration::from_millis(settings.sla.poll_interval_ms),
        });
    }
    let started = Instant::now();
    let passes = running.into_iter().map(|timer| {
        tokio::spawn(async move {
            let (mut deadlines, mut violations) = (0, 0);
            loop {
                let fired = timer.pass().await?;
                if fired.deadlines == 0 {
                    return anyhow::Ok((deadlines, violations));
                }
                deadlines += fired.deadlines;
                violations += fired.violations;
            }
        })
    });
    let mut fired = Fired {
        total: 0,
        violations: 0,
        per_timer: Vec::new(),
        secs: 0.0,
    };
    for result in futures::future::join_all(passes).await {
        let (deadlines, violations) = result??;
        fired.total += deadlines;
        fired.violations += violations;
        fired.per_timer.push(deadlines);
    }
    fired.secs = started.elapsed().as_secs_f64();
    Ok(fired)
}

/// Every deadline fired once: none left, and exactly one stored and queued violation each.
async fn check_fired_once(admin: &PgPool, deadlines: usize, fired: &Fired) -> anyhow::Result<()> {
    let (pending, stored, queued): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM sla_deadlines),
                (SELECT count(*) FROM sla_violations WHERE kind = 'DEADLINE_MISSED'),
                (SELECT count(*) FROM sla_outbox)",
    )
    .fetch_one(admin)
    .await?;
    let n = deadlines as u64;
    anyhow::ensure!(
        pending == 0 && stored as u64 == n && queued as u64 == n,
        "after firing {deadlines} deadlines: {pending} pending, {stored} violations stored, {queued} queued"
    );
    anyhow::ensure!(
        fired.total == n && fired.violations == n,
        "the timers report {} deadlines fired and {} violations created, not {deadlines} each",
        fired.total,
        fired.violations
    );
    Ok(())
}

/// A worker running in this process, on the system clock.
struct RunningWorker {
    health: Health,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), WorkerError>>,
}

impl RunningWorker {
    async fn start(settings: &Settings) -> anyhow::Result<Self> {
        let health = Health::default();
        let worker = Worker::connect(settings.clone(), health.clone()).await?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(worker.run(shutdown.clone()));
        Ok(Self {
            health,
            shutdown,
            task,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        Ok(self.task.await??)
    }
}

/// Order events of the benchmark's tenants, new orders each time.
#[derive(Clone)]
struct OrderTraffic {
    producer: rdkafka::producer::FutureProducer,
    topic: String,
    encoder: Arc<Encoder>,
    tenants: Vec<Uuid>,
}

impl OrderTraffic {
    /// `count` events of orders numbered from `first_order`, without malformed messages.
    fn generate(&self, count: usize, first_order: usize) -> Vec<traffic::Generated> {
        let spec = TrafficSpec {
            count,
            tenants: self.tenants.len(),
            tenant_ids: self.tenants.clone(),
            first_order,
            malformed: 0.0,
            seed: rand::random(),
            ..Default::default()
        };
        traffic::generate(&spec, &self.encoder).0
    }

    /// Sends `rate` events/s, a second's worth at a time, until `stop`. Returns the events sent
    /// and their end offsets.
    async fn send_until(
        self,
        rate: f64,
        stop: CancellationToken,
    ) -> anyhow::Result<(usize, EndOffsets)> {
        let per_second = rate.round() as usize;
        let (mut sent, mut ends) = (0, EndOffsets::new());
        for second in 1.. {
            if stop.is_cancelled() {
                break;
            }
            // Order numbers far apart: no second names an order of another, or of the backlog.
            let messages = self.generate(per_second, second * 10_000_000);
            let done = traffic::send(
                &self.producer,
                &self.topic,
                &messages,
                per_second as u32,
                None,
            )
            .await?;
            sent += messages.len();
            merge_ends(&mut ends, &done.ends);
        }
        Ok((sent, ends))
    }
}

fn merge_ends(into: &mut EndOffsets, ends: &EndOffsets) {
    for (partition, end) in ends {
        let e = into.entry(*partition).or_insert(0);
        *e = (*e).max(*end);
    }
}

/// Reads the violations topic from its start, noting when each loaded deadline's violation
/// first arrived.
struct ViolationReader {
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<Arrivals>>,
}

/// Per loaded deadline (by its order's number): when its violation arrived (ms since the
/// epoch, 0: not yet) and its detected_at.
struct Arrivals {
    received_ms: Vec<i64>,
    detected_ms: Vec<i64>,
    duplicates: usize,
}

impl ViolationReader {
    async fn start(settings: &Settings, deadlines: usize) -> anyhow::Result<Self> {
        let consumer: StreamConsumer = kafka::consumer_config(&settings.kafka)
            .set("group.id", format!("bench-sla-reader-{}", Uuid::new_v4()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()?;
        consumer.subscribe(&[&settings.kafka.sla_violations_topic])?;
        let store = Arc::new(SchemaStore::load(&settings.schemas.dir, None)?);
        let decoder = Decoder::new(store, SlaViolation::SCHEMA_FILE, &settings.limits)?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut arrivals = Arrivals {
                received_ms: vec![0; deadlines],
                detected_ms: vec![0; deadlines],
                duplicates: 0,
            };
            let mut missing = deadlines;
            while missing > 0 {
                let message = tokio::select! {
                    _ = stopped.cancelled() => break,
                    message = consumer.recv() => message?,
                };
                let at = Clock::system().now_ms();
                let payload = message.payload().context("a violation without a value")?;
                let violation: SlaViolation = decoder.decode(payload).await?;
                let n = violation
                    .order_id
                    .as_deref()
                    .filter(|_| violation.kind == ViolationKind::DeadlineMissed)
                    .and_then(|order| order.strip_prefix(ORDER_PREFIX))
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|n| *n < deadlines);
                let Some(n) = n else { continue };
                if arrivals.received_ms[n] != 0 {
                    arrivals.duplicates += 1;
                    continue;
                }
                arrivals.received_ms[n] = at;
                arrivals.detected_ms[n] = violation.detected_at;
                missing -= 1;
            }
            Ok(arrivals)
        });
        Ok(Self { stop, task })
    }

    /// Waits until every violation arrived or the system clock reaches `give_up_ms`.
    async fn finish(self, give_up_ms: i64) -> anyhow::Result<Arrivals> {
        let wait = (give_up_ms - Clock::system().now_ms()).max(0) as u64;
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            stop.cancel();
        });
        self.task.await?
    }
}

impl Arrivals {
    fn report(&self, due: &Deadlines, spread: Duration, poll_interval_ms: u64) {
        let latencies = |at: &[i64]| -> Vec<f64> {
            at.iter()
                .enumerate()
                .filter(|(_, at)| **at != 0)
                .map(|(n, at)| (at - due.due_ms(n)) as f64)
                .collect()
        };
        let published = latencies(&self.received_ms);
        let missing = due.in_window - published.len();
        println!(
            "firing latency         {} of the {} pending deadlines due over {}s, timer and publisher polling every {poll_interval_ms} ms{}",
            due.in_window,
            due.count,
            spread.as_secs(),
            if missing > 0 {
                format!(": {missing} NOT published in time (not counted below)")
            } else {
                String::new()
            }
        );
        if published.is_empty() {
            return;
        }
        println!(
            "due → detected         {}",
            Percentiles::of(latencies(&self.detected_ms), "violations")
        );
        println!(
            "due → on the topic     {} ; {} published twice",
            Percentiles::of(published, "violations"),
            self.duplicates
        );
    }
}
