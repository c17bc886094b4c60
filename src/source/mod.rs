//! Kafka: the consumer that feeds the pipeline (each partition starting at the offset stored in
//! Postgres), and the client settings every Kafka client of the crate shares.

mod rebalance;

use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::{KafkaSettings, LimitSettings};
use crate::domain::TopicPartition;
use crate::health::{Component, Health};
use crate::metrics::Stage;

pub use rebalance::SourceContext;

/// The pipeline's consumer.
pub type Source = StreamConsumer<SourceContext>;

/// A change of assignment, seen by the pipeline after the consumer's next poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    Assigned(Vec<AssignedPartition>),
    Revoked(Vec<TopicPartition>),
}

/// A partition now owned, with the stored next offset it starts from (`None`: nothing stored,
/// it starts at the earliest offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedPartition {
    pub partition: TopicPartition,
    pub stored: Option<i64>,
}

/// The common client settings (bootstrap servers, logging).
pub fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set_log_level(RDKafkaLogLevel::Warning);
    config
}

/// The common settings of a consumer that reads messages: [`client_config`], and
/// `fetch.queue.backoff.ms` at 10 ms. When a fetch finds the consumer's prefetch queue (all its
/// partitions together) at one of its `queued.*` limits, librdkafka fetches again only after
/// that wait, 1,000 ms by default. The worker stops taking messages while its byte budget is
/// held, and replay while a chunk is rebuilt, so each such pause could leave fetching idle for
/// up to a second after it: timing replay's chunks, no chunk arrived for about 0.3 s of a 1.2 s
/// replay, and with this setting that gap was gone. The price: while the queue stays full, each
/// broker thread checks it every 10 ms (as often as an idle fetch returns), and the queue
/// refills sooner, so it sits near its limit more of the time (the limit is the same).
/// Producers and clients that only read metadata use [`client_config`]: librdkafka warns about
/// consumer properties there.
pub fn consumer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = client_config(settings);
    config.set("fetch.queue.backoff.ms", "10");
    config
}

/// A consumer subscribed to `topics`, starting each partition at its stored offset, read
/// through `offsets_pool` (see [`SourceContext`]).
pub fn subscribe(
    settings: &KafkaSettings,
    limits: &LimitSettings,
    topics: &[&str],
    offsets_pool: PgPool,
    health: Health,
    shutdown: CancellationToken,
) -> Result<Source, KafkaError> {
    let context = SourceContext::new(offsets_pool, settings, health, shutdown);
    let mut config = consumer_config(settings);
    if let Some(strategy) = settings.rebalance_protocol.assignment_strategy() {
        config.set("partition.assignment.strategy", strategy);
    }
    let consumer: Source = config
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set(
            "session.timeout.ms",
            settings.session_timeout_ms.to_string(),
        )
        .set("statistics.interval.ms", "5000")
        // How long a broker may hold a fetch that finds no data. Kafka answers as soon as data
        // arrives, but librdkafka's mock cluster (and any broker without long polling) answers
        // an empty fetch only after this wait, so it adds up to this much latency there: 10 ms
        // rather than librdkafka's 500 ms. An idle worker sends at most 100 fetches/s per broker.
        .set("fetch.wait.max.ms", "10")
        // librdkafka's prefetch queue (all partitions together) holds at most the worker's
        // byte budget for its own buffers (at least 1 MiB), instead of its default 64 MiB.
        .set(
            "queued.max.messages.kbytes",
            (limits.max_buffered_bytes / 1024)
                .clamp(1024, 2_097_151)
                .to_string(),
        )
        .create_with_context(context)?;
    consumer.subscribe(topics)?;
    Ok(consumer)
}

/// How long a stopping worker waits for librdkafka to close its consumer.
pub const LEAVE_GROUP_WITHIN: Duration = Duration::from_secs(10);

/// Leaves the consumer group and closes the consumer (its last offset commit and the leave), on
/// a thread of its own, waiting at most `limit`. librdkafka's close waits for the group
/// coordinator's answers, and while the broker does not answer that can last indefinitely: one
/// worker whose broker had gone away was still closing after about 10 minutes. After `limit`
/// the close is left running and the caller stops without it, which loses nothing (progress is
/// stored in Postgres); the group gives the partitions to other members once this one's
/// session times out.
pub async fn leave_group(consumer: Source, limit: Duration) {
    let (closed, close_done) = tokio::sync::oneshot::channel();
    // A plain thread, not `spawn_blocking`: the runtime's shutdown waits for its blocking tasks,
    // which would bring the wait back; the process exits with this thread still closing.
    // Rebalance callbacks during the close run on it: the revocation needs no runtime, and an
    // assignment is left unanswered once stopping (see `SourceContext`).
    let spawned = std::thread::Builder::new()
        .name("kafka-close".into())
        .spawn(move || {
            consumer.unsubscribe();
            drop(consumer);
            let _ = closed.send(());
        });
    if let Err(error) = spawned {
        // The consumer went with the closure: it was closed here, unbounded.
        tracing::warn!(%error, "No thread for the Kafka close; it ran inline.");
        return;
    }
    match tokio::time::timeout(limit, close_done).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => tracing::error!("The Kafka close panicked; stopping without it."),
        Err(_) => tracing::warn!(
            within = ?limit,
            "Kafka did not confirm the consumer's close in time; stopping without it (progress is stored in Postgres; the group reassigns the partitions once this member's session times out)."
        ),
    }
}

/// A producer (`produce`, tests): acks from all replicas, retried by librdkafka.
pub fn producer(settings: &KafkaSettings) -> Result<FutureProducer, KafkaError> {
    producer_config(settings).create()
}

/// The worker's dead-letter producer: as [`producer`], reporting its errors to `health`.
pub fn worker_producer(
    settings: &KafkaSettings,
    health: Health,
) -> Result<WorkerProducer, KafkaError> {
    producer_config(settings).create_with_context(ProducerContext { health })
}

fn producer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = client_config(settings);
    config
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000");
    config
}

/// The worker's producer.
pub type WorkerProducer = FutureProducer<ProducerContext>;

/// The worker producer's context: its errors go where the consumer's go.
pub struct ProducerContext {
    health: Health,
}

impl ClientContext for ProducerContext {
    fn error(&self, error: KafkaError, reason: &str) {
        report_client_error(&self.health, error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_client_message(level, fac, log_message);
    }
}

/// What to do about a topic the broker does not have.
pub const MISSING_TOPIC_HINT: &str =
    "; create it (`tenantstream check` names every missing topic and how to create it)";

/// Bytes of a message's key and value, as buffers are bounded.
pub fn message_bytes(message: &rdkafka::message::OwnedMessage) -> usize {
    use rdkafka::Message;
    message.payload().map_or(0, <[u8]>::len) + message.key().map_or(0, <[u8]>::len)
}

/// The broker does not have a topic the client asked for.
pub fn is_missing_topic(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode::{UnknownTopic, UnknownTopicOrPartition};
    matches!(
        error.rdkafka_error_code(),
        Some(UnknownTopicOrPartition | UnknownTopic)
    )
}

/// An error librdkafka reports by itself (it reconnects by itself): counted and logged once per
/// episode through `health`; when every broker is down, Kafka is not ready.
fn report_client_error(health: &Health, error: KafkaError, reason: &str) {
    use rdkafka::types::RDKafkaErrorCode;
    let all_down = error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown);
    let hint = if is_missing_topic(&error) {
        MISSING_TOPIC_HINT
    } else {
        ""
    };
    let error = format!("{error}: {reason}{hint}");
    if all_down {
        health.failed(Component::Kafka, &error);
    }
    health.failure_without_readiness(Component::Kafka, Stage::Consume, &error, None);
}

/// librdkafka's own log lines. Connection failures (`FAIL`) also come through the error callback
/// ([`report_client_error`]), which counts them and keeps them to one line per episode, so they
/// are kept at debug level (`RUST_LOG=librdkafka=debug`); other warnings and errors (a failed
/// commit, a configuration warning) have no other way out and are logged as warnings.
fn log_client_message(level: RDKafkaLogLevel, fac: &str, log_message: &str) {
    let severity = level as i32;
    if severity <= RDKafkaLogLevel::Warning as i32 && fac != "FAIL" {
        tracing::warn!(target: "librdkafka", severity, fac, "{log_message}");
    } else {
        tracing::debug!(target: "librdkafka", severity, fac, "{log_message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_fetch_again_soon_after_their_queue_was_full() {
        let settings = KafkaSettings::default();
        let config = consumer_config(&settings);
        assert_eq!(config.get("fetch.queue.backoff.ms"), Some("10"));
        assert_eq!(
            config.get("bootstrap.servers"),
            Some(settings.brokers.as_str())
        );
        // librdkafka accepts it (a misspelt or out-of-range property fails here; creating a
        // consumer contacts no broker)...
        let created: Result<rdkafka::consumer::BaseConsumer, _> = config.create();
        assert!(created.is_ok(), "{:?}", created.err());
        // ...and producers never get it.
        assert_eq!(
            producer_config(&settings).get("fetch.queue.backoff.ms"),
            None
        );
    }
}
