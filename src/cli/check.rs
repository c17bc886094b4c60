//! `tenantstream check`: configuration, schemas, and each dependency, one line each.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::cache;
use crate::config::Settings;
use crate::decode::{Decoder, Encoder, SchemaStore};
use crate::domain::{Event, ValidConfig, ValidOrder};
use crate::sink;
use crate::source;

pub async fn check(settings: &Settings) -> anyhow::Result<()> {
    println!("ok   configuration: {settings:?}");
    let mut failures = 0;
    let mut report = |name: &str, result: anyhow::Result<String>| match result {
        Ok(detail) => println!("ok   {name}: {detail}"),
        Err(error) => {
            failures += 1;
            println!("FAIL {name}: {error:#}");
        }
    };
    report("schemas", check_schemas(settings));
    report("postgres", check_postgres(settings).await);
    report("redis", check_redis(settings).await);
    report("kafka", check_kafka(settings).await);
    anyhow::ensure!(failures == 0, "{failures} check(s) failed");
    Ok(())
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
    Ok(format!(
        "{} readable, readers {} and {}",
        settings.schemas.dir.display(),
        ValidOrder::SCHEMA_FILE,
        ValidConfig::SCHEMA_FILE
    ))
}

async fn check_postgres(settings: &Settings) -> anyhow::Result<String> {
    let pool = sink::connect_worker(&settings.database).await?;
    sink::ensure_rls_applies(&pool).await?;
    let stored = sink::count_stored_offsets(&pool)
        .await
        .context("is the database migrated? run `tenantstream migrate`")?;
    Ok(format!(
        "{} reachable, worker role subject to RLS, {stored} stored partition offsets",
        settings.database.url
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
    Ok(format!("{} answers PING", settings.redis.url))
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
        ];
        let missing: Vec<&str> = needed
            .iter()
            .filter(|topic| !metadata.topics().iter().any(|m| m.name() == topic.as_str()))
            .map(|topic| topic.as_str())
            .collect();
        anyhow::ensure!(
            missing.is_empty(),
            "{} answers, but these topics are missing: {}. Create them (for example \
             `kafka-topics.sh --bootstrap-server {} --create --topic {} --partitions 12`), or \
             point --orders-topic, --config-topic and --dead-letter-topic at existing ones",
            kafka.brokers,
            missing.join(", "),
            kafka.brokers,
            missing[0]
        );
        Ok(format!(
            "{} answers; topics {} present",
            kafka.brokers,
            needed.map(String::as_str).join(", ")
        ))
    })
    .await?
}
