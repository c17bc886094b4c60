//! Crash safety: SIGKILL the worker process mid-stream several times and restart it; the end
//! state (rows, versions, cache keys, stored offsets, dead letters) equals what one clean run
//! gives, computed from the traffic itself.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tenantstream::testing::sink;
use tenantstream::testing::traffic::{self, TrafficSpec, WireFormat};
use tenantstream::Settings;

use crate::support::{self, WorkerProcess};

fn spawn_worker(settings: &Settings, log: &std::path::Path) -> WorkerProcess {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    support::binary("run", settings)
        // A host name, resolved when binding.
        .env("TENANTSTREAM_HTTP_LISTEN", "localhost:0")
        .env("TENANTSTREAM_BATCH_MAX_EVENTS", "40")
        .env("TENANTSTREAM_BATCH_LINGER_MS", "5")
        .env("TENANTSTREAM_SESSION_TIMEOUT_MS", "6000")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(WorkerProcess)
        .expect("start worker process")
}

async fn committed(pool: &sqlx::PgPool, settings: &Settings, partitions: &[i32]) -> i64 {
    sink::load_stored_offsets(
        pool,
        &settings.kafka.group_id,
        &settings.kafka.orders_topic,
        partitions,
    )
    .await
    .unwrap()
    .values()
    .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_and_restart_gives_the_clean_run_state() {
    let (settings, admin, redis) = support::tansu_setup("crash").await;
    let brokers = settings.kafka.brokers.clone();

    let spec = TrafficSpec {
        count: 4_000,
        tenants: 5,
        malformed: 0.02,
        format: WireFormat::Mixed,
        seed: rand::random(),
        ..Default::default()
    };
    let (messages, expected) = traffic::generate(&spec, &support::order_encoder(&settings));
    let producer = support::single_record_producer(&brokers);
    let sent = traffic::send(&producer, &settings.kafka.orders_topic, &messages, 0, None)
        .await
        .unwrap();
    let partitions: Vec<i32> = sent.ends.keys().copied().collect();
    let total: i64 = sent.ends.values().sum();

    let log = std::env::temp_dir().join(format!("{}.log", settings.kafka.group_id));
    let mut kills = 0;
    for share in [0.2, 0.45, 0.7] {
        let mut worker = spawn_worker(&settings, &log);
        let target = (total as f64 * share) as i64;
        let started = Instant::now();
        loop {
            let done = committed(&admin, &settings, &partitions).await;
            if done >= target {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "worker made no progress to {target} (at {done}); log: {}",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        worker.0.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix.
        worker.0.wait().unwrap();
        kills += 1;
        let done = committed(&admin, &settings, &partitions).await;
        assert!(
            done < total,
            "kill {kills} landed after the end; traffic too small"
        );
    }

    let mut worker = spawn_worker(&settings, &log);
    support::wait_for_offsets(&admin, &settings, &sent.ends, Duration::from_secs(180)).await;
    support::wait_for_cache(&admin, &expected.tenants, Duration::from_secs(30)).await;
    // A clean stop: SIGTERM, exit 0.
    support::stop_cleanly(&mut worker.0);
    // The log went to a file: text without terminal colour codes.
    let logged = std::fs::read(&log).unwrap();
    assert!(!logged.is_empty(), "the worker logged nothing");
    assert!(
        !logged.contains(&0x1b),
        "ANSI escape codes in a log written to a file"
    );

    assert_eq!(kills, 3);
    support::assert_rows(&admin, &expected).await;
    support::assert_cache(&redis, &expected).await;

    support::assert_dead_letters(&settings, &messages, &sent);
}
