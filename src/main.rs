//! The binary: parses the command line, starts telemetry, runs the command.

use tenantstream::{describe_error, telemetry, Cli};

/// mimalloc rather than glibc's malloc: decoding frees many small values while chunks and
/// batches free large buffers, and glibc's bin upkeep for that mix (`malloc_consolidate`,
/// `unlink_chunk`) took about half of replay's reading thread (perf). The benchmarks use it too
/// (`benches/support`, `benches/decode.rs`), so that what they run in their own process
/// allocates as the binary does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
