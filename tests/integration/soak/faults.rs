//! The soak's faults, when each one happens, and the worker processes they hit.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tenantstream::Settings;

use crate::support::{self, WorkerProcess};

/// Workers 0 and 1 are SIGKILLed in turn and restarted; worker 2 leaves and joins again.
const LEAVER: usize = 2;

#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// SIGKILL a worker...
    Kill(usize),
    /// ...and start it again (a new member of the group).
    Restart(usize),
    /// A worker stops cleanly (SIGTERM): its partitions move to the others.
    Leave,
    /// It starts again: partitions move to it.
    Join,
    /// Postgres stops as in a crash (no shutdown checkpoint) and starts 2 s later.
    Postgres,
    /// Redis stops (SIGTERM; it keeps its data) and starts 2 s later.
    Redis,
    /// The broker refuses every connection for 3 s.
    Broker,
}

/// The faults over `production`, sorted by time: `kills` SIGKILLs spread over 5–90% of it
/// (each restarted 1.5 s later), the broker at 15%, the leave at 25% and the join at 45%,
/// Postgres at 35% and Redis at 60%. The broker goes first: a request its outage leaves
/// unanswered holds a worker's client up to librdkafka's 60 s `socket.timeout.ms`, which is
/// then over before production ends and the soak starts timing the drain.
pub fn plan(production: Duration, kills: usize, seed: u64) -> Vec<(Duration, Fault)> {
    let at = |share: f64| production.mul_f64(share);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut plan = vec![
        (at(0.15), Fault::Broker),
        (at(0.25), Fault::Leave),
        (at(0.45), Fault::Join),
        (at(0.35), Fault::Postgres),
        (at(0.60), Fault::Redis),
    ];
    for i in 0..kills {
        let slot = (i as f64 + rng.gen_range(0.2..0.8)) / kills as f64;
        let kill = at(0.05 + 0.85 * slot);
        plan.push((kill, Fault::Kill(i % 2)));
        plan.push((kill + Duration::from_millis(1_500), Fault::Restart(i % 2)));
    }
    plan.sort_by_key(|(at, _)| *at);
    plan
}

/// Three `tenantstream run` processes in one consumer group, each logging to a file of its own.
pub struct Fleet {
    settings: Settings,
    logs: PathBuf,
    workers: [Option<WorkerProcess>; 3],
    pub kills: usize,
}

impl Fleet {
    pub fn new(settings: &Settings) -> Self {
        let logs = std::env::temp_dir().join(&settings.kafka.group_id);
        std::fs::create_dir_all(&logs).unwrap();
        Self {
            settings: settings.clone(),
            logs,
            workers: [None, None, None],
            kills: 0,
        }
    }

    fn log(&self, slot: usize) -> PathBuf {
        self.logs.join(format!("worker-{slot}.log"))
    }

    pub fn start(&mut self, slot: usize) {
        assert!(self.workers[slot].is_none(), "worker {slot} already runs");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(slot))
            .unwrap();
        let child = support::binary("run", &self.settings)
            .env("TENANTSTREAM_HTTP_LISTEN", "127.0.0.1:0")
            .env("TENANTSTREAM_BATCH_MAX_EVENTS", "200")
            .env("TENANTSTREAM_BATCH_LINGER_MS", "5")
            .env("TENANTSTREAM_SESSION_TIMEOUT_MS", "6000")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tenantstream run");
        self.workers[slot] = Some(WorkerProcess(child));
    }

    pub fn apply(&mut self, fault: Fault) {
        match fault {
            Fault::Kill(slot) => {
                // A worker still down from its last kill (kills closer than its restart) is
                // left alone; the summary counts the kills that landed.
                if let Some(mut worker) = self.workers[slot].take() {
                    worker.0.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix.
                    worker.0.wait().unwrap();
                    self.kills += 1;
                }
            }
            Fault::Restart(slot) => {
                if self.workers[slot].is_none() {
                    self.start(slot);
                }
            }
            Fault::Join => self.start(LEAVER),
            Fault::Leave => {
                let mut worker = self.workers[LEAVER].take().expect("a running worker");
                support::stop_cleanly(&mut worker.0);
            }
            other => panic!("{other:?} is not a fault of the workers"),
        }
    }

    /// Starts every worker that is not running (none, when the plan ran to its end).
    pub fn ensure_running(&mut self) {
        for slot in 0..self.workers.len() {
            if self.workers[slot].is_none() {
                self.start(slot);
            }
        }
    }

    /// Runs `wait`, failing at once (with the worker's log) when a worker exits by itself.
    pub async fn check_alive<T>(&mut self, wait: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(wait);
        loop {
            tokio::select! {
                done = &mut wait => return done,
                () = tokio::time::sleep(Duration::from_millis(500)) => self.assert_alive(),
            }
        }
    }

    fn assert_alive(&mut self) {
        for slot in 0..self.workers.len() {
            let Some(worker) = self.workers[slot].as_mut() else {
                continue;
            };
            if let Some(status) = worker.0.try_wait().unwrap() {
                let log = std::fs::read_to_string(self.log(slot)).unwrap_or_default();
                let tail: String = log.lines().rev().take(30).collect::<Vec<_>>().join("\n");
                panic!(
                    "worker {slot} exited by itself ({status}); last lines, newest first:\n{tail}"
                );
            }
        }
    }

    /// SIGTERM to every worker; each must exit 0.
    pub fn stop_all(&mut self) {
        self.assert_alive();
        for mut worker in self.workers.iter_mut().filter_map(Option::take) {
            support::stop_cleanly(&mut worker.0);
        }
    }
}
