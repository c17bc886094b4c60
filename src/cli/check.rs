//! `tenantstream check`: configuration, schemas, and each dependency, one line each.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::describe_error;
use crate::cache;
use crate::config::{Secret, Settings};
use crate::decode::{Decoder, Encoder, SchemaStore};
use crate::domain::{Event, SlaViolation, ValidConfig, ValidOrder};
use crate::sink;
use crate::source;

/// Prints one line per dependency (`ok   <name>: <address>: <what was checked>` or
/// `FAIL <name>: <address>: <cause>`, passwords redacted) and fails if any failed.
pub async fn check(settings: &Settings, file: Option<&Path>) -> anyhow::Result<()> {
    println!(
        "ok   configuration: {}: every setting valid",
        config_source(file)
    );
    let mut failures = 0;
    let mut report = |name: &str, address: String, result: anyhow::Result<String>| match result {
        Ok(detail) => println!("ok   {name}: {address}: {detail}"),
        Err(error) => {
            failures += 1;
            println!("FAIL {name}: {address}: {}", describe_error(&error));
        }
    };
    report(
        "postgres",
        settings.database.url.to_string(),
        check_postgres(settings).await,
    );
    report(
        "redis",
        settings.redis.url.to_string(),
        check_redis(settings).await,
    );
    report(
        "kafka",
        settings.kafka.brokers.clone(),
        check_kafka(settings).await,
    );
    report(
        "schemas",
        // Absolute, as a relative folder depends on where the command runs.
        std::fs::canonicalize(&settings.schemas.dir)
            .unwrap_or_else(|_| settings.schemas.dir.clone())
            .display()
            .to_string(),
        check_schemas(settings),
    );
    report(
        "sla",
        "--sla-default-policy".to_owned(),
        check_sla(settings),
    );
    anyhow::ensure!(failures == 0, "{failures} check(s) failed");
    Ok(())
}

/// Where the settings came from, in the order they overlay each other.
pub fn config_source(file: Option<&Path>) -> String {
    match file {
        Some(path) => format!(
            "defaults, then {}, then environment and flags",
            path.display()
        ),
        None => "defaults + environment/flags (no --config file)".to_owned(),
    }
}

fn check_schemas(settings: &Settings) -> anyhow::Result<String> {
    let store = Arc::new(SchemaStore::load(
        &settings.schemas.dir,
        settings.schemas.registry_url.as_deref(),
    )?);
    Decoder::new(store.clone(), ValidOrder::SCHEMA_FILE, &settings.limits)?;
    Decoder::new(store, ValidConfig::SCHEMA_FILE, &settings.limits)?;
    Encoder::for_event::<ValidOrder>(&settings.schemas)?;
    Encoder::for_event::<ValidConfig>(&settings.schemas)?;
    Encoder::for_file(&settings.schemas, SlaViolation::SCHEMA_FILE)?;
    let ids = match &settings.schemas.registry_url {
        Some(url) => format!(
            "the schema registry at {} (not contacted by this check)",
            Secret::new(url.as_str())
        ),
        None => "registry.json".to_owned(),
    };
    Ok(format!(
        "reader schemas {} and {} load, and {} for publishing; writer ids resolve through {ids}",
        ValidOrder::SCHEMA_FILE,
        ValidConfig::SCHEMA_FILE,
        SlaViolation::SCHEMA_FILE
    ))
}

/// The global default SLA policy follows an SLA_POLICY event's rules, as `run` checks at start.
fn check_sla(settings: &Settings) -> anyhow::Result<String> {
    match settings.sla.default_policy_json() {
        None => {
            Ok("no global default policy: only tenants with their own SLA_POLICY have SLAs".into())
        }
        Some(text) => {
            crate::validate::parse_sla_policy(text).map_err(|reason| {
                anyhow::anyhow!("invalid setting sla.default_policy: {reason}")
            })?;
            Ok(format!("global default policy {text}"))
        }
    }
}

async fn check_postgres(settings: &Settings) -> anyhow::Result<String> {
    // The same checks as `run` at start, with the same errors naming the fix.
    let pool = sink::connect_worker_checked(&settings.database).await?;
    let stored = sink::count_stored_offsets(&pool).await?;
    Ok(format!(
        "connects as a role subject to row-level security; migrated ({stored} stored \
         partition offsets)"
    ))
}

async fn check_redis(settings: &Settings) -> anyhow::Result<String> {
    let redis = tokio::time::timeout(
        Duration::from_secs(5),
        cache::connect(settings.redis.url.expose()),
    )
    .await
    .context("timed out")??;
    let _: fred::types::Value = fred::interfaces::ClientLike::ping(&redis, None).await?;
    Ok("answers PING".to_owned())
}

/// The broker answers and has every topic the worker reads or writes. A missing topic fails
/// the check: `run` would wait on it, and a broker that creates topics on first use would give
/// them its default partition count.
async fn check_kafka(settings: &Settings) -> anyhow::Result<String> {
    let kafka = settings.kafka.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = source::client_config(&kafka).create()?;
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(5))?;
        let needed = [
            &kafka.orders_topic,
            &kafka.config_topic,
            &kafka.dead_letter_topic,
            &kafka.sla_violations_topic,
        ];
        let missing: Vec<&str> = needed
            .iter()
            .filter(|topic| !metadata.topics().iter().any(|m| m.name() == topic.as_str()))
            .map(|topic| topic.as_str())
            .collect();
        anyhow::ensure!(
            missing.is_empty(),
            "answers, but these topics are missing: {}. Create them (for example \
             `kafka-topics.sh --bootstrap-server {} --create --topic {} --partitions 12`), or \
             point --orders-topic, --config-topic, --dead-letter-topic and \
             --sla-violations-topic at existing ones",
            missing.join(", "),
            kafka.brokers,
            missing[0]
        );
        Ok(format!(
            "answers; topics {} present",
            needed.map(String::as_str).join(", ")
        ))
    })
    .await?
}
