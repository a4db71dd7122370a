//! The `deployctl` binary: parse, set up logging, hand over to [`deployctl::cli::run`].

use clap::Parser;

/// mimalloc: glibc's malloc was a quarter of the agents' CPU at 10,000 machines.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = deployctl::cli::Cli::parse();
    deployctl::cli::init_logging(cli.global.verbose, cli.global.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let code = runtime.block_on(deployctl::cli::run(cli));
    // Do not wait for blocked stdin readers or watches still parked in the runtime.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}
