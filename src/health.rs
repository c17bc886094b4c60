//! Readiness: which dependencies currently fail, and why. Every part of the worker reports to
//! one [`Health`]; `/readyz` reads it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// What readiness is made of: each dependency the worker needs, and its own startup. In the
/// order `/readyz` lists them (by name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    Kafka,
    Postgres,
    Redis,
    SchemaRegistry,
    /// Connecting to every dependency at start.
    Startup,
}

impl Component {
    /// The name in `/readyz` and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kafka => "kafka",
            Self::Postgres => "postgres",
            Self::Redis => "redis",
            Self::SchemaRegistry => "schema_registry",
            Self::Startup => "startup",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The failing components, each with its last reason; cheap to clone and share.
#[derive(Clone, Default)]
pub struct Health {
    failing: Arc<Mutex<BTreeMap<Component, String>>>,
}

impl Health {
    pub fn failed(&self, component: Component, reason: impl ToString) {
        self.lock().insert(component, reason.to_string());
    }

    pub fn recovered(&self, component: Component) {
        self.lock().remove(&component);
    }

    pub fn is_failing(&self, component: Component) -> bool {
        self.lock().contains_key(&component)
    }

    pub fn is_ready(&self) -> bool {
        self.lock().is_empty()
    }

    /// `ready`, or one line per failing component with its reason.
    pub fn report(&self) -> String {
        let failing = self.lock();
        if failing.is_empty() {
            return "ready\n".into();
        }
        failing.iter().map(|(c, r)| format!("{c}: {r}\n")).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Component, String>> {
        self.failing.lock().expect("health lock")
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
}
