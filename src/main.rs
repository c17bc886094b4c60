//! The binary: parses the command line, starts telemetry, runs the command.

use tenantstream::{describe_error, telemetry, Cli};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse_args();
    let settings = match cli.settings() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    telemetry::init(settings.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(cli.run(settings)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", describe_error(&error));
            std::process::ExitCode::FAILURE
        }
    }
}
