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
pub(crate) fn build_artifact(dir: &Path, version: &str) -> String {
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
pub(crate) fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
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
pub(crate) struct Fleet {
    label: &'static str,
    /// Declared first so the processes die before the store and the dirs go away.
    pub(crate) controllers: Vec<Option<Spawned>>,
    pub(crate) agents: BTreeMap<String, Spawned>,
    pub(crate) store: String,
    work: tempfile::TempDir,
    /// The store's process (etcd), for tests that stop it.
    pub(crate) backend: Backend,
}

impl Fleet {
    pub(crate) fn new(label: &'static str, backend: Backend) -> Fleet {
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
            backend,
        }
    }

    pub(crate) fn artifacts(&self) -> PathBuf {
        self.work.path().join("artifacts")
    }

    /// Where hooks write what they saw (the Application's `LOGS` env).
    pub(crate) fn logs(&self) -> PathBuf {
        self.work.path().join("logs")
    }

    /// A file a hook may wait for (the Application's `GATE` env).
    pub(crate) fn gate(&self) -> PathBuf {
        self.logs().join("gate")
    }

    fn root(&self, machine: &str) -> PathBuf {
        self.work.path().join("roots").join(machine)
    }

    /// Starts a controller; returns its index in `controllers`.
    fn start_controller(&mut self, identity: &str) -> usize {
        self.start_controller_with(identity, &[])
    }

    /// Starts a controller with `extra` flags; returns its index in `controllers`.
    pub(crate) fn start_controller_with(&mut self, identity: &str, extra: &[&str]) -> usize {
        let mut args = vec![
            "-v", // info logs: the test reads "leading" from stderr
            "controller",
            "--identity",
            identity,
            "--lease-ttl",
            LEASE_TTL,
            "--workers",
            "2",
        ];
        args.extend_from_slice(extra);
        let c = spawn(&self.store, &args);
        self.controllers.push(Some(c));
        self.controllers.len() - 1
    }

    pub(crate) fn kill_controller(&mut self, i: usize) {
        let c = self.controllers[i]
            .take()
            .expect("controller still running");
        drop(c); // SIGKILL and reap
    }

    pub(crate) fn start_agent(&mut self, name: &str) {
        self.start_agent_with(name, &[]);
    }

    /// Starts an agent with `extra` flags after its own.
    pub(crate) fn start_agent_with(&mut self, name: &str, extra: &[&str]) {
        self.start_agent_labelled(name, "role=web", extra);
    }

    /// Starts an agent with these `--labels` (which should include `role=web`) and
    /// `extra` flags after its own.
    pub(crate) fn start_agent_labelled(&mut self, name: &str, labels: &str, extra: &[&str]) {
        let root = self.root(name).display().to_string();
        let mut args = vec![
            "agent",
            "--name",
            name,
            "--labels",
            labels,
            "--root",
            &root,
            "--lease-ttl",
            LEASE_TTL,
        ];
        args.extend_from_slice(extra);
        let a = spawn(&self.store, &args);
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
    pub(crate) fn kill_agent(&mut self, name: &str) {
        drop(self.agents.remove(name).expect("agent is running"));
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        run(&self.store, args)
    }

    /// Applies manifests given as JSON values (JSON is YAML), one document each.
    pub(crate) fn apply(&self, docs: &[Value]) {
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
    pub(crate) fn app(&self, hooks: Value, extra_env: Value) -> Value {
        let mut env = json!({
            "LOGS": self.logs().display().to_string(),
            "GATE": self.gate().display().to_string(),
        });
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

    pub(crate) fn rollout(version: &str, strategy: Value, failure_policy: Value) -> Value {
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

    pub(crate) fn get_rollout(&self) -> Rollout {
        self.get_rollout_named("api")
    }

    /// The Rollout `name` as `get -o json` prints it.
    pub(crate) fn get_rollout_named(&self, name: &str) -> Rollout {
        let out = self.run(&["get", "rollout", name, "-o", "json"]).ok();
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
    pub(crate) fn wait_complete(&self, version: &str, desired: u32) -> Rollout {
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

    /// [`wait_until`], with the fleet's state and logs added to the failure message.
    pub(crate) fn wait<T>(&self, what: &str, check: impl FnMut() -> Option<T>) -> T {
        let what = format!("[{}] {what}", self.label);
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(&what, ROLLOUT_DEADLINE, check)
        })) {
            Ok(v) => v,
            Err(_) => panic!("timed out waiting for {what}\n{}", self.diagnostics()),
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
    pub(crate) fn current(&self, machine: &str) -> Option<String> {
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
    pub(crate) fn log_lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.logs().join(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Builds v1 and v2, starts a controller and `n` agents, applies the Application with
    /// `hooks`/`env` and a Rollout at v1, and waits for it to complete.
    pub(crate) fn at_v1(
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
pub(crate) const COUNT_ACTIVATIONS: &str =
    r#"echo "$DEPLOY_MACHINE $DEPLOY_VERSION" >> "$LOGS/activations""#;

pub(crate) fn hook(cmd: &str) -> Value {
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

/// The condition `kind` of a Rollout: (status, reason, message).
pub(crate) fn condition(r: &Rollout, kind: &str) -> Option<(String, String, String)> {
    let st = r.status.as_ref()?;
    let c = st.conditions.iter().find(|c| c.type_ == kind)?;
    Some((
        format!("{:?}", c.status),
        c.reason.clone(),
        c.message.clone(),
    ))
}

/// `start`/`end` events of switches into the most that ever overlapped.
fn max_overlap(lines: &[String]) -> usize {
    let mut events: Vec<(u128, i32)> = lines
        .iter()
        .map(|l| {
            let mut w = l.split_whitespace();
            let kind = w
                .next()
                .expect("split_whitespace of a hook line written with a first word");
            let ns: u128 = w
                .next()
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("no time in hook line {l:?}"));
            // Ends sort before starts at the same instant: touching is not overlapping.
            (ns, if kind == "start" { 1 } else { -1 })
        })
        .collect();
    events.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    most as usize
}

/// Test 2, embedded only: slot counting is the controller's logic, not the store's.
#[test]
fn six_agents_with_max_unavailable_two_should_never_switch_more_than_two_at_once() {
    // Each switch waits (up to 10 s) until another is in flight, so that two slots used
    // at once show as an overlap however the machines are scheduled; its start is logged
    // before it says it is active, so a peer that sees it ends after that start.
    let hooks = json!({
        "activate": [hook(concat!(
            r#"echo "start $(date +%s%N) $DEPLOY_MACHINE $DEPLOY_VERSION" >> "$LOGS/times"; "#,
            r#"touch "$LOGS/active-$DEPLOY_MACHINE"; i=0; "#,
            r#"while [ "$(ls "$LOGS" | grep -c '^active-')" -lt 2 ] && [ $i -lt 100 ]; do "#,
            r#"sleep 0.1; i=$((i+1)); done; "#,
            r#"echo "end $(date +%s%N) $DEPLOY_MACHINE $DEPLOY_VERSION" >> "$LOGS/times"; "#,
            r#"rm -f "$LOGS/active-$DEPLOY_MACHINE""#
        ))],
    });
    let (f, machines) = Fleet::at_v1(
        "embedded",
        Backend::embedded(),
        6,
        hooks,
        json!({}),
        json!({ "maxUnavailable": 2 }),
        pause_policy(),
    );
    f.run(&["set", "version", "api", "v2"]).ok();
    f.wait_complete("v2", 6);
    for m in &machines {
        assert_eq!(f.current(m).as_deref(), Some("releases/v2"), "{m}");
    }
    let v2: Vec<String> = f
        .log_lines("times")
        .into_iter()
        .filter(|l| l.ends_with(" v2"))
        .collect();
    assert_eq!(v2.len(), 12, "a start and an end per machine: {v2:#?}");
    let most = max_overlap(&v2);
    assert!(
        most <= 2,
        "{most} switches overlapped with maxUnavailable 2: {v2:#?}"
    );
    assert_eq!(most, 2, "two slots were never used at once: {v2:#?}");
}

/// Test 3, etcd only (the gate is controller logic; etcd is the production store).
#[test]
fn min_staged_all_should_hold_every_switch_until_the_slow_install_finishes() {
    let hooks = json!({
        "install": [hook(concat!(
            r#"if [ "$DEPLOY_MACHINE" = m1 ] && [ "$DEPLOY_VERSION" = v2 ]; then "#,
            r#"touch "$LOGS/m1-waiting"; "#,
            r#"while [ ! -f "$GATE" ]; do sleep 0.1; done; fi"#
        ))],
        "activate": [hook(
            r#"echo "$DEPLOY_MACHINE $DEPLOY_VERSION $(date +%s%N)" >> "$LOGS/switches""#
        )],
    });
    let (f, machines) = Fleet::at_v1(
        "etcd",
        Backend::etcd(),
        3,
        hooks,
        json!({}),
        json!({ "maxUnavailable": 3, "minStaged": "100%" }),
        pause_policy(),
    );
    f.run(&["set", "version", "api", "v2"]).ok();
    // The other two stage v2 while m1's install waits on the gate.
    f.wait("m1's install hook waiting and two machines staged", || {
        let st = f.get_rollout().status?;
        (f.logs().join("m1-waiting").exists() && st.staged == 2).then_some(())
    });
    // Watch a while: nothing may switch while the gate is shut.
    let watch_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < watch_until {
        for m in &machines {
            assert_eq!(
                f.current(m).as_deref(),
                Some("releases/v1"),
                "{m} switched before every machine staged v2"
            );
        }
        std::thread::sleep(Duration::from_millis(100)); // sampling the window
    }
    let r = f.get_rollout();
    let (status, reason, _) = condition(&r, "Staged").expect("a Staged condition");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "WaitingForStage")
    );
    let opened = now_ns();
    std::fs::write(f.gate(), "").expect("logs dir is writable");
    f.wait_complete("v2", 3);
    for m in &machines {
        assert_eq!(f.current(m).as_deref(), Some("releases/v2"), "{m}");
    }
    let v2: Vec<String> = f
        .log_lines("switches")
        .into_iter()
        .filter(|l| l.contains(" v2 "))
        .collect();
    assert_eq!(v2.len(), 3, "one v2 switch per machine: {v2:?}");
    for l in &v2 {
        let ns: u128 = l
            .rsplit(' ')
            .next()
            .and_then(|t| t.parse().ok())
            .expect("a time at the end of the line");
        assert!(ns > opened, "switch before the gate opened: {l}");
    }
}

/// Activate fails for v2 on `machine` only.
fn failing_activate(machine: &str) -> Value {
    json!({
        "activate": [
            hook(r#"echo "$DEPLOY_MACHINE $DEPLOY_VERSION" >> "$LOGS/activations""#),
            hook(&format!(
                r#"[ "$DEPLOY_MACHINE" != {machine} ] || [ "$DEPLOY_VERSION" != v2 ] || exit 3"#
            )),
        ],
    })
}

/// Test 4a, embedded only: failure accounting is controller logic.
#[test]
fn a_failed_activate_under_pause_policy_should_degrade_and_stop_switching() {
    // Machines switch in name order; m0 fails first, so m1 and m2 must never move.
    let (f, _machines) = Fleet::at_v1(
        "embedded",
        Backend::embedded(),
        3,
        failing_activate("m0"),
        json!({}),
        default_strategy(),
        pause_policy(),
    );
    f.run(&["set", "version", "api", "v2"]).ok();
    let r = f.wait("rollout Degraded", || {
        let r = f.get_rollout();
        (r.status.as_ref()?.phase == RolloutPhase::Degraded).then_some(r)
    });
    let (status, reason, _) = condition(&r, "Degraded").expect("a Degraded condition");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "FailureLimitExceeded")
    );
    let st = r.status.as_ref().expect("a Degraded rollout has a status");
    assert!(
        st.failed_machines.iter().any(|fm| fm.machine == "m0"),
        "failedMachines names m0: {:?}",
        st.failed_machines
    );
    for m in ["m1", "m2"] {
        assert_eq!(
            f.current(m).as_deref(),
            Some("releases/v1"),
            "{m} moved after the failure"
        );
    }
    let m0 = f
        .instances()
        .into_iter()
        .find(|i| i.spec.machine == "m0")
        .expect("m0 has an Instance");
    let failure = m0
        .status
        .and_then(|s| s.failure)
        .expect("m0's Instance reports its failure");
    assert_eq!(failure.version, "v2");
    assert!(
        failure.message.contains("exit status: 3"),
        "the failure says how the hook ended: {failure:?}"
    );
    let counts = activation_counts(&f.log_lines("activations"));
    assert!(
        !counts.contains_key("m1 v2") && !counts.contains_key("m2 v2"),
        "no switch after the failure: {counts:?}"
    );
    assert_eq!(
        f.run(&["rollout", "status", "api", "--timeout", "20s"])
            .code,
        1
    );
}

/// Test 4b, etcd only: the rollback path (many Instance writes at once) on etcd.
#[test]
fn a_failed_activate_under_rollback_policy_should_put_every_machine_back_on_v1() {
    // m2 fails last, after m0 and m1 switched: both must come back.
    let (f, machines) = Fleet::at_v1(
        "etcd",
        Backend::etcd(),
        3,
        failing_activate("m2"),
        json!({}),
        default_strategy(),
        json!({ "maxFailures": 0, "action": "Rollback" }),
    );
    f.run(&["set", "version", "api", "v2"]).ok();
    let r = f.wait("rolled back on disk and Degraded", || {
        let r = f.get_rollout();
        let on_v1 = machines
            .iter()
            .all(|m| f.current(m).as_deref() == Some("releases/v1"));
        let degraded = r.status.as_ref()?.phase == RolloutPhase::Degraded;
        let reason = condition(&r, "Degraded")?.1;
        (on_v1 && degraded && reason == "RolledBack").then_some(r)
    });
    let counts = activation_counts(&f.log_lines("activations"));
    for m in ["m0", "m1"] {
        assert_eq!(
            counts.get(&format!("{m} v2")),
            Some(&1),
            "{m} reached v2: {counts:?}"
        );
        assert_eq!(
            counts.get(&format!("{m} v1")),
            Some(&2),
            "{m} re-activated v1 on rollback: {counts:?}"
        );
    }
    let st = r.status.expect("the waited-for phase is in the status");
    assert_eq!(st.stable_version.as_deref(), Some("v1"));
    let out = f.run(&["rollout", "status", "api", "--timeout", "20s"]);
    assert_eq!(out.code, 1, "rollout status after a rollback: {out:?}");
}

/// Test 5, embedded only: verification is the agent's; the store plays no part.
#[test]
fn a_checksum_mismatch_should_switch_nothing_and_name_the_artifact() {
    let hooks = json!({ "activate": [hook(COUNT_ACTIVATIONS)] });
    let (f, machines) = Fleet::at_v1(
        "embedded",
        Backend::embedded(),
        2,
        hooks,
        json!({}),
        default_strategy(),
        pause_policy(),
    );
    let wrong = "0".repeat(64);
    f.run(&["set", "version", "api", "v2", "--sha256", &wrong])
        .ok();
    let r = f.wait("rollout Degraded", || {
        let r = f.get_rollout();
        (r.status.as_ref()?.phase == RolloutPhase::Degraded).then_some(r)
    });
    for m in &machines {
        assert_eq!(f.current(m).as_deref(), Some("releases/v1"), "{m}");
        assert!(
            !f.root(m).join("default/api/releases/v2").exists(),
            "{m}: nothing unpacked on a mismatch"
        );
    }
    let counts = activation_counts(&f.log_lines("activations"));
    assert!(counts.keys().all(|k| k.ends_with(" v1")), "{counts:?}");
    let st = r.status.expect("the waited-for phase is in the status");
    let said = format!(
        "{}\n{}",
        st.message,
        st.failed_machines
            .iter()
            .map(|m| m.message.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        said.contains("app-v2.tar.gz") && said.contains(&wrong),
        "the Rollout names the artifact and the digest: {said}"
    );
}

/// Test 6, etcd only: a new Machine's presence comes through etcd's watch.
#[test]
fn an_agent_joining_after_complete_should_get_the_stable_version() {
    let hooks = json!({ "activate": [hook(COUNT_ACTIVATIONS)] });
    let (mut f, _machines) = Fleet::at_v1(
        "etcd",
        Backend::etcd(),
        2,
        hooks,
        json!({}),
        default_strategy(),
        pause_policy(),
    );
    let before = f.get_rollout();
    f.start_agent("m2");
    f.wait("m2 on v1", || {
        (f.current("m2").as_deref() == Some("releases/v1")).then_some(())
    });
    let r = f.wait_complete("v1", 3);
    assert_eq!(
        r.metadata.generation, before.metadata.generation,
        "the Rollout's spec was not touched"
    );
    let counts = activation_counts(&f.log_lines("activations"));
    assert_eq!(counts.get("m2 v1"), Some(&1), "{counts:?}");
}

/// Test 7, both stores: recovery after a crash reads the store afresh.
#[test]
fn a_controller_killed_mid_rollout_should_finish_after_restart_without_double_switches() {
    for (label, backend) in Backend::all() {
        let hooks = json!({
            "activate": [
                hook(COUNT_ACTIVATIONS),
                // Slow enough that the kill below lands mid-rollout even on a loaded
                // machine, where each CLI poll can take a second.
                hook(r#"[ "$DEPLOY_VERSION" != v2 ] || sleep 2"#),
            ],
        });
        let (mut f, machines) = Fleet::at_v1(
            label,
            backend,
            3,
            hooks,
            json!({}),
            default_strategy(),
            pause_policy(),
        );
        f.run(&["set", "version", "api", "v2"]).ok();
        f.wait("a first v2 switch", || {
            let st = f.get_rollout().status?;
            (st.updated >= 1 && st.phase != RolloutPhase::Complete).then_some(())
        });
        f.kill_controller(0);
        // With no controller the status is frozen: this proves the kill came mid-rollout.
        let frozen = f.get_rollout();
        assert_ne!(
            frozen.status.as_ref().map(|s| s.phase),
            Some(RolloutPhase::Complete),
            "[{label}] the controller was killed only after the rollout completed"
        );
        f.start_controller("ctl-b");
        f.wait_complete("v2", 3);
        for m in &machines {
            assert_eq!(
                f.current(m).as_deref(),
                Some("releases/v2"),
                "[{label}] {m}"
            );
        }
        let counts = activation_counts(&f.log_lines("activations"));
        assert_eq!(counts.len(), 6, "[{label}] {counts:?}");
        assert!(
            counts.values().all(|&c| c == 1),
            "[{label}] a machine switched twice: {counts:?}"
        );
    }
}

/// Test 8, both stores: the restarted agent re-reads its Instance and its lease.
#[test]
fn an_agent_killed_mid_switch_should_converge_after_restart() {
    for (label, backend) in Backend::all() {
        let hooks = json!({
            "activate": [
                hook(COUNT_ACTIVATIONS),
                hook(concat!(
                    r#"if [ "$DEPLOY_MACHINE" = m1 ] && [ "$DEPLOY_VERSION" = v2 ]; then "#,
                    r#"touch "$LOGS/m1-activating"; sleep 2; fi"#
                )),
            ],
        });
        let (mut f, machines) = Fleet::at_v1(
            label,
            backend,
            3,
            hooks,
            json!({}),
            default_strategy(),
            pause_policy(),
        );
        f.run(&["set", "version", "api", "v2"]).ok();
        f.wait("m1's activate hook running", || {
            f.logs().join("m1-activating").exists().then_some(())
        });
        f.kill_agent("m1");
        f.start_agent("m1");
        f.wait_complete("v2", 3);
        for m in &machines {
            assert_eq!(
                f.current(m).as_deref(),
                Some("releases/v2"),
                "[{label}] {m}"
            );
        }
        let m1 = f
            .instances()
            .into_iter()
            .find(|i| i.spec.machine == "m1")
            .expect("m1 has an Instance");
        let st = m1.status.expect("m1's Instance has a status");
        assert_eq!(st.phase, InstancePhase::Running, "[{label}]");
        assert_eq!(st.current_version.as_deref(), Some("v2"), "[{label}]");
        let counts = activation_counts(&f.log_lines("activations"));
        for m in ["m0", "m2"] {
            assert_eq!(
                counts.get(&format!("{m} v2")),
                Some(&1),
                "[{label}] {m} switched once: {counts:?}"
            );
        }
    }
}

/// Test 9, embedded only: undo is a spec change like any other.
#[test]
fn rollout_undo_should_return_every_machine_to_the_previous_version() {
    let hooks = json!({ "activate": [hook(COUNT_ACTIVATIONS)] });
    let (f, machines) = Fleet::at_v1(
        "embedded",
        Backend::embedded(),
        3,
        hooks,
        json!({}),
        default_strategy(),
        pause_policy(),
    );
    f.run(&["set", "version", "api", "v2"]).ok();
    f.wait_complete("v2", 3);
    f.run(&["rollout", "undo", "api"]).ok();
    let r = f.wait_complete("v1", 3);
    assert_eq!(r.spec.version, "v1");
    for m in &machines {
        assert_eq!(f.current(m).as_deref(), Some("releases/v1"), "{m}");
    }
    let counts = activation_counts(&f.log_lines("activations"));
    for m in &machines {
        assert_eq!(counts.get(&format!("{m} v1")), Some(&2), "{counts:?}");
    }
}

/// Test 10, both stores: leader election rests on the store's leases.
#[test]
fn a_standby_controller_should_take_over_when_the_leader_is_killed() {
    for (label, backend) in Backend::all() {
        let mut f = Fleet::new(label, backend);
        for v in ["v1", "v2"] {
            build_artifact(&f.artifacts(), v);
        }
        let a = f.start_controller("ctl-a");
        let leading = f.controllers[a]
            .as_mut()
            .expect("started just above, not killed")
            .wait_for_stderr_line(Duration::from_secs(20), |l| l.contains("became the leader"));
        assert!(leading.is_some(), "[{label}] ctl-a never led");
        let b = f.start_controller("ctl-b");
        let machines = f.start_agents(2);
        f.apply(&[
            f.app(json!({ "activate": [hook(COUNT_ACTIVATIONS)] }), json!({})),
            Fleet::rollout("v1", default_strategy(), pause_policy()),
        ]);
        f.wait_complete("v1", 2);
        f.kill_controller(a);
        // The takeover is bounded by the lease; the rollout after it by ROLLOUT_DEADLINE.
        let ttl = humantime::parse_duration(LEASE_TTL).expect("a valid duration");
        let b_led = f.controllers[b]
            .as_mut()
            .expect("only ctl-a was killed")
            .wait_for_stderr_line(ttl + Duration::from_secs(15), |l| {
                l.contains("became the leader")
            });
        assert!(
            b_led.is_some(),
            "[{label}] ctl-b did not take over within the lease TTL {ttl:?} and 15 s"
        );
        f.run(&["set", "version", "api", "v2"]).ok();
        f.wait_complete("v2", 2);
        for m in &machines {
            assert_eq!(
                f.current(m).as_deref(),
                Some("releases/v2"),
                "[{label}] {m}"
            );
        }
    }
}

/// Writes `app-<version>.tar.gz` whose `esc` reaches `work/canary` through a chain of
/// symlinks each harmless on its own (`d/…/d/up` leads back to the release root, `esc`
/// goes through it and up six levels), then writes `esc/pwned` through it.
fn build_hostile_artifact(dir: &Path, version: &str) {
    let deep = vec!["d"; 30].join("/");
    let links = [
        (format!("{deep}/up"), vec![".."; 30].join("/")),
        // releases/.v.tmp → releases → api → default → m0 → roots → work
        (
            "esc".to_string(),
            format!("{deep}/up/../../../../../../canary"),
        ),
    ];
    let file = std::fs::File::create(dir.join(format!("app-{version}.tar.gz")))
        .expect("artifact dir is writable");
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::fast(),
    ));
    for (path, target) in &links {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        tar.append_link(&mut h, path, target)
            .expect("appending to a tar in a writable dir");
    }
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "esc/pwned", &b"root\n"[..])
        .expect("appending to a tar in a writable dir");
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .expect("finishing the artifact in a writable dir");
}

/// Test 11, on both stores: the hostile artifact goes through the real agent, whose
/// failure report travels through the store to the Rollout.
#[test]
fn a_hostile_artifact_should_fail_naming_the_entry_write_nothing_outside_and_leave_the_agent_able_to_deploy(
) {
    for (label, backend) in Backend::all() {
        let hooks = json!({ "activate": [hook(COUNT_ACTIVATIONS)] });
        let (f, _machines) = Fleet::at_v1(
            label,
            backend,
            1,
            hooks,
            json!({}),
            default_strategy(),
            pause_policy(),
        );
        let canary = f.work.path().join("canary");
        std::fs::create_dir(&canary).expect("work dir is writable");
        build_hostile_artifact(&f.artifacts(), "v2");
        build_artifact(&f.artifacts(), "v3");

        f.run(&["set", "version", "api", "v2"]).ok();
        let r = f.wait("rollout Degraded on the hostile v2", || {
            let r = f.get_rollout();
            (r.status.as_ref()?.phase == RolloutPhase::Degraded).then_some(r)
        });
        let st = r.status.expect("the waited-for phase is in the status");
        let said: Vec<&str> = st
            .failed_machines
            .iter()
            .map(|m| m.message.as_str())
            .collect();
        assert!(
            said.iter()
                .any(|m| m.contains("refusing entry \"esc/pwned\"")),
            "[{label}] the Rollout names the entry: {said:?}"
        );
        let failure = f
            .instances()
            .into_iter()
            .find(|i| i.spec.machine == "m0")
            .and_then(|i| i.status?.failure)
            .expect("m0's Instance reports its failure");
        assert_eq!(
            (
                failure.version.as_str(),
                failure.operation.as_str(),
                failure.reason.as_str()
            ),
            ("v2", "Stage", "UnsafeArchive"),
            "[{label}] {failure:?}"
        );
        assert!(
            failure.message.contains("esc/pwned"),
            "[{label}] {failure:?}"
        );
        let outside: Vec<_> = std::fs::read_dir(&canary)
            .expect("the canary dir is still there")
            .collect();
        assert!(outside.is_empty(), "[{label}] written outside: {outside:?}");
        let releases = f.root("m0").join("default/api/releases");
        let left: Vec<String> = std::fs::read_dir(&releases)
            .expect("m0 has a releases dir")
            .map(|e| {
                e.expect("a readable entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(left, ["v1"], "[{label}] nothing of v2 is left in releases/");
        assert_eq!(f.current("m0").as_deref(), Some("releases/v1"), "[{label}]");

        f.run(&["set", "version", "api", "v3"]).ok();
        f.wait_complete("v3", 1);
        assert_eq!(f.current("m0").as_deref(), Some("releases/v3"), "[{label}]");
        let version = std::fs::read_to_string(f.root("m0").join("default/api/current/VERSION"))
            .expect("current/VERSION exists");
        assert_eq!(version, "v3\n", "[{label}] m0 serves the good v3");
        assert!(
            std::fs::read_dir(&canary)
                .expect("the canary dir")
                .next()
                .is_none(),
            "[{label}] still nothing outside"
        );
    }
}
