//! The one HTTP port: `/metrics` (Prometheus), `/healthz` (process alive), `/readyz` (every
//! dependency reachable; 503 with the failing ones named otherwise). Routes only.

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::health::Health;

#[derive(Clone)]
struct AppState {
    health: Health,
    metrics: PrometheusHandle,
}

/// Binds `addr` (host:port; a host name is resolved) and serves until `shutdown`. Returns the
/// bound address (port 0 picks one).
pub async fn serve(
    addr: &str,
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
    crate::metrics::scraped(state.health.is_ready());
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
