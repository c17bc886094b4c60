//! The dead-letter topic: where every permanently failing message goes, never dropped.
//!
//! A dead letter carries the original key, value and headers, plus headers naming the error
//! code, the failed stage, a reason, and the source topic, partition and offset. Sending is
//! awaited before the source offset is committed, so a dead letter is never lost; after a crash
//! between the two it can be sent twice (consumers de-duplicate on the source headers).
//!
//! Producer headers named `tenantstream.*` are left out, so no producer can forge the headers
//! readers de-duplicate on. Reasons are cut to [`MAX_REASON_BYTES`]. A dead letter the broker
//! refuses for good (too large) is sent again without the source's value, key and headers, with
//! [`HEADER_PAYLOAD_DROPPED`] saying what was left out: nothing retries forever.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message;
use uuid::Uuid;

use crate::decode::DecodeError;
use crate::metrics::{self, Stage};
use crate::retry::{Classify, ErrorClass};
use crate::source::WorkerProducer;

pub const HEADER_ERROR_CODE: &str = "tenantstream.error.code";
pub const HEADER_ERROR_STAGE: &str = "tenantstream.error.stage";
pub const HEADER_ERROR_REASON: &str = "tenantstream.error.reason";
pub const HEADER_SOURCE_TOPIC: &str = "tenantstream.source.topic";
pub const HEADER_SOURCE_PARTITION: &str = "tenantstream.source.partition";
pub const HEADER_SOURCE_OFFSET: &str = "tenantstream.source.offset";
/// Set when Postgres rejected the message's row: the SQLSTATE it answered.
pub const HEADER_ERROR_SQLSTATE: &str = "tenantstream.error.sqlstate";

/// Set when the source's value, key and headers were left out because the broker refused the
/// whole dead letter: their sizes and the broker's error.
pub const HEADER_PAYLOAD_DROPPED: &str = "tenantstream.payload.dropped";

/// The longest reason sent (a validation reason can quote a large field).
pub const MAX_REASON_BYTES: usize = 1024;

/// The prefix of this worker's own headers.
const OWN_HEADER_PREFIX: &str = "tenantstream.";

/// The error code of an event whose tenant is not registered (strict tenants).
pub const UNKNOWN_TENANT: &str = "unknown_tenant";
/// The error code of an event whose row Postgres rejected for its data.
pub const REJECTED_BY_POSTGRES: &str = "rejected_by_postgres";

/// Every code a dead letter of the worker can carry.
pub fn codes() -> impl Iterator<Item = &'static str> {
    DecodeError::DEAD_LETTER_CODES
        .into_iter()
        .chain([UNKNOWN_TENANT, REJECTED_BY_POSTGRES])
}

/// One message to dead-letter, with why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message: OwnedMessage,
    pub code: &'static str,
    pub stage: Stage,
    pub reason: String,
    /// The SQLSTATE of a row Postgres rejected.
    pub sqlstate: Option<String>,
    /// The tenant the message names, when it decoded far enough to tell.
    pub tenant: Option<Uuid>,
}

#[derive(Debug, thiserror::Error)]
#[error("dead-letter topic {topic} unavailable: {error}")]
pub struct DeadLetterError {
    pub topic: String,
    pub error: KafkaError,
}

impl Classify for DeadLetterError {
    /// Permanent when the broker refuses this message for good (too large): the dead letter is
    /// then sent without the source's bytes.
    fn class(&self) -> ErrorClass {
        match self.error.rdkafka_error_code() {
            // (InvalidMessage, a CRC error, is retriable in Kafka: transient here.)
            Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => {
                ErrorClass::Permanent
            }
            _ => ErrorClass::Transient,
        }
    }
}

/// Sends dead letters and waits until the broker has them.
#[derive(Clone)]
pub struct DeadLetterSink {
    producer: WorkerProducer,
    topic: String,
}

impl DeadLetterSink {
    pub fn new(producer: WorkerProducer, topic: impl Into<String>) -> Self {
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
                letter.reason(),
            );
        }
        Ok(())
    }

    /// Sends the whole dead letter; when the broker refuses it for good, sends it again with
    /// only the worker's headers.
    async fn send(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        let source = &letter.message;
        let whole = dead_letter_headers(letter, None);
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(whole);
        if let Some(key) = source.key() {
            record = record.key(key);
        }
        if let Some(value) = source.payload() {
            record = record.payload(value);
        }
        let error = match self.deliver(record).await {
            Err(error) if error.is_permanent() => error,
            result => return result,
        };
        let dropped = format!(
            "value of {} bytes, key of {} bytes and {} headers left out: {}",
            source.payload().map_or(0, <[u8]>::len),
            source.key().map_or(0, <[u8]>::len),
            source.headers().map_or(0, |h| h.count()),
            error.error
        );
        tracing::warn!(
            topic = source.topic(),
            partition = source.partition(),
            offset = source.offset(),
            %dropped,
            "Dead letter refused by the broker; sending it without the source's bytes."
        );
        let bare = dead_letter_headers(letter, Some(&dropped));
        self.deliver(FutureRecord::to(&self.topic).headers(bare))
            .await
    }

    async fn deliver(&self, record: FutureRecord<'_, [u8], [u8]>) -> Result<(), DeadLetterError> {
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

/// The headers of a dead letter: the source's own (but `tenantstream.*`), then the worker's.
/// `dropped` says what was left out when the source's bytes could not be sent; then the
/// source's headers are left out too.
fn dead_letter_headers(letter: &DeadLetter, dropped: Option<&str>) -> OwnedHeaders {
    let source = &letter.message;
    let mut headers = OwnedHeaders::new();
    if let (Some(original), None) = (source.headers(), dropped) {
        for header in original.iter().filter(|h| !is_own_header(h.key)) {
            headers = headers.insert(header);
        }
    }
    let partition = source.partition().to_string();
    let offset = source.offset().to_string();
    let own = [
        (HEADER_ERROR_CODE, Some(letter.code)),
        (HEADER_ERROR_STAGE, Some(letter.stage.as_str())),
        (HEADER_ERROR_REASON, Some(letter.reason())),
        (HEADER_SOURCE_TOPIC, Some(source.topic())),
        (HEADER_SOURCE_PARTITION, Some(partition.as_str())),
        (HEADER_SOURCE_OFFSET, Some(offset.as_str())),
        (HEADER_ERROR_SQLSTATE, letter.sqlstate.as_deref()),
        (HEADER_PAYLOAD_DROPPED, dropped),
    ];
    for (key, value) in own {
        if let Some(value) = value {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
    }
    headers
}

/// A header only this worker may write.
fn is_own_header(key: &str) -> bool {
    key.get(..OWN_HEADER_PREFIX.len())
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(OWN_HEADER_PREFIX))
}

impl DeadLetter {
    /// The reason, cut to at most [`MAX_REASON_BYTES`] on a character boundary.
    pub fn reason(&self) -> &str {
        let mut end = self.reason.len().min(MAX_REASON_BYTES);
        while !self.reason.is_char_boundary(end) {
            end -= 1;
        }
        &self.reason[..end]
    }
}

/// The value of header `key` as text, for readers of the dead-letter topic.
pub fn header_text<'a>(headers: &'a impl Headers, key: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Timestamp;

    use super::*;

    fn letter(headers: OwnedHeaders, reason: String) -> DeadLetter {
        let message = OwnedMessage::new(
            Some(b"value".to_vec()),
            Some(b"key".to_vec()),
            "orders".into(),
            Timestamp::NotAvailable,
            3,
            42,
            Some(headers),
        );
        DeadLetter {
            message,
            code: "invalid_field",
            stage: Stage::Validate,
            reason,
            sqlstate: None,
            tenant: None,
        }
    }

    fn pairs(headers: &OwnedHeaders) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|h| {
                let value = String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
                (h.key.to_owned(), value)
            })
            .collect()
    }

    #[test]
    fn forged_headers_are_left_out_and_the_reason_is_bounded() {
        let forged = OwnedHeaders::new()
            .insert(Header {
                key: "trace-id",
                value: Some("abc"),
            })
            .insert(Header {
                key: "TenantStream.Source.Offset",
                value: Some("1"),
            })
            .insert(Header {
                key: HEADER_PAYLOAD_DROPPED,
                value: Some("forged"),
            });
        let reason = "é".repeat(MAX_REASON_BYTES);
        let letter = letter(forged, reason);
        let headers = pairs(&dead_letter_headers(&letter, None));
        let keys: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "trace-id",
                HEADER_ERROR_CODE,
                HEADER_ERROR_STAGE,
                HEADER_ERROR_REASON,
                HEADER_SOURCE_TOPIC,
                HEADER_SOURCE_PARTITION,
                HEADER_SOURCE_OFFSET
            ]
        );
        let reason = &headers[3].1;
        assert_eq!(reason.len(), MAX_REASON_BYTES);
        assert_eq!(headers[6].1, "42");
        let bare = pairs(&dead_letter_headers(&letter, Some("value of 5 bytes")));
        assert_eq!(bare[0].0, HEADER_ERROR_CODE);
        assert_eq!(
            bare.last().unwrap(),
            &(
                HEADER_PAYLOAD_DROPPED.to_owned(),
                "value of 5 bytes".to_owned()
            )
        );
    }
}
