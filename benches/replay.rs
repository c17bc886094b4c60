//! Replay benchmark: events/s of `replay` rebuilding Redis after FLUSHALL (mock Kafka → decode
//! → Postgres reads under RLS → Redis writes), next to what it is compared with: reading the
//! same partitions with a bare consumer (the Kafka ceiling), and a dry run (everything but the
//! Redis writes).
//!
//! Run: `cargo bench --bench replay` (needs the local Postgres; starts its own redis-server).
//! Knobs: BENCH_EVENTS (default 200000), BENCH_TENANTS (50), BENCH_PARTITIONS (12; the mock
//! cluster keeps about 5 MB per partition, so fewer partitions would drop the oldest events),
//! BENCH_BROKERS (a broker process instead of the in-process mock cluster), BENCH_CHUNK (replay's
//! `--chunk`: 1 to 100000, default 20000).

use std::time::Instant;

use fred::prelude::*;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tenantstream::replay::{self, ReplayOptions, StartFrom};
use tenantstream::testing::decode::Encoder;
use tenantstream::testing::domain::{ValidConfig, ValidOrder};
use tenantstream::testing::traffic::{self, ConfigSpec, TrafficSpec};
use tenantstream::testing::{cache, kafka, probe};
use tenantstream::{Health, Secret, Settings, Worker};
use tokio_util::sync::CancellationToken;

mod support;

use support::{knob, OwnRedis};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    if support::probing() {
        return Ok(());
    }
    let events = knob("BENCH_EVENTS", 200_000)?;
    let tenants = knob("BENCH_TENANTS", 50)?;
    let partitions = knob("BENCH_PARTITIONS", 12)? as i32;
    let chunk = knob("BENCH_CHUNK", 20_000)?.clamp(1, 100_000);
    let redis_server = OwnRedis::start(&[])?;
    let (admin, _mock, mut settings) = support::setup("bench-replay", partitions).await?;
    settings.redis.url = Secret::new(format!("redis://127.0.0.1:{}", redis_server.1));

    // The live path writes the rows (and the cache) once.
    let spec = TrafficSpec {
        count: events,
        tenants,
        malformed: 0.0,
        seed: rand::random(),
        ..Default::default()
    };
    let (orders, expected) =
        traffic::generate(&spec, &Encoder::for_event::<ValidOrder>(&settings.schemas)?);
    let config_spec = ConfigSpec {
        tenants: expected.tenants.clone(),
        changes_per_tenant: 20,
        categories: 20,
        category_prefix: format!("{}-", settings.kafka.group_id),
        suspended: 0.0,
        seed: spec.seed,
        start_ms: None,
    };
    let (config, _) = traffic::generate_config(
        &config_spec,
        &Encoder::for_event::<ValidConfig>(&settings.schemas)?,
    );
    let producer = support::producer(&settings)?;
    let order_ends = traffic::send(&producer, &settings.kafka.orders_topic, &orders, 0, None)
        .await?
        .ends;
    let config_ends = traffic::send(&producer, &settings.kafka.config_topic, &config, 0, None)
        .await?
        .ends;
    support::ensure_nothing_dropped(&settings, &settings.kafka.orders_topic, partitions)?;
    let shutdown = CancellationToken::new();
    let worker = Worker::connect(settings.clone(), Health::default()).await?;
    let running = tokio::spawn(worker.run(shutdown.clone()));
    for (topic, ends) in [
        (&settings.kafka.orders_topic, &order_ends),
        (&settings.kafka.config_topic, &config_ends),
    ] {
        probe::wait_until_consumed(&admin, &settings, topic, ends, &shutdown).await?;
    }
    shutdown.cancel();
    running.await??;
    let total = orders.len() + config.len();

    // 1. Ceiling: a bare consumer reading every partition to its end.
    let started = Instant::now();
    let read = read_all(
        &settings,
        &[
            (&settings.kafka.orders_topic, &order_ends),
            (&settings.kafka.config_topic, &config_ends),
        ],
    )
    .await?;
    let ceiling = read as f64 / started.elapsed().as_secs_f64();

    let options = ReplayOptions {
        topics: Vec::new(),
        from: StartFrom::Earliest,
        tenant: None,
        flush: false,
        dry_run: true,
        rewrite_db: false,
        chunk,
    };
    // 2. Dry run: read, decode, read Postgres.
    let dry = replay::run(&settings, &options).await?;
    // 3. Replay after FLUSHALL.
    let redis = cache::connect(settings.redis.url.expose()).await?;
    let () = redis.flushall(false).await?;
    let full = replay::run(
        &settings,
        &ReplayOptions {
            dry_run: false,
            ..options
        },
    )
    .await?;
    anyhow::ensure!(
        full.events_read as usize == total,
        "replay read {} of {total}",
        full.events_read
    );
    let rate = |s: &replay::ReplaySummary| s.events_read as f64 / s.seconds;

    println!(
        "replay benchmark: {total} events ({events} orders, {} config changes), {tenants} tenants, {partitions} partitions, chunk {chunk}, {}",
        config.len(),
        support::broker_name(&settings)
    );
    println!("  bare consumer (ceiling):   {ceiling:>9.0} events/s");
    println!(
        "  replay --dry-run:          {:>9.0} events/s  ({:.2} of ceiling)",
        rate(&dry),
        rate(&dry) / ceiling
    );
    println!(
        "  replay after FLUSHALL:     {:>9.0} events/s  ({:.2} of ceiling), {} keys written, {} skipped as older, {:.1} s",
        rate(&full),
        rate(&full) / ceiling,
        full.keys_written,
        full.skipped_older,
        full.seconds
    );
    Ok(())
}

/// Reads every partition of `topics` from the start to `ends` with a bare consumer.
async fn read_all(
    settings: &Settings,
    topics: &[(&String, &traffic::EndOffsets)],
) -> anyhow::Result<usize> {
    // Configured as replay's own consumer, so that the two read alike.
    let consumer: StreamConsumer = kafka::consumer_config(&settings.kafka)
        .set("group.id", "bench-bare-reader")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    let mut remaining = std::collections::HashMap::new();
    for (topic, ends) in topics {
        for (partition, end) in ends.iter() {
            tpl.add_partition_offset(topic, *partition, Offset::Beginning)?;
            remaining.insert((topic.to_string(), *partition), *end);
        }
    }
    consumer.assign(&tpl)?;
    let mut read = 0;
    while !remaining.is_empty() {
        let message = consumer.recv().await?;
        read += 1;
        let key = (message.topic().to_owned(), message.partition());
        if remaining
            .get(&key)
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            remaining.remove(&key);
        }
    }
    Ok(read)
}
