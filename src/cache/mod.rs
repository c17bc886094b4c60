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
pub use keys::{category_key, entries_key, order_key_pattern, profile_key};
pub use ledger::CacheLedger;
pub use writer::{apply_queued, bump_generations, read_generations, refresh, Ttl};

#[derive(Debug, thiserror::Error)]
#[error("Redis unavailable: {0}")]
pub struct CacheError(#[from] fred::error::Error);

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

/// How long one Redis round trip may take before it counts as a failure.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to a single Redis (`redis://`) or a cluster (`redis-cluster://`).
pub async fn connect(url: &str) -> Result<Client, CacheError> {
    let config = Config::from_url(url)?;
    let client = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(3);
            c.internal_command_timeout = Duration::from_secs(5);
        })
        // Without a timeout, commands queue while the client reconnects and a Redis outage
        // would hold the batch path (and its Postgres transaction) indefinitely.
        .with_performance_config(|c| c.default_command_timeout = COMMAND_TIMEOUT)
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .build()?;
    client.init().await?;
    Ok(client)
}
