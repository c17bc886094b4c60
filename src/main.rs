use clap::{Parser, Subcommand};

use tenantstream::commands::{self, ProduceArgs};
use tenantstream::config::{Overrides, Settings};
use tenantstream::demo::DemoArgs;
use tenantstream::replay::ReplayArgs;

/// Kafka-native worker for multi-tenant SaaS: Avro order and configuration events into
/// Postgres under tenant row-level security, Redis cache refresh, dead letters, Prometheus
/// metrics, and topic replay to rebuild caches.
///
/// Every flag can also be set by its environment variable (shown in each command's --help) or in
/// a TOML file given with --config; flags win over the environment, which wins over the file.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker until SIGTERM/SIGINT.
    Run,
    /// Create the database if missing and apply migrations (as the owner: --admin-database-url).
    Migrate,
    /// Rebuild Redis from the topics (beside the live worker, safely): reads each partition up
    /// to the end it sees at start, refreshes the keys its events name from Postgres.
    Replay(ReplayArgs),
    /// Send realistic order traffic to the orders topic.
    Produce(ProduceArgs),
    /// Run the whole pipeline on an in-process Kafka mock cluster against local Postgres and
    /// Redis, then print a summary.
    Demo(DemoArgs),
    /// Validate configuration and schemas, and report which dependencies answer.
    Check,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(&cli.overrides) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    tenantstream::telemetry::init(settings.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run => commands::run(settings).await,
            Command::Migrate => commands::migrate(&settings).await,
            Command::Replay(args) => tenantstream::replay::command(&settings, &args).await,
            Command::Produce(args) => commands::produce(&settings, &args).await,
            Command::Demo(args) => tenantstream::demo::run(settings, &args).await,
            Command::Check => commands::check(&settings).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
