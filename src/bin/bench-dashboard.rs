//! `bench-dashboard`: how soon a change reaches `deployctl dashboard`'s page while 10,000
//! machines report (issue 21). Starts a private etcd (or an embedded store), writes N
//! Machines and N Instances of one Application with its Rollout, starts the real
//! `deployctl dashboard` process, and opens its live streams (the Rollouts list, the
//! rollout's page with its machine grid, the Machines page) as a browser would, plus,
//! with `--browser`, the rollout's page in Chromium.
//!
//! Then, in rounds, it rewrites the status of every Instance (as N agents reporting a
//! switch, 128 writes in flight) while it writes a marker into the Rollout's status
//! message every `--marker-gap-ms`. It times each marker from its write's
//! acknowledgement to its arrival on each stream (and on the page's DOM), and the last
//! Instance write of a round to the grid counting all N machines in the new state.
//! Prints one JSON line; see BENCHMARKS.md.

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use deployctl::api::{
    Application, ApplicationSpec, Condition, ConditionStatus, Instance, InstancePhase,
    InstanceSpec, InstanceStatus, Machine, MachineSpec, MachineStatus, Object, Rollout,
    RolloutPhase, RolloutSpec, RolloutStatus,
};
use deployctl::store::{Client, StoreUrl};
use deployctl::testing::{percentile, EtcdServer};
use futures::StreamExt;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Delay from a store write to the dashboard's page at N machines")]
struct Args {
    /// Machines (each with one Instance of the Application).
    #[arg(long, default_value_t = 10_000)]
    machines: usize,
    /// Rounds of N Instance status writes.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The gap between two markers written into the Rollout's status.
    #[arg(long, default_value_t = 250)]
    marker_gap_ms: u64,
    /// `etcd` (a private one) or `embedded`.
    #[arg(long, default_value = "etcd")]
    store: String,
    /// Also time the markers to the rollout page's DOM in Chromium (needs what
    /// hack/install-deps installs).
    #[arg(long)]
    browser: bool,
    /// The deployctl binary (default: next to this one).
    #[arg(long)]
    deployctl: Option<PathBuf>,
}

/// Kills the dashboard when the benchmark ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const WRITES_IN_FLIGHT: usize = 128;

fn ready_condition() -> Condition {
    Condition {
        type_: "Ready".into(),
        status: ConditionStatus::True,
        reason: "AgentHeartbeat".into(),
        message: String::new(),
        last_transition_time: Some(chrono::Utc::now()),
    }
}

fn instance_status(version: &str) -> InstanceStatus {
    InstanceStatus {
        phase: InstancePhase::Running,
        current_version: Some(version.into()),
        staged_versions: vec!["v1".into(), "v2".into()],
        healthy: true,
        available: true,
        updated_at: Some(chrono::Utc::now()),
        ..Default::default()
    }
}

/// The Application, the Rollout and N Machines and Instances, each created with its
/// status, `WRITES_IN_FLIGHT` at a time.
async fn populate(client: &Client, n: usize) -> anyhow::Result<()> {
    let app = Application::new(
        "api",
        ApplicationSpec {
            artifact: deployctl::api::Artifact {
                url: "file:///nowhere/{{version}}.tar.gz".into(),
                ..Default::default()
            },
            ..Default::default()
        },
    );
    client.create(&app).await?;
    let mut ro = Rollout::new(
        "api",
        RolloutSpec {
            application: "api".into(),
            version: "v2".into(),
            ..Default::default()
        },
    );
    *ro.status_mut() = Some(RolloutStatus {
        phase: RolloutPhase::Progressing,
        target_version: Some("v2".into()),
        stable_version: Some("v1".into()),
        desired: n as u32,
        ..Default::default()
    });
    client.create_with_status(&ro).await?;
    let names: Vec<String> = (0..n).map(|i| format!("m{i:05}")).collect();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(names)
        .map(|name| async move {
            let mut m = Machine::new(&name, MachineSpec::default());
            m.metadata.labels.insert("role".into(), "web".into());
            *m.status_mut() = Some(MachineStatus {
                conditions: vec![ready_condition()],
                ..Default::default()
            });
            client.create_with_status(&m).await?;
            let mut i = Instance::new(
                &Instance::name_for("api", &name),
                InstanceSpec {
                    machine: name.clone(),
                    application: "api".into(),
                    current: Some("v1".into()),
                    ..Default::default()
                },
            );
            *i.status_mut() = Some(instance_status("v1"));
            client.create_with_status(&i).await?;
            Ok(())
        })
        .buffer_unordered(WRITES_IN_FLIGHT)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Every Instance's status to `version`, as N agents reporting; returns when the last
/// write is acknowledged.
async fn report_all(client: &Client, n: usize, version: &str) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..n)
        .map(|k| async move {
            let name = Instance::name_for("api", &format!("m{k:05}"));
            client
                .update_status::<Instance>(Some("default"), &name, |st| {
                    *st = instance_status(version);
                })
                .await?;
            Ok(())
        })
        .buffer_unordered(WRITES_IN_FLIGHT)
        .collect()
        .await;
    results.into_iter().collect()
}

/// What one live stream saw: each `rows` message's arrival time and data.
fn read_stream(
    addr: String,
    query: &'static str,
    tx: mpsc::Sender<(&'static str, Instant, Value)>,
) {
    let Ok(mut s) = std::net::TcpStream::connect(&addr) else {
        return;
    };
    if write!(
        s,
        "GET /api/stream?{query} HTTP/1.1\r\nHost: {addr}\r\n\r\n"
    )
    .is_err()
    {
        return;
    }
    let mut event = String::new();
    for line in BufReader::new(s).lines().map_while(Result::ok) {
        if let Some(e) = line.strip_prefix("event: ") {
            event = e.to_string();
        } else if let Some(data) = line.strip_prefix("data: ") {
            if event == "rows" {
                if let Ok(v) = serde_json::from_str::<Value>(data) {
                    if tx.send((query, Instant::now(), v)).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// The markers a stream message carries (in the Rollout's message).
fn scan(v: &Value) -> Vec<u64> {
    let mut markers = Vec::new();
    for row in v["upsert"].as_array().into_iter().flatten() {
        let body = &row[1];
        let message = body["message"]
            .as_str()
            .or_else(|| body["row"]["message"].as_str())
            .unwrap_or_default();
        if let Some(k) = message.strip_prefix("marker-").and_then(|k| k.parse().ok()) {
            markers.push(k);
        }
    }
    markers
}

/// Applies a `rows` message to the rows a page holds.
fn apply_rows(rows: &mut std::collections::BTreeMap<String, Value>, v: &Value) {
    if v["reset"] == json!(true) {
        rows.clear();
    }
    for row in v["upsert"].as_array().into_iter().flatten() {
        if let Some(k) = row[0].as_str() {
            rows.insert(k.to_string(), row[1].clone());
        }
    }
    for k in v["delete"].as_array().into_iter().flatten() {
        if let Some(k) = k.as_str() {
            rows.remove(k);
        }
    }
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let n = args.machines;
    let deployctl = match args.deployctl.clone() {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("the benchmark binary has a directory")?
            .join("deployctl"),
    };
    let dir = tempfile::tempdir()?;
    let etcd;
    let url = match args.store.as_str() {
        "etcd" => {
            etcd = EtcdServer::start();
            etcd.url()
        }
        "embedded" => dir.path().join("store.db").display().to_string(),
        other => bail!("--store {other:?}: use etcd or embedded"),
    };
    let rt = tokio::runtime::Runtime::new()?;
    let client = rt.block_on(async {
        let store = StoreUrl::parse(Some(&url))
            .map_err(|e| anyhow!(e))?
            .connect()
            .await?;
        anyhow::Ok(Client::new(store))
    })?;
    let started = Instant::now();
    rt.block_on(populate(&client, n))?;
    let populate_s = started.elapsed().as_secs_f64();

    let mut dash = Killed(
        Command::new(&deployctl)
            .args(["--store", &url, "dashboard", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot run {}", deployctl.display()))?,
    );
    let stdout = dash.0.stdout.take().context("stdout was piped")?;
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first)?;
    let addr = first
        .trim()
        .trim_start_matches("dashboard on http://")
        .trim_end_matches('/')
        .to_string();
    if addr.is_empty() {
        bail!("the dashboard did not say where it listens");
    }

    let (tx, rx) = mpsc::channel();
    let opened = Instant::now();
    for query in [
        "topic=rollouts",
        "topic=rollout&namespace=default&name=api",
        "topic=machines",
    ] {
        let (addr, tx) = (addr.clone(), tx.clone());
        std::thread::spawn(move || read_stream(addr, query, tx));
    }
    drop(tx);
    // The first full Machines page: N rows.
    let mut machine_rows = 0usize;
    // The rollout page's rows as the page holds them.
    let mut grid: std::collections::BTreeMap<String, Value> = Default::default();
    let first_page_s = loop {
        let (q, at, v) = rx
            .recv_timeout(Duration::from_secs(120))
            .context("no Machines rows within 120 s")?;
        if q.starts_with("topic=rollout&") {
            apply_rows(&mut grid, &v);
        }
        if q == "topic=machines" {
            machine_rows += v["upsert"].as_array().map_or(0, Vec::len);
            if machine_rows >= n {
                break at.duration_since(opened).as_secs_f64();
            }
        }
    };

    let mut browser = args.browser.then(|| {
        let mut b = deployctl::testing::browser::Browser::launch();
        b.goto(&format!("http://{addr}/#/rollouts/default/api"));
        b.wait_text("details.group", "v1");
        b
    });

    let mut written: Vec<Instant> = Vec::new();
    let mut stream_delays: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    let mut page_delays = Vec::new();
    let mut grid_delays = Vec::new();
    let mut report_s = Vec::new();
    let gap = Duration::from_millis(args.marker_gap_ms);
    for round_no in 0..args.rounds {
        let version = if round_no % 2 == 0 { "v2" } else { "v1" };
        let flood = {
            let client = client.clone();
            rt.spawn(async move {
                let t = Instant::now();
                report_all(&client, n, version)
                    .await
                    .map(|_| (t.elapsed(), Instant::now()))
            })
        };
        // Markers while the flood runs.
        while !flood.is_finished() {
            let k = written.len() as u64;
            rt.block_on(
                client.update_status::<Rollout>(Some("default"), "api", |st| {
                    st.message = format!("marker-{k}");
                }),
            )?;
            written.push(Instant::now());
            if let Some(b) = browser.as_mut() {
                let t = Instant::now();
                b.wait_text("#message", &format!("marker-{k}"));
                page_delays.push(t.elapsed().as_secs_f64() * 1e3);
            }
            std::thread::sleep(gap); // the pace of markers, not a synchronisation
        }
        let (took, last_ack) = rt.block_on(flood)??;
        report_s.push(took.as_secs_f64());
        // Drain the streams until the grid shows all N on this round's version.
        let deadline = Instant::now() + Duration::from_secs(60);
        let prefix = format!("group/{version}/");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (q, at, v) = rx
                .recv_timeout(left)
                .context("the grid never counted every machine")?;
            for k in scan(&v) {
                if let Some(w) = written.get(k as usize) {
                    stream_delays
                        .entry(q)
                        .or_default()
                        .push(at.saturating_duration_since(*w).as_secs_f64() * 1e3);
                }
            }
            if !q.starts_with("topic=rollout&") {
                continue;
            }
            apply_rows(&mut grid, &v);
            let on_version: u64 = grid
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .filter_map(|(_, g)| g["count"].as_u64())
                .sum();
            if on_version == n as u64 {
                grid_delays.push(at.saturating_duration_since(last_ack).as_secs_f64() * 1e3);
                break;
            }
        }
    }
    let responsive_ms = browser.as_mut().map(|b| {
        let t = Instant::now();
        b.eval("1");
        t.elapsed().as_secs_f64() * 1e3
    });
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        json!({
            "n": v.len(),
            "p50_ms": round(percentile(v, 50.0), 1),
            "p99_ms": round(percentile(v, 99.0), 1),
            "max_ms": round(v.last().copied().unwrap_or(f64::NAN), 1),
        })
    };
    let mut streams = serde_json::Map::new();
    for (q, mut v) in stream_delays {
        streams.insert(q.to_string(), stats(&mut v));
    }
    let out = json!({
        "machines": n,
        "store": args.store,
        "populate_s": round(populate_s, 1),
        "first_machines_page_s": round(first_page_s, 2),
        "report_round_s": report_s.iter().map(|s| round(*s, 2)).collect::<Vec<_>>(),
        "marker_to_stream": streams,
        "last_report_to_grid": stats(&mut grid_delays),
        "marker_to_page_dom": browser.is_some().then(|| stats(&mut page_delays)),
        "page_eval_roundtrip_ms": responsive_ms.map(|m| round(m, 1)),
        "dashboard_rss_mib": round(rss_mib(dash.0.id()), 1),
        "dashboard_cpu_s": deployctl::testing::cpu_seconds(dash.0.id()).map(|s| round(s, 1)).ok(),
    });
    println!("{out}");
    Ok(())
}
