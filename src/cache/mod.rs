//! Redis, and only Redis: the key layout, the Lua scripts and the writes that keep the cache
//! following committed rows.
//!
//! Guarantee: the cache follows commits. A batch records its cache work in the cache outbox in
//! its own transaction and gets back the committed rows' JSON; after the commit, the batch
//! writes them here with a version check ([`apply_queued`]) and notes the applied outbox rows in
//! the [`CacheLedger`]. A crash or a Redis outage leaves the work queued for the drainer, which
//! reads the current rows behind it and applies them ([`refresh`]). Applying a row twice is
//! harmless: the version check skips it.

pub mod inspect;
mod keys;
mod ledger;
mod scripts;
mod writer;

use std::time::Duration;

use fred::prelude::*;

use crate::retry::{Classify, ErrorClass};

#[cfg(feature = "test-support")]
pub use keys::order_key;
pub use keys::{category_key, entries_key, order_key_pattern, profile_key, violations_key};
pub use ledger::CacheLedger;
pub use writer::{apply_queued, bump_generations, read_generations, refresh, Ttl};

/// A Redis failure, described in one line (fred's error is not also its `source`, so a chain
/// prints it once).
#[derive(Debug, thiserror::Error)]
#[error("Redis: {}", describe(.0))]
pub struct CacheError(fred::error::Error);

impl From<fred::error::Error> for CacheError {
    fn from(error: fred::error::Error) -> Self {
        Self(error)
    }
}

/// A fred error in one line. fred keeps an I/O error only as its Debug text
/// (`Os { code: 111, kind: ConnectionRefused, message: "Connection refused" }`): its message
/// is what an operator needs.
fn describe(error: &fred::error::Error) -> String {
    let details = error.details();
    let message = details
        .split_once("message: \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(message, _)| message);
    match (error.kind(), message) {
        (fred::error::ErrorKind::IO, Some(message)) => format!("connection failed: {message}"),
        (fred::error::ErrorKind::IO, None) => format!("connection failed: {details}"),
        (fred::error::ErrorKind::Timeout, _) => format!("no answer in time: {details}"),
        _ => details.to_owned(),
    }
}

impl CacheError {
    pub(crate) fn other(message: String) -> Self {
        Self(fred::error::Error::new(
            fred::error::ErrorKind::Unknown,
            message,
        ))
    }
}

impl Classify for CacheError {
    /// Permanent only for a bad URL or configuration; every Redis answer or outage is retried.
    fn class(&self) -> ErrorClass {
        use fred::error::ErrorKind;
        match self.0.kind() {
            ErrorKind::Config | ErrorKind::Url => ErrorClass::Permanent,
            _ => ErrorClass::Transient,
        }
    }
}

/// How long a day's violation set is kept: the current day and the one before stay readable.
const VIOLATIONS_TTL_SECONDS: i64 = 3 * 86_400;

/// Counts violations in their tenants' day sets (`(tenant, UTC day, violation id)`), in one
/// pipeline. Adding an id twice counts it once, so a violation published again is not counted
/// again.
pub async fn count_violations(
    redis: &Client,
    violations: &[(uuid::Uuid, String, uuid::Uuid)],
) -> Result<(), CacheError> {
    if violations.is_empty() {
        return Ok(());
    }
    let pipeline = redis.pipeline();
    for (tenant, day, id) in violations {
        let key = violations_key(tenant, day);
        let () = pipeline.sadd(&key, id.to_string()).await?;
        let () = pipeline.expire(&key, VIOLATIONS_TTL_SECONDS, None).await?;
    }
    let _: Vec<fred::types::Value> = pipeline.all().await?;
    Ok(())
}

/// How long one Redis round trip may take before it counts as a failure.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to a single Redis (`redis://`) or a cluster (`redis-cluster://`) and waits until it
/// answers; an error names the (redacted) URL.
pub async fn connect(url: &str) -> Result<Client, CacheError> {
    let client = build(url, true)?;
    client.init().await.map_err(|error| {
        use fred::error::ErrorKind;
        // The kind decides the class (a bad URL is permanent); the text is already described.
        let kind = match error.kind() {
            ErrorKind::Config | ErrorKind::Url => error.kind().clone(),
            _ => ErrorKind::Unknown,
        };
        CacheError(fred::error::Error::new(kind, cannot_reach(url, &error)))
    })?;
    Ok(client)
}

/// The worker's client: it connects, and reconnects, in the background, so the worker starts
/// and writes Postgres while Redis is down. Until Redis answers, each command fails after
/// [`COMMAND_TIMEOUT`] and the cache work it carried stays queued for the drainer, as during an
/// outage mid-run. `report` gets each connection error (refused, wrong password, …) in one line
/// naming the (redacted) URL.
pub fn connect_in_background(
    url: &str,
    report: impl Fn(String) + Send + Sync + 'static,
) -> Result<Client, CacheError> {
    let client = build(url, false)?;
    let (url, report) = (url.to_owned(), std::sync::Arc::new(report));
    // The listener task ends with the client.
    drop(client.on_error(move |(error, _server)| {
        let (report, reason) = (report.clone(), cannot_reach(&url, &error));
        async move {
            report(reason);
            Ok(())
        }
    }));
    // The connection task runs until the client quits; its outcome is seen through commands.
    drop(client.connect());
    Ok(client)
}

/// `cannot reach <URL without its password>: <what failed>`.
fn cannot_reach(url: &str, error: &fred::error::Error) -> String {
    let redacted = crate::config::Secret::new(url);
    format!("cannot reach {redacted}: {}", describe(error))
}

fn build(url: &str, fail_fast: bool) -> Result<Client, CacheError> {
    let mut config = Config::from_url(url)?;
    config.fail_fast = fail_fast;
    Ok(Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(3);
            c.internal_command_timeout = Duration::from_secs(5);
        })
        // Without a timeout, commands queue while the client reconnects and a Redis outage
        // would hold the batch path (and its Postgres transaction) indefinitely.
        .with_performance_config(|c| c.default_command_timeout = COMMAND_TIMEOUT)
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .build()?)
}
