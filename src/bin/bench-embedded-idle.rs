//! `bench-embedded-idle`: what idle agent processes cost on the embedded store, and how soon
//! a write from another process reaches a watch there (issue 19). Starts N real
//! `deployctl agent` processes on one SQLite store, waits until each has registered its
//! Machine, lets them settle, then measures their CPU over a window; meanwhile it writes a
//! key every `--write-gap-ms` through one store handle and times its arrival on a watch
//! opened through another (two handles on one file notice each other's commits as two
//! processes do). Prints one JSON line; see BENCHMARKS.md.

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use deployctl::store::{embedded::EmbeddedStore, Store};
use deployctl::testing::percentile;
use futures::StreamExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    about = "CPU of N idle agents on the embedded store, and its cross-process watch latency"
)]
struct Args {
    /// Idle agent processes.
    #[arg(long, default_value_t = 50)]
    agents: usize,
    /// Seconds over which their CPU is measured (after they registered and settled).
    #[arg(long, default_value_t = 10)]
    window_secs: u64,
    /// The gap between two timed writes, long enough for a poller to back off.
    #[arg(long, default_value_t = 500)]
    write_gap_ms: u64,
    /// The deployctl binary (default: next to this one).
    #[arg(long)]
    deployctl: Option<PathBuf>,
}

/// Kills every agent when the benchmark ends, however it ends.
struct Agents(Vec<Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    deployctl::testing::cpu_seconds(pid).map_err(|e| anyhow!(e))
}

fn total_cpu(agents: &Agents) -> anyhow::Result<f64> {
    agents.0.iter().map(|c| cpu_seconds(c.id())).sum()
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.agents == 0 {
        bail!("--agents must be at least 1");
    }
    let deployctl = match &args.deployctl {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("cannot find this binary")?
            .with_file_name("deployctl"),
    };
    let dir = tempfile::tempdir().context("cannot create a temporary dir")?;
    let db = dir.path().join("store.db");
    let writer = EmbeddedStore::open(&db).context("cannot create the store")?;
    let reader = EmbeddedStore::open(&db).context("cannot open the store a second time")?;

    // 1. The agents, each with its own root, all on the one store file.
    let mut agents = Agents(Vec::with_capacity(args.agents));
    for i in 0..args.agents {
        let root = dir.path().join(format!("m{i}"));
        std::fs::create_dir(&root).context("cannot create an agent root")?;
        let child = Command::new(&deployctl)
            .args(["--store", &db.to_string_lossy(), "agent", "--name"])
            .arg(format!("m{i}"))
            .arg("--root")
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", deployctl.display()))?;
        agents.0.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (machines, _) = writer.list("/deployctl/machines/", None).await?;
        if machines.len() >= args.agents {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {} agents registered in 120 s",
                machines.len(),
                args.agents
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Registration's own writes settle (each agent's first reports) before the window.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 2. The window: the agents' CPU, and timed writes seen through the other handle.
    let mut watch = reader.watch("/bench/", 0).await?;
    let cpu_before = total_cpu(&agents)?;
    let started = Instant::now();
    let window = Duration::from_secs(args.window_secs);
    let mut latencies = Vec::new();
    let mut n = 0u64;
    while started.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(args.write_gap_ms)).await;
        n += 1;
        let key = format!("/bench/{n}");
        let sent = Instant::now();
        writer.put(&key, b"x".to_vec()).await?;
        'seen: loop {
            let batch = tokio::time::timeout(Duration::from_secs(10), watch.next())
                .await
                .context("a write was not seen within 10 s")?
                .ok_or_else(|| anyhow!("the watch ended"))??;
            if batch.iter().any(|e| e.kv.key == key) {
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                break 'seen;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = total_cpu(&agents)? - cpu_before;
    latencies.sort_by(f64::total_cmp);
    let line = serde_json::json!({
        "agents": args.agents,
        "window_seconds": round(elapsed, 2),
        "agents_cores": round(cpu / elapsed, 3),
        "cores_per_agent": round(cpu / elapsed / args.agents as f64, 5),
        "watch_writes": latencies.len(),
        "watch_gap_ms": args.write_gap_ms,
        "watch_latency_p50_ms": round(percentile(&latencies, 50.0), 1),
        "watch_latency_p99_ms": round(percentile(&latencies, 99.0), 1),
        "watch_latency_max_ms": round(latencies.last().copied().unwrap_or(f64::NAN), 1),
    });
    println!("{line}");
    Ok(())
}
