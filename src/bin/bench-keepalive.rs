//! `bench-keepalive`: what refreshing N leases costs etcd, with a new gRPC stream per
//! refresh (etcd-client's `keep_alive`, as `EtcdStore` did) against the store's reused
//! stream per lease. Prints one JSON line per mode; see BENCHMARKS.md.

use anyhow::anyhow;
use clap::Parser;
use deployctl::store::{etcd::EtcdStore, Store};
use deployctl::testing::EtcdServer;
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Refresh N leases R times each, per-refresh streams against reused ones")]
struct Args {
    /// Leases (one per simulated agent).
    #[arg(long, default_value_t = 2000)]
    leases: usize,
    /// Refreshes of every lease.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Refreshes in flight.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
}

/// CPU seconds a process has used so far.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    deployctl::testing::cpu_seconds(pid).map_err(|e| anyhow!(e))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let etcd = EtcdServer::start();
    let etcd_pid = etcd.pid().ok_or_else(|| anyhow!("etcd has no pid"))?;
    let store = Arc::new(EtcdStore::connect(&[etcd.endpoint()]).await?);
    let raw = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    let mut leases = Vec::with_capacity(args.leases);
    for _ in 0..args.leases {
        leases.push(store.grant_lease(Duration::from_secs(600)).await?);
    }
    for reuse in [false, true] {
        let cpu_before = cpu_seconds(etcd_pid)?;
        let self_before = cpu_seconds(std::process::id())?;
        let started = Instant::now();
        let work = (0..args.rounds).flat_map(|_| leases.iter().copied());
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(work)
            .map(|lease| {
                let store = store.clone();
                let mut raw = raw.lease_client();
                async move {
                    if reuse {
                        store.keep_alive(lease).await.map_err(anyhow::Error::from)
                    } else {
                        // What `EtcdStore::keep_alive` did before: a stream per refresh.
                        raw.keep_alive(lease)
                            .await
                            .map(|_| ())
                            .map_err(anyhow::Error::from)
                    }
                }
            })
            .buffer_unordered(args.in_flight)
            .collect()
            .await;
        let wall = started.elapsed().as_secs_f64();
        results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        let refreshes = args.leases * args.rounds;
        println!(
            "{}",
            serde_json::json!({
                "mode": if reuse { "reused stream per lease" } else { "new stream per refresh" },
                "refreshes": refreshes,
                "seconds": (wall * 1000.0).round() / 1000.0,
                "refreshes_per_second": (refreshes as f64 / wall).round(),
                "etcd_cpu_seconds": ((cpu_seconds(etcd_pid)? - cpu_before) * 100.0).round() / 100.0,
                "client_cpu_seconds": ((cpu_seconds(std::process::id())? - self_before) * 100.0).round() / 100.0,
            })
        );
    }
    Ok(())
}
