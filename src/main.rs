//! The `deployctl` binary: parse, set up logging, hand over to [`deployctl::cli::run`].

use clap::Parser;

/// mimalloc: glibc's malloc was a quarter of the agents' CPU at 10,000 machines.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay`'s index in the enum of the mimalloc (v3) that
/// libmimalloc-sys 0.1.49 builds (`c_src/mimalloc/v3/include/mimalloc.h`), which the
/// crate names no constant for.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// mimalloc's default for it, in milliseconds (`src/options.c` there).
const MI_DEFAULT_PURGE_DELAY: std::os::raw::c_long = 1000;

/// Has mimalloc return freed memory to the OS at once rather than after a second. At
/// 10,000 machines the controller's peak RSS drops from 303-315 MB to 275-278 MB with no
/// more CPU (BENCHMARKS.md). The option is set only while it holds mimalloc's default:
/// a user's `MIMALLOC_PURGE_DELAY` wins, and an index that named another option in some
/// other mimalloc (whose default is not 1000) is left alone.
fn purge_freed_memory_at_once() {
    // SAFETY: plain reads and writes of mimalloc's option table, which mimalloc
    // initialised on the first allocation, before main.
    unsafe {
        if libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) == MI_DEFAULT_PURGE_DELAY {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        }
    }
}

fn main() -> std::process::ExitCode {
    purge_freed_memory_at_once();
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
