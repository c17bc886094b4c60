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

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{ConfigError, Settings};

pub use crate::tools::describe_error;
pub use args::Overrides;
use args::{
    AdminFlags, AllFlags, FileFlags, KafkaFlags, PostgresFlags, RedisFlags, SchemaFlags,
    WorkerFlags,
};

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
    file: FileFlags,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker until SIGTERM/SIGINT.
    Run {
        #[command(flatten)]
        flags: AllFlags,
    },
    /// Create the database if missing and apply migrations (as the owner: --admin-database-url).
    Migrate {
        #[command(flatten)]
        admin: AdminFlags,
    },
    /// Rebuild Redis from the topics (beside the live worker, safely): reads each partition up
    /// to the end it sees at start, refreshes the keys its events name from Postgres.
    Replay {
        #[command(flatten)]
        args: replay::ReplayArgs,
        #[command(flatten)]
        flags: AllFlags,
    },
    /// Send realistic configuration changes, then order traffic for the same tenants, and
    /// print where each partition ended.
    Produce {
        #[command(flatten)]
        args: produce::ProduceArgs,
        #[command(flatten)]
        kafka: KafkaFlags,
        #[command(flatten)]
        schemas: SchemaFlags,
    },
    /// Run the whole pipeline on an in-process Kafka mock cluster against local Postgres and
    /// Redis, then print a summary.
    Demo {
        #[command(flatten)]
        args: demo::DemoArgs,
        #[command(flatten)]
        postgres: PostgresFlags,
        #[command(flatten)]
        admin: AdminFlags,
        #[command(flatten)]
        redis: RedisFlags,
        #[command(flatten)]
        schemas: SchemaFlags,
        #[command(flatten)]
        worker: WorkerFlags,
    },
    /// Validate configuration and schemas, and report which dependencies answer: one line each,
    /// naming its address (passwords redacted) and what was checked; exits non-zero if any
    /// fails.
    Check {
        #[command(flatten)]
        flags: AllFlags,
    },
    /// Summarise the dead-letter topic: how many, how many of each error code, and the newest
    /// with their reasons and source positions (reads from the start; joins no group).
    DeadLetters {
        #[command(flatten)]
        args: dead_letters::DeadLettersArgs,
        #[command(flatten)]
        kafka: KafkaFlags,
    },
    /// Show the consumer group's progress per partition of the orders and configuration
    /// topics: offset stored in Postgres, end offset on the broker, and lag.
    Status {
        #[command(flatten)]
        kafka: KafkaFlags,
        #[command(flatten)]
        postgres: PostgresFlags,
    },
    /// Print shell completions to stdout, e.g. `tenantstream completions bash >
    /// ~/.local/share/bash-completion/completions/tenantstream`.
    Completions(completions::CompletionsArgs),
    /// Print the effective configuration (defaults, then --config file, then environment, then
    /// flags) as TOML that --config reads back; passwords are redacted as ***.
    Config {
        #[command(flatten)]
        flags: AllFlags,
    },
}

/// The command line, with each flag's default (from [`Settings::default`]) in its help.
pub fn command() -> clap::Command {
    let defaults = Settings::default();
    let mut command = Cli::command();
    let names: Vec<String> = command
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in names {
        command = command.mut_subcommand(name, |mut sub| {
            let ids: Vec<String> = sub
                .get_arguments()
                .map(|a| a.get_id().to_string())
                .collect();
            for id in ids {
                if let Some(value) = args::default_of(&id, &defaults) {
                    sub = sub.mut_arg(id, |arg| {
                        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                        arg.help(format!("{help} [default: {value}]"))
                    });
                }
            }
            sub
        });
    }
    command
}

impl Cli {
    /// Parses the process's arguments (and environment) with `command()`. An invalid value
    /// that came from an environment variable is reported naming that variable.
    pub fn parse_args() -> Self {
        let matches = command()
            .try_get_matches()
            .unwrap_or_else(|error| exit_naming_the_variable(error));
        Self::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
    }

    /// The settings the flags, the environment and the config file give.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        self.overrides().load()
    }

    /// The groups of flags this command takes; the others stay empty.
    fn overrides(&self) -> Overrides {
        let none = AllFlags::default();
        let all = match &self.command {
            Command::Run { flags }
            | Command::Replay { flags, .. }
            | Command::Check { flags }
            | Command::Config { flags } => flags.clone(),
            Command::Migrate { admin } => AllFlags {
                admin: admin.clone(),
                ..none
            },
            Command::Produce { kafka, schemas, .. } => AllFlags {
                kafka: kafka.clone(),
                schemas: schemas.clone(),
                ..none
            },
            Command::Demo {
                postgres,
                admin,
                redis,
                schemas,
                worker,
                ..
            } => AllFlags {
                postgres: postgres.clone(),
                admin: admin.clone(),
                redis: redis.clone(),
                schemas: schemas.clone(),
                worker: worker.clone(),
                ..none
            },
            Command::DeadLetters { kafka, .. } => AllFlags {
                kafka: kafka.clone(),
                ..none
            },
            Command::Status { kafka, postgres } => AllFlags {
                kafka: kafka.clone(),
                postgres: postgres.clone(),
                ..none
            },
            Command::Completions(_) => none,
        };
        all.overrides(&self.file)
    }

    /// Runs the command.
    pub async fn run(self, settings: Settings) -> anyhow::Result<()> {
        let file = self.file.config.as_deref();
        match self.command {
            Command::Run { .. } => run::run(settings).await,
            Command::Migrate { .. } => run::migrate(&settings).await,
            Command::Replay { args, flags } => {
                let serve = flags.worker.http_listen.is_some();
                replay::command(&settings, &args, serve).await
            }
            Command::Produce { args, .. } => produce::produce(&settings, &args).await,
            Command::Demo { args, .. } => {
                let shutdown = run::cancelled_on_signals();
                crate::tools::demo::run(settings, &(&args).into(), shutdown).await
            }
            Command::Check { .. } => check::check(&settings, file).await,
            Command::Config { .. } => {
                show_config::show_config(&settings, file);
                Ok(())
            }
            Command::DeadLetters { args, .. } => dead_letters::command(&settings, &args).await,
            Command::Status { .. } => status::command(&settings).await,
            Command::Completions(args) => {
                completions::command(&args);
                Ok(())
            }
        }
    }
}

/// Exits with clap's error, but an invalid value read from an environment variable (not given
/// as a flag) is named by its variable, which is where the operator must fix it.
fn exit_naming_the_variable(error: clap::Error) -> ! {
    if let Some(message) = invalid_environment_value(&error) {
        eprintln!("{message}");
        std::process::exit(2);
    }
    error.exit()
}

/// For an invalid value read from an environment variable (not given as a flag): the error
/// naming that variable.
fn invalid_environment_value(error: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        error.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    // `--batch-max-events <BATCH_MAX_EVENTS>`
    let long = arg.split_whitespace().next()?;
    if std::env::args().any(|a| a == long || a.starts_with(&format!("{long}="))) {
        return None;
    }
    let command = Cli::command();
    let variable = command
        .get_subcommands()
        .flat_map(|s| s.get_arguments())
        .chain(command.get_arguments())
        .find(|a| a.get_long().is_some_and(|l| format!("--{l}") == long))?
        .get_env()?
        .to_string_lossy()
        .into_owned();
    let value = std::env::var(&variable).unwrap_or_default();
    let reason = match (
        std::error::Error::source(error),
        error.get(ContextKind::ValidValue),
    ) {
        (Some(source), _) => source.to_string(),
        (None, Some(ContextValue::Strings(valid))) => {
            format!("expected one of {}", valid.join(", "))
        }
        _ => error.kind().to_string(),
    };
    Some(format!(
        "error: invalid value {value:?} in the environment variable {variable} \
         (the setting of {long}): {reason}"
    ))
}
