//! `tenantstream run` and `tenantstream migrate`.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Settings;
use crate::health::{Component, Health};
use crate::http;
use crate::metrics;
use crate::monitor::TenantMonitor;
use crate::pipeline::Worker;
use crate::sink;

/// A token cancelled on SIGTERM or SIGINT.
pub fn cancelled_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received."),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received."),
        }
        cancel.cancel();
    });
    token
}

/// `tenantstream run`: the HTTP port, then the worker, until a signal.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let shutdown = cancelled_on_signals();
    let health = Health::default();
    health.failed(Component::Startup, "connecting to dependencies");
    let listen = &settings.http.listen;
    let tenants = TenantMonitor::for_settings(&settings.http, Clock::system());
    let (addr, http_task) = http::serve(
        listen,
        health.clone(),
        metrics::install_recorder(),
        tenants.clone(),
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%addr, "Serving /metrics, /healthz, /readyz and /tenants.");
    Worker::register_metrics(&settings);
    if let Some(worker) = Worker::connect_retrying(settings, health, &shutdown).await? {
        worker
            .with_tenant_monitor(tenants)
            .run(shutdown.clone())
            .await?;
    }
    shutdown.cancel();
    let _ = http_task.await;
    tracing::info!("Stopped.");
    Ok(())
}

/// `tenantstream migrate`.
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let url = &settings.database.admin_url;
    let done = sink::migrate(url.expose())
        .await
        .with_context(|| format!("migrating {url}"))?;
    println!("{}", migrate_report(&done, &url.to_string()));
    Ok(())
}

/// What `migrate` did, in words: database created, migrations applied, or already up to date.
fn migrate_report(done: &sink::Migrated, url: &str) -> String {
    let mut lines = Vec::new();
    if done.created_database {
        lines.push(format!("created the database at {url}"));
    }
    lines.push(match done.applied {
        0 => format!("{url} is up to date: all {} migrations applied", done.total),
        n => format!(
            "applied {n} migration{} to {url}; all {} are applied",
            if n == 1 { "" } else { "s" },
            done.total
        ),
    });
    lines.join("\n")
}
