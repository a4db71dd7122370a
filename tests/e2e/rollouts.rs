//! Staged, slotted rollouts end to end: one `deployctl controller`, several `deployctl
//! agent`s (each with its own root), CLI calls, artifacts and hooks built by the test.
//!
//! Store choice per test: the ones where the store's semantics matter (leases, watches
//! across a restart, leader election) run on both backends; the rest run on one, to keep
//! the file within a few minutes on two cores. Each test says which.

use crate::common::{run, spawn, write, Backend, Output, Spawned};
use deployctl::api::{Instance, InstancePhase, Rollout, RolloutPhase};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a whole rollout may take on a loaded two-core machine.
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(60);
/// Lease TTL given to every controller and agent: short, so restarts and takeovers are quick.
const LEASE_TTL: &str = "3s";

/// Writes `app-<version>.tar.gz` holding `VERSION` into `dir`; returns its hex sha256.
fn build_artifact(dir: &Path, version: &str) -> String {
    let path = dir.join(format!("app-{version}.tar.gz"));
    let file = std::fs::File::create(&path).expect("artifact dir is writable");
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let body = format!("{version}\n");
    let mut header = tar::Header::new_gnu();
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "VERSION", body.as_bytes())
        .expect("appending to a tar in a writable dir");
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .expect("finishing the artifact in a writable dir");
    let bytes = std::fs::read(&path).expect("the artifact was just written");
    hex::encode(Sha256::digest(&bytes))
}

/// Polls `check` every 100 ms until it yields, or panics naming `what` after `timeout`.
fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100)); // poll interval, not a sync stand-in
    }
}

/// Nanoseconds since the epoch, as `date +%s%N` prints them.
fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos()
}

/// A store, a controller (or two), agents and a work dir; every process is killed on drop.
struct Fleet {
    label: &'static str,
    /// Declared first so the processes die before the store and the dirs go away.
    controllers: Vec<Option<Spawned>>,
    agents: BTreeMap<String, Spawned>,
    store: String,
    work: tempfile::TempDir,
    _backend: Backend,
}

impl Fleet {
    fn new(label: &'static str, backend: Backend) -> Fleet {
        let work = tempfile::Builder::new()
            .prefix("deployctl-e2e-rollouts-")
            .tempdir()
            .expect("can create a temporary dir");
        for dir in ["artifacts", "logs", "roots"] {
            std::fs::create_dir_all(work.path().join(dir)).expect("temp dir is writable");
        }
        Fleet {
            label,
            controllers: Vec::new(),
            agents: BTreeMap::new(),
            store: backend.url(),
            work,
            _backend: backend,
        }
    }

    fn artifacts(&self) -> PathBuf {
        self.work.path().join("artifacts")
    }

    /// Where hooks write what they saw (the Application's `LOGS` env).
    fn logs(&self) -> PathBuf {
        self.work.path().join("logs")
    }

    fn root(&self, machine: &str) -> PathBuf {
        self.work.path().join("roots").join(machine)
    }

    /// Starts a controller; returns its index in `controllers`.
    fn start_controller(&mut self, identity: &str) -> usize {
        let c = spawn(
            &self.store,
            &[
                "controller",
                "--identity",
                identity,
                "--lease-ttl",
                LEASE_TTL,
                "--workers",
                "2",
            ],
        );
        self.controllers.push(Some(c));
        self.controllers.len() - 1
    }

    fn kill_controller(&mut self, i: usize) {
        let c = self.controllers[i]
            .take()
            .expect("controller still running");
        drop(c); // SIGKILL and reap
    }

    fn start_agent(&mut self, name: &str) {
        let root = self.root(name).display().to_string();
        let a = spawn(
            &self.store,
            &[
                "agent",
                "--name",
                name,
                "--labels",
                "role=web",
                "--root",
                &root,
                "--lease-ttl",
                LEASE_TTL,
            ],
        );
        self.agents.insert(name.to_string(), a);
    }

    fn start_agents(&mut self, n: usize) -> Vec<String> {
        let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        for name in &names {
            self.start_agent(name);
        }
        names
    }

    /// SIGKILLs an agent (Child::kill sends SIGKILL) and reaps it.
    fn kill_agent(&mut self, name: &str) {
        drop(self.agents.remove(name).expect("agent is running"));
    }

    fn run(&self, args: &[&str]) -> Output {
        run(&self.store, args)
    }

    /// Applies manifests given as JSON values (JSON is YAML), one document each.
    fn apply(&self, docs: &[Value]) {
        let text = docs
            .iter()
            .map(|d| serde_json::to_string_pretty(d).expect("json values serialize"))
            .collect::<Vec<_>>()
            .join("\n---\n");
        let file = write(self.work.path(), "manifests.yaml", &text);
        self.run(&["apply", "-f", &file]).ok();
    }

    /// The Application `api` for machines labelled role=web, artifacts from our dir, with
    /// `LOGS` (and `extra_env`) in its env and `hooks` as given.
    fn app(&self, hooks: Value, extra_env: Value) -> Value {
        let mut env = json!({ "LOGS": self.logs().display().to_string() });
        if let (Some(env), Some(extra)) = (env.as_object_mut(), extra_env.as_object()) {
            env.extend(extra.clone());
        }
        json!({
            "apiVersion": "deployctl.dev/v1",
            "kind": "Application",
            "metadata": { "name": "api" },
            "spec": {
                "selector": { "matchLabels": { "role": "web" } },
                "artifact": {
                    "url": format!("file://{}/app-{{{{version}}}}.tar.gz", self.artifacts().display())
                },
                "env": env,
                "hooks": hooks,
                "keepReleases": 5,
            }
        })
    }

    fn rollout(version: &str, strategy: Value, failure_policy: Value) -> Value {
        json!({
            "apiVersion": "deployctl.dev/v1",
            "kind": "Rollout",
            "metadata": { "name": "api" },
            "spec": {
                "application": "api",
                "version": version,
                "strategy": strategy,
                "failurePolicy": failure_policy,
            }
        })
    }

    fn get_rollout(&self) -> Rollout {
        let out = self.run(&["get", "rollout", "api", "-o", "json"]).ok();
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("get rollout -o json is not a Rollout: {e}\n{}", out.stdout))
    }

    fn instances(&self) -> Vec<Instance> {
        let out = self.run(&["get", "instances", "-o", "json"]).ok();
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("get instances -o json is not JSON: {e}\n{}", out.stdout));
        let items = v.get("items").cloned().unwrap_or(v);
        serde_json::from_value(items).unwrap_or_else(|e| panic!("not a list of Instances: {e}"))
    }

    /// Waits for phase Complete at `version` over `desired` machines; returns the Rollout.
    fn wait_complete(&self, version: &str, desired: u32) -> Rollout {
        let label = self.label;
        let mut last = None;
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(
                &format!("[{label}] rollout complete at {version} on {desired} machines"),
                ROLLOUT_DEADLINE,
                || {
                    let r = self.get_rollout();
                    let st = r.status.clone()?;
                    let done = st.phase == RolloutPhase::Complete
                        && st.stable_version.as_deref() == Some(version)
                        && st.desired == desired
                        && st.available == desired;
                    last = Some(st);
                    done.then_some(r)
                },
            )
        }));
        match found {
            Ok(r) => r,
            Err(_) => panic!(
                "[{label}] rollout never completed at {version} on {desired} machines; last status: {last:#?}\n{}",
                self.diagnostics()
            ),
        }
    }

    /// What went on, for failure messages: describe plus the controller's stderr.
    fn diagnostics(&self) -> String {
        let d = run(&self.store, &["describe", "rollout", "api"]);
        let ctl = self
            .controllers
            .iter()
            .flatten()
            .map(|c| c.stderr_so_far())
            .collect::<Vec<_>>()
            .join("\n");
        format!(
            "describe:\n{}{}\ncontroller stderr:\n{ctl}",
            d.stdout, d.stderr
        )
    }

    /// Where `machine`'s `current` points (`releases/<version>`), if anywhere.
    fn current(&self, machine: &str) -> Option<String> {
        let link = self.root(machine).join("default/api/current");
        std::fs::read_link(link)
            .ok()
            .map(|p| p.display().to_string())
    }

    /// Every machine's `current`, by name.
    fn currents(&self, machines: &[String]) -> BTreeMap<String, Option<String>> {
        machines
            .iter()
            .map(|m| (m.clone(), self.current(m)))
            .collect()
    }

    /// Lines of a log file the hooks append to (empty when none yet).
    fn log_lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.logs().join(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Builds v1 and v2, starts a controller and `n` agents, applies the Application with
    /// `hooks`/`env` and a Rollout at v1, and waits for it to complete.
    fn at_v1(
        label: &'static str,
        backend: Backend,
        n: usize,
        hooks: Value,
        env: Value,
        strategy: Value,
        failure_policy: Value,
    ) -> (Fleet, Vec<String>) {
        let mut f = Fleet::new(label, backend);
        for v in ["v1", "v2"] {
            build_artifact(&f.artifacts(), v);
        }
        f.start_controller("ctl-a");
        let machines = f.start_agents(n);
        f.apply(&[
            f.app(hooks, env),
            Fleet::rollout("v1", strategy, failure_policy),
        ]);
        f.wait_complete("v1", n as u32);
        let want: BTreeMap<_, _> = machines
            .iter()
            .map(|m| (m.clone(), Some("releases/v1".to_string())))
            .collect();
        assert_eq!(f.currents(&machines), want, "[{label}] every machine on v1");
        (f, machines)
    }
}

/// The activate hook every test uses: one line per run, `machine version`, appended
/// (a single short write, so lines from several agents never interleave).
const COUNT_ACTIVATIONS: &str = r#"echo "$DEPLOY_MACHINE $DEPLOY_VERSION" >> "$LOGS/activations""#;

fn hook(cmd: &str) -> Value {
    json!({ "command": cmd, "timeoutSeconds": 30 })
}

fn default_strategy() -> Value {
    json!({ "maxUnavailable": 1 })
}

fn pause_policy() -> Value {
    json!({ "maxFailures": 0, "action": "Pause" })
}

/// How many times each `machine version` pair activated.
fn activation_counts(lines: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for l in lines {
        *counts.entry(l.clone()).or_insert(0) += 1;
    }
    counts
}

/// `KEY=VALUE` lines into a map.
fn env_file(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("hook env file {}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Test 1, on both stores (the basic path every store must carry).
#[test]
fn three_agents_should_roll_from_v1_to_v2_with_the_right_hook_environment() {
    for (label, backend) in Backend::all() {
        let hooks = json!({
            "activate": [
                hook(COUNT_ACTIVATIONS),
                hook(r#"env | grep ^DEPLOY_ | sort > "$LOGS/env-$DEPLOY_MACHINE-$DEPLOY_VERSION""#),
            ],
        });
        let (f, machines) = Fleet::at_v1(
            label,
            backend,
            3,
            hooks,
            json!({}),
            default_strategy(),
            pause_policy(),
        );
        f.run(&["set", "version", "api", "v2"]).ok();
        let r = f.wait_complete("v2", 3);
        let st = r.status.expect("a complete rollout has a status");
        assert_eq!((st.updated, st.available), (3, 3), "[{label}]");
        for m in &machines {
            assert_eq!(
                f.current(m).as_deref(),
                Some("releases/v2"),
                "[{label}] {m}'s current"
            );
            let version = std::fs::read_to_string(f.root(m).join("default/api/current/VERSION"))
                .expect("current/VERSION exists");
            assert_eq!(version, "v2\n", "[{label}] {m} serves the v2 artifact");
            let path = f.root(m).join("default/api");
            let env = env_file(&f.logs().join(format!("env-{m}-v2")));
            let want: BTreeMap<String, String> = [
                ("DEPLOY_APP", "api".to_string()),
                ("DEPLOY_MACHINE", m.clone()),
                ("DEPLOY_NAMESPACE", "default".to_string()),
                ("DEPLOY_PATH", path.display().to_string()),
                ("DEPLOY_PREVIOUS_VERSION", "v1".to_string()),
                (
                    "DEPLOY_RELEASE_DIR",
                    path.join("releases/v2").display().to_string(),
                ),
                ("DEPLOY_VERSION", "v2".to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            assert_eq!(
                env, want,
                "[{label}] {m}'s activate hook environment for v2"
            );
            let env1 = env_file(&f.logs().join(format!("env-{m}-v1")));
            assert_eq!(
                env1.get("DEPLOY_PREVIOUS_VERSION").map(String::as_str),
                Some(""),
                "[{label}] {m}: no previous version on the first deploy"
            );
        }
        let counts = activation_counts(&f.log_lines("activations"));
        assert!(
            counts.values().all(|&c| c == 1) && counts.len() == 6,
            "[{label}] one activation per machine and version: {counts:?}"
        );
    }
}
