//! The command line: clap and anyhow live here (and in the tools), nowhere below. Each command
//! is a file; [`Cli::run`] dispatches.

mod args;
mod check;
mod completions;
mod dead_letters;
mod demo;
mod produce;
mod replay;
mod run;
mod show_config;
mod status;

use clap::{Parser, Subcommand};

use crate::config::{ConfigError, Settings};

pub use crate::tools::describe_error;
pub use args::Overrides;

/// `--version`: the package version, the git commit built (see build.rs) and the build date.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TENANTSTREAM_COMMIT"),
    ", built ",
    env!("TENANTSTREAM_BUILD_DATE"),
    ")"
);

/// Kafka-native worker for multi-tenant SaaS: Avro order and configuration events into
/// Postgres under tenant row-level security, Redis cache refresh, dead letters, Prometheus
/// metrics, and topic replay to rebuild caches.
///
/// Every flag can also be set by its environment variable (shown in each command's --help) or in
/// a TOML file given with --config; flags win over the environment, which wins over the file.
#[derive(Parser)]
#[command(version = VERSION, propagate_version = true)]
pub struct Cli {
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
    Replay(replay::ReplayArgs),
    /// Send realistic configuration changes, then order traffic for the same tenants, and
    /// print where each partition ended.
    Produce(produce::ProduceArgs),
    /// Run the whole pipeline on an in-process Kafka mock cluster against local Postgres and
    /// Redis, then print a summary.
    Demo(demo::DemoArgs),
    /// Validate configuration and schemas, and report which dependencies answer: one line each,
    /// naming its address (passwords redacted) and what was checked; exits non-zero if any
    /// fails.
    Check,
    /// Summarise the dead-letter topic: how many, how many of each error code, and the newest
    /// with their reasons and source positions (reads from the start; joins no group).
    DeadLetters(dead_letters::DeadLettersArgs),
    /// Show the consumer group's progress per partition of the orders and configuration
    /// topics: offset stored in Postgres, end offset on the broker, and lag.
    Status,
    /// Print shell completions to stdout, e.g. `tenantstream completions bash >
    /// ~/.local/share/bash-completion/completions/tenantstream`.
    Completions(completions::CompletionsArgs),
    /// Print the effective configuration (defaults, then --config file, then environment, then
    /// flags) as TOML that --config reads back; passwords are redacted as ***.
    Config,
}

impl Cli {
    /// The settings the flags, the environment and the config file give.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        self.overrides.load()
    }

    /// Runs the command.
    pub async fn run(self, settings: Settings) -> anyhow::Result<()> {
        match self.command {
            Command::Run => run::run(settings).await,
            Command::Migrate => run::migrate(&settings).await,
            Command::Replay(args) => replay::command(&settings, &args).await,
            Command::Produce(args) => produce::produce(&settings, &args).await,
            Command::Demo(args) => {
                let shutdown = run::cancelled_on_signals();
                crate::tools::demo::run(settings, &(&args).into(), shutdown).await
            }
            Command::Check => check::check(&settings, self.overrides.config.as_deref()).await,
            Command::Config => {
                show_config::show_config(&settings, self.overrides.config.as_deref());
                Ok(())
            }
            Command::DeadLetters(args) => dead_letters::command(&settings, &args).await,
            Command::Status => status::command(&settings).await,
            Command::Completions(args) => {
                completions::command(&args);
                Ok(())
            }
        }
    }
}
