//! The processes under test: etcd, two `deployctl controller`s and the agents, each a real
//! process logging to its own file, and the CLI calls the harness makes.
//!
//! Set up as the e2e tests do it (tests/e2e/rollouts.rs): artifacts as `file://` tarballs,
//! an Application whose hooks write to a shared file, a Rollout by `deployctl apply`.

use crate::journal;
use crate::netns::Netns;
use anyhow::{bail, Context as _};
use deployctl::api::{Instance, Machine, Rollout};
use deployctl::store::{Client, Scope, StoreUrl};
use deployctl::testing::{EtcdCluster, EtcdServer};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Lease TTL of every controller and agent: short, so that faults past it are quick.
pub const LEASE_TTL: Duration = Duration::from_secs(3);
/// Agents (machines) in every scenario.
pub const MACHINES: usize = 6;
/// The Rollout's `strategy.maxUnavailable` (I1's bound).
pub const MAX_UNAVAILABLE: usize = 2;
/// How long a CLI call may run before it counts as hung (and is killed).
const CLI_DEADLINE: Duration = Duration::from_secs(30);
pub const NAMESPACE: &str = "default";
pub const APP: &str = "api";
/// How long the activate hook runs between its `start` and `end` records: long enough
/// for faults to land mid-hook.
const HOOK_SECONDS: &str = "0.6";

/// The store: one etcd, or a 3-member cluster.
pub enum Etcd {
    Single(EtcdServer),
    Cluster(EtcdCluster),
}

impl Etcd {
    pub fn endpoints(&self) -> Vec<String> {
        match self {
            Etcd::Single(e) => vec![e.endpoint()],
            Etcd::Cluster(c) => c.endpoints(),
        }
    }
}

/// One long-running `deployctl` process that faults stop, kill and restart.
pub struct Daemon {
    /// Machine name (agents) or identity stem (controllers).
    pub name: String,
    /// Restarts so far: controllers take a new identity per start, as `hostname-pid` does.
    pub incarnation: u32,
    pub child: Option<Child>,
    /// Stopped by SIGSTOP and not yet continued.
    pub stopped: bool,
}

impl Daemon {
    pub fn pid(&self) -> Option<nix::unistd::Pid> {
        self.child
            .as_ref()
            .map(|c| nix::unistd::Pid::from_raw(c.id() as i32))
    }

    /// The identity a controller runs under in this incarnation.
    pub fn identity(&self) -> String {
        format!("{}.{}", self.name, self.incarnation)
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(pid, signal);
        }
    }

    /// SIGKILLs (continuing it first if stopped, so that it is reaped) and reaps.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stopped = false;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How a finished CLI call ended (stdout is not kept: the checks read the store).
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stderr: String,
}

/// Every process of one scenario and its work dir.
pub struct Fleet {
    pub deployctl: PathBuf,
    /// This binary: the hooks run `chaos stamp` for their timestamps.
    chaos: PathBuf,
    pub work: tempfile::TempDir,
    pub controllers: Vec<Daemon>,
    pub agents: Vec<Daemon>,
    /// The namespace of the agent that partitions cut off (declared before `etcd`: its
    /// relays go before the store does).
    pub netns: Option<Netns>,
    /// The agent that runs inside `netns`.
    pub isolated: Option<usize>,
    pub etcd: Etcd,
    pub client: Client,
    pub rt: tokio::runtime::Runtime,
}

/// Sets the child to die with the harness (the thread that spawned it), so that no process
/// outlives a killed run.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches only the child being set up.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Writes `app-<version>.tar.gz` holding `VERSION` into `dir` (as the e2e tests do).
pub fn build_artifact(dir: &Path, version: &str) -> anyhow::Result<()> {
    let path = dir.join(format!("app-{version}.tar.gz"));
    let file = std::fs::File::create(&path).with_context(|| format!("{}", path.display()))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let body = format!("{version}\n");
    let mut header = tar::Header::new_gnu();
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "VERSION", body.as_bytes())?;
    tar.into_inner()?.finish()?;
    Ok(())
}

impl Fleet {
    /// Starts etcd and the controllers and agents (the last agent inside a network
    /// namespace when `isolate` is set); applies nothing yet.
    pub fn start(deployctl: PathBuf, etcd: Etcd, isolate: bool) -> anyhow::Result<Fleet> {
        let work = tempfile::Builder::new()
            .prefix("deployctl-chaos-")
            .tempdir()
            .context("cannot create a work dir")?;
        for dir in ["artifacts", "logs", "roots"] {
            std::fs::create_dir_all(work.path().join(dir))?;
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("cannot start a tokio runtime")?;
        let url = format!("etcd://{}", etcd.endpoints().join(","));
        let store = rt.block_on(async {
            StoreUrl::parse(Some(&url))
                .map_err(anyhow::Error::msg)?
                .connect()
                .await
                .context("cannot connect to the test etcd")
        })?;
        let netns = if isolate {
            let endpoints = etcd.endpoints();
            Some(rt.block_on(Netns::create(&endpoints))?)
        } else {
            None
        };
        let mut fleet = Fleet {
            deployctl,
            chaos: std::env::current_exe().context("cannot find this binary")?,
            work,
            controllers: Vec::new(),
            agents: Vec::new(),
            isolated: isolate.then_some(MACHINES - 1),
            netns,
            etcd,
            client: Client::new(store),
            rt,
        };
        for name in ["ctl-a", "ctl-b"] {
            fleet.controllers.push(Daemon {
                name: name.into(),
                incarnation: 0,
                child: None,
                stopped: false,
            });
        }
        for i in 0..MACHINES {
            fleet.agents.push(Daemon {
                name: format!("m{i}"),
                incarnation: 0,
                child: None,
                stopped: false,
            });
        }
        for i in 0..fleet.controllers.len() {
            fleet.start_controller(i)?;
        }
        for i in 0..MACHINES {
            fleet.start_agent(i)?;
        }
        Ok(fleet)
    }

    pub fn url(&self) -> String {
        format!("etcd://{}", self.etcd.endpoints().join(","))
    }

    pub fn logs(&self) -> PathBuf {
        self.work.path().join("logs")
    }

    pub fn journal(&self) -> PathBuf {
        self.logs().join("journal")
    }

    pub fn artifacts(&self) -> PathBuf {
        self.work.path().join("artifacts")
    }

    pub fn root(&self, machine: &str) -> PathBuf {
        self.work.path().join("roots").join(machine)
    }

    /// The log file of a controller identity or an agent.
    pub fn log_of(&self, who: &str) -> PathBuf {
        self.logs().join(format!("{who}.log"))
    }

    fn spawn_logged(&self, mut cmd: Command, log: &Path) -> anyhow::Result<Child> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        die_with_parent(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {:?}", cmd.get_program()))
    }

    /// (Re)starts controller `i` under a new identity.
    pub fn start_controller(&mut self, i: usize) -> anyhow::Result<()> {
        self.controllers[i].kill();
        self.controllers[i].incarnation += 1;
        let identity = self.controllers[i].identity();
        let ttl = format!("{}s", LEASE_TTL.as_secs());
        let mut cmd = Command::new(&self.deployctl);
        cmd.args(["controller", "--identity", &identity, "--lease-ttl", &ttl])
            .args(["--workers", "2"])
            .env("DEPLOYCTL_STORE", self.url())
            .env("RUST_LOG", "info,deployctl::fenced=debug");
        let child = self.spawn_logged(cmd, &self.log_of(&identity))?;
        self.controllers[i].child = Some(child);
        Ok(())
    }

    /// (Re)starts agent `i`, inside the namespace when it is the isolated one.
    pub fn start_agent(&mut self, i: usize) -> anyhow::Result<()> {
        self.agents[i].kill();
        self.agents[i].incarnation += 1;
        let name = self.agents[i].name.clone();
        let root = self.root(&name).display().to_string();
        let ttl = format!("{}s", LEASE_TTL.as_secs());
        let (mut cmd, store) = match (&self.netns, self.isolated == Some(i)) {
            (Some(ns), true) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &ns.name]).arg(&self.deployctl);
                (cmd, format!("etcd://{}", ns.endpoints().join(",")))
            }
            _ => (Command::new(&self.deployctl), self.url()),
        };
        cmd.args([
            "agent", "--name", &name, "--labels", "role=web", "--root", &root,
        ])
        .args(["--lease-ttl", &ttl])
        .env("DEPLOYCTL_STORE", store)
        .env("RUST_LOG", "info");
        let child = self.spawn_logged(cmd, &self.log_of(&name))?;
        self.agents[i].child = Some(child);
        Ok(())
    }

    /// Runs `deployctl ARGS` to completion (killed after [`CLI_DEADLINE`]).
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        let mut cmd = Command::new(&self.deployctl);
        cmd.args(args)
            .env("DEPLOYCTL_STORE", self.url())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return CliOutput {
                    code: -1,
                    stderr: format!("cannot run {}: {e}", self.deployctl.display()),
                }
            }
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(CLI_DEADLINE) {
            Ok(Ok(out)) => CliOutput {
                code: out.status.code().unwrap_or(-1),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            },
            Ok(Err(e)) => CliOutput {
                code: -1,
                stderr: format!("cannot wait for deployctl: {e}"),
            },
            Err(_) => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                CliOutput {
                    code: -1,
                    stderr: format!("deployctl {} hung for {CLI_DEADLINE:?}", args.join(" ")),
                }
            }
        }
    }

    /// Applies JSON documents (JSON is YAML) with `deployctl apply -f`.
    pub fn apply(&self, docs: &[Value]) -> CliOutput {
        let text = docs
            .iter()
            .map(|d| serde_json::to_string_pretty(d).expect("json values serialize"))
            .collect::<Vec<_>>()
            .join("\n---\n");
        let file = self
            .work
            .path()
            .join(format!("manifest-{}.yaml", uuid::Uuid::new_v4()));
        if let Err(e) = std::fs::write(&file, text) {
            return CliOutput {
                code: -1,
                stderr: format!("cannot write {}: {e}", file.display()),
            };
        }
        let out = self.cli(&["apply", "-f", &file.display().to_string()]);
        let _ = std::fs::remove_file(&file);
        out
    }

    /// The Application: every `role=web` machine; the activate hook journals its start and
    /// end, sleeps in between, and fails for a version ending in `-bad`.
    pub fn application(&self) -> Value {
        let script = format!(
            concat!(
                r#"echo "start $DEPLOY_MACHINE $DEPLOY_VERSION $("$CHAOS_BIN" stamp)" >> "$CHAOS_JOURNAL"; "#,
                r#"sleep {}; "#,
                r#"case "$DEPLOY_VERSION" in *-bad) "#,
                r#"echo "end $DEPLOY_MACHINE $DEPLOY_VERSION $("$CHAOS_BIN" stamp) fail" >> "$CHAOS_JOURNAL"; exit 3;; esac; "#,
                r#"echo "end $DEPLOY_MACHINE $DEPLOY_VERSION $("$CHAOS_BIN" stamp)" >> "$CHAOS_JOURNAL""#
            ),
            HOOK_SECONDS
        );
        json!({
            "apiVersion": "deployctl.dev/v1",
            "kind": "Application",
            "metadata": { "name": APP },
            "spec": {
                "selector": { "matchLabels": { "role": "web" } },
                "artifact": {
                    "url": format!("file://{}/app-{{{{version}}}}.tar.gz", self.artifacts().display())
                },
                "env": {
                    "CHAOS_BIN": self.chaos.display().to_string(),
                    "CHAOS_JOURNAL": self.journal().display().to_string(),
                },
                "hooks": { "activate": [ { "command": script, "timeoutSeconds": 30 } ] },
                "keepReleases": 5,
            }
        })
    }

    /// The Rollout at `version`, under `Rollback` after the first failure.
    pub fn rollout(version: &str, labels: Value) -> Value {
        json!({
            "apiVersion": "deployctl.dev/v1",
            "kind": "Rollout",
            "metadata": { "name": APP, "labels": labels },
            "spec": {
                "application": APP,
                "version": version,
                "strategy": { "maxUnavailable": MAX_UNAVAILABLE },
                "failurePolicy": { "maxFailures": 0, "action": "Rollback" },
            }
        })
    }

    /// Where `machine`'s `current` points: the version, if anywhere.
    pub fn current(&self, machine: &str) -> Option<String> {
        let link = self.root(machine).join(NAMESPACE).join(APP).join("current");
        let target = std::fs::read_link(link).ok()?;
        Some(target.file_name()?.to_string_lossy().into_owned())
    }

    pub fn currents(&self) -> BTreeMap<String, Option<String>> {
        self.agents
            .iter()
            .map(|a| (a.name.clone(), self.current(&a.name)))
            .collect()
    }

    pub fn get_rollout(&self) -> anyhow::Result<Rollout> {
        self.rt
            .block_on(self.client.get::<Rollout>(Some(NAMESPACE), APP))?
            .context("the rollout does not exist")
    }

    pub fn instances(&self) -> anyhow::Result<Vec<Instance>> {
        Ok(self
            .rt
            .block_on(self.client.list::<Instance>(&Scope::All))?
            .items)
    }

    /// Whether `machine` is Ready (`None`: cannot tell, the store did not answer).
    pub fn machine_ready(&self, machine: &str) -> Option<bool> {
        let m = self
            .rt
            .block_on(self.client.get::<Machine>(None, machine))
            .ok()?;
        Some(m.is_some_and(|m| deployctl::reconcilers::machine::is_ready(&m)))
    }

    /// The index of the controller holding the leader key, if one does.
    pub fn leader(&self) -> Option<usize> {
        let holder = self.rt.block_on(self.client.leader()).ok()??;
        self.controllers
            .iter()
            .position(|c| c.child.is_some() && c.identity() == holder.identity)
    }

    /// Waits up to `within` for a controller to hold the leader key.
    pub fn wait_leader(&self, within: Duration) -> Option<usize> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(i) = self.leader() {
                return Some(i);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100)); // polling the store, not a sync stand-in
        }
    }

    /// Compacts the store's history up to its current revision: every watcher relists.
    pub fn compact(&self) -> anyhow::Result<i64> {
        self.rt.block_on(async {
            let (_, revision) = self.client.store().list("/deployctl/leases/", None).await?;
            self.client.store().compact(revision).await?;
            Ok(revision)
        })
    }

    /// The size of every agent's log now, to read what they log from here on.
    pub fn agent_log_sizes(&self) -> Vec<u64> {
        self.agents
            .iter()
            .map(|a| {
                std::fs::metadata(self.log_of(&a.name))
                    .map(|m| m.len())
                    .unwrap_or(0)
            })
            .collect()
    }

    /// The warnings the agents logged since `sizes` (from [`Fleet::agent_log_sizes`]).
    pub fn agent_warnings_since(&self, sizes: &[u64]) -> Vec<String> {
        let mut found = Vec::new();
        for (a, from) in self.agents.iter().zip(sizes) {
            let text = std::fs::read(self.log_of(&a.name)).unwrap_or_default();
            let new = text.get(*from as usize..).unwrap_or_default();
            for line in String::from_utf8_lossy(new).lines() {
                if line.contains(" WARN ") || line.contains(" ERROR ") {
                    found.push(format!("{}: {line}", a.name));
                }
            }
        }
        found
    }

    /// Every controller log as (identity, path), every incarnation.
    pub fn controller_logs(&self) -> Vec<(String, PathBuf)> {
        let mut logs = Vec::new();
        for c in &self.controllers {
            for n in 1..=c.incarnation {
                let identity = format!("{}.{n}", c.name);
                logs.push((identity.clone(), self.log_of(&identity)));
            }
        }
        logs
    }

    /// The journal records since `from` (ns).
    pub fn journal_since(&self, from: u64) -> Vec<journal::Record> {
        let (records, _) = journal::read(&self.journal());
        journal::window(&records, from, u64::MAX)
    }

    /// Fails unless every agent process still runs (one that exited on its own is a bug
    /// worth reporting, not a fault the harness made).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for d in self.agents.iter_mut().chain(self.controllers.iter_mut()) {
            if let Some(child) = d.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    d.child = None;
                    bail!("{} exited on its own: {status}", d.name);
                }
            }
        }
        Ok(())
    }
}
