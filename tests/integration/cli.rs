//! The command line as an operator meets it (the binary itself; Postgres only, no broker):
//! `migrate` says what it did, `--version` names the commit it was built from.

use std::process::Command;

use uuid::Uuid;

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
