//! Which failures heal by themselves, and the one way this crate waits for them.
//!
//! Every error type says whether it is [`ErrorClass::Transient`] (a dependency is down or slow:
//! retrying the same work can succeed once it is back) or [`ErrorClass::Permanent`] (retrying
//! the same work can never succeed: an event's data is at fault, and it is dead-lettered, or the
//! configuration is, and the command exits). Every retry loop waits with a [`Backoff`], which
//! doubles its delay up to a bound and stops waiting the moment shutdown is requested.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Whether retrying can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// May heal without changing the input; retried with backoff.
    Transient,
    /// The input (an event, the configuration) is at fault; retrying it can never succeed.
    Permanent,
}

/// An error that knows its [`ErrorClass`].
pub trait Classify {
    fn class(&self) -> ErrorClass;

    fn is_permanent(&self) -> bool {
        self.class() == ErrorClass::Permanent
    }

    fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }
}

/// Delays between attempts: `first`, doubling up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub first: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// A batch step (decode, dead letters, write): quick first retry, bounded by 10 s.
    pub const BATCH: Self = Self::new(100, 10_000);
    /// Connecting at startup.
    pub const STARTUP: Self = Self::new(250, 10_000);
    /// Reading stored offsets inside a rebalance.
    pub const ASSIGN: Self = Self::new(100, 5_000);
    /// The cache drainer, after a failed pass (it passes every second when all is well).
    pub const DRAIN: Self = Self::new(2_000, 10_000);
    /// Replay waiting for the schema registry.
    pub const REPLAY: Self = Self::new(200, 10_000);
    /// Receiving from Kafka after an error (librdkafka reconnects by itself; a missing topic
    /// needs an operator): a short first pause, doubling up to 5 s.
    pub const CONSUME: Self = Self::new(100, 5_000);
    /// Replay receiving from Kafka after an error: a fixed pause.
    pub const REPLAY_CONSUME: Self = Self::new(200, 200);

    const fn new(first_ms: u64, max_ms: u64) -> Self {
        Self {
            first: Duration::from_millis(first_ms),
            max: Duration::from_millis(max_ms),
        }
    }

    pub fn backoff(self) -> Backoff {
        Backoff {
            policy: self,
            next: self.first,
        }
    }
}

/// The running state of a [`RetryPolicy`]: the delay before the next attempt.
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    next: Duration,
}

impl Backoff {
    /// The delay the next [`Backoff::wait`] sleeps.
    pub fn delay(&self) -> Duration {
        self.next
    }

    /// Sleeps the current delay and doubles it (up to the policy's max). False when shutdown
    /// was requested first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.advance();
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    /// The delay to wait now, for a loop that sleeps by itself; the next one is doubled.
    pub fn advance(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.policy.max);
        delay
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.policy.first;
    }
}

/// Awaits `attempt` until it succeeds. After each failure, `report` gets the error and the
/// delay about to be waited, then the backoff waits. `None` when shutdown was requested while
/// waiting. Callers decide what reaches this loop: a permanent error that must not be retried
/// is turned into a success value by the attempt itself.
pub async fn until_ok<T, E, Fut>(
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
    mut report: impl FnMut(&E, Duration),
    mut attempt: impl FnMut() -> Fut,
) -> Option<T>
where
    Fut: Future<Output = Result<T, E>>,
{
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(error) => {
                report(&error, backoff.delay());
                if !backoff.wait(shutdown).await {
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retries_with_doubling_delays_until_ok() {
        let mut backoff = RetryPolicy::new(1, 3).backoff();
        let mut delays = Vec::new();
        let mut attempts = 0;
        let shutdown = CancellationToken::new();
        let result = until_ok(
            &mut backoff,
            &shutdown,
            |_: &&str, delay| delays.push(delay.as_millis()),
            || {
                attempts += 1;
                let done = attempts == 4;
                async move {
                    if done {
                        Ok(attempts)
                    } else {
                        Err("down")
                    }
                }
            },
        )
        .await;
        assert_eq!(result, Some(4));
        assert_eq!(delays, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn shutdown_stops_the_wait() {
        let mut backoff = RetryPolicy::new(60_000, 60_000).backoff();
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let result: Option<()> = until_ok(
            &mut backoff,
            &shutdown,
            |_: &&str, _| {},
            || async { Err("down") },
        )
        .await;
        assert_eq!(result, None);
    }
}
