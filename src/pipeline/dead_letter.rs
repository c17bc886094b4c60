//! The dead-letter topic: where every permanently failing message goes, never dropped.
//!
//! A dead letter carries the original key, value and headers, plus headers naming the error
//! code, the failed stage, a reason, and the source topic, partition and offset. Sending is
//! awaited before the source offset is committed, so a dead letter is never lost; after a crash
//! between the two it can be sent twice (consumers de-duplicate on the source headers).

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message;

use crate::metrics::{self, Stage};
use crate::retry::{Classify, ErrorClass};

pub const HEADER_ERROR_CODE: &str = "tenantstream.error.code";
pub const HEADER_ERROR_STAGE: &str = "tenantstream.error.stage";
pub const HEADER_ERROR_REASON: &str = "tenantstream.error.reason";
pub const HEADER_SOURCE_TOPIC: &str = "tenantstream.source.topic";
pub const HEADER_SOURCE_PARTITION: &str = "tenantstream.source.partition";
pub const HEADER_SOURCE_OFFSET: &str = "tenantstream.source.offset";
/// Set when Postgres rejected the message's row: the SQLSTATE it answered.
pub const HEADER_ERROR_SQLSTATE: &str = "tenantstream.error.sqlstate";

/// The error code of an event whose tenant is not registered (strict tenants).
pub const UNKNOWN_TENANT: &str = "unknown_tenant";
/// The error code of an event whose row Postgres rejected for its data.
pub const REJECTED_BY_POSTGRES: &str = "rejected_by_postgres";

/// One message to dead-letter, with why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message: OwnedMessage,
    pub code: &'static str,
    pub stage: Stage,
    pub reason: String,
    /// The SQLSTATE of a row Postgres rejected.
    pub sqlstate: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("dead-letter topic {topic} unavailable: {error}")]
pub struct DeadLetterError {
    pub topic: String,
    pub error: KafkaError,
}

impl Classify for DeadLetterError {
    /// Permanent when the broker refuses this message for good (too large, invalid); the
    /// pipeline still retries every dead letter, since it is the last place a message can go.
    fn class(&self) -> ErrorClass {
        match self.error.rdkafka_error_code() {
            Some(
                RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage,
            ) => ErrorClass::Permanent,
            _ => ErrorClass::Transient,
        }
    }
}

/// Sends dead letters and waits until the broker has them.
#[derive(Clone)]
pub struct DeadLetterSink {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetterSink {
    pub fn new(producer: FutureProducer, topic: impl Into<String>) -> Self {
        Self {
            producer,
            topic: topic.into(),
        }
    }

    pub async fn send_all(&self, letters: &[DeadLetter]) -> Result<(), DeadLetterError> {
        let sends = letters.iter().map(|letter| self.send(letter));
        for result in futures::future::join_all(sends).await {
            result?;
        }
        for letter in letters {
            let m = &letter.message;
            metrics::message_dead_lettered(
                m.topic(),
                m.partition(),
                m.offset(),
                letter.code,
                &letter.reason,
            );
        }
        Ok(())
    }

    async fn send(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        let source = &letter.message;
        let headers = dead_letter_headers(letter);
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
        if let Some(key) = source.key() {
            record = record.key(key);
        }
        if let Some(value) = source.payload() {
            record = record.payload(value);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(error, _)| DeadLetterError {
                topic: self.topic.clone(),
                error,
            })
    }
}

/// The source message's headers followed by the error headers.
fn dead_letter_headers(letter: &DeadLetter) -> OwnedHeaders {
    let source = &letter.message;
    let mut headers = OwnedHeaders::new();
    if let Some(original) = source.headers() {
        for header in original.iter() {
            headers = headers.insert(header);
        }
    }
    let partition = source.partition().to_string();
    let offset = source.offset().to_string();
    for (key, value) in [
        (HEADER_ERROR_CODE, letter.code),
        (HEADER_ERROR_STAGE, letter.stage.as_str()),
        (HEADER_ERROR_REASON, letter.reason.as_str()),
        (HEADER_SOURCE_TOPIC, source.topic()),
        (HEADER_SOURCE_PARTITION, partition.as_str()),
        (HEADER_SOURCE_OFFSET, offset.as_str()),
    ] {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    if let Some(sqlstate) = &letter.sqlstate {
        headers = headers.insert(Header {
            key: HEADER_ERROR_SQLSTATE,
            value: Some(sqlstate.as_str()),
        });
    }
    headers
}

/// The value of header `key` as text, for readers of the dead-letter topic.
#[cfg(feature = "test-support")]
pub fn header_text<'a>(headers: &'a impl Headers, key: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}
