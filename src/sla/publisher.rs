//! The violation publisher: stored violations go to the violations topic (Avro, Confluent
//! framing, keyed by tenant) and into their tenant's day count in Redis, then leave the outbox.
//!
//! A violation is claimed with a lease, so publishers run side by side without sending the same
//! one twice while all is well. It is marked published once the broker acknowledged it, and
//! deleted once Redis also counted it. A failure keeps it queued: a broker outage delays it
//! (readiness false, `tenantstream_sla_publish_errors_total`), a Redis outage delays only the
//! count, and a crash leaves it to come back when its lease ends. So a violation can be
//! published twice, never lost: consumers de-duplicate by `violation_id`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::Client;
use futures::future::join_all;
use rdkafka::producer::FutureRecord;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cache::{self, CacheError};
use crate::clock::Clock;
use crate::decode::Encoder;
use crate::domain::{utc_day, ViolationKind};
use crate::health::{Component, Health};
use crate::metrics::{self, Stage};
use crate::monitor::{TenantMonitor, ViolationCount};
use crate::retry::{Backoff, RetryPolicy};
use crate::sink::sla::{self, Claimed};
use crate::sink::SinkError;
use crate::source::WorkerProducer;

/// Violations claimed per pass.
const CLAIM: i32 = 500;

/// How long a claim holds its violations: longer than one send may take (the producer gives up
/// after 30 s), after which another publisher may take them.
const LEASE: Duration = Duration::from_secs(60);

/// How long a publish waits for the broker's acknowledgement.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ViolationPublisher {
    pub pool: PgPool,
    pub redis: Client,
    pub producer: WorkerProducer,
    pub topic: String,
    /// `sla_violation.avsc`, framed with its id from `registry.json`.
    pub encoder: Arc<Encoder>,
    pub clock: Clock,
    pub health: Health,
    /// The pause after a pass that found nothing to publish.
    pub interval: Duration,
    /// Counts each published violation against its tenant.
    pub tenants: TenantMonitor,
}

/// A failed pass: what failed, for readiness and the metric's labels.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Postgres(#[from] SinkError),
    #[error("publishing {count} SLA violations to {topic}: {error}")]
    Kafka {
        topic: String,
        count: usize,
        error: rdkafka::error::KafkaError,
    },
    #[error(transparent)]
    Redis(#[from] CacheError),
}

impl PublishError {
    fn component(&self) -> Component {
        match self {
            Self::Postgres(_) => Component::Postgres,
            Self::Kafka { .. } => Component::Kafka,
            Self::Redis(_) => Component::Redis,
        }
    }
}

impl ViolationPublisher {
    /// Publishes violations until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff: Backoff = RetryPolicy::BATCH.backoff();
        // Whether this publisher's last failure was Kafka's: a later pass without one ends it,
        // even one with nothing to send (another worker may have published what failed here),
        // so an idle worker does not stay unready for a failure that is over.
        let mut kafka_failed = false;
        loop {
            let pause = match self.pass().await {
                Ok(claimed) => {
                    backoff.reset();
                    if std::mem::take(&mut kafka_failed) {
                        self.health.recovered(Component::Kafka);
                    }
                    if claimed >= CLAIM as usize {
                        Duration::ZERO
                    } else {
                        self.interval
                    }
                }
                Err(error) => {
                    let retry_in = backoff.advance();
                    let component = error.component();
                    kafka_failed = component == Component::Kafka;
                    self.health
                        .transient(component, Stage::SlaPublish, &error, retry_in);
                    retry_in
                }
            };
            if !super::between_passes(pause, &shutdown).await {
                return;
            }
        }
    }

    /// Claims the violations due now, publishes those the broker does not have yet, counts them
    /// in Redis and finishes them. Returns how many were claimed.
    pub async fn pass(&self) -> Result<usize, PublishError> {
        let lease = LEASE.as_millis() as i64;
        let claimed = sla::claim_violations(&self.pool, self.clock.now_ms(), lease, CLAIM).await?;
        if claimed.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = claimed.iter().map(|c| c.id).collect();
        let unpublished: Vec<&Claimed> = claimed.iter().filter(|c| !c.published).collect();
        let (sent, failure) = self.send(&unpublished).await;
        if let Some(error) = failure {
            metrics::sla_publish_failed((unpublished.len() - sent.len()) as u64);
            sla::release_violations(&self.pool, &ids, &sent).await?;
            return Err(error);
        }
        if !sent.is_empty() {
            self.health.recovered(Component::Kafka);
        }
        let counts: Vec<(Uuid, String, Uuid)> = claimed
            .iter()
            .map(|c| (c.tenant, utc_day(c.violation.detected_at), c.id))
            .collect();
        if let Err(error) = cache::count_violations(&self.redis, &counts).await {
            // The broker has them; only the count waits for Redis.
            metrics::redis_error(Stage::SlaPublish);
            sla::release_violations(&self.pool, &ids, &sent).await?;
            return Err(error.into());
        }
        sla::finish_violations(&self.pool, &ids).await?;
        Ok(claimed.len())
    }

    /// Sends the violations and waits for the broker. Returns the ids it acknowledged, and the
    /// first failure if any was not.
    async fn send(&self, violations: &[&Claimed]) -> (Vec<Uuid>, Option<PublishError>) {
        let sends = violations.iter().map(|claimed| async move {
            let payload = self.encoder.encode(&claimed.violation, false);
            let key = claimed.violation.tenant_id.as_bytes();
            let record = FutureRecord::<[u8], [u8]>::to(&self.topic)
                .key(key)
                .payload(&payload);
            let sent = self.producer.send(record, SEND_TIMEOUT).await;
            (claimed, sent.map(|_| ()).map_err(|(error, _)| error))
        });
        let mut acknowledged = Vec::new();
        let mut published: HashMap<&'static str, u64> = HashMap::new();
        let mut failure = None;
        for (claimed, result) in join_all(sends).await {
            match result {
                Ok(()) => {
                    acknowledged.push(claimed.id);
                    self.count_for_tenant(claimed);
                    *published
                        .entry(claimed.violation.kind.as_str())
                        .or_default() += 1;
                }
                Err(error) if failure.is_none() => {
                    failure = Some(PublishError::Kafka {
                        topic: self.topic.clone(),
                        count: violations.len(),
                        error,
                    });
                }
                Err(_) => {}
            }
        }
        for (kind, count) in published {
            metrics::sla_violations_published(kind, count);
        }
        (acknowledged, failure)
    }

    fn count_for_tenant(&self, claimed: &Claimed) {
        let kind = match claimed.violation.kind {
            ViolationKind::DeadlineMissed => ViolationCount::DeadlineMissed,
            ViolationKind::ProcessingLag => ViolationCount::ProcessingLag,
        };
        self.tenants.violation_published(claimed.tenant, kind);
    }
}
