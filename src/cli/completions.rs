//! `tenantstream completions`: shell completions for every command and flag, to stdout.

use clap::Args;
use clap_complete::Shell;

/// Flags of `tenantstream completions`.
#[derive(Args, Debug, Clone)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Prints the completion script of `args.shell`.
pub fn command(args: &CompletionsArgs) {
    let mut command = super::command();
    let name = command.get_name().to_owned();
    clap_complete::generate(args.shell, &mut command, name, &mut std::io::stdout());
}
