//! The operator commands, run as the binary against a workload whose outcome is known, on
//! librdkafka's mock cluster (exact end offsets), real Postgres and Redis: `dead-letters`
//! counts and lists exactly the dead letters of the malformed messages sent, `status` shows
//! each partition's stored and end offsets and the lag, `completions` prints a script bash
//! accepts.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::FutureRecord;
use rdkafka::Message;
use tenantstream::testing::dead_letter::{
    HEADER_ERROR_CODE, HEADER_ERROR_REASON, HEADER_ERROR_STAGE, HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC,
};
use tenantstream::testing::kafka;
use tenantstream::testing::traffic::{self, EndOffsets, TrafficSpec};
use tenantstream::Settings;

use crate::support;

type Mock = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

/// Runs `tenantstream <command> <args>` for `settings`; returns its stdout, failing on a
/// non-zero exit.
fn run(command: &str, args: &[&str], settings: &Settings) -> String {
    let output = support::binary(command, settings)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run tenantstream {command}: {e}"));
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "tenantstream {command} {args:?} failed: {stdout}{}",
        text(&output.stderr)
    );
    stdout
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `dead-letters` output: counts by code, and the listed dead letters as
/// (own partition, own offset, code, source partition, source offset).
struct DeadLetterReport {
    total: usize,
    by_code: Vec<(String, usize)>,
    listed: Vec<(i32, i64, String, i32, i64)>,
}

fn parse_dead_letters(stdout: &str, source_topic: &str) -> DeadLetterReport {
    let first = stdout.lines().next().unwrap_or_default();
    let total = first
        .split(": ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no total in {first:?}"));
    // Each section: a title line, a header line, then rows up to a blank line.
    let section = |title: &str| -> Vec<Vec<String>> {
        stdout
            .lines()
            .skip_while(|l| !l.starts_with(title))
            .skip(2)
            .take_while(|l| !l.is_empty())
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect()
    };
    let by_code = section("by error code:")
        .into_iter()
        .map(|cells| (cells[0].clone(), cells[1].parse().unwrap()))
        .collect();
    let listed = section("last ")
        .into_iter()
        .map(|cells| {
            // partition, offset, time, code, stage, topic/partition@offset, reason…
            let source = cells[5]
                .strip_prefix(&format!("{source_topic}/"))
                .unwrap_or_else(|| panic!("source of another topic: {cells:?}"));
            let (partition, offset) = source.split_once('@').unwrap();
            (
                cells[0].parse().unwrap(),
                cells[1].parse().unwrap(),
                cells[3].clone(),
                partition.parse().unwrap(),
                offset.parse().unwrap(),
            )
        })
        .collect();
    DeadLetterReport {
        total,
        by_code,
        listed,
    }
}

/// `status` rows: (topic, partition) → (stored, end, lag); stored is `None` when it says "none".
fn parse_status(stdout: &str) -> BTreeMap<(String, i32), (Option<i64>, i64, i64)> {
    stdout
        .lines()
        .skip(2)
        .take_while(|l| !l.starts_with("total lag"))
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            let stored = (cells[3] != "none").then(|| cells[3].parse().unwrap());
            (
                (cells[0].to_owned(), cells[1].parse().unwrap()),
                (stored, cells[4].parse().unwrap(), cells[5].parse().unwrap()),
            )
        })
        .collect()
}

fn total_lag(stdout: &str) -> i64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("total lag: "))
        .unwrap_or_else(|| panic!("no total line in {stdout}"));
    line["total lag: ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// What `status` must show for one topic whose partitions ended at `ends` (partitions the
/// traffic missed have end 0 and nothing stored) and whose stored offsets are `stored`.
fn expected_status(
    topic: &str,
    partitions: i32,
    stored: &EndOffsets,
    ends: &EndOffsets,
) -> BTreeMap<(String, i32), (Option<i64>, i64, i64)> {
    (0..partitions)
        .map(|p| {
            let stored = stored.get(&p).copied();
            let end = ends.get(&p).copied().unwrap_or(0);
            let lag = end - stored.unwrap_or(0);
            ((topic.to_owned(), p), (stored, end, lag))
        })
        .collect()
}

/// A workload with known malformed messages through the worker, then: `dead-letters` counts
/// each code as the traffic says and lists real dead letters of real source messages; `status`
/// shows the send's end offsets stored with lag 0, and after more messages sent with no worker
/// running, a lag of exactly the messages sent to each partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_and_status_report_a_known_workload() {
    let mock: Mock = MockCluster::new(1).unwrap();
    let settings = support::settings(&mock.bootstrap_servers(), "cli-commands");
    let k = &settings.kafka;
    mock.create_topic(&k.orders_topic, 2, 1).unwrap();
    mock.create_topic(&k.config_topic, 2, 1).unwrap();
    mock.create_topic(&k.dead_letter_topic, 2, 1).unwrap();
    mock.create_topic(&k.sla_violations_topic, 1, 1).unwrap();
    let admin = support::admin_pool().await;
    let spec = TrafficSpec {
        count: 600,
        tenants: 3,
        malformed: 0.05,
        seed: rand::random(),
        ..Default::default()
    };
    let (orders, expected) = traffic::generate(&spec, &support::order_encoder(&settings));
    let (config, _) = support::config_traffic(&settings, &expected.tenants, 0.0);
    let producer = kafka::producer(k).unwrap();
    let sent = traffic::send(&producer, &k.orders_topic, &orders, 0, None)
        .await
        .unwrap();
    let sent_config = traffic::send(&producer, &k.config_topic, &config, 0, None)
        .await
        .unwrap();
    let worker = support::RunningWorker::start(&settings, tenantstream::Health::default()).await;
    let limit = Duration::from_secs(120);
    support::wait_for_offsets(&admin, &settings, &sent.ends, limit).await;
    support::wait_for_topic_offsets(&admin, &settings, &k.config_topic, &sent_config.ends, limit)
        .await;
    support::wait_for_cache(&admin, &expected.tenants, Duration::from_secs(30)).await;
    worker.stop().await;

    // dead-letters: every one counted by its code, and listed with its true source.
    let malformed = support::malformed_by_position(&orders, &sent);
    let dead_total: usize = expected.dead_letters.values().sum();
    assert!(dead_total > 10, "the workload has malformed messages");
    let mut want_codes: Vec<(String, usize)> = expected
        .dead_letters
        .iter()
        .map(|(c, n)| (c.to_string(), *n))
        .collect();
    want_codes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let all = parse_dead_letters(
        &run("dead-letters", &["--last", "1000"], &settings),
        &k.orders_topic,
    );
    assert_eq!(all.total, dead_total);
    assert_eq!(all.by_code, want_codes, "counts by code, most first");
    assert_eq!(
        all.listed.len(),
        dead_total,
        "--last above the total lists all"
    );
    let stored = support::read_topic(&k.brokers, &k.dead_letter_topic, dead_total, limit);
    let on_topic: HashMap<(i32, i64), (String, String)> = stored
        .iter()
        .map(|m| {
            let source = format!(
                "{}@{}",
                support::header(m, HEADER_SOURCE_PARTITION),
                support::header(m, HEADER_SOURCE_OFFSET)
            );
            let code = support::header(m, HEADER_ERROR_CODE).to_owned();
            ((m.partition(), m.offset()), (code, source))
        })
        .collect();
    let mut sources = std::collections::HashSet::new();
    for (partition, offset, code, source_partition, source_offset) in &all.listed {
        let message = malformed
            .get(&(*source_partition, *source_offset))
            .unwrap_or_else(|| {
                panic!("{source_partition}@{source_offset} is no malformed message")
            });
        assert_eq!(Some(code.as_str()), message.malformed);
        assert_eq!(
            on_topic.get(&(*partition, *offset)),
            Some(&(code.clone(), format!("{source_partition}@{source_offset}"))),
            "the dead letter's own position"
        );
        sources.insert((*source_partition, *source_offset));
    }
    assert_eq!(sources.len(), dead_total, "each malformed message once");
    let default = parse_dead_letters(&run("dead-letters", &[], &settings), &k.orders_topic);
    assert_eq!(default.listed.len(), 10, "--last defaults to 10");
    assert!(default.listed.iter().all(|l| all.listed.contains(l)));

    // status: stored = end, lag 0, on both topics.
    let stdout = run("status", &[], &settings);
    let mut want = expected_status(&k.orders_topic, 2, &sent.ends, &sent.ends);
    want.extend(expected_status(
        &k.config_topic,
        2,
        &sent_config.ends,
        &sent_config.ends,
    ));
    assert_eq!(parse_status(&stdout), want, "{stdout}");
    assert_eq!(total_lag(&stdout), 0, "{stdout}");

    // More messages, no worker: the lag is what was sent to each partition.
    let more_spec = TrafficSpec {
        count: 97,
        seed: rand::random(),
        ..spec
    };
    let (more, _) = traffic::generate(&more_spec, &support::order_encoder(&settings));
    let sent_more = traffic::send(&producer, &k.orders_topic, &more, 0, None)
        .await
        .unwrap();
    let stdout = run("status", &[], &settings);
    let mut sent_per_partition: BTreeMap<i32, i64> = BTreeMap::new();
    for (partition, _) in &sent_more.positions {
        *sent_per_partition.entry(*partition).or_default() += 1;
    }
    let rows = parse_status(&stdout);
    for partition in 0..2 {
        let added = sent_per_partition.get(&partition).copied().unwrap_or(0);
        let stored = sent.ends.get(&partition).copied();
        let end = stored.unwrap_or(0) + added;
        assert_eq!(
            rows.get(&(k.orders_topic.clone(), partition)),
            Some(&(stored, end, added)),
            "{stdout}"
        );
    }
    assert_eq!(total_lag(&stdout), more.len() as i64, "{stdout}");
}

/// A dead-letter topic that does not exist: the command fails, naming it and the flag.
#[tokio::test]
async fn dead_letters_names_a_missing_topic() {
    let mock: Mock = MockCluster::new(1).unwrap();
    let settings = support::settings(&mock.bootstrap_servers(), "cli-no-dlq");
    let output: Output = support::binary("dead-letters", &settings)
        .output()
        .expect("run tenantstream dead-letters");
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{}", text(&output.stdout));
    assert!(
        stderr.contains(&format!(
            "topic {} does not exist at {}",
            settings.kafka.dead_letter_topic, settings.kafka.brokers
        )),
        "{stderr}"
    );
    assert!(stderr.contains("--dead-letter-topic"), "{stderr}");
}

/// `--follow` prints a dead letter that arrives after the summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_follow_prints_new_dead_letters() {
    let mock: Mock = MockCluster::new(1).unwrap();
    let settings = support::settings(&mock.bootstrap_servers(), "cli-follow");
    let topic = settings.kafka.dead_letter_topic.clone();
    mock.create_topic(&topic, 1, 1).unwrap();
    let mut child = support::binary("dead-letters", &settings)
        .args(["--follow", "--last", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tenantstream dead-letters --follow");
    let (lines, received) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // The lines printed before the first that `wanted` accepts, and that one.
    let wait_for = |wanted: &dyn Fn(&str) -> bool| -> (Vec<String>, String) {
        let mut seen = Vec::new();
        loop {
            match received.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if wanted(&line) => return (seen, line),
                Ok(line) => seen.push(line),
                Err(e) => panic!("{e}; printed so far: {seen:?}"),
            }
        }
    };
    let (before, _) = wait_for(&|l| l.starts_with("following "));
    assert!(before[0].contains(": 0 dead letters"), "{before:?}");

    let headers = [
        (HEADER_ERROR_CODE, "undecodable"),
        (HEADER_ERROR_STAGE, "decode"),
        (HEADER_ERROR_REASON, "follow test"),
        (HEADER_SOURCE_TOPIC, "orders"),
        (HEADER_SOURCE_PARTITION, "1"),
        (HEADER_SOURCE_OFFSET, "4242"),
    ]
    .into_iter()
    .fold(OwnedHeaders::new(), |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(value),
        })
    });
    let producer = kafka::producer(&settings.kafka).unwrap();
    producer
        .send(
            FutureRecord::<(), [u8]>::to(&topic)
                .payload(b"bad bytes".as_slice())
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let (_, line) = wait_for(&|l| l.contains("orders/1@4242"));
    child.kill().unwrap();
    child.wait().unwrap();
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        (cells[0], cells[1], cells[3], cells[4]),
        ("0", "0", "undecodable", "decode"),
        "{line}"
    );
    assert!(line.ends_with("follow test"), "{line}");
}

/// `completions bash` prints a script that names the commands and that bash accepts.
#[test]
fn completions_for_bash_name_the_commands_and_parse() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tenantstream"))
        .args(["completions", "bash"])
        .env_clear()
        .output()
        .expect("run tenantstream completions bash");
    let script = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    for command in ["run", "dead-letters", "status", "completions", "replay"] {
        assert!(script.contains(command), "{command} missing");
    }
    assert!(script.contains("--dead-letter-topic"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tenantstream.bash");
    std::fs::write(&path, &script).unwrap();
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .expect("run bash -n");
    assert!(check.status.success(), "{}", text(&check.stderr));
    for shell in ["zsh", "fish"] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tenantstream"))
            .args(["completions", shell])
            .env_clear()
            .output()
            .unwrap();
        assert!(
            output.status.success() && output.stdout.len() > 1000,
            "{shell}"
        );
    }
}
