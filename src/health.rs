//! Readiness: which dependencies currently fail, and why. Every part of the worker reports to
//! one [`Health`]; `/readyz` reads it.
//!
//! Health also keeps the logs of a failing dependency quiet and honest: the first failure of an
//! episode is logged at once, then one line per `LOG_EVERY` with the number of failures since
//! the last line, and the recovery once, with the episode's length and failure count.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::metrics::Component;
use crate::metrics::{self, Stage};

/// While a dependency keeps failing, at most one log line per this interval.
pub const LOG_EVERY: Duration = Duration::from_secs(30);

/// An episode ends (and its recovery is logged) only once this long has passed since its last
/// failure: one path's success (another partition's batch, the drainer's pass) must not end the
/// episode of a path that keeps failing, between two of its retries (at most 10 s apart).
pub const RECOVERY_QUIET: Duration = Duration::from_secs(15);

/// The log target of dependency failures and recoveries (`RUST_LOG=tenantstream::dependency=…`).
const TARGET: &str = "tenantstream::dependency";

/// The failing components, each with its last reason; cheap to clone and share.
#[derive(Clone)]
pub struct Health {
    state: Arc<Mutex<State>>,
    recovery_quiet: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            recovery_quiet: RECOVERY_QUIET,
        }
    }
}

#[derive(Default)]
struct State {
    failing: BTreeMap<Component, String>,
    episodes: BTreeMap<Component, Episode>,
}

/// A run of failures of one component, from its first failure to its recovery.
struct Episode {
    since: Instant,
    last_failure: Instant,
    failures: u64,
    /// Failures since the last log line.
    unlogged: u64,
    logged_at: Instant,
}

impl Health {
    /// `component` is not ready, for `reason` (a state, such as "not yet assigned partitions",
    /// or a failure already reported through [`Health::transient`]). Not logged.
    pub fn failed(&self, component: Component, reason: impl ToString) {
        self.lock().failing.insert(component, reason.to_string());
    }

    /// `component` is ready again. Ends its failure episode, if any, with one log line, once
    /// `RECOVERY_QUIET` has passed since the episode's last failure.
    pub fn recovered(&self, component: Component) {
        let mut state = self.lock();
        state.failing.remove(&component);
        let quiet = self.recovery_quiet;
        let ended = state
            .episodes
            .get(&component)
            .is_some_and(|e| e.last_failure.elapsed() >= quiet);
        if ended {
            let episode = state.episodes.remove(&component).expect("checked");
            tracing::info!(
                target: TARGET,
                component = component.as_str(),
                failures = episode.failures,
                failing_for_ms = episode.last_failure.duration_since(episode.since).as_millis() as u64,
                "{component} recovered."
            );
        }
    }

    /// A dependency failed at `stage` and the work is retried after `retry_in`: not ready,
    /// counted in `tenantstream_transient_errors_total`, and logged (see the module doc).
    pub fn transient(
        &self,
        component: Component,
        stage: Stage,
        error: &dyn fmt::Display,
        retry_in: Duration,
    ) {
        let mut state = self.lock();
        state.failing.insert(component, error.to_string());
        self.record_failure(&mut state, component, stage, error, Some(retry_in));
    }

    /// A failure that does not make the worker unready (one broker of several unreachable,
    /// say): counted and logged like [`Health::transient`].
    pub fn failure_without_readiness(
        &self,
        component: Component,
        stage: Stage,
        error: &dyn fmt::Display,
        retry_in: Option<Duration>,
    ) {
        let mut state = self.lock();
        self.record_failure(&mut state, component, stage, error, retry_in);
    }

    /// Counts and logs one failure in `component`'s episode (see the module doc).
    fn record_failure(
        &self,
        state: &mut State,
        component: Component,
        stage: Stage,
        error: &dyn fmt::Display,
        retry_in: Option<Duration>,
    ) {
        metrics::transient_error(component, stage);
        let now = Instant::now();
        let episode = state.episodes.entry(component).or_insert(Episode {
            since: now,
            last_failure: now,
            failures: 0,
            unlogged: 0,
            logged_at: now,
        });
        episode.failures += 1;
        episode.last_failure = now;
        episode.unlogged += 1;
        let retry_in_ms = retry_in.map(|d| d.as_millis() as u64);
        if episode.failures == 1 {
            episode.unlogged = 0;
            tracing::warn!(
                target: TARGET,
                component = component.as_str(),
                stage = stage.as_str(),
                %error,
                retry_in_ms,
                "{component} failing; retrying. Repeats are counted and logged every {}s.",
                LOG_EVERY.as_secs()
            );
        } else if now.duration_since(episode.logged_at) >= LOG_EVERY {
            tracing::warn!(
                target: TARGET,
                component = component.as_str(),
                stage = stage.as_str(),
                %error,
                retry_in_ms,
                failures_since_last_line = episode.unlogged,
                failing_for_ms = now.duration_since(episode.since).as_millis() as u64,
                "{component} still failing; retrying."
            );
            episode.unlogged = 0;
            episode.logged_at = now;
        }
    }

    pub fn is_failing(&self, component: Component) -> bool {
        self.lock().failing.contains_key(&component)
    }

    pub fn is_ready(&self) -> bool {
        self.lock().failing.is_empty()
    }

    /// `ready`, or one line per failing component with its reason.
    pub fn report(&self) -> String {
        let state = self.lock();
        if state.failing.is_empty() {
            return "ready\n".into();
        }
        state
            .failing
            .iter()
            .map(|(c, r)| format!("{c}: {r}\n"))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("health lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_until_a_component_fails_and_again_once_it_recovers() {
        let health = Health::default();
        assert!(health.is_ready());
        health.failed(Component::Redis, "connection refused");
        assert!(!health.is_ready() && health.is_failing(Component::Redis));
        assert_eq!(health.report(), "redis: connection refused\n");
        health.recovered(Component::Redis);
        assert_eq!(health.report(), "ready\n");
    }

    #[test]
    fn a_success_soon_after_a_failure_does_not_end_the_episode() {
        let health = Health::default();
        health.transient(
            Component::Postgres,
            Stage::Sink,
            &"lock timeout",
            Duration::ZERO,
        );
        health.recovered(Component::Postgres);
        assert!(health.is_ready(), "readiness follows the last outcome");
        assert_eq!(health.lock().episodes[&Component::Postgres].failures, 1);
        health.transient(
            Component::Postgres,
            Stage::Sink,
            &"lock timeout",
            Duration::ZERO,
        );
        let state = health.lock();
        let episode = &state.episodes[&Component::Postgres];
        assert_eq!(
            (episode.failures, episode.unlogged),
            (2, 1),
            "no second first line"
        );
    }

    #[test]
    fn an_episode_counts_its_failures_and_ends_with_the_recovery() {
        let health = Health {
            recovery_quiet: Duration::ZERO,
            ..Health::default()
        };
        let error = "connection refused";
        for _ in 0..5 {
            health.transient(Component::Kafka, Stage::Consume, &error, Duration::ZERO);
        }
        health.failure_without_readiness(Component::Redis, Stage::Cache, &error, None);
        {
            let state = health.lock();
            assert_eq!(state.episodes[&Component::Kafka].failures, 5);
            // Logged once at the first failure; the next line waits for LOG_EVERY.
            assert_eq!(state.episodes[&Component::Kafka].unlogged, 4);
        }
        assert!(health.is_failing(Component::Kafka));
        assert!(!health.is_failing(Component::Redis));
        health.recovered(Component::Kafka);
        let state = health.lock();
        assert!(!state.episodes.contains_key(&Component::Kafka));
        assert!(state.episodes.contains_key(&Component::Redis));
    }
}
