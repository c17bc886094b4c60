//! The one HTTP port: `/metrics` (Prometheus), `/healthz` (process alive), `/readyz` (every
//! dependency reachable; 503 with the failing ones named otherwise).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

/// Readiness: which dependencies currently fail, and why.
#[derive(Clone, Default)]
pub struct Health {
    failing: Arc<Mutex<BTreeMap<&'static str, String>>>,
}

impl Health {
    pub fn failed(&self, component: &'static str, reason: impl ToString) {
        self.failing
            .lock()
            .expect("health lock")
            .insert(component, reason.to_string());
    }

    pub fn recovered(&self, component: &'static str) {
        self.failing.lock().expect("health lock").remove(component);
    }

    pub fn is_failing(&self, component: &str) -> bool {
        self.failing
            .lock()
            .expect("health lock")
            .contains_key(component)
    }

    pub fn is_ready(&self) -> bool {
        self.failing.lock().expect("health lock").is_empty()
    }

    fn report(&self) -> String {
        let failing = self.failing.lock().expect("health lock");
        if failing.is_empty() {
            return "ready\n".into();
        }
        failing.iter().map(|(c, r)| format!("{c}: {r}\n")).collect()
    }
}

#[derive(Clone)]
struct AppState {
    health: Health,
    metrics: PrometheusHandle,
}

/// Binds `addr` and serves until `shutdown`. Returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { health, metrics });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "HTTP server failed.");
        }
    });
    Ok((bound, task))
}

async fn render_metrics(State(state): State<AppState>) -> String {
    state.metrics.render()
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    let status = if state.health.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, state.health.report())
}
