//! `tenantstream dead-letters`: the flags, and the summary printed.

use clap::Args;

use crate::config::Settings;
use crate::tools::dead_letters;

/// Flags of `tenantstream dead-letters`.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Dead letters")]
pub struct DeadLettersArgs {
    /// How many of the newest dead letters to list with their reasons (0: counts only).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub last: usize,
    /// After the summary, print each new dead letter as it arrives, until Ctrl-C.
    #[arg(long)]
    pub follow: bool,
}

/// `tenantstream dead-letters`: the summary, then with `--follow` each new dead letter.
pub async fn command(settings: &Settings, args: &DeadLettersArgs) -> anyhow::Result<()> {
    let summary = dead_letters::summarise(settings, args.last).await?;
    println!("{summary}");
    if args.follow {
        println!("\nfollowing {} (Ctrl-C to stop):", summary.topic);
        dead_letters::follow(settings, &summary, |entry| println!("  {}", entry.line())).await?;
    }
    Ok(())
}
