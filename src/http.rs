//! The one HTTP port: `/metrics` (Prometheus), `/healthz` (process alive), `/readyz` (every
//! dependency reachable; 503 with the failing ones named otherwise), and the tenant health API
//! (`/tenants/{tenant_id}/health`, `/tenants?sort=&limit=`, JSON). Routes only.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::health::Health;
use crate::monitor::{Sort, TenantMonitor};

/// `GET /tenants` without `limit`.
const DEFAULT_LIMIT: usize = 20;

#[derive(Clone)]
struct AppState {
    health: Health,
    metrics: PrometheusHandle,
    tenants: TenantMonitor,
}

/// Binds `addr` (host:port; a host name is resolved) and serves until `shutdown`. Returns the
/// bound address (port 0 picks one).
pub async fn serve(
    addr: &str,
    health: Health,
    metrics: PrometheusHandle,
    tenants: TenantMonitor,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/tenants", get(list_tenants))
        .route("/tenants/{tenant_id}/health", get(tenant_health))
        .with_state(AppState {
            health,
            metrics,
            tenants,
        });
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
    let mut text = state.metrics.render();
    text.push_str(&state.tenants.render_prometheus());
    text
}

/// A JSON error: `{"error": "..."}` with its status.
fn error(status: StatusCode, message: String) -> Response {
    let body = serde_json::json!({ "error": message });
    (status, Json(body)).into_response()
}

async fn tenant_health(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let Ok(tenant) = Uuid::parse_str(&id) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a tenant id (a UUID)"),
        );
    };
    match state.tenants.health(tenant) {
        Some(health) => Json(health).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!(
                "tenant {tenant} is unknown to this worker: none of its events was consumed \
                 since it started, or the tenant was idle longer than the idle period"
            ),
        ),
    }
}

async fn list_tenants(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let sort = query.get("sort").map_or("volume", String::as_str);
    let Some(order) = Sort::parse(sort) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("sort={sort:?} is not one of {}", Sort::NAMES),
        );
    };
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => DEFAULT_LIMIT,
        Some(Ok(limit)) if limit > 0 => limit,
        Some(_) => {
            let limit = &query["limit"];
            return error(
                StatusCode::BAD_REQUEST,
                format!("limit={limit:?} is not a positive whole number"),
            );
        }
    };
    let body = serde_json::json!({
        "sort": sort,
        "tenants_tracked": state.tenants.len(),
        "tenants": state.tenants.ranking(order, limit),
    });
    Json(body).into_response()
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    let status = if state.health.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, state.health.report())
}
