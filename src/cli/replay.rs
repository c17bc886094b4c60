//! `tenantstream replay`: the flags, and the summary printed at the end.

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clock::Clock;
use crate::config::Settings;
use crate::health::Health;
use crate::monitor::TenantMonitor;
use crate::pipeline::Worker;
use crate::tools::replay::{self, ReplayOptions, StartFrom};
use crate::{http, metrics};

/// Flags of `tenantstream replay`.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Replay")]
pub struct ReplayArgs {
    /// Topic to replay; repeat for several. Default: the configuration topic, then the orders
    /// topic.
    #[arg(long = "topic", value_name = "TOPIC")]
    pub topics: Vec<String>,
    /// Where to start in each partition: `earliest`, or an RFC 3339 time (the first message at
    /// or after it), e.g. 2026-11-27T10:00:00Z.
    #[arg(long, default_value = "earliest", value_name = "earliest|TIME")]
    pub from: StartFrom,
    /// Rebuild only this tenant's keys (shared keys are left alone).
    #[arg(long, value_name = "UUID")]
    pub tenant: Option<Uuid>,
    /// Retire each affected keyspace first (bump its generation; old keys expire by TTL).
    #[arg(long)]
    pub flush: bool,
    /// Read and count what would be rebuilt; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also write the events to Postgres (idempotent: newer rows are kept).
    #[arg(long)]
    pub rewrite_db: bool,
    /// Events read before their keys are rebuilt: in slices of a tenth of the chunk (at most
    /// 2,000 keys), up to three at a time (at most `database.max_connections`), each read from
    /// Postgres and written to Redis in pipelines.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub chunk: u32,
}

impl From<&ReplayArgs> for ReplayOptions {
    fn from(args: &ReplayArgs) -> Self {
        Self {
            topics: args.topics.clone(),
            from: args.from,
            tenant: args.tenant,
            flush: args.flush,
            dry_run: args.dry_run,
            rewrite_db: args.rewrite_db,
            chunk: args.chunk as usize,
        }
    }
}

/// `tenantstream replay`: runs the replay and prints its summary. With `serve_http` (the
/// `--http-listen` flag or its variable was given), `/metrics` shows its progress meanwhile.
pub async fn command(
    settings: &Settings,
    args: &ReplayArgs,
    serve_http: bool,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    if serve_http {
        serve_metrics(settings, &shutdown).await;
    }
    let summary = replay::run(settings, &args.into()).await;
    shutdown.cancel();
    println!("{}", summary?);
    Ok(())
}

/// Serves `/metrics` (replay progress, process metrics) until `shutdown`. A port that cannot be
/// bound (a worker beside it holds it, say) is a warning: the replay goes on without it.
async fn serve_metrics(settings: &Settings, shutdown: &CancellationToken) {
    let listen = &settings.http.listen;
    let handle = metrics::install_recorder();
    Worker::register_metrics(settings);
    // Replay keeps no per-tenant figures: its /tenants lists none.
    let tenants = TenantMonitor::for_settings(&settings.http, Clock::system());
    let served = http::serve(listen, Health::default(), handle, tenants, shutdown.clone());
    match served.await {
        Ok((addr, _task)) => tracing::info!(%addr, "Serving the replay's /metrics."),
        Err(error) => {
            tracing::warn!(%error, listen, "Cannot serve /metrics; replaying without it.");
        }
    }
}
