//! End-to-end benchmark: events/s and latency percentiles of the whole pipeline (mock Kafka →
//! decode → Postgres under RLS → Redis), next to the ceiling it is compared with: the same
//! events written straight to Postgres by the same set-based statements, as the same RLS-bound
//! role, with the same batch size and partition concurrency, and no Kafka, decoding or Redis.
//!
//! Run: `cargo bench --bench pipeline` (needs the local Postgres and Redis).
//! Knobs: BENCH_EVENTS (default 100000), BENCH_TENANTS (tenant counts to run, one after the
//! other: default `20,500,5000`), BENCH_PARTITIONS (4), BENCH_LINGER_MS (the worker's default).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tenantstream::testing::decode::{Decoder, Encoder, SchemaStore};
use tenantstream::testing::domain::{Event, OrderEvent, TenantPolicy, ValidOrder};
use tenantstream::testing::sink::{self, Batch, PartitionKey};
use tenantstream::testing::traffic::{self, TrafficSpec, WireFormat};
use tenantstream::testing::{kafka, probe};
use tenantstream::{Clock, Health, Worker};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod support;

use support::knob;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    if support::probing() {
        return Ok(());
    }
    let events = knob("BENCH_EVENTS", 100_000);
    let partitions = knob("BENCH_PARTITIONS", 4) as i32;
    let tenant_counts = std::env::var("BENCH_TENANTS").unwrap_or_else(|_| "20,500,5000".into());
    println!("== tenantstream pipeline benchmark ==");
    for tenants in tenant_counts.split(',') {
        let tenants = tenants
            .trim()
            .parse()
            .with_context(|| format!("BENCH_TENANTS: {tenants:?} is not a tenant count"))?;
        run(events, tenants, partitions).await?;
    }
    Ok(())
}

/// One run at `tenants` tenants: throughput, latency at half of it, and the ceiling.
async fn run(events: usize, tenants: usize, partitions: i32) -> anyhow::Result<()> {
    let (admin, _mock, mut settings) = support::setup("bench", partitions).await?;
    let linger = settings.kafka.batch_linger_ms as usize;
    settings.kafka.batch_linger_ms = knob("BENCH_LINGER_MS", linger) as u64;
    let encoder = Encoder::for_event::<ValidOrder>(&settings.schemas)?;
    let spec = TrafficSpec {
        count: events,
        tenants,
        malformed: 0.0,
        format: WireFormat::Confluent,
        seed: rand::random(),
        ..Default::default()
    };

    // 1. Throughput: the backlog is in Kafka before the worker starts.
    let (messages, _) = traffic::generate(&spec, &encoder);
    let producer = kafka::producer(&settings.kafka)?;
    let sent = traffic::send(&producer, &settings.kafka.orders_topic, &messages, 0, None).await?;
    let shutdown = CancellationToken::new();
    let health = Health::default();
    let worker = Worker::connect(settings.clone(), health.clone()).await?;
    let running = tokio::spawn(worker.run(shutdown.clone()));
    // Time the pipeline, not the consumer group join.
    while !health.is_ready() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    probe::wait_until_consumed(
        &admin,
        &settings,
        &settings.kafka.orders_topic,
        &sent.ends,
        &shutdown,
    )
    .await?;
    let pipeline_secs = started.elapsed().as_secs_f64();
    let pipeline_rate = messages.len() as f64 / pipeline_secs;

    // 2. Latency at half that rate: small bursts stamped with the time they are sent.
    let rate = (pipeline_rate / 2.0).max(100.0);
    let burst = (rate / 10.0).ceil() as usize; // every 100 ms
    let mut latency_tenants = Vec::new();
    let mut ends = sent.ends.clone();
    let latency_started = Instant::now();
    for round in 0..50u64 {
        let burst_spec = TrafficSpec {
            count: burst,
            tenants: 2,
            duplicates: 0.0,
            reorder: 0.0,
            start_ms: Some(Clock::system().now_ms()),
            seed: spec.seed ^ (round + 1),
            ..spec.clone()
        };
        let (burst_messages, expected) = traffic::generate(&burst_spec, &encoder);
        latency_tenants.extend(expected.tenants);
        let burst_sent = traffic::send(
            &producer,
            &settings.kafka.orders_topic,
            &burst_messages,
            0,
            None,
        )
        .await?;
        for (p, end) in burst_sent.ends {
            let e = ends.entry(p).or_insert(0);
            *e = (*e).max(end);
        }
        let next = latency_started + Duration::from_millis(100 * (round + 1));
        tokio::time::sleep_until(next.into()).await;
    }
    probe::wait_until_consumed(
        &admin,
        &settings,
        &settings.kafka.orders_topic,
        &ends,
        &shutdown,
    )
    .await?;
    shutdown.cancel();
    running.await??;
    let (p50, p95, p99): (f64, f64, f64) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
                percentile_cont(0.95) WITHIN GROUP (ORDER BY ms),
                percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)
           FROM (SELECT extract(epoch FROM updated_at - occurred_at) * 1000 AS ms
                   FROM orders WHERE tenant_id = ANY($1)) l",
    )
    .bind(&latency_tenants)
    .fetch_one(&admin)
    .await?;

    // 3. Ceiling: the same traffic shape (fresh tenants), decoded up front, written straight
    //    to Postgres with the worker's statements, batch size and partition concurrency.
    let ceiling_spec = TrafficSpec {
        seed: spec.seed.wrapping_add(7),
        ..spec.clone()
    };
    let (ceiling_messages, _) = traffic::generate(&ceiling_spec, &encoder);
    let store = Arc::new(SchemaStore::load(&settings.schemas.dir, None)?);
    let decoder = Decoder::new(store, ValidOrder::SCHEMA_FILE, &settings.limits)?;
    let mut lanes: Vec<Vec<ValidOrder>> = vec![Vec::new(); partitions as usize];
    for message in &ceiling_messages {
        let event: OrderEvent = decoder.decode(&message.value).await?;
        // Producers key by order id, so one order's events stay in one lane, as in Kafka.
        let lane = fxhash(&message.key) % partitions as usize;
        lanes[lane].push(event.validate()?);
    }
    let pool = sink::connect_worker(&settings.database).await?;
    let group = format!("ceiling-{}", Uuid::new_v4());
    let batch = settings.kafka.batch_max_events;
    let ceiling_started = Instant::now();
    let writers = lanes.into_iter().enumerate().map(|(partition, lane)| {
        let pool = pool.clone();
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
                };
                sink::write_batch(&pool, &batch).await?;
                stored = Some(next);
            }
            anyhow::Ok(())
        })
    });
    for writer in futures::future::join_all(writers).await {
        writer??;
    }
    let ceiling_secs = ceiling_started.elapsed().as_secs_f64();
    let ceiling_rate = ceiling_messages.len() as f64 / ceiling_secs;

    println!(
        "-- traffic             {} events, {tenants} tenants, {partitions} partitions, batch {batch}, linger {} ms",
        messages.len(),
        settings.kafka.batch_linger_ms
    );
    println!(
        "pipeline throughput    {pipeline_rate:.0} events/s ({pipeline_secs:.2}s: Kafka → decode → Postgres → Redis)"
    );
    println!(
        "Postgres ceiling       {ceiling_rate:.0} events/s ({ceiling_secs:.2}s: same upserts as the RLS role, no Kafka/decode/Redis)"
    );
    println!(
        "ratio                  {:.2} of the ceiling",
        pipeline_rate / ceiling_rate
    );
    println!(
        "latency at {rate:.0} ev/s  p50 {p50:.1} ms, p95 {p95:.1} ms, p99 {p99:.1} ms (occurred_at → batch transaction)"
    );
    Ok(())
}

/// A stable hash for spreading keys over lanes.
fn fxhash(bytes: &[u8]) -> usize {
    bytes.iter().fold(0usize, |h, b| {
        (h.rotate_left(5) ^ usize::from(*b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95)
    })
}
