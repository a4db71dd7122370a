//! `chaos`: real etcd, controllers and agents rolling versions out under seeded faults
//! (crashes, stops past the lease TTL, etcd restarts, compactions, a partitioned agent,
//! concurrent writers), checking the invariants of issue 22 after every run. Prints one
//! JSON line per scenario; exits 1 on any violation, printing the seed and the journal.
//! See `hack/chaos` and RELIABILITY.md.
//!
//! `chaos stamp` prints `CLOCK_MONOTONIC` in nanoseconds: the hooks' clock.

mod faults;
mod fleet;
mod invariants;
mod journal;
mod netns;
mod scenarios;

use anyhow::bail;
use clap::Parser;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

/// The seed of `--quick`: fixed, so that CI replays one schedule.
const QUICK_SEED: u64 = 22;
/// Runs per scenario under `--quick`.
const QUICK_RUNS: usize = 2;

#[derive(Parser, Debug)]
#[command(
    about = "Roll versions out on real processes under seeded faults and check the invariants"
)]
struct Args {
    /// Fixes every fault's kind, target and moment (default: drawn, and printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Runs (rollouts, or writer rounds) per scenario.
    #[arg(long, default_value_t = 20)]
    rollouts: usize,
    /// A scenario name, or `all`.
    #[arg(long, default_value = "all")]
    scenario: String,
    /// The CI run: seed 22, two runs per scenario.
    #[arg(long)]
    quick: bool,
    /// The deployctl binary (default: next to this one).
    #[arg(long)]
    deployctl: Option<PathBuf>,
    /// Keep every scenario's work dir (logs, journal, roots), not only a failing one's.
    #[arg(long)]
    keep: bool,
}

extern "C" fn on_interrupt(_: libc::c_int) {
    scenarios::INTERRUPTED.store(true, Ordering::Relaxed);
}

/// SIGINT and SIGTERM stop the run at its next poll, so that drops kill the processes and
/// remove the namespace; a panic removes the namespace too.
fn install_cleanup() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let _ = sigaction(sig, &action);
        }
    }
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        netns::remove_all();
        default(info);
    }));
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("stamp") {
        println!("{}", journal::now_ns());
        return;
    }
    let code = match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chaos: {e:#}");
            2
        }
    };
    netns::remove_all();
    std::process::exit(code);
}

fn run(args: Args) -> anyhow::Result<i32> {
    install_cleanup();
    netns::remove_stale();
    let (seed, runs) = if args.quick {
        (QUICK_SEED, QUICK_RUNS)
    } else {
        (args.seed.unwrap_or_else(rand::random), args.rollouts)
    };
    let deployctl = match args.deployctl {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("deployctl"),
    };
    if !deployctl.is_file() {
        bail!(
            "no deployctl binary at {} (see --deployctl)",
            deployctl.display()
        );
    }
    let chosen: Vec<&'static scenarios::Scenario> = scenarios::SCENARIOS
        .iter()
        .filter(|s| args.scenario == "all" || s.name == args.scenario)
        .collect();
    if chosen.is_empty() {
        let names: Vec<_> = scenarios::SCENARIOS.iter().map(|s| s.name).collect();
        bail!(
            "no scenario {:?}: one of {} or all",
            args.scenario,
            names.join(", ")
        );
    }
    eprintln!("chaos: seed {seed}, {runs} runs per scenario");
    let mut failed = false;
    for scenario in chosen {
        let report = scenarios::run(scenario, seed, runs, deployctl.clone(), args.keep)?;
        println!("{}", report.json());
        if !report.violations.is_empty() {
            failed = true;
            eprintln!(
                "chaos: {} violation(s) in scenario {} (seed {seed}; replay with --seed {seed} --scenario {} --rollouts {runs})",
                report.violations.len(),
                scenario.name,
                scenario.name
            );
            for v in &report.violations {
                eprintln!("  {} run {}: {}", v.invariant, v.run, v.detail);
            }
            for e in &report.excerpts {
                eprintln!("{e}");
            }
        }
        if let Some(dir) = &report.kept {
            eprintln!("chaos: logs, journal and roots kept in {}", dir.display());
        }
    }
    Ok(if failed { 1 } else { 0 })
}
