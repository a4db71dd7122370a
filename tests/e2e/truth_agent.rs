//! What the agent reports is true, end to end: a new version whose service keeps exiting
//! fails with `ServiceCrashLoop` (and is rolled back, or stops the rollout) instead of
//! going Complete; an agent waits out a locked store file instead of exiting, and many
//! agents started at once on one new embedded store all register.

use crate::common::{bin, run, spawn, write, Backend, Output, Spawned};
use deployctl::api::{Event, Instance, InstancePhase, Rollout, RolloutPhase};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a rollout (or a rollback) may take on a loaded two-core machine.
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(90);

/// Writes `app-<version>.tar.gz` (holding `VERSION` and the `extra` files) into `dir`.
fn build_artifact(dir: &Path, version: &str, extra: &[(&str, String)]) {
    let path = dir.join(format!("app-{version}.tar.gz"));
    let file = std::fs::File::create(&path).expect("artifact dir is writable");
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut files = vec![("VERSION", format!("{version}\n"))];
    files.extend(extra.iter().cloned());
    for (name, body) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, body.as_bytes())
            .expect("appending to a tar in a writable dir");
    }
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .expect("finishing the artifact in a writable dir");
}

/// Polls `check` every 100 ms until it yields, or panics naming `what` (and `context()`).
fn wait_until<T>(
    what: &str,
    mut check: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + ROLLOUT_DEADLINE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {ROLLOUT_DEADLINE:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(100)); // poll interval, not a sync stand-in
    }
}

/// A store, a controller, agents and a work dir; every process is killed on drop.
struct Fleet {
    label: &'static str,
    /// Declared first so the processes die before the store and the dirs go away.
    controller: Option<Spawned>,
    agents: Vec<Spawned>,
    store: String,
    work: tempfile::TempDir,
    _backend: Backend,
}

impl Fleet {
    fn new(label: &'static str, backend: Backend) -> Fleet {
        let work = crate::common::tempdir();
        std::fs::create_dir_all(work.path().join("artifacts")).expect("temp dir is writable");
        let mut f = Fleet {
            label,
            controller: None,
            agents: Vec::new(),
            store: backend.url(),
            work,
            _backend: backend,
        };
        f.controller = Some(spawn(
            &f.store,
            &[
                "controller",
                "--identity",
                "ctl",
                "--lease-ttl",
                "3s",
                "--workers",
                "2",
            ],
        ));
        f
    }

    fn artifacts(&self) -> PathBuf {
        self.work.path().join("artifacts")
    }

    fn root(&self, machine: &str) -> PathBuf {
        self.work.path().join("roots").join(machine)
    }

    fn start_agents(&mut self, n: usize) -> Vec<String> {
        let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        for name in &names {
            let root = self.root(name).display().to_string();
            self.agents.push(spawn(
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
                    "3s",
                ],
            ));
        }
        names
    }

    fn run(&self, args: &[&str]) -> Output {
        run(&self.store, args)
    }

    fn apply(&self, docs: &[Value]) {
        let text = docs
            .iter()
            .map(|d| serde_json::to_string_pretty(d).expect("json values serialize"))
            .collect::<Vec<_>>()
            .join("\n---\n");
        let file = write(self.work.path(), "manifests.yaml", &text);
        self.run(&["apply", "-f", &file]).ok();
    }

    /// The Application `api` on role=web machines with `service` and an exec health
    /// check `check`, every second.
    fn app(&self, service: &str, check: &str) -> Value {
        json!({
            "apiVersion": "deployctl.dev/v1",
            "kind": "Application",
            "metadata": { "name": "api" },
            "spec": {
                "selector": { "matchLabels": { "role": "web" } },
                "artifact": {
                    "url": format!("file://{}/app-{{{{version}}}}.tar.gz", self.artifacts().display())
                },
                "env": { "DEPLOYCTL_BIN": bin() },
                "service": { "command": service, "stopTimeoutSeconds": 5 },
                "healthCheck": {
                    "exec": { "command": check, "timeoutSeconds": 5 },
                    "periodSeconds": 1,
                    "timeoutSeconds": 5,
                    "deadlineSeconds": 60,
                },
            }
        })
    }

    fn rollout(version: &str, failure_policy: Value) -> Value {
        json!({
            "apiVersion": "deployctl.dev/v1",
            "kind": "Rollout",
            "metadata": { "name": "api" },
            "spec": {
                "application": "api",
                "version": version,
                "strategy": { "maxUnavailable": 1 },
                "failurePolicy": failure_policy,
            }
        })
    }

    fn get_rollout(&self) -> Rollout {
        let out = self.run(&["get", "rollout", "api", "-o", "json"]).ok();
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("get rollout -o json is not a Rollout: {e}\n{}", out.stdout))
    }

    fn list<T: serde::de::DeserializeOwned>(&self, kind: &str) -> Vec<T> {
        let out = self.run(&["get", kind, "-o", "json"]).ok();
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("get {kind} -o json is not JSON: {e}\n{}", out.stdout));
        let items = v.get("items").cloned().unwrap_or(v);
        serde_json::from_value(items).unwrap_or_else(|e| panic!("not a list of {kind}: {e}"))
    }

    /// Where `machine`'s `current` points (`releases/<version>`), if anywhere.
    fn current(&self, machine: &str) -> Option<String> {
        std::fs::read_link(self.root(machine).join("default/api/current"))
            .ok()
            .map(|p| p.display().to_string())
    }

    fn diagnostics(&self) -> String {
        let d = self.run(&["describe", "rollout", "api"]);
        let i = self.run(&["describe", "instances"]);
        let ctl = self
            .controller
            .as_ref()
            .map(|c| c.stderr_so_far())
            .unwrap_or_default();
        format!(
            "[{}] describe rollout:\n{}{}\ndescribe instances:\n{}{}\ncontroller stderr:\n{ctl}",
            self.label, d.stdout, d.stderr, i.stdout, i.stderr
        )
    }

    fn wait<T>(&self, what: &str, check: impl FnMut() -> Option<T>) -> T {
        wait_until(&format!("[{}] {what}", self.label), check, || {
            self.diagnostics()
        })
    }

    /// Waits until the Rollout is Complete at `version` on `n` machines.
    fn wait_complete(&self, version: &str, n: u32) {
        self.wait(&format!("Complete at {version}"), || {
            let st = self.get_rollout().status?;
            (st.phase == RolloutPhase::Complete
                && st.stable_version.as_deref() == Some(version)
                && st.available == n)
                .then_some(())
        });
    }
}

/// Agent Warning events with `reason`.
fn events_with_reason(f: &Fleet, reason: &str) -> Vec<Event> {
    f.list::<Event>("events")
        .into_iter()
        .filter(|e| e.spec.reason == reason)
        .collect()
}

/// v1 runs; v2's service prints "starting" and exits 1 at once, while its health check
/// (`true`) always passes. Under `Rollback` the switch fails with ServiceCrashLoop and
/// every machine returns to v1, on disk and in its Instance status.
fn crash_loop_rolls_back(label: &'static str, backend: Backend) {
    let mut f = Fleet::new(label, backend);
    for v in ["v1", "v2"] {
        build_artifact(&f.artifacts(), v, &[]);
    }
    let machines = f.start_agents(2);
    let service =
        r#"if [ "$DEPLOY_VERSION" = v2 ]; then echo starting; exit 1; fi; exec sleep 1000"#;
    let policy = json!({ "maxFailures": 0, "action": "Rollback" });
    f.apply(&[f.app(service, "true"), Fleet::rollout("v1", policy.clone())]);
    f.wait_complete("v1", 2);

    f.run(&["set", "version", "api", "v2"]).ok();
    f.wait(
        "every machine back on v1, available, and the rollout rolled back",
        || {
            let on_disk = machines
                .iter()
                .all(|m| f.current(m).as_deref() == Some("releases/v1"));
            let instances = f.list::<Instance>("instances");
            let reported = instances.len() == machines.len()
                && instances.iter().all(|i| {
                    i.status.as_ref().is_some_and(|s| {
                        s.current_version.as_deref() == Some("v1")
                            && s.phase == InstancePhase::Running
                            && s.available
                            && s.healthy
                    })
                });
            let r = f.get_rollout();
            let rolled_back = r
                .status
                .as_ref()
                .is_some_and(|s| s.aborted && s.stable_version.as_deref() == Some("v1"));
            (on_disk && reported && rolled_back).then_some(())
        },
    );
    let r = f.get_rollout();
    assert_ne!(
        r.status.as_ref().map(|s| s.phase),
        Some(RolloutPhase::Complete),
        "[{label}] a rolled-back rollout is not Complete"
    );
    let crash = f.wait("the ServiceCrashLoop event", || {
        events_with_reason(&f, "ServiceCrashLoop")
            .into_iter()
            .next()
    });
    assert!(
        crash.spec.message.contains("restarted 3 time(s)")
            && crash.spec.message.contains("exited with status 1"),
        "[{label}] the event gives the restart count and the last exit: {:?}",
        crash.spec.message
    );
    let out = f.run(&["rollout", "status", "api", "--timeout", "20s"]);
    assert_ne!(
        out.code, 0,
        "[{label}] rollout status after a rollback: {out:?}"
    );
}

#[test]
fn a_crash_looping_new_version_should_fail_and_roll_back_every_machine_on_the_embedded_store() {
    crash_loop_rolls_back("embedded", Backend::embedded());
}

#[test]
fn a_crash_looping_new_version_should_fail_and_roll_back_every_machine_on_etcd() {
    crash_loop_rolls_back("etcd", Backend::etcd());
}

/// A free loopback port (bound, read, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a loopback port is free")
        .port()
}

/// The demo's failure: another process holds v2's port and answers its health check,
/// so v2's server exits at once while the check passes. The rollout must not go
/// Complete; under `Pause` it stops, the Instance says ServiceCrashLoop, and `describe
/// instance` shows the restarts and the last exit. Embedded only: the rule is the agent's.
#[test]
fn a_service_whose_port_is_taken_should_stop_the_rollout_and_describe_its_restarts() {
    use std::io::{Read, Write as _};
    let mut f = Fleet::new("embedded", Backend::embedded());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port is free");
    let taken_port = taken.local_addr().expect("bound").port();
    std::thread::spawn(move || {
        for s in taken.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\nversion 0\n",
            );
        }
    });
    build_artifact(&f.artifacts(), "v1", &[("PORT", free_port().to_string())]);
    build_artifact(&f.artifacts(), "v2", &[("PORT", taken_port.to_string())]);
    f.start_agents(1);
    let service = r#"exec "$DEPLOYCTL_BIN" demo-server --port "$(cat PORT)""#;
    let check = r#""$DEPLOYCTL_BIN" demo-server --probe --port "$(cat PORT)""#;
    let policy = json!({ "maxFailures": 0, "action": "Pause" });
    f.apply(&[f.app(service, check), Fleet::rollout("v1", policy)]);
    f.wait_complete("v1", 1);

    f.run(&["set", "version", "api", "v2"]).ok();
    let inst = f.wait("m0 failed v2 with ServiceCrashLoop", || {
        f.list::<Instance>("instances").into_iter().find(|i| {
            i.status.as_ref().is_some_and(|s| {
                s.failure
                    .as_ref()
                    .is_some_and(|x| x.reason == "ServiceCrashLoop" && x.version == "v2")
            })
        })
    });
    let st = inst.status.expect("the waited-for status");
    assert!(!st.available, "v2 is not available: {st:?}");
    let svc = st.service.expect("the service's status");
    assert!(svc.restarts >= 3, "{svc:?}");
    assert_ne!(
        svc.last_exit.as_ref().and_then(|e| e.exit_code),
        Some(0),
        "{svc:?}"
    );
    f.wait("the rollout stopped by its failure policy", || {
        let st = f.get_rollout().status?;
        (st.phase == RolloutPhase::Degraded).then_some(())
    });
    assert_ne!(
        f.get_rollout().status.map(|s| s.phase),
        Some(RolloutPhase::Complete)
    );
    let page = f.run(&["describe", "instance", "api.m0"]).ok().stdout;
    for want in [
        "Service:",
        "Restarts:",
        "Last Exit:",
        "exited with status",
        "ServiceCrashLoop",
    ] {
        assert!(
            page.contains(want),
            "describe instance lacks {want:?}:\n{page}"
        );
    }
    let out = f.run(&["rollout", "status", "api", "--timeout", "10s"]);
    assert_ne!(out.code, 0, "rollout status of a stopped rollout: {out:?}");
}

/// How many agents start at once: enough to make SQLite answer "locked", few enough for
/// a two-core machine shared with other tests.
const AGENTS_AT_ONCE: usize = 50;

/// Agents started all at once on one new embedded store file: every one registers (its
/// Machine exists, its log says so) and none exits.
#[test]
fn fifty_agents_started_at_once_on_a_new_embedded_store_should_all_register() {
    let backend = Backend::embedded();
    let store = backend.url();
    let work = crate::common::tempdir();
    let spawn_agent = |i: usize| -> Child {
        let log = std::fs::File::create(work.path().join(format!("m{i}.log")))
            .expect("temp dir is writable");
        Command::new(bin())
            .args([
                "-v",
                "agent",
                "--name",
                &format!("m{i}"),
                "--root",
                &work.path().join(format!("root-{i}")).display().to_string(),
                "--lease-ttl",
                "10s",
            ])
            .env("DEPLOYCTL_STORE", &store)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin()))
    };
    /// Kills every agent when the test ends, however it ends.
    struct Agents(Vec<Child>);
    impl Drop for Agents {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut agents = Agents((0..AGENTS_AT_ONCE).map(spawn_agent).collect());
    let log = |i: usize| {
        std::fs::read_to_string(work.path().join(format!("m{i}.log"))).unwrap_or_default()
    };
    let exited = |agents: &mut Agents| -> Vec<String> {
        agents
            .0
            .iter_mut()
            .enumerate()
            .filter_map(|(i, c)| {
                let status = c.try_wait().ok().flatten()?;
                Some(format!("m{i} exited {status}:\n{}", log(i)))
            })
            .collect()
    };
    wait_until(
        &format!("{AGENTS_AT_ONCE} agents registered"),
        || {
            let dead = exited(&mut agents);
            assert!(dead.is_empty(), "agents exited:\n{}", dead.join("\n"));
            (0..AGENTS_AT_ONCE)
                .all(|i| log(i).contains("agent registered"))
                .then_some(())
        },
        || {
            (0..AGENTS_AT_ONCE)
                .filter(|i| !log(*i).contains("agent registered"))
                .map(|i| format!("m{i}:\n{}", log(i)))
                .collect::<Vec<_>>()
                .join("\n")
        },
    );
    let out = run(&store, &["get", "machines", "-o", "json"]).ok();
    let v: Value = serde_json::from_str(&out.stdout).expect("get machines -o json is JSON");
    let items = v.get("items").cloned().unwrap_or(v);
    let names: std::collections::BTreeSet<String> = items
        .as_array()
        .expect("a list of machines")
        .iter()
        .filter_map(|m| m.pointer("/metadata/name")?.as_str().map(String::from))
        .collect();
    assert_eq!(names.len(), AGENTS_AT_ONCE, "{names:?}");
    let dead = exited(&mut agents);
    assert!(dead.is_empty(), "agents exited:\n{}", dead.join("\n"));
}

/// An agent whose store file stays locked longer than SQLite's own busy wait (5 s) says
/// what it waits for, keeps waiting, and registers once the lock is gone.
#[test]
fn an_agent_should_wait_out_a_locked_store_file_and_register_once_it_is_free() {
    let backend = Backend::embedded();
    let store = backend.url();
    let work = crate::common::tempdir();
    run(&store, &["get", "machines"]).ok(); // creates the store file and its schema
    let lock = rusqlite::Connection::open(&store).expect("the store file opens");
    lock.execute_batch("BEGIN EXCLUSIVE")
        .expect("nothing else holds the store");
    let root = work.path().join("root").display().to_string();
    let mut agent = spawn(
        &store,
        &[
            "-v",
            "agent",
            "--name",
            "m0",
            "--root",
            &root,
            "--lease-ttl",
            "10s",
        ],
    );
    let waiting = agent.wait_for_stderr_line(Duration::from_secs(30), |l| {
        l.contains("waiting for the store")
    });
    assert!(
        waiting.is_some_and(|l| l.contains("locked")),
        "the agent says it waits for the locked store"
    );
    lock.execute_batch("ROLLBACK")
        .expect("the lock is ours to drop");
    let registered =
        agent.wait_for_stderr_line(Duration::from_secs(30), |l| l.contains("agent registered"));
    assert!(
        registered.is_some(),
        "the agent registered after the lock went"
    );
    let out = run(&store, &["get", "machine", "m0", "-o", "json"]).ok();
    assert!(out.stdout.contains("\"m0\""), "{}", out.stdout);
}
