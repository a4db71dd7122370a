//! `bench-failover`: how long CAS writes stall when a member of a 3-member etcd cluster is
//! killed. Several store clients, one writer loop each, write steadily; the leader (or a
//! follower) is killed; prints one JSON line: the longest gap between successful writes,
//! the writes that failed, and the time from the kill until every writer got a write
//! (started after the kill) through.

use anyhow::{anyhow, bail};
use clap::{Parser, ValueEnum};
use deployctl::store::{etcd::EtcdStore, Compare, Op, Store, Txn};
use deployctl::testing::EtcdCluster;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Kill {
    /// The member that leads when the kill comes: the cluster elects another.
    Leader,
    /// A member that follows: no election, but its clients must move.
    Follower,
}

#[derive(Parser, Debug)]
#[command(about = "Kill an etcd member under a steady stream of CAS writes; measure the stall")]
struct Args {
    /// Which member to kill.
    #[arg(long, value_enum, default_value_t = Kill::Leader)]
    kill: Kill,
    /// Store clients, one writer loop each (each its own `EtcdStore` over every member).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Members of the cluster.
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Seconds of steady writing before the kill.
    #[arg(long, default_value_t = 3)]
    before_secs: u64,
    /// Seconds of writing after the kill.
    #[arg(long, default_value_t = 15)]
    after_secs: u64,
    /// A flag for every member, repeatable: `--etcd-flag=--election-timeout=500`.
    #[arg(long = "etcd-flag", allow_hyphen_values = true)]
    etcd_flags: Vec<String>,
}

/// What one writer saw.
#[derive(Default)]
struct Record {
    /// When each successful write started and returned.
    ok: Vec<(Instant, Instant)>,
    failed: u64,
    /// CAS writes that lost: somebody (an earlier attempt of our own, retried) wrote first.
    conflicts: u64,
    /// The first error, for the report.
    first_error: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.clients == 0 || args.members < 3 {
        bail!("--clients must be at least 1 and --members at least 3 (a quorum must survive)");
    }
    // Started from the main thread: the members die with the thread that started them.
    let flags: Vec<&str> = args.etcd_flags.iter().map(String::as_str).collect();
    let mut cluster = EtcdCluster::start_with_flags(args.members, &flags);
    // Client i lists member i first (modulo the size), so that every member has clients
    // that go to it first, whichever dies.
    let mut stores = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let mut endpoints = cluster.endpoints();
        endpoints.rotate_left(i % args.members);
        stores.push(Arc::new(EtcdStore::connect(&endpoints).await?));
    }
    let stop = CancellationToken::new();
    let writers: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(i, store)| tokio::spawn(write_loop(store.clone(), i, stop.clone())))
        .collect();

    tokio::time::sleep(Duration::from_secs(args.before_secs)).await;
    let leader = cluster
        .leader()
        .ok_or_else(|| anyhow!("the cluster has no leader before the kill"))?;
    let victim = match args.kill {
        Kill::Leader => leader,
        Kill::Follower => (leader + 1) % args.members,
    };
    let killed_at = Instant::now();
    cluster.kill(victim);
    tokio::time::sleep(Duration::from_secs(args.after_secs)).await;
    stop.cancel();
    let mut records = Vec::with_capacity(writers.len());
    for w in writers {
        records.push(w.await?);
    }
    let new_leader = cluster.leader();
    print_result(&args, &records, killed_at, victim, leader, new_leader);
    Ok(())
}

/// Writes one key by compare-and-swap in a loop until `stop`, re-reading after a conflict
/// or an error, as the controller and agents do.
async fn write_loop(store: Arc<EtcdStore>, writer: usize, stop: CancellationToken) -> Record {
    let key = format!("/bench/failover/{writer}");
    let mut record = Record::default();
    let mut revision: i64 = 0;
    let mut n: u64 = 0;
    while !stop.is_cancelled() {
        n += 1;
        let txn = Txn {
            compares: vec![Compare::mod_revision(key.clone(), revision)],
            ops: vec![Op::Put {
                key: key.clone(),
                value: n.to_string().into_bytes(),
                lease: 0,
            }],
        };
        let started = Instant::now();
        let result = tokio::select! {
            r = store.txn(txn) => r,
            _ = stop.cancelled() => break,
        };
        match result {
            Ok(r) if r.succeeded => {
                record.ok.push((started, Instant::now()));
                revision = r.revision;
                continue;
            }
            Ok(_) => record.conflicts += 1,
            Err(e) => {
                record.failed += 1;
                record.first_error.get_or_insert_with(|| e.to_string());
                // A caller's pause before retrying; keeps a fast-failing store from
                // being hammered.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // Conflict or error: learn the key's revision again.
        match store.get(&key).await {
            Ok(kv) => revision = kv.map_or(0, |kv| kv.mod_revision),
            Err(e) => {
                record.failed += 1;
                record.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    record
}

fn print_result(
    args: &Args,
    records: &[Record],
    killed_at: Instant,
    victim: usize,
    leader: usize,
    new_leader: Option<usize>,
) {
    let ends = |r: &Record| r.ok.iter().map(|(_, end)| *end).collect::<Vec<_>>();
    let mut all: Vec<Instant> = records.iter().flat_map(ends).collect();
    all.sort();
    let longest_gap = |times: &[Instant]| {
        times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    // Every writer got a write through: per writer, the first successful write started
    // after the kill (one in flight at the kill may have committed before it).
    let resumed = records
        .iter()
        .map(|r| {
            r.ok.iter()
                .find(|(start, _)| *start > killed_at)
                .map(|(_, end)| *end - killed_at)
        })
        .collect::<Option<Vec<_>>>()
        .and_then(|v| v.into_iter().max());
    let line = serde_json::json!({
        "kill": format!("{:?}", args.kill).to_lowercase(),
        "etcd_flags": args.etcd_flags,
        "members": args.members,
        "clients": args.clients,
        "killed_member": victim,
        "leader_before": leader,
        "leader_after": new_leader,
        "writes_ok": all.len(),
        "writes_failed": records.iter().map(|r| r.failed).sum::<u64>(),
        "conflicts": records.iter().map(|r| r.conflicts).sum::<u64>(),
        // The longest time no writer wrote, and the longest time one writer did not.
        "stall_ms": ms(longest_gap(&all)).round(),
        "writer_stall_ms": records.iter().map(|r| ms(longest_gap(&ends(r)))).fold(0.0, f64::max).round(),
        "resume_ms": resumed.map(|d| ms(d).round()),
        "first_error": records.iter().find_map(|r| r.first_error.clone()),
    });
    println!("{line}");
}
