//! Rebalancing under both protocols: two worker processes in one group under steady traffic, a
//! second worker joining and then leaving (stopped cleanly, or SIGKILLed). Under the cooperative
//! protocol the first worker keeps the partitions that do not move (it is never assigned
//! anything again while the second one joins, and nothing is revoked from it when the second one
//! leaves); under both, every partition starts at its stored offset, so the end state equals the
//! traffic's oracle with nothing skipped and nothing applied twice.
//!
//! Broker: librdkafka's mock cluster hosted in the test process (tansu's group coordinator can
//! leave survivors with an empty assignment after members die). Each worker is a process of its
//! own, so each `/metrics` holds that worker's figures only.

use std::process::Stdio;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use tenantstream::testing::metrics::{
    ASSIGNED_PARTITIONS, EVENTS_PROCESSED, OFFSET_GAPS, OFFSET_RESETS, READY, REBALANCES,
};
use tenantstream::testing::traffic::{self, TrafficSpec};
use tenantstream::{RebalanceProtocol, Settings};

use crate::support::{self, sample, WorkerProcess};

/// Partitions of the orders topic.
const PARTITIONS: i32 = 6;

/// Orders sent while the second worker joins and leaves, at [`RATE`] per second.
const EVENTS: usize = 4_000;
const RATE: u32 = 200;

/// How the second worker leaves.
#[derive(Clone, Copy, Debug)]
enum Leave {
    /// SIGTERM: it leaves the group at once.
    Stop,
    /// SIGKILL: the group notices after the session timeout.
    Kill,
}

/// A worker process and the address of its `/metrics`.
struct Member {
    process: WorkerProcess,
    metrics: String,
}

impl Member {
    fn spawn(settings: &Settings, log: &std::path::Path) -> Self {
        let log = std::fs::File::create(log).unwrap();
        let http = format!("127.0.0.1:{}", support::free_port());
        let process = support::binary("run", settings)
            .env("TENANTSTREAM_HTTP_LISTEN", &http)
            .env(
                "TENANTSTREAM_SESSION_TIMEOUT_MS",
                settings.kafka.session_timeout_ms.to_string(),
            )
            .env("TENANTSTREAM_BATCH_MAX_EVENTS", "50")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map(WorkerProcess)
            .expect("start worker process");
        Self {
            process,
            metrics: format!("http://{http}/metrics"),
        }
    }

    /// Its metrics now (empty while it does not answer yet).
    async fn scrape(&self) -> String {
        match reqwest::get(&self.metrics).await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    fn value(rendered: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
        sample(rendered, name, labels).unwrap_or(0.0)
    }
}

/// The figures of one worker that show what it went through.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Figures {
    /// Orders partitions held.
    held: f64,
    assigns: f64,
    revokes: f64,
    /// Messages that were not at the next offset, and logs read again from their start.
    gaps: f64,
    /// Events not newer than their stored row: with traffic free of duplicates and reordering,
    /// an event applied a second time.
    stale: f64,
}

impl Figures {
    fn of(rendered: &str, settings: &Settings) -> Self {
        let orders = settings.kafka.orders_topic.as_str();
        let topic = [("topic", orders)];
        Self {
            held: Member::value(rendered, ASSIGNED_PARTITIONS, &topic),
            assigns: Member::value(rendered, REBALANCES, &[("kind", "assign")]),
            revokes: Member::value(rendered, REBALANCES, &[("kind", "revoke")]),
            gaps: Member::value(rendered, OFFSET_GAPS, &topic)
                + Member::value(rendered, OFFSET_RESETS, &topic),
            stale: Member::value(
                rendered,
                EVENTS_PROCESSED,
                &[("topic", orders), ("outcome", "stale")],
            ),
        }
    }
}

/// Scrapes `members` until `done` holds for their figures (at most 45 s); returns them.
async fn figures_until(
    members: &[&Member],
    settings: &Settings,
    what: &str,
    done: impl Fn(&[Figures]) -> bool,
) -> Vec<Figures> {
    let started = Instant::now();
    loop {
        let mut figures = Vec::new();
        let mut ready = true;
        for member in members {
            let rendered = member.scrape().await;
            ready &= sample(&rendered, READY, &[]) == Some(1.0);
            figures.push(Figures::of(&rendered, settings));
        }
        if ready && done(&figures) {
            return figures;
        }
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "never {what}: {figures:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn join_and_leave(protocol: RebalanceProtocol, leave: Leave) {
    let name = format!("rebalance-{protocol}-{leave:?}").to_lowercase();
    let admin = support::admin_pool().await;
    let mock = MockCluster::new(1).unwrap();
    let mut settings = support::settings(&mock.bootstrap_servers(), &name);
    settings.kafka.rebalance_protocol = protocol;
    let k = &settings.kafka;
    mock.create_topic(&k.orders_topic, PARTITIONS, 1).unwrap();
    mock.create_topic(&k.config_topic, 1, 1).unwrap();
    mock.create_topic(&k.dead_letter_topic, 1, 1).unwrap();
    mock.create_topic(&k.sla_violations_topic, 1, 1).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let cooperative = protocol == RebalanceProtocol::Cooperative;
    let all = f64::from(PARTITIONS);

    let a = Member::spawn(&settings, &logs.path().join("a.log"));
    let alone = figures_until(&[&a], &settings, "A holds every partition", |f| {
        f[0].held == all
    })
    .await[0];

    // Steady traffic, all through the join and the leave. No duplicates and no reordering, so
    // an event is stale only if it was applied twice.
    let spec = TrafficSpec {
        count: EVENTS,
        tenants: 20,
        malformed: 0.0,
        duplicates: 0.0,
        reorder: 0.0,
        seed: rand::random(),
        ..Default::default()
    };
    let (messages, expected) = traffic::generate(&spec, &support::order_encoder(&settings));
    let producer = tenantstream::testing::kafka::producer(&settings.kafka).unwrap();
    let topic = settings.kafka.orders_topic.clone();
    let sender =
        tokio::spawn(async move { traffic::send(&producer, &topic, &messages, RATE, None).await });
    tokio::time::sleep(Duration::from_secs(1)).await;

    // B joins: the partitions are shared out.
    let mut b = Member::spawn(&settings, &logs.path().join("b.log"));
    let joined = figures_until(&[&a, &b], &settings, "B shares the partitions", |f| {
        f[1].held > 0.0 && f[0].held + f[1].held == all
    })
    .await;
    let a_joined = joined[0];
    assert!(a_joined.held > 0.0, "A keeps some partitions: {joined:?}");
    if cooperative {
        // Only the partitions that moved were revoked from A, and A was assigned nothing since
        // it started: it held the others all along.
        assert_eq!(
            (a_joined.assigns, a_joined.revokes),
            (alone.assigns, alone.revokes + 1.0),
            "{joined:?}"
        );
    } else {
        // Everything of A was revoked and assigned again.
        assert!(a_joined.revokes > alone.revokes, "{joined:?}");
        assert!(a_joined.assigns > alone.assigns, "{joined:?}");
    }

    // B leaves: A takes its partitions back at their stored offsets.
    let b_last = Figures::of(&b.scrape().await, &settings);
    match leave {
        Leave::Stop => support::stop_cleanly(&mut b.process.0),
        Leave::Kill => {
            b.process.0.kill().unwrap();
            b.process.0.wait().unwrap();
        }
    }
    let a_left = figures_until(&[&a], &settings, "A holds every partition again", |f| {
        f[0].held == all
    })
    .await[0];
    if cooperative {
        assert_eq!(
            (a_left.assigns, a_left.revokes),
            (a_joined.assigns + 1.0, a_joined.revokes),
            "nothing revoked from A when B left"
        );
    } else {
        assert!(a_left.assigns > a_joined.assigns, "{a_left:?}");
    }

    // Every event written once, every partition's stored offset at its end.
    let sent = sender.await.unwrap().expect("traffic sent");
    support::wait_for_offsets(&admin, &settings, &sent.ends, Duration::from_secs(60)).await;
    support::assert_rows(&admin, &expected).await;
    let a_end = Figures::of(&a.scrape().await, &settings);
    drop(a);
    for (worker, figures) in [("A", a_end), ("B", b_last)] {
        assert_eq!(figures.gaps, 0.0, "{worker} skipped offsets: {figures:?}");
        assert_eq!(
            figures.stale, 0.0,
            "{worker} applied events twice: {figures:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_join_and_clean_leave_move_only_the_partitions_that_change_owner() {
    join_and_leave(RebalanceProtocol::Cooperative, Leave::Stop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_join_and_killed_member_move_only_the_partitions_that_change_owner() {
    join_and_leave(RebalanceProtocol::Cooperative, Leave::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_join_and_clean_leave_restart_every_partition_at_its_stored_offset() {
    join_and_leave(RebalanceProtocol::Eager, Leave::Stop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_join_and_killed_member_restart_every_partition_at_its_stored_offset() {
    join_and_leave(RebalanceProtocol::Eager, Leave::Kill).await;
}

/// The protocol comes from TENANTSTREAM_REBALANCE_PROTOCOL (or the file, or the flag), `config`
/// shows it, and a name other than `eager` or `cooperative` stops the command naming it and both.
#[test]
fn the_protocol_is_a_setting_shown_by_config_and_a_bad_name_is_refused() {
    let settings = support::settings("127.0.0.1:1", "protocol-setting");
    let config = |env: Option<&str>, flag: Option<&str>| {
        let mut command = support::binary("config", &settings);
        if let Some(value) = env {
            command.env("TENANTSTREAM_REBALANCE_PROTOCOL", value);
        }
        if let Some(value) = flag {
            command.args(["--rebalance-protocol", value]);
        }
        command.output().unwrap()
    };
    let shown = |output: std::process::Output| {
        assert!(output.status.success(), "{output:?}");
        let text = String::from_utf8(output.stdout).unwrap();
        toml::from_str::<Settings>(&text)
            .unwrap()
            .kafka
            .rebalance_protocol
    };
    assert_eq!(shown(config(None, None)), RebalanceProtocol::Eager);
    assert_eq!(
        shown(config(Some("cooperative"), None)),
        RebalanceProtocol::Cooperative
    );
    assert_eq!(
        shown(config(Some("cooperative"), Some("eager"))),
        RebalanceProtocol::Eager,
        "the flag wins"
    );

    let refused = |output: std::process::Output| {
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        String::from_utf8(output.stderr).unwrap()
    };
    let stderr = refused(config(Some("sticky"), None));
    for word in [
        "\"sticky\"",
        "TENANTSTREAM_REBALANCE_PROTOCOL",
        "eager",
        "cooperative",
    ] {
        assert!(stderr.contains(word), "{word}: {stderr}");
    }
    let stderr = refused(config(None, Some("sticky")));
    for word in ["sticky", "--rebalance-protocol", "eager", "cooperative"] {
        assert!(stderr.contains(word), "{word}: {stderr}");
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[kafka]\nrebalance_protocol = \"sticky\"\n").unwrap();
    let output = support::binary("config", &settings)
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    for word in ["rebalance_protocol", "sticky", "eager", "cooperative"] {
        assert!(stderr.contains(word), "{word}: {stderr}");
    }
}
