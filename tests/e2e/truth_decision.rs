//! The Rollout decision tells the truth, end to end on both stores: a selector matching no
//! machine is not success (`apply` warns, `rollout status` fails saying why, `delete`
//! warns that the history goes), and a rolled back revision keeps why it failed, hook
//! stderr included, for `describe rollout`.

use crate::common::{run, spawn, write, Backend, Output, Spawned};
use deployctl::api::{ConditionStatus, Instance, Rollout, RolloutPhase};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a whole rollout may take on a loaded two-core machine.
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(60);
/// Lease TTL for the controller and agents: short, so that start-up is quick.
const LEASE_TTL: &str = "3s";

/// A store, a controller, agents and a work dir; every process is killed on drop.
struct Fleet {
    label: &'static str,
    /// Declared first so the processes die before the store and the dirs go away.
    procs: Vec<Spawned>,
    store: String,
    work: tempfile::TempDir,
    _backend: Backend,
}

impl Fleet {
    /// A store and a controller, no agent yet.
    fn new(label: &'static str, backend: Backend) -> Fleet {
        let work = crate::common::tempdir();
        std::fs::create_dir_all(work.path().join("artifacts")).expect("temp dir is writable");
        let store = backend.url();
        let controller = spawn(
            &store,
            &[
                "controller",
                "--identity",
                "ctl",
                "--lease-ttl",
                LEASE_TTL,
                "--workers",
                "2",
            ],
        );
        Fleet {
            label,
            procs: vec![controller],
            store,
            work,
            _backend: backend,
        }
    }

    fn artifacts(&self) -> PathBuf {
        self.work.path().join("artifacts")
    }

    fn root(&self, machine: &str) -> PathBuf {
        self.work.path().join("roots").join(machine)
    }

    fn start_agent(&mut self, name: &str) {
        let root = self.root(name).display().to_string();
        let agent = spawn(
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
        self.procs.push(agent);
    }

    fn run(&self, args: &[&str]) -> Output {
        run(&self.store, args)
    }

    /// `apply -f` of these documents; returns what it printed (exit 0 checked).
    fn apply(&self, docs: &[Value]) -> Output {
        let text = docs
            .iter()
            .map(|d| serde_json::to_string_pretty(d).expect("json values serialize"))
            .collect::<Vec<_>>()
            .join("\n---\n");
        let file = write(self.work.path(), "manifests.yaml", &text);
        self.run(&["apply", "-f", &file]).ok()
    }

    /// The Application `api` for machines labelled `role`, with `env` and `hooks`.
    fn app(&self, role: &str, env: Value, hooks: Value) -> Value {
        json!({
            "apiVersion": "deployctl.dev/v1",
            "kind": "Application",
            "metadata": { "name": "api" },
            "spec": {
                "selector": { "matchLabels": { "role": role } },
                "artifact": {
                    "url": format!("file://{}/app-{{{{version}}}}.tar.gz", self.artifacts().display())
                },
                "env": env,
                "hooks": hooks,
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

    /// Where `machine`'s `current` points on disk (`releases/<version>`), if anywhere.
    fn current(&self, machine: &str) -> Option<String> {
        std::fs::read_link(self.root(machine).join("default/api/current"))
            .ok()
            .map(|p| p.display().to_string())
    }

    /// Polls `check` every 100 ms until it yields; panics with `describe rollout` after
    /// [`ROLLOUT_DEADLINE`].
    fn wait<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + ROLLOUT_DEADLINE;
        loop {
            if let Some(v) = check() {
                return v;
            }
            if Instant::now() >= deadline {
                let d = self.run(&["describe", "rollout", "api"]);
                panic!(
                    "[{}] timed out waiting for {what}\ndescribe:\n{}{}",
                    self.label, d.stdout, d.stderr
                );
            }
            std::thread::sleep(Duration::from_millis(100)); // poll interval, not a sync stand-in
        }
    }
}

/// Writes `app-<version>.tar.gz` holding `VERSION` into `dir`.
fn build_artifact(dir: &Path, version: &str) {
    let file = std::fs::File::create(dir.join(format!("app-{version}.tar.gz")))
        .expect("artifact dir is writable");
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
}

#[test]
fn a_selector_matching_no_machine_should_warn_on_apply_and_fail_rollout_status() {
    for (label, backend) in Backend::all() {
        let mut f = Fleet::new(label, backend);
        build_artifact(&f.artifacts(), "v1");
        f.start_agent("m0"); // role=web: the selector below asks for role=db
        let applied = f.apply(&[
            f.app("db", json!({}), json!({})),
            // A short deadline: how long machines may take to appear before it degrades.
            Fleet::rollout(
                "v1",
                json!({ "maxUnavailable": 1, "progressDeadlineSeconds": 2 }),
                json!({}),
            ),
        ]);
        assert!(
            applied.stderr.contains(
                "warning: application.deployctl.dev/api: its selector matches no Machine"
            ),
            "[{label}] apply warns: {applied:?}"
        );

        // `rollout status` waits through the deadline, then fails saying why.
        let status = f.run(&["rollout", "status", "api", "--timeout", "30s"]);
        assert_eq!(status.code, 1, "[{label}] rollout status: {status:?}");
        assert!(
            status
                .stderr
                .contains("the selector of application \"api\" matches no ready machine"),
            "[{label}] rollout status says why: {status:?}"
        );
        let r = f.get_rollout();
        let st = r.status.expect("rollout status saw a status");
        assert_eq!(st.phase, RolloutPhase::Degraded, "[{label}] {}", st.message);
        assert_eq!(st.stable_version, None, "[{label}] nothing ran");
        let available = st.conditions.iter().find(|c| c.type_ == "Available");
        assert_eq!(
            available.map(|c| (c.status, c.reason.as_str())),
            Some((ConditionStatus::False, "NoMachines")),
            "[{label}] {:?}",
            st.conditions
        );
        let events = f.run(&["get", "events"]).ok();
        assert!(
            events.stdout.contains("NoMachines"),
            "[{label}] a warning event: {}",
            events.stdout
        );

        let deleted = f.run(&["delete", "rollout", "api"]).ok();
        assert!(
            deleted.stderr.contains(
                "warning: the history of rollout.deployctl.dev/api (its revisions, failures and stable version) went with it"
            ),
            "[{label}] delete warns: {deleted:?}"
        );
    }
}

#[test]
fn a_failing_activate_hook_should_leave_its_stderr_in_describe_rollout_after_the_rollback() {
    for (label, backend) in Backend::all() {
        let mut f = Fleet::new(label, backend);
        for v in ["v1", "v2"] {
            build_artifact(&f.artifacts(), v);
        }
        for m in ["m0", "m1"] {
            f.start_agent(m);
        }
        let marker = format!("MARKER-{}-{}", std::process::id(), label);
        // v2 fails on m1 only, after m0 switched to it; the marker goes to stderr.
        let activate = r#"[ "$DEPLOY_MACHINE" != m1 ] || [ "$DEPLOY_VERSION" != v2 ] || { echo "activating"; echo "stderr says $MARK" >&2; exit 3; }"#;
        let hooks = json!({ "activate": [{ "command": activate, "timeoutSeconds": 30 }] });
        let rollback = json!({ "maxFailures": 0, "action": "Rollback" });
        f.apply(&[
            f.app("web", json!({ "MARK": marker }), hooks),
            Fleet::rollout("v1", json!({ "maxUnavailable": 1 }), rollback),
        ]);
        f.wait("v1 complete on both machines", || {
            let st = f.get_rollout().status?;
            (st.phase == RolloutPhase::Complete
                && st.stable_version.as_deref() == Some("v1")
                && st.available == 2)
                .then_some(())
        });

        f.run(&["set", "version", "api", "v2"]).ok();
        f.wait(
            "every machine back on v1 and the rollout rolled back",
            || {
                let r = f.get_rollout();
                let st = r.status.as_ref()?;
                let on_v1 = ["m0", "m1"]
                    .iter()
                    .all(|m| f.current(m).as_deref() == Some("releases/v1"));
                let reported = f.instances().iter().all(|i| {
                    i.status
                        .as_ref()
                        .is_some_and(|s| s.current_version.as_deref() == Some("v1") && s.available)
                });
                let rolled_back = st.history.last().is_some_and(|h| h.result == "RolledBack");
                (on_v1 && reported && rolled_back).then_some(())
            },
        );

        let page = f.run(&["describe", "rollout", "api"]).ok().stdout;
        for want in [
            format!("stderr says {marker}"),
            "Failures:".to_string(),
            "version v2: 1 machine(s) failed".to_string(),
            "1 failed".to_string(),
            "HookFailed".to_string(),
        ] {
            assert!(page.contains(&want), "[{label}] {want:?} not in\n{page}");
        }
        assert!(
            !page.contains("| 0 failed"),
            "[{label}] the rolled-back revision counts its failure:\n{page}"
        );
    }
}
