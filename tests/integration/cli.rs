//! The command line as an operator meets it (the binary itself, against Postgres, Redis and
//! librdkafka's mock cluster): `--help` describes the worker, `migrate` says what it did,
//! `--version` names the commit it was built from, `check` fails on missing topics and prints
//! one line per dependency without passwords, `config` prints TOML that reads back, `produce`
//! prints end offsets the broker confirms and sends configuration changes for its tenants.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;
use tenantstream::testing::decode::{Decoder, SchemaStore};
use tenantstream::testing::domain::{ConfigChangeEvent, ConfigKind};
use tenantstream::testing::traffic::{self, TrafficSpec};
use tenantstream::{LogFormat, Secret, Settings};
use uuid::Uuid;

use crate::support;

fn migrate(admin_url: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_tenantstream"))
        .arg("migrate")
        .env_clear()
        .env("TENANTSTREAM_ADMIN_DATABASE_URL", admin_url)
        .output()
        .expect("run tenantstream migrate");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "migrate failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn migrate_reports_the_database_it_created_and_the_migrations_it_applied() {
    let name = format!(
        "tenantstream_migrate_{}",
        &Uuid::new_v4().simple().to_string()[..12]
    );
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count();

    let first = migrate(&url);
    let second = migrate(&url);

    let server = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&server)
        .await
        .unwrap();
    assert!(first.contains("created the database at"), "{first}");
    assert!(
        first.contains(&format!("applied {migrations} migrations to")),
        "{first}"
    );
    assert!(!second.contains("created"), "{second}");
    assert!(
        second.contains(&format!(
            "is up to date: all {migrations} migrations applied"
        )),
        "{second}"
    );
}

#[test]
fn help_describes_the_worker_and_where_flags_come_from() {
    let output = Command::new(env!("CARGO_BIN_EXE_tenantstream"))
        .arg("--help")
        .output()
        .expect("run tenantstream --help");
    let help = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        help.starts_with("Kafka-native worker for multi-tenant SaaS"),
        "{help}"
    );
    assert!(help.contains("flags win over the environment"), "{help}");
}

#[test]
fn version_names_the_commit_and_the_build_date() {
    let output = Command::new(env!("CARGO_BIN_EXE_tenantstream"))
        .arg("--version")
        .output()
        .expect("run tenantstream --version");
    let version = String::from_utf8_lossy(&output.stdout).into_owned();
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git rev-parse");
    let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    assert_eq!(head.len(), 12, "a git checkout");
    assert!(version.starts_with("tenantstream 0."), "{version}");
    assert!(
        version.contains(&format!("(commit {head}, built 20")),
        "{version}"
    );
}

/// Runs `tenantstream check` against the test database, the local Redis and the brokers of
/// `settings`.
fn check(settings: &tenantstream::Settings) -> (bool, String) {
    let output = support::binary("check", settings)
        .output()
        .expect("run tenantstream check");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// On librdkafka's mock cluster: a topic the worker needs that is missing fails the check,
/// naming the topics and how to create them; with every topic there, it passes.
#[tokio::test]
async fn check_fails_on_missing_topics_and_names_them() {
    support::admin_pool().await; // the test database, migrated
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    let settings = support::settings(&mock.bootstrap_servers(), "check");
    mock.create_topic(&settings.kafka.orders_topic, 2, 1)
        .unwrap();

    let (passed, stdout) = check(&settings);
    assert!(!passed, "{stdout}");
    let kafka = stdout
        .lines()
        .find(|l| l.starts_with("FAIL kafka") || l.starts_with("ok   kafka"))
        .unwrap_or_default();
    assert!(kafka.starts_with("FAIL kafka:"), "{stdout}");
    let k = &settings.kafka;
    let missing = format!(
        "these topics are missing: {}, {}, {}",
        k.config_topic, k.dead_letter_topic, k.sla_violations_topic
    );
    assert!(kafka.contains(&missing), "{kafka}");
    assert!(kafka.contains("--create --topic"), "{kafka}");
    assert!(!kafka.contains(&format!("missing: {}", settings.kafka.orders_topic)));

    mock.create_topic(&settings.kafka.config_topic, 2, 1)
        .unwrap();
    mock.create_topic(&settings.kafka.dead_letter_topic, 1, 1)
        .unwrap();
    mock.create_topic(&settings.kafka.sla_violations_topic, 1, 1)
        .unwrap();
    let (passed, stdout) = check(&settings);
    assert!(passed, "{stdout}");
    assert!(stdout.contains("ok   kafka:"), "{stdout}");
}

/// `check` on a database URL with a password (trust auth accepts any): one readable line per
/// dependency, each naming its address, no settings dump and no password.
#[tokio::test]
async fn check_prints_one_line_per_dependency_without_passwords() {
    support::admin_pool().await;
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    let mut settings = support::settings(&mock.bootstrap_servers(), "check-lines");
    for topic in [
        &settings.kafka.orders_topic,
        &settings.kafka.config_topic,
        &settings.kafka.dead_letter_topic,
        &settings.kafka.sla_violations_topic,
    ] {
        mock.create_topic(topic, 1, 1).unwrap();
    }
    settings.database.url =
        Secret::new("postgres://tenantstream_worker:hunter2@127.0.0.1:5432/tenantstream_test");

    let (passed, stdout) = check(&settings);
    assert!(passed, "{stdout}");
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(!stdout.contains("Settings {"), "{stdout}");
    assert!(!stdout.contains("Secret"), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    let schemas = std::fs::canonicalize(&settings.schemas.dir).unwrap();
    let expected = [
        "ok   configuration: defaults + environment/flags (no --config file): ".to_owned(),
        "ok   postgres: postgres://tenantstream_worker:***@127.0.0.1:5432/tenantstream_test: "
            .to_owned(),
        format!("ok   redis: {}: answers PING", support::REDIS_URL),
        format!("ok   kafka: {}: answers; topics ", mock.bootstrap_servers()),
        format!("ok   schemas: {}: ", schemas.display()),
        "ok   sla: --sla-default-policy: no global default policy".to_owned(),
    ];
    assert_eq!(lines.len(), expected.len(), "{stdout}");
    for (line, start) in lines.iter().zip(&expected) {
        assert!(
            line.starts_with(start.as_str()),
            "{line:?} should start with {start:?}"
        );
    }
}

/// `config` with a file and environment overrides prints TOML that reads back to the settings
/// the binary was given (passwords redacted, and never printed); the binary reads it back too.
#[test]
fn config_prints_the_effective_settings_as_toml_that_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("given.toml");
    std::fs::write(
        &file,
        "[kafka]\nsession_timeout_ms = 7000\nbatch_max_events = 9\n[tenants]\nstrict = true\n",
    )
    .unwrap();
    let mut settings = support::settings("127.0.0.1:1", "config");
    settings.database.url =
        Secret::new("postgres://tenantstream_worker:hunter2@127.0.0.1:5432/tenantstream_test");
    settings.redis.url = Secret::new("redis://:hunter3@127.0.0.1:6379");
    let admin_url = "postgres://postgres:hunter4@127.0.0.1:5432/tenantstream_test";
    let output = support::binary("config", &settings)
        .arg("--config")
        .arg(&file)
        .env("TENANTSTREAM_ADMIN_DATABASE_URL", admin_url)
        .env("TENANTSTREAM_BATCH_MAX_EVENTS", "123")
        .env("TENANTSTREAM_LOG_FORMAT", "json")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for password in ["hunter2", "hunter3", "hunter4"] {
        assert!(!printed.contains(password), "{printed}");
    }
    assert!(printed.starts_with("# "), "{printed}");
    assert!(printed.contains(&file.display().to_string()), "{printed}");

    // What the binary was given: defaults, the file, then the environment.
    let mut given = Settings::default();
    given.kafka.session_timeout_ms = 7000;
    given.tenants.strict = true;
    given.kafka.batch_max_events = 123;
    given.log_format = LogFormat::Json;
    given.kafka.brokers = settings.kafka.brokers.clone();
    given.kafka.group_id = settings.kafka.group_id.clone();
    given.kafka.orders_topic = settings.kafka.orders_topic.clone();
    given.kafka.config_topic = settings.kafka.config_topic.clone();
    given.kafka.dead_letter_topic = settings.kafka.dead_letter_topic.clone();
    given.kafka.sla_violations_topic = settings.kafka.sla_violations_topic.clone();
    given.database.url = settings.database.url.clone();
    given.database.admin_url = Secret::new(admin_url);
    given.redis.url = settings.redis.url.clone();
    given.schemas.dir = settings.schemas.dir.clone();

    let effective = dir.path().join("effective.toml");
    std::fs::write(&effective, &printed).unwrap();
    let read_back = Settings::from_file(&effective).unwrap();
    assert_eq!(read_back, given.redacted());
    assert_eq!(
        read_back.database.url.expose(),
        "postgres://tenantstream_worker:***@127.0.0.1:5432/tenantstream_test"
    );
    assert_eq!(read_back.redis.url.expose(), "redis://:***@127.0.0.1:6379");

    let again = Command::new(env!("CARGO_BIN_EXE_tenantstream"))
        .env_clear()
        .arg("--config")
        .arg(&effective)
        .arg("config")
        .output()
        .unwrap();
    let again = String::from_utf8_lossy(&again.stdout).into_owned();
    let body = |text: &str| -> String {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(body(&again), body(&printed));
}

/// The rows of the end-offsets table after the line that starts with `title`: partition →
/// (end offset, messages sent to it).
fn end_offsets_after(stdout: &str, title: &str) -> BTreeMap<i32, (i64, i64)> {
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with(title));
    assert!(
        lines.next().is_some(),
        "no line starting with {title:?}: {stdout}"
    );
    let header = lines.next().unwrap_or_default();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["partition", "end", "offset", "sent", "this", "run"],
        "{stdout}"
    );
    lines
        .map_while(|line| {
            let numbers: Vec<i64> = line
                .split_whitespace()
                .map(|field| field.parse().ok())
                .collect::<Option<_>>()?;
            match numbers[..] {
                [partition, end, sent] => Some((partition as i32, (end, sent))),
                _ => None,
            }
        })
        .collect()
}

/// Each partition of `topic` with messages: (high watermark, messages in it).
fn watermarks(brokers: &str, topic: &str, partitions: i32) -> BTreeMap<i32, (i64, i64)> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    (0..partitions)
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .unwrap();
            (p, (high, high - low))
        })
        .filter(|(_, (_, count))| *count > 0)
        .collect()
}

/// `produce` on the mock cluster (whose high watermarks are exact): both tables equal the
/// broker's watermarks, and the configuration topic holds the configuration changes: a profile
/// first for each tenant of the order traffic (so that it ends active), and only theirs.
#[tokio::test]
async fn produce_prints_the_end_offsets_and_sends_configuration_for_its_tenants() {
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    let settings = support::settings(&brokers, "produce");
    let (orders, config) = (&settings.kafka.orders_topic, &settings.kafka.config_topic);
    mock.create_topic(orders, 3, 1).unwrap();
    mock.create_topic(config, 2, 1).unwrap();
    mock.create_topic(&settings.kafka.dead_letter_topic, 1, 1)
        .unwrap();
    mock.create_topic(&settings.kafka.sla_violations_topic, 1, 1)
        .unwrap();

    let args = "--count 300 --tenants 4 --config-changes 40 --seed 7";
    let output = support::binary("produce", &settings)
        .args(args.split(' '))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let config_table = end_offsets_after(&stdout, "sent 40 configuration changes to");
    let orders_table = end_offsets_after(&stdout, "sent 300 order messages to");
    assert_eq!(config_table, watermarks(&brokers, config, 2), "{stdout}");
    assert_eq!(orders_table, watermarks(&brokers, orders, 3), "{stdout}");
    assert_eq!(orders_table.values().map(|(_, n)| n).sum::<i64>(), 300);
    assert!(
        stdout.contains("4 active (a profile each), 0 provisional"),
        "{stdout}"
    );

    // The order traffic's tenants: the same seed draws the same ids.
    let spec = TrafficSpec {
        count: 300,
        tenants: 4,
        seed: 7,
        ..Default::default()
    };
    let order_tenants: BTreeSet<String> =
        traffic::generate(&spec, &support::order_encoder(&settings))
            .1
            .tenants
            .iter()
            .map(Uuid::to_string)
            .collect();
    let store = Arc::new(SchemaStore::load(&settings.schemas.dir, None).unwrap());
    let decoder = Decoder::new(store, "config_change.avsc", &settings.limits).unwrap();
    let messages = support::read_topic(&brokers, config, 40, Duration::from_secs(20));
    assert_eq!(messages.len(), 40);
    let mut first_by_tenant: BTreeMap<String, ConfigChangeEvent> = BTreeMap::new();
    for message in &messages {
        let change: ConfigChangeEvent = decoder.decode(message.payload().unwrap()).await.unwrap();
        let tenant = change
            .tenant_id
            .clone()
            .expect("40 changes of 4 tenants: no category");
        assert_eq!(message.key(), Some(tenant.as_bytes()));
        first_by_tenant.entry(tenant).or_insert(change);
    }
    assert_eq!(
        first_by_tenant.keys().cloned().collect::<BTreeSet<_>>(),
        order_tenants
    );
    for first in first_by_tenant.values() {
        assert_eq!((first.kind, first.version), (ConfigKind::TenantProfile, 1));
        assert!(first
            .value
            .as_deref()
            .unwrap()
            .contains("\"status\":\"active\""));
    }
}

fn help_of(command: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_tenantstream"))
        .args([command, "--help"])
        .env_clear()
        .output()
        .expect("run tenantstream <command> --help");
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Each command's --help lists only the flags it uses, grouped under headings, each with its
/// default (read from the settings' defaults) and its environment variable.
#[test]
fn each_command_lists_the_flags_it_uses_grouped_with_defaults() {
    let migrate = help_of("migrate");
    assert!(migrate.contains("--admin-database-url"), "{migrate}");
    for absent in [
        "--batch-max-events",
        "--brokers",
        "--redis-url",
        "--database-url ",
    ] {
        assert!(
            !migrate.contains(absent),
            "migrate lists {absent}: {migrate}"
        );
    }
    let run = help_of("run");
    for heading in ["Kafka:", "Postgres:", "Redis:", "Schemas:", "Worker:"] {
        assert!(run.contains(heading), "{heading} in {run}");
    }
    let defaults = tenantstream::Settings::default();
    assert!(
        run.contains(&format!(
            "[default: {}] [env: TENANTSTREAM_BATCH_MAX_EVENTS",
            defaults.kafka.batch_max_events
        )),
        "{run}"
    );
    let status = help_of("status");
    assert!(status.contains("--group-id") && !status.contains("--batch-max-events"));
    let produce = help_of("produce");
    assert!(produce.contains("--orders-topic") && !produce.contains("--redis-url"));
}

/// A bad value in an environment variable is reported by the variable's name, where the operator
/// must fix it; the same value given as a flag names the flag.
#[test]
fn a_bad_environment_value_names_the_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_tenantstream"))
        .arg("run")
        .env_clear()
        .env("TENANTSTREAM_BATCH_MAX_EVENTS", "lots")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("\"lots\" in the environment variable TENANTSTREAM_BATCH_MAX_EVENTS"),
        "{stderr}"
    );
    assert!(stderr.contains("invalid digit"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_tenantstream"))
        .args(["run", "--batch-max-events", "lots"])
        .env_clear()
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("'--batch-max-events"), "{stderr}");
    assert!(!stderr.contains("environment variable"), "{stderr}");
}
