//! How long partitions stop while a worker joins the group and while one leaves, under each
//! rebalance protocol (README "Rebalancing").
//!
//! For each protocol (eager, then cooperative), on a fresh group: steady order traffic over
//! BENCH_PARTITIONS partitions at BENCH_RATE events/s, two worker processes (`tenantstream run`)
//! in one group; once they hold every partition, a quiet stretch (the baseline), then a third
//! worker starts (join), and once the partitions are shared out among the three it stops with
//! SIGTERM (leave). Progress is the stored offset in `consumer_offsets`, polled every 20 ms and
//! timed by its `updated_at` (the start of the batch transaction that moved it). A partition's
//! pause around an event is the longest time between two successive moves of its stored offset
//! from the event to a second after the group settled. Reported: max and median over the
//! partitions that changed owner ("moved") and over the others ("kept"); which worker holds
//! what is read from the workers' own log lines (JSON), as an operator would.
//!
//! Run: `cargo bench --bench rebalance` (needs the local Postgres and Redis). Knobs:
//! BENCH_PARTITIONS (12), BENCH_RATE (600 events/s), BENCH_BROKERS (a broker process instead of
//! the in-process mock cluster), BENCH_PROTOCOLS (`eager,cooperative`), BENCH_SESSION_TIMEOUT_MS
//! (the worker's default, 10000: on the mock cluster each round of a rebalance lasts it minus a
//! second).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tenantstream::testing::decode::Encoder;
use tenantstream::testing::domain::ValidOrder;
use tenantstream::testing::traffic::{self, TrafficSpec};
use tenantstream::{RebalanceProtocol, Settings};
use tokio_util::sync::CancellationToken;

mod support;

use support::knob;

/// How often the stored offsets are read.
const POLL: Duration = Duration::from_millis(20);

/// Longest a join or a leave may take to settle.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    if support::probing() {
        return Ok(());
    }
    support::check_knobs(&["BENCH_SESSION_TIMEOUT_MS"])?; // read per protocol's run
    let partitions = knob("BENCH_PARTITIONS", 12)? as i32;
    let rate = knob("BENCH_RATE", 600)? as u32;
    let protocols = std::env::var("BENCH_PROTOCOLS").unwrap_or_else(|_| "eager,cooperative".into());
    println!("== tenantstream rebalance benchmark ==");
    let mut rows = Vec::new();
    for protocol in protocols.split(',') {
        let protocol: RebalanceProtocol = protocol
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("BENCH_PROTOCOLS: {e}"))?;
        rows.extend(run(protocol, partitions, rate).await?);
    }
    println!(
        "-- longest stop of progress per partition (ms), {partitions} partitions, {rate} events/s"
    );
    println!(
        "{:<12} {:<9} {:<6} {:>3} {:>9} {:>9} {:>9}",
        "protocol", "event", "parts", "n", "median", "max", "settled"
    );
    for row in rows {
        println!("{row}");
    }
    Ok(())
}

/// One line of the table.
struct Row {
    protocol: RebalanceProtocol,
    event: &'static str,
    which: &'static str,
    pauses_ms: Vec<f64>,
    /// From the event to the group holding every partition again.
    settled: Duration,
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ms = self.pauses_ms.clone();
        ms.sort_by(f64::total_cmp);
        let median = ms.get(ms.len() / 2).copied().unwrap_or(f64::NAN);
        let max = ms.last().copied().unwrap_or(f64::NAN);
        write!(
            f,
            "{:<12} {:<9} {:<6} {:>3} {:>9.0} {:>9.0} {:>8.1}s",
            self.protocol.to_string(),
            self.event,
            self.which,
            ms.len(),
            median,
            max,
            self.settled.as_secs_f64()
        )
    }
}

async fn run(protocol: RebalanceProtocol, partitions: i32, rate: u32) -> anyhow::Result<Vec<Row>> {
    let (admin, mock, mut settings) = support::setup("rebalance", partitions).await?;
    settings.kafka.rebalance_protocol = protocol;
    settings.kafka.session_timeout_ms = knob("BENCH_SESSION_TIMEOUT_MS", 10_000)? as u64;
    // The configuration topic on one partition, as its low volume warrants: the sticky
    // assignor balances the count of partitions over both topics together, and with as many
    // configuration partitions as order ones a joining worker may be given only idle ones.
    let mut total = 2 * partitions;
    if let Some(mock) = &mock {
        settings.kafka.config_topic = format!("{}-single", settings.kafka.config_topic);
        mock.create_topic(&settings.kafka.config_topic, 1, 1)?;
        total = partitions + 1;
    }
    let logs = tempfile::tempdir()?;
    println!(
        "-- {protocol}: {}, group {}",
        support::broker_name(&settings),
        settings.kafka.group_id
    );

    // Steady traffic for as long as the run lasts (at most 5 minutes' worth).
    let encoder = Encoder::for_event::<ValidOrder>(&settings.schemas)?;
    let spec = TrafficSpec {
        count: rate as usize * 300,
        tenants: 50,
        malformed: 0.0,
        duplicates: 0.0,
        reorder: 0.0,
        seed: rand::random(),
        ..Default::default()
    };
    let (messages, _) = traffic::generate(&spec, &encoder);
    let producer = support::producer(&settings)?;
    let topic = settings.kafka.orders_topic.clone();
    let sender =
        tokio::spawn(async move { traffic::send(&producer, &topic, &messages, rate, None).await });
    let progress = Progress::start(admin.clone(), &settings);

    let mut workers = vec![
        Worker::start(&settings, logs.path(), "w1")?,
        Worker::start(&settings, logs.path(), "w2")?,
    ];
    settle(&workers, &settings, total).await?;
    progress.wait_for_all_to_move(partitions, now()).await?;
    let quiet = now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut rows = vec![Row {
        protocol,
        event: "none",
        which: "all",
        pauses_ms: progress.pauses(partitions, quiet, now() - 0.5),
        settled: Duration::ZERO,
    }];

    // Join: a third worker starts.
    let before = owners(&workers, &settings)?;
    let started = Instant::now();
    let at = now();
    workers.push(Worker::start(&settings, logs.path(), "w3")?);
    settle(&workers, &settings, total).await?;
    let settled = started.elapsed();
    let until = now() + 1.0;
    progress.wait_for_all_to_move(partitions, until).await?;
    let after = owners(&workers, &settings)?;
    rows.extend(split(
        protocol, "join", &progress, &before, &after, at, until, settled,
    ));

    // Leave: the third worker stops cleanly.
    let before = after;
    let started = Instant::now();
    let at = now();
    let mut leaving = workers.pop().expect("three workers");
    leaving.terminate()?;
    settle(&workers, &settings, total).await?;
    let settled = started.elapsed();
    let until = now() + 1.0;
    progress.wait_for_all_to_move(partitions, until).await?;
    leaving.wait()?;
    let after = owners(&workers, &settings)?;
    rows.extend(split(
        protocol, "leave", &progress, &before, &after, at, until, settled,
    ));

    sender.abort();
    progress.stop.cancel();
    Ok(rows)
}

/// The pauses around one event, split into the partitions that changed owner and the others.
#[allow(clippy::too_many_arguments)]
fn split(
    protocol: RebalanceProtocol,
    event: &'static str,
    progress: &Progress,
    before: &HashMap<i32, String>,
    after: &HashMap<i32, String>,
    from: f64,
    until: f64,
    settled: Duration,
) -> Vec<Row> {
    let mut moved = Vec::new();
    let mut kept = Vec::new();
    for (partition, owner) in after {
        let pause = progress.pause(*partition, from, until);
        if before.get(partition) == Some(owner) {
            kept.push(pause);
        } else {
            moved.push(pause);
        }
    }
    [("moved", moved), ("kept", kept)]
        .into_iter()
        .map(|(which, pauses_ms)| Row {
            protocol,
            event,
            which,
            pauses_ms,
            settled,
        })
        .collect()
}

/// Seconds since the epoch, the unit of `updated_at` as read by [`Progress`].
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// When each partition's stored offset moved, polled in the background.
struct Progress {
    /// Per partition, the `updated_at` (epoch seconds) of each move seen.
    moves: Arc<Mutex<BTreeMap<i32, Vec<f64>>>>,
    stop: CancellationToken,
}

impl Progress {
    fn start(admin: sqlx::PgPool, settings: &Settings) -> Self {
        let moves: Arc<Mutex<BTreeMap<i32, Vec<f64>>>> = Arc::default();
        let stop = CancellationToken::new();
        let (group, topic) = (
            settings.kafka.group_id.clone(),
            settings.kafka.orders_topic.clone(),
        );
        let (seen, stopped) = (moves.clone(), stop.clone());
        tokio::spawn(async move {
            let mut last: HashMap<i32, i64> = HashMap::new();
            while !stopped.is_cancelled() {
                let rows: Vec<(i32, i64, f64)> = sqlx::query_as(
                    "SELECT partition, next_offset, extract(epoch FROM updated_at)::float8
                       FROM consumer_offsets WHERE consumer_group = $1 AND topic = $2",
                )
                .bind(&group)
                .bind(&topic)
                .fetch_all(&admin)
                .await
                .unwrap_or_default();
                {
                    let mut moves = seen.lock().expect("progress lock");
                    for (partition, offset, at) in rows {
                        if last.insert(partition, offset) != Some(offset) {
                            moves.entry(partition).or_default().push(at);
                        }
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        });
        Self { moves, stop }
    }

    /// Waits until every partition's stored offset has moved after `at` (epoch seconds).
    async fn wait_for_all_to_move(&self, partitions: i32, at: f64) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let all = {
                let moves = self.moves.lock().expect("progress lock");
                (0..partitions).all(|p| {
                    moves
                        .get(&p)
                        .and_then(|m| m.last())
                        .is_some_and(|last| *last > at)
                })
            };
            if all {
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < SETTLE_LIMIT,
                "some partition made no progress"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The longest time (ms) between two successive moves of `partition` that ends after
    /// `from` and starts before `until`.
    fn pause(&self, partition: i32, from: f64, until: f64) -> f64 {
        let moves = self.moves.lock().expect("progress lock");
        let times = moves.get(&partition).map_or(&[][..], Vec::as_slice);
        times
            .windows(2)
            .filter(|w| w[1] > from && w[0] < until)
            .map(|w| (w[1] - w[0]) * 1000.0)
            .fold(0.0, f64::max)
    }

    fn pauses(&self, partitions: i32, from: f64, until: f64) -> Vec<f64> {
        (0..partitions)
            .map(|p| self.pause(p, from, until))
            .collect()
    }
}

/// Waits until the workers hold all `total` partitions of both topics between them, each of
/// them some, and each is ready. (A worker given nothing yet is ready too: a cooperative
/// rebalance's first round ends with an empty assignment for the newcomer.)
async fn settle(workers: &[Worker], settings: &Settings, total: i32) -> anyhow::Result<()> {
    let started = Instant::now();
    let k = &settings.kafka;
    loop {
        let mut held = Vec::new();
        let mut ready = true;
        for worker in workers {
            let metrics = worker.metrics().await;
            ready &= support::metric_value(&metrics, "tenantstream_ready", "") == Some(1.0);
            let of = |topic: &str| {
                let label = format!("topic=\"{topic}\"");
                support::metric_value(&metrics, "tenantstream_assigned_partitions", &label)
                    .unwrap_or(0.0)
            };
            held.push(of(&k.orders_topic) + of(&k.config_topic));
        }
        let shared = held.iter().all(|h| *h > 0.0);
        if ready && shared && held.iter().sum::<f64>() == f64::from(total) {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < SETTLE_LIMIT,
            "the group did not settle: {held:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Who holds each orders partition, from the workers' log lines.
fn owners(workers: &[Worker], settings: &Settings) -> anyhow::Result<HashMap<i32, String>> {
    let mut owners = HashMap::new();
    for worker in workers {
        for partition in worker.held(&settings.kafka.orders_topic)? {
            owners.insert(partition, worker.name.clone());
        }
    }
    Ok(owners)
}

/// A `tenantstream run` process logging JSON to a file.
struct Worker {
    name: String,
    child: std::process::Child,
    metrics: String,
    log: PathBuf,
}

impl Worker {
    fn start(settings: &Settings, dir: &Path, name: &str) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = dir.join(format!("{name}.log"));
        let child = support::worker_command(settings, port)
            .env(
                "TENANTSTREAM_SESSION_TIMEOUT_MS",
                settings.kafka.session_timeout_ms.to_string(),
            )
            .env("TENANTSTREAM_LOG_FORMAT", "json")
            .env("RUST_LOG", "info,rdkafka=warn,sqlx=warn,fred=warn")
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting `tenantstream run`")?;
        Ok(Self {
            name: name.to_owned(),
            child,
            metrics: format!("http://127.0.0.1:{port}/metrics"),
            log,
        })
    }

    async fn metrics(&self) -> String {
        support::scrape(&self.metrics).await
    }

    /// The partitions of `topic` it holds, replaying its assignment and revocation lines.
    fn held(&self, topic: &str) -> anyhow::Result<Vec<i32>> {
        let text = std::fs::read_to_string(&self.log)?;
        let mut held = std::collections::BTreeSet::new();
        for line in text.lines() {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let fields = &entry["fields"];
            if fields["topic"] != topic {
                continue;
            }
            let partitions = fields["partitions"].as_str().unwrap_or_default();
            // `0@1481,1@start` on assignment, `0,1` on revocation.
            let numbers = partitions
                .split(',')
                .filter_map(|p| p.split('@').next()?.parse::<i32>().ok());
            match fields["message"].as_str() {
                Some("Partitions assigned at stored offsets.") => held.extend(numbers),
                Some("Partitions revoked.") => numbers.for_each(|p| {
                    held.remove(&p);
                }),
                _ => {}
            }
        }
        Ok(held.into_iter().collect())
    }

    /// SIGTERM: it finishes its batches and leaves the group.
    fn terminate(&self) -> anyhow::Result<()> {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM {}", self.child.id());
        Ok(())
    }

    fn wait(&mut self) -> anyhow::Result<()> {
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "{} exited with {status}", self.name);
        Ok(())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
