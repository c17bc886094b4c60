//! Postgres: the source of truth for rows and for consumer progress, and the only SQL.
//!
//! Guarantee: one transaction per partition batch writes the rows (set-based, per tenant under
//! `set_config('app.tenant_id', …, true)`; for orders, up to 100 tenants per round trip through
//! the database function `write_order_batch`), the cache outbox rows and the partition's next offset.
//! The offset write is a compare-and-set on the offset this worker last saw, taken first in the
//! transaction: a worker that lost its partition to another cannot commit over the new owner.
//! A row Postgres rejects for its data is found by writing the batch's events one by one
//! ([`write_each`]), so the pipeline can dead-letter it and commit the rest.

pub mod audit;
mod batch;
pub mod cache_outbox;
mod current_rows;
mod isolate;
mod offsets;
mod orders;
mod pool;
pub mod sla;
mod tenant;
mod tenant_config;

use crate::retry::{Classify, ErrorClass};

#[cfg(feature = "test-support")]
pub use batch::BatchWrite;
pub use batch::{rewrite_rows, write_batch, Batch, BatchOutcome, Rows};
pub use current_rows::read_current;
pub use isolate::{write_each, Isolated, RejectedRow};
pub use offsets::{count_stored_offsets, load_stored_offsets, PartitionKey};
#[cfg(feature = "test-support")]
pub use orders::latest_per_order;
pub use pool::{
    check_reachable, connect_owner, connect_worker, connect_worker_checked, connect_worker_sized,
    ensure_rls_applies, migrate, Migrated,
};
pub use tenant::{known_tenants, set_tenant, tenant_statuses};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Described in one line, sqlx's own chain included (so not also its `source`).
    #[error("{}", describe(.0))]
    Database(sqlx::Error),
    /// The server at the URL's address did not answer (refused, no route, timed out).
    #[error("cannot reach Postgres at {at}: {reason}")]
    Unreachable { at: String, reason: String },
    /// The configuration or the database must be fixed: the message says how.
    #[error("{0}")]
    Setup(String),
}

impl From<sqlx::Error> for SinkError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error)
    }
}

/// A sqlx error in one line, without sqlx's prefixes: Postgres's own message and SQLSTATE, or
/// what kept the connection from answering.
fn describe(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(e) => match e.code() {
            Some(code) => format!("Postgres answered: {} (SQLSTATE {code})", e.message()),
            None => format!("Postgres answered: {}", e.message()),
        },
        sqlx::Error::Io(e) => format!("Postgres connection failed: {e}"),
        sqlx::Error::PoolTimedOut => {
            "no Postgres connection became free or could be opened in time".into()
        }
        other => format!("Postgres: {other}"),
    }
}

/// `query_canceled`: here, `statement_timeout`.
const STATEMENT_TIMEOUT: &str = "57014";

impl SinkError {
    /// The SQLSTATE of an error Postgres itself returned.
    pub fn sqlstate(&self) -> Option<String> {
        self.answered()
            .and_then(|e| e.code())
            .map(|c| c.into_owned())
    }

    /// The message of an error Postgres itself returned.
    pub fn database_message(&self) -> Option<&str> {
        self.answered().map(|e| e.message())
    }

    /// Postgres refused a row for its data: SQLSTATE class 22 (data exception) or 23
    /// (integrity constraint violation), or 57014 (the statement ran past `statement_timeout`:
    /// lock waits end earlier, at `lock_timeout`, so it is the work the data asks for). The
    /// event is at fault, not a dependency: the rows are written again by halves, and only a
    /// row that fails alone is rejected (a cancel that was load, not data, does not repeat).
    pub fn rejects_row(&self) -> bool {
        let sqlstate = self.sqlstate();
        let sqlstate = sqlstate.as_deref();
        self.is_statement_timeout()
            || matches!(sqlstate.and_then(|s| s.get(..2)), Some("22" | "23"))
    }

    /// The statement ran past `statement_timeout` (not a cancel by an operator, also 57014).
    pub fn is_statement_timeout(&self) -> bool {
        self.sqlstate().as_deref() == Some(STATEMENT_TIMEOUT)
            && self
                .database_message()
                .is_some_and(|m| m.contains("statement timeout"))
    }

    fn answered(&self) -> Option<&dyn sqlx::error::DatabaseError> {
        match self {
            Self::Database(sqlx::Error::Database(e)) => Some(e.as_ref()),
            _ => None,
        }
    }
}

impl Classify for SinkError {
    /// Permanent: the data of the statement ([`SinkError::rejects_row`]) or the setup (a role
    /// that bypasses RLS, an invalid URL). Everything else (connections, lock and connect
    /// timeouts, serialization failures, a missing table or grant an operator can fix) is
    /// transient.
    fn class(&self) -> ErrorClass {
        match self {
            Self::Setup(_) => ErrorClass::Permanent,
            Self::Database(_) if self.rejects_row() => ErrorClass::Permanent,
            Self::Database(_) | Self::Unreachable { .. } => ErrorClass::Transient,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    /// An error as Postgres returns it, with a SQLSTATE.
    #[derive(Debug, thiserror::Error)]
    #[error("SQLSTATE {0}")]
    struct Answered(&'static str, &'static str);

    impl sqlx::error::DatabaseError for Answered {
        fn message(&self) -> &str {
            self.1
        }

        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }

        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }

        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }

        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }

        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn answered(sqlstate: &'static str) -> SinkError {
        answered_with(sqlstate, "answered")
    }

    fn answered_with(sqlstate: &'static str, message: &'static str) -> SinkError {
        SinkError::Database(sqlx::Error::Database(Box::new(Answered(sqlstate, message))))
    }

    #[test]
    fn data_errors_are_permanent_and_everything_else_transient() {
        // 22: data exception (numeric overflow, invalid text); 23: constraint violations;
        // 57014: the statement ran past statement_timeout (blamed on a row only when it fails
        // alone).
        for sqlstate in ["22003", "22P02", "23505", "23514", "23503"] {
            let error = answered(sqlstate);
            assert!(error.is_permanent(), "{sqlstate}");
            assert_eq!(error.sqlstate().as_deref(), Some(sqlstate));
        }
        let timeout = "canceling statement due to statement timeout";
        assert!(answered_with("57014", timeout).is_permanent());
        let cancel = "canceling statement due to user request";
        assert!(
            answered_with("57014", cancel).is_transient(),
            "an operator's cancel"
        );
        // Serialization failure, deadlock, lock timeout, undefined table, no grant, connection
        // failure, too many connections: retried.
        for sqlstate in [
            "40001", "40P01", "55P03", "42P01", "42501", "08006", "53300",
        ] {
            assert!(answered(sqlstate).is_transient(), "{sqlstate}");
        }
        assert!(SinkError::Database(sqlx::Error::PoolTimedOut).is_transient());
        assert!(SinkError::Setup("bypasses RLS".into()).is_permanent());
    }
}
