//! The command line as an operator meets it (the binary itself; Postgres only, no broker):
//! `--help` describes the worker, `migrate` says what it did, `--version` names the commit it
//! was built from, `check` fails on missing topics (on librdkafka's mock cluster).

use std::process::Command;

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
    let missing = format!(
        "these topics are missing: {}, {}",
        settings.kafka.config_topic, settings.kafka.dead_letter_topic
    );
    assert!(kafka.contains(&missing), "{kafka}");
    assert!(kafka.contains("--create --topic"), "{kafka}");
    assert!(!kafka.contains(&format!("missing: {}", settings.kafka.orders_topic)));

    mock.create_topic(&settings.kafka.config_topic, 2, 1)
        .unwrap();
    mock.create_topic(&settings.kafka.dead_letter_topic, 1, 1)
        .unwrap();
    let (passed, stdout) = check(&settings);
    assert!(passed, "{stdout}");
    assert!(stdout.contains("ok   kafka:"), "{stdout}");
}
