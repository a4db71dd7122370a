//! `bench-etcd-writes`: what one write costs etcd, by its shape. The floor of
//! `bench-rollout` is plain puts; every deployctl write is a compare-and-swap transaction,
//! and an agent's report also carries an event. etcd 3.4 applies a transaction by first
//! opening a read view that copies its whole uncommitted write buffer, so a transaction
//! costs more than a put, and more the longer etcd waits between backend commits
//! (`--backend-batch-interval`, default 100 ms). Prints one JSON line per shape and round;
//! see BENCHMARKS.md.
//!
//! ```text
//! bench-etcd-writes --ops 20000
//! bench-etcd-writes --ops 20000 --etcd-flag=--backend-batch-interval=10ms
//! ```

use anyhow::anyhow;
use clap::Parser;
use deployctl::testing::{cpu_seconds, EtcdServer};
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use futures::StreamExt;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(
    about = "Time N writes of each shape (put, CAS transaction, CAS + event) on a private etcd"
)]
struct Args {
    /// Writes per shape and round.
    #[arg(long, default_value_t = 20_000)]
    ops: usize,
    /// Rounds; the shapes take turns within each round.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Writes in flight (as the floor of `bench-rollout`).
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// A flag for the private etcd, repeatable: `--etcd-flag=--backend-batch-interval=10ms`.
    #[arg(long = "etcd-flag", allow_hyphen_values = true)]
    etcd_flags: Vec<String>,
}

#[derive(Clone, Copy, Debug)]
enum Shape {
    /// The floor's write: a 256-byte value, no condition.
    Put,
    /// A deployctl write: the key's revision compared, then a 1,200-byte object put.
    Cas,
    /// An agent's report: the CAS plus a 400-byte event bound to a lease.
    CasEvent,
}

const SHAPES: [Shape; 3] = [Shape::Put, Shape::Cas, Shape::CasEvent];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let flags: Vec<&str> = ["--quota-backend-bytes=8589934592"]
        .into_iter()
        .chain(args.etcd_flags.iter().map(String::as_str))
        .collect();
    // On the main thread: etcd dies with the thread that started it.
    let etcd = EtcdServer::start_with_flags(&flags);
    let pid = etcd.pid().ok_or_else(|| anyhow!("etcd has no pid"))?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let client = etcd_client::Client::connect([etcd.endpoint()], None).await?;
        let lease = client.lease_client().grant(3600, None).await?.id();
        for round in 0..args.rounds {
            for shape in SHAPES {
                let cpu_before = cpu_seconds(pid).map_err(|e| anyhow!(e))?;
                let started = Instant::now();
                let prefix = format!("/bench/writes/{round}/{shape:?}/");
                let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..args.ops)
                    .map(|i| {
                        let mut kv = client.kv_client();
                        let key = format!("{prefix}{i}");
                        async move {
                            match shape {
                                Shape::Put => {
                                    kv.put(key, vec![b'x'; 256], None).await?;
                                }
                                Shape::Cas | Shape::CasEvent => {
                                    let mut ops =
                                        vec![TxnOp::put(key.clone(), vec![b'x'; 1200], None)];
                                    if let Shape::CasEvent = shape {
                                        ops.push(TxnOp::put(
                                            format!("{key}/event"),
                                            vec![b'e'; 400],
                                            Some(PutOptions::new().with_lease(lease)),
                                        ));
                                    }
                                    let txn = Txn::new()
                                        .when([Compare::mod_revision(key, CompareOp::Equal, 0)])
                                        .and_then(ops);
                                    let r = kv.txn(txn).await?;
                                    anyhow::ensure!(r.succeeded(), "compare failed on a fresh key");
                                }
                            }
                            Ok(())
                        }
                    })
                    .buffer_unordered(args.in_flight)
                    .collect()
                    .await;
                let seconds = started.elapsed().as_secs_f64();
                results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
                let etcd_cpu = cpu_seconds(pid).map_err(|e| anyhow!(e))? - cpu_before;
                println!(
                    "{}",
                    serde_json::json!({
                        "round": round,
                        "shape": format!("{shape:?}"),
                        "ops": args.ops,
                        "seconds": (seconds * 1000.0).round() / 1000.0,
                        "ops_per_second": (args.ops as f64 / seconds).round(),
                        "etcd_cpu_ms_per_1000": (etcd_cpu * 1e7 / args.ops as f64).round() / 10.0,
                        "etcd_flags": args.etcd_flags,
                    })
                );
            }
        }
        anyhow::Ok(())
    })
}
