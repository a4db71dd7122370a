//! The real agent `run()` against a real store (etcd and embedded), with Instance specs
//! written through `Client` the way the controller writes them, and real artifacts.

use deployctl::agent::{run, AgentConfig};
use deployctl::api::{
    Artifact, Command, Event, Hooks, Instance, InstancePhase, InstanceSpec, InstanceStatus,
    Machine, Object, VersionRef,
};
use deployctl::store::{keys, Client, Scope, Store, StoreUrl};
use deployctl::testing::EtcdServer;
use futures::StreamExt as _;
use sha2::Digest;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long the agent may take to reach any awaited state.
const DEADLINE: Duration = Duration::from_secs(30);

/// A tar.gz with `VERSION` and `bin/run`, as CI would publish it.
fn write_artifact(dir: &Path, version: &str) -> String {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, body, mode) in [
        ("VERSION", format!("{version}\n"), 0o644),
        ("bin/run", "#!/bin/sh\necho running\n".to_string(), 0o755),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(mode);
        h.set_cksum();
        tar.append_data(&mut h, name, body.as_bytes()).unwrap();
    }
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let bytes = gz.finish().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(format!("web-{version}.tar.gz")), &bytes).unwrap();
    hex::encode(sha2::Sha256::digest(&bytes))
}

struct World {
    client: Client,
    url: StoreUrl,
    tmp: tempfile::TempDir,
}

impl World {
    fn root(&self) -> PathBuf {
        self.tmp.path().join("root")
    }
    fn app_path(&self) -> PathBuf {
        self.root().join("default/web")
    }
    fn activations(&self) -> Vec<String> {
        std::fs::read_to_string(self.tmp.path().join("activations"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    fn start_agent(
        &self,
    ) -> (
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let token = CancellationToken::new();
        let config = AgentConfig {
            store: self.url.clone(),
            name: "m1".into(),
            labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
            root: self.root(),
            lease_ttl: Duration::from_secs(5),
            http: None,
        };
        let handle = tokio::spawn(run(config, token.clone()));
        (token, handle)
    }

    async fn instance(&self) -> Instance {
        self.client
            .get::<Instance>(Some("default"), "web.m1")
            .await
            .unwrap()
            .expect("the test created the instance")
    }

    /// Polls the instance until `cond` holds for its status.
    async fn wait_status(
        &self,
        what: &str,
        cond: impl Fn(&Instance, &InstanceStatus) -> bool,
    ) -> Instance {
        let start = Instant::now();
        loop {
            let inst = self.instance().await;
            if let Some(s) = inst.status() {
                if cond(&inst, s) {
                    return inst;
                }
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}; last status: {:#?}",
                inst.status()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn update_spec(&self, change: impl Fn(&mut InstanceSpec)) -> i64 {
        let obj = self
            .client
            .update::<Instance>(Some("default"), "web.m1", |i| change(i.spec_mut()))
            .await
            .unwrap();
        obj.meta().generation.unwrap()
    }
}

fn spec(tmp: &Path, sha_1: &str) -> InstanceSpec {
    let artifacts = tmp.join("artifacts");
    InstanceSpec {
        machine: "m1".into(),
        application: "web".into(),
        artifact: Artifact {
            url: format!("file://{}/web-{{{{version}}}}.tar.gz", artifacts.display()),
            ..Default::default()
        },
        env: BTreeMap::from([(
            "ACTIVATIONS".to_string(),
            tmp.join("activations").display().to_string(),
        )]),
        hooks: Hooks {
            install: vec![cmd("test -x bin/run && echo installed $DEPLOY_VERSION")],
            activate: vec![cmd(
                r#"echo "$DEPLOY_VERSION from [$DEPLOY_PREVIOUS_VERSION]" >> "$ACTIVATIONS"; echo "activated $DEPLOY_VERSION""#,
            )],
            ..Default::default()
        },
        get_version: Some(cmd("cat VERSION")),
        keep_releases: 3,
        staged: vec![VersionRef {
            version: "1.0".into(),
            sha256: Some(sha_1.to_string()),
        }],
        current: Some("1.0".into()),
        ..Default::default()
    }
}

fn cmd(text: &str) -> Command {
    Command {
        command: text.into(),
        timeout_seconds: 10,
    }
}

async fn scenario(client: Client, url: StoreUrl) {
    let w = World {
        client,
        url,
        tmp: tempfile::tempdir().unwrap(),
    };
    let sha_1 = write_artifact(&w.tmp.path().join("artifacts"), "1.0");
    write_artifact(&w.tmp.path().join("artifacts"), "2.0");
    w.client
        .create(&Instance::new("web.m1", spec(w.tmp.path(), &sha_1)))
        .await
        .unwrap();

    // Stage and switch to 1.0.
    let (token, agent) = w.start_agent();
    w.wait_status("Running 1.0", |_, s| {
        s.phase == InstancePhase::Running
            && s.current_version.as_deref() == Some("1.0")
            && s.available
    })
    .await;
    let current = std::fs::read_link(w.app_path().join("current")).unwrap();
    assert_eq!(current, Path::new("releases/1.0"));
    assert!(w.app_path().join("releases/1.0/.deployctl-staged").exists());
    assert_eq!(w.activations(), vec!["1.0 from []"]);

    // The machine registered itself, with its labels, status and presence key.
    let m = w
        .client
        .get::<Machine>(None, "m1")
        .await
        .unwrap()
        .expect("agent created it");
    assert_eq!(m.meta().labels.get("zone").map(String::as_str), Some("a"));
    assert!(m.status().and_then(|s| s.hostname.as_ref()).is_some());
    let presence = w
        .client
        .store()
        .get(&keys::machine_lease_key("m1"))
        .await
        .unwrap();
    assert!(
        presence.is_some_and(|kv| kv.lease != 0),
        "presence key bound to a lease"
    );

    // The current-version gate: 2.0 is wanted current but not staged.
    let g = w.update_spec(|s| s.current = Some("2.0".into())).await;
    let inst = w
        .wait_status("NotStaged refusal", |_, s| {
            s.observed_generation == g && s.phase == InstancePhase::Failed
        })
        .await;
    let s = inst.status().unwrap();
    let failure = s.failure.as_ref().expect("the refusal is recorded");
    assert_eq!(
        (failure.reason.as_str(), failure.version.as_str()),
        ("NotStaged", "2.0")
    );
    assert_eq!(s.current_version.as_deref(), Some("1.0"));
    assert_eq!(
        std::fs::read_link(w.app_path().join("current")).unwrap(),
        Path::new("releases/1.0")
    );

    // Stage 2.0 as well (a new generation), and the switch goes through.
    let g = w
        .update_spec(|s| {
            s.staged.push(VersionRef {
                version: "2.0".into(),
                sha256: None,
            })
        })
        .await;
    w.wait_status("Running 2.0", |_, s| {
        s.observed_generation == g
            && s.phase == InstancePhase::Running
            && s.current_version.as_deref() == Some("2.0")
    })
    .await;
    assert_eq!(w.activations(), vec!["1.0 from []", "2.0 from [1.0]"]);
    assert!(
        inst_status(&w).await.failure.is_none(),
        "success clears the failure"
    );

    // A checksum mismatch fails staging and leaves no release dir behind.
    write_artifact(&w.tmp.path().join("artifacts"), "3.0");
    let g = w
        .update_spec(|s| {
            s.staged.push(VersionRef {
                version: "3.0".into(),
                sha256: Some("0".repeat(64)),
            })
        })
        .await;
    let inst = w
        .wait_status("ChecksumMismatch", |_, s| {
            s.observed_generation == g && s.phase == InstancePhase::Failed
        })
        .await;
    let failure = inst.status().unwrap().failure.clone().unwrap();
    assert_eq!(
        (failure.reason.as_str(), failure.operation.as_str()),
        ("ChecksumMismatch", "Stage")
    );
    assert!(!w.app_path().join("releases/3.0").exists());

    // Restart the agent: the finished switch is not re-run, even for a new generation.
    token.cancel();
    agent.await.unwrap().unwrap();
    let g = w
        .update_spec(|s| {
            s.staged.retain(|v| v.version != "3.0");
            s.keep_releases = 2;
        })
        .await;
    let (token, agent) = w.start_agent();
    w.wait_status("re-reported after restart", |_, s| {
        s.observed_generation == g
            && s.phase == InstancePhase::Running
            && s.current_version.as_deref() == Some("2.0")
    })
    .await;
    assert_eq!(
        w.activations(),
        vec!["1.0 from []", "2.0 from [1.0]"],
        "activate must not re-run"
    );

    assert!(
        inst_status(&w).await.last_hook_output == ["activated 2.0"],
        "the activate output is kept (afterActivate is empty)"
    );

    // Retention: 1.0 is no longer wanted; its clean hook runs in it, then it is deleted.
    let g = w
        .update_spec(|s| {
            s.staged.retain(|v| v.version == "2.0");
            s.keep_releases = 1;
            s.hooks.clean = vec![cmd(
                r#"test -f VERSION && echo "$DEPLOY_VERSION" >> "$ACTIVATIONS.cleaned""#,
            )];
        })
        .await;
    w.wait_status("1.0 cleaned", |_, s| {
        s.observed_generation == g
            && s.staged_versions == ["2.0"]
            && !w.app_path().join("releases/1.0").exists()
    })
    .await;
    let cleaned = std::fs::read_to_string(w.tmp.path().join("activations.cleaned")).unwrap();
    assert_eq!(cleaned, "1.0\n");

    // A new version beyond keepReleases: the old release is cleaned first, so the status
    // that says 5.0 is staged already says 2.0 is gone (a fast stage: one write for both).
    for v in ["4.0", "5.0"] {
        write_artifact(&w.tmp.path().join("artifacts"), v);
    }
    let g = w
        .update_spec(|s| {
            s.keep_releases = 2;
            s.hooks.clean.clear();
            s.staged = ["2.0", "4.0"]
                .map(|v| VersionRef {
                    version: v.into(),
                    sha256: None,
                })
                .into();
            s.current = Some("4.0".into());
        })
        .await;
    w.wait_status("Running 4.0", |_, s| {
        s.observed_generation == g && s.phase == InstancePhase::Running
    })
    .await;
    let status_key = keys::status_key("instances", Some("default"), "web.m1");
    let from = w
        .client
        .store()
        .get(&status_key)
        .await
        .unwrap()
        .unwrap()
        .mod_revision
        + 1;
    let mut writes = w.client.store().watch(&status_key, from).await.unwrap();
    let g = w
        .update_spec(|s| {
            s.staged = ["4.0", "5.0"]
                .map(|v| VersionRef {
                    version: v.into(),
                    sha256: None,
                })
                .into();
        })
        .await;
    let staged_with_5 = tokio::time::timeout(DEADLINE, async {
        loop {
            let batch = writes.next().await.expect("watch open").expect("watch ok");
            for ev in batch {
                let st: serde_json::Value = serde_json::from_slice(&ev.kv.value).unwrap();
                let staged = st["stagedVersions"].clone();
                if st["observedGeneration"] == g
                    && staged.as_array().unwrap().iter().any(|v| v == "5.0")
                {
                    return staged;
                }
            }
        }
    })
    .await
    .expect("a status with 5.0 staged");
    assert_eq!(
        staged_with_5,
        serde_json::json!(["4.0", "5.0"]),
        "2.0 reported gone no later than 5.0 staged"
    );
    assert!(!w.app_path().join("releases/2.0").exists());

    // Events were recorded about the instance.
    let events = w
        .client
        .list::<Event>(&Scope::Namespace("default".into()))
        .await
        .unwrap();
    let reasons: Vec<&str> = events
        .items
        .iter()
        .filter(|e| e.spec().source == "agent/m1" && e.spec().involved_object.name == "web.m1")
        .map(|e| e.spec().reason.as_str())
        .collect();
    for r in ["Staged", "Switched", "SwitchFailed", "StageFailed"] {
        assert!(reasons.contains(&r), "missing event {r}: {reasons:?}");
    }

    token.cancel();
    agent.await.unwrap().unwrap();
}

async fn inst_status(w: &World) -> InstanceStatus {
    w.instance().await.status().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_should_stage_switch_gate_and_survive_a_restart_on_etcd() {
    let etcd = EtcdServer::start();
    let store: Arc<dyn Store> = Arc::new(etcd.connect().await);
    scenario(Client::new(store), StoreUrl::Etcd(vec![etcd.endpoint()])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_should_stage_switch_gate_and_survive_a_restart_on_the_embedded_store() {
    let temp = deployctl::testing::embedded_temp();
    let path = temp.path();
    let store: Arc<dyn Store> = Arc::new(temp.store.clone());
    scenario(Client::new(store), StoreUrl::Embedded(path)).await;
}

/// An agent killed while `activate` runs: the restarted agent runs the whole switch
/// again (from beforeActivate) to Running; a finished switch is not run again.
async fn crash_scenario(client: Client, url: StoreUrl) {
    let w = World {
        client,
        url,
        tmp: tempfile::tempdir().unwrap(),
    };
    let sha_1 = write_artifact(&w.tmp.path().join("artifacts"), "1.0");
    let block = w.tmp.path().join("block");
    std::fs::write(&block, "").unwrap();
    let mut s = spec(w.tmp.path(), &sha_1);
    s.env.insert("BLOCK".into(), block.display().to_string());
    s.hooks.before_activate = vec![cmd(r#"echo "before $DEPLOY_VERSION" >> "$ACTIVATIONS""#)];
    // Waits while the block file exists, so the test can kill the agent mid-activate.
    s.hooks.activate = vec![Command {
        command: r#"echo "start $DEPLOY_VERSION" >> "$ACTIVATIONS"; while [ -f "$BLOCK" ]; do sleep 0.05; done; echo "done $DEPLOY_VERSION" >> "$ACTIVATIONS""#.into(),
        timeout_seconds: 60,
    }];
    w.client.create(&Instance::new("web.m1", s)).await.unwrap();

    let (token, agent) = w.start_agent();
    wait_for("activate started", || {
        w.activations() == ["before 1.0", "start 1.0"]
    })
    .await;
    token.cancel();
    agent.await.unwrap().unwrap();
    let marker = w.app_path().join(".switching");
    assert!(marker.exists(), "the interrupted switch left its marker");
    assert_eq!(
        std::fs::read_link(w.app_path().join("current")).unwrap(),
        Path::new("releases/1.0"),
        "current was swapped before activate"
    );
    // Unblocked: a hook that outlived its agent would now write a stray "done 1.0",
    // which the exact list below would show.
    std::fs::remove_file(&block).unwrap();

    let (token, agent) = w.start_agent();
    w.wait_status("Running 1.0 after the re-run switch", |_, s| {
        s.phase == InstancePhase::Running && s.available && s.healthy
    })
    .await;
    assert_eq!(
        w.activations(),
        [
            "before 1.0",
            "start 1.0",
            "before 1.0",
            "start 1.0",
            "done 1.0"
        ]
    );
    assert!(!marker.exists(), "a finished switch removes its marker");

    // Restart after the finished switch: nothing is re-run, even for a new generation.
    token.cancel();
    agent.await.unwrap().unwrap();
    let g = w.update_spec(|s| s.keep_releases = 2).await;
    let (token, agent) = w.start_agent();
    w.wait_status("re-reported after restart", |_, s| {
        s.observed_generation == g && s.phase == InstancePhase::Running && s.available
    })
    .await;
    assert_eq!(w.activations().len(), 5, "a finished switch is not re-run");

    // A service added to a running instance is started from current.
    let started = w.tmp.path().join("service-started");
    w.update_spec(|s| {
        s.env
            .insert("STARTED".into(), started.display().to_string());
        s.service = Some(deployctl::api::Service {
            command: r#"cat VERSION > "$STARTED"; exec sleep 1000"#.into(),
            stop_timeout_seconds: 2,
        });
    })
    .await;
    wait_for("added service started", || {
        std::fs::read_to_string(&started).is_ok_and(|t| t == "1.0\n")
    })
    .await;
    token.cancel();
    agent.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_switch_should_run_the_switch_again_on_etcd() {
    let etcd = EtcdServer::start();
    let store: Arc<dyn Store> = Arc::new(etcd.connect().await);
    crash_scenario(Client::new(store), StoreUrl::Etcd(vec![etcd.endpoint()])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_switch_should_run_the_switch_again_on_the_embedded_store() {
    let temp = deployctl::testing::embedded_temp();
    let path = temp.path();
    let store: Arc<dyn Store> = Arc::new(temp.store.clone());
    crash_scenario(Client::new(store), StoreUrl::Embedded(path)).await;
}

/// Polls `cond` until it holds.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn alive(pid: i32) -> bool {
    // A zombie not yet reaped counts as dead.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Service, health check, restartAt, drift repair, health failure and deletion.
async fn service_scenario(client: Client, url: StoreUrl) {
    let w = World {
        client,
        url,
        tmp: tempfile::tempdir().unwrap(),
    };
    let state = w.tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    write_artifact(&w.tmp.path().join("artifacts"), "1.0");
    write_artifact(&w.tmp.path().join("artifacts"), "2.0");
    let mut s = spec(w.tmp.path(), "unused");
    s.staged[0].sha256 = None;
    s.env.insert("STATE".into(), state.display().to_string());
    s.hooks.activate = vec![cmd(
        r#"echo "$DEPLOY_VERSION" > "$STATE/installed"; echo "$DEPLOY_VERSION" >> "$ACTIVATIONS""#,
    )];
    s.get_version = Some(cmd(r#"cat "$STATE/installed""#));
    s.service = Some(deployctl::api::Service {
        command: r#"echo "service $DEPLOY_VERSION in $(pwd -P)"; echo $$ > "$STATE/service.pid"; exec sleep 1000"#.into(),
        stop_timeout_seconds: 2,
    });
    s.health_check = Some(deployctl::api::HealthCheck {
        exec: Some(cmd(
            r#"test ! -f "$STATE/sick" && test -s "$STATE/service.pid" && kill -0 "$(cat "$STATE/service.pid")""#,
        )),
        period_seconds: 1,
        timeout_seconds: 2,
        success_threshold: 1,
        failure_threshold: 1,
        deadline_seconds: 10,
        ..Default::default()
    });
    s.min_ready_seconds = 1;
    w.client.create(&Instance::new("web.m1", s)).await.unwrap();

    let (token, agent) = w.start_agent();
    let inst = w
        .wait_status("Running 1.0", |_, s| {
            s.phase == InstancePhase::Running && s.available
        })
        .await;
    assert!(inst.status().unwrap().ready_since.is_some());

    // Health keeps being checked while Running: unhealthy after failureThreshold (1)
    // failures, healthy again after successThreshold (1) passes; the phase stays Running.
    std::fs::write(state.join("sick"), "").unwrap();
    w.wait_status("unhealthy while Running", |_, s| {
        s.phase == InstancePhase::Running && !s.healthy && s.ready_since.is_none()
    })
    .await;
    std::fs::remove_file(state.join("sick")).unwrap();
    w.wait_status("healthy again", |_, s| {
        s.phase == InstancePhase::Running && s.healthy && s.ready_since.is_some()
    })
    .await;
    let pid_file = state.join("service.pid");
    let first = read_pid(&pid_file).expect("the service wrote its pid");
    assert!(alive(first));
    let log = w.root().join("default/web/logs/service.log");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("service 1.0 in") && text.contains("releases/1.0"),
        "{text}"
    );

    // restartAt: activate again, restart the service, record restartedAt.
    let at = chrono::Utc::now();
    w.update_spec(|s| s.restart_at = Some(at)).await;
    w.wait_status("restartedAt", |_, s| {
        s.restarted_at == Some(at) && s.phase == InstancePhase::Running
    })
    .await;
    assert_eq!(w.activations(), vec!["1.0", "1.0"]);
    wait_for("old service process gone", || !alive(first)).await;
    let second = read_pid(&pid_file).unwrap();
    assert_ne!(first, second);
    assert!(alive(second));

    // A changed service command restarts the service, without a switch or activate.
    w.update_spec(|s| {
        let svc = s.service.as_mut().unwrap();
        svc.command = svc
            .command
            .replace("echo \"service", "echo \"changed service");
    })
    .await;
    wait_for("service restarted with its new command", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("changed service 1.0"))
    })
    .await;
    wait_for("service before the change gone", || !alive(second)).await;
    let second = read_pid(&pid_file).unwrap();
    assert!(alive(second));
    assert_eq!(
        w.activations(),
        vec!["1.0", "1.0"],
        "no activate for a service change"
    );

    // Drift: what getVersion prints no longer matches; found on agent start and repaired.
    token.cancel();
    agent.await.unwrap().unwrap();
    wait_for("service stopped with the agent", || !alive(second)).await;
    std::fs::write(state.join("installed"), "0.9\n").unwrap();
    let (token, agent) = w.start_agent();
    wait_for("drift repaired by re-activation", || {
        w.activations().len() == 3
    })
    .await;
    w.wait_status("Running after drift repair", |_, s| {
        s.phase == InstancePhase::Running && s.failure.is_none() && s.available
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(state.join("installed"))
            .unwrap()
            .trim(),
        "1.0"
    );
    // Reports are written in the background: wait for the event rather than race it.
    let start = Instant::now();
    loop {
        let events = w
            .client
            .list::<Event>(&Scope::Namespace("default".into()))
            .await
            .unwrap();
        if events.items.iter().any(|e| e.spec().reason == "Drifted") {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for the Drifted event"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A health check that never passes fails the switch with HealthDeadline.
    let g = w
        .update_spec(|s| {
            s.staged.push(VersionRef {
                version: "2.0".into(),
                sha256: None,
            });
            s.current = Some("2.0".into());
            let hc = s.health_check.as_mut().unwrap();
            hc.exec = Some(cmd("test -f never-there"));
            hc.deadline_seconds = 2;
        })
        .await;
    let inst = w
        .wait_status("HealthDeadline", |_, s| {
            s.observed_generation == g && s.phase == InstancePhase::Failed
        })
        .await;
    let st = inst.status().unwrap();
    let f = st.failure.as_ref().unwrap();
    assert_eq!(
        (f.operation.as_str(), f.reason.as_str(), f.version.as_str()),
        ("Health", "HealthDeadline", "2.0")
    );
    assert!(!st.available && !st.healthy);
    let activations_after_failure = w.activations().len();

    // Deleting the instance stops its service and leaves its files.
    let running = read_pid(&pid_file).unwrap();
    assert!(alive(running));
    w.client
        .delete::<Instance>(Some("default"), "web.m1", None)
        .await
        .unwrap();
    wait_for("service stopped after delete", || !alive(running)).await;
    assert!(w.app_path().join("releases/2.0").exists());
    assert_eq!(
        w.activations().len(),
        activations_after_failure,
        "no retry after failure"
    );

    token.cancel();
    agent.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_should_supervise_verify_restart_and_repair_drift_on_etcd() {
    let etcd = EtcdServer::start();
    let store: Arc<dyn Store> = Arc::new(etcd.connect().await);
    service_scenario(Client::new(store), StoreUrl::Etcd(vec![etcd.endpoint()])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_should_supervise_verify_restart_and_repair_drift_on_the_embedded_store() {
    let temp = deployctl::testing::embedded_temp();
    let path = temp.path();
    let store: Arc<dyn Store> = Arc::new(temp.store.clone());
    service_scenario(Client::new(store), StoreUrl::Embedded(path)).await;
}

/// A lost presence lease is replaced and the presence key put again.
async fn presence_scenario(client: Client, url: StoreUrl) {
    let w = World {
        client,
        url,
        tmp: tempfile::tempdir().unwrap(),
    };
    let (token, agent) = w.start_agent();
    let key = keys::machine_lease_key("m1");
    let mut first = 0;
    let start = Instant::now();
    while first == 0 {
        first = w
            .client
            .store()
            .get(&key)
            .await
            .unwrap()
            .map_or(0, |kv| kv.lease);
        assert!(start.elapsed() < DEADLINE, "presence key never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Registration order: the presence key first, then the Machine created with its
    // status in one write, so the controller never sees a registered Machine whose lease
    // it cannot find (it would call it expired).
    let (spec, status) = loop {
        let store = w.client.store();
        let spec = store
            .get(&keys::spec_key("machines", None, "m1"))
            .await
            .unwrap();
        let status = store
            .get(&keys::status_key("machines", None, "m1"))
            .await
            .unwrap();
        if let (Some(spec), Some(status)) = (spec, status) {
            break (spec, status);
        }
        assert!(start.elapsed() < DEADLINE, "the Machine never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let presence = w
        .client
        .store()
        .get(&key)
        .await
        .unwrap()
        .expect("put above");
    assert!(
        presence.create_revision < spec.create_revision,
        "presence at {} must come before the Machine at {}",
        presence.create_revision,
        spec.create_revision
    );
    assert_eq!(status.create_revision, spec.create_revision, "one write");
    let machine: Machine = w.client.get(None, "m1").await.unwrap().unwrap();
    assert!(machine.status.and_then(|s| s.hostname).is_some());
    w.client.store().revoke_lease(first).await.unwrap();
    let start = Instant::now();
    loop {
        let kv = w.client.store().get(&key).await.unwrap();
        if let Some(kv) = kv.filter(|kv| kv.lease != first) {
            assert_ne!(kv.lease, 0);
            let v: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
            assert!(
                v.get("hostname").is_some() && v.get("startedAt").is_some(),
                "{v}"
            );
            break;
        }
        assert!(start.elapsed() < DEADLINE, "presence was not re-registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    token.cancel();
    agent.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_should_re_register_presence_after_losing_its_lease_on_etcd() {
    let etcd = EtcdServer::start();
    let store: Arc<dyn Store> = Arc::new(etcd.connect().await);
    presence_scenario(Client::new(store), StoreUrl::Etcd(vec![etcd.endpoint()])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_should_re_register_presence_after_losing_its_lease_on_the_embedded_store() {
    let temp = deployctl::testing::embedded_temp();
    let path = temp.path();
    let store: Arc<dyn Store> = Arc::new(temp.store.clone());
    presence_scenario(Client::new(store), StoreUrl::Embedded(path)).await;
}

/// etcd's count of Range (read) requests served, from its metrics endpoint.
async fn etcd_reads(etcd: &EtcdServer) -> u64 {
    let text = reqwest::get(format!("http://{}/metrics", etcd.endpoint()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("grpc_server_handled_total") && l.contains("grpc_method=\"Range\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_agent_should_make_no_store_reads() {
    let etcd = EtcdServer::start();
    let store: Arc<dyn Store> = Arc::new(etcd.connect().await);
    let w = World {
        client: Client::new(store),
        url: StoreUrl::Etcd(vec![etcd.endpoint()]),
        tmp: tempfile::tempdir().unwrap(),
    };
    let sha = write_artifact(&w.tmp.path().join("artifacts"), "1.0");
    w.client
        .create(&Instance::new("web.m1", spec(w.tmp.path(), &sha)))
        .await
        .unwrap();
    let (token, agent) = w.start_agent();
    w.wait_status("Running 1.0", |_, s| {
        s.phase == InstancePhase::Running && s.available
    })
    .await;
    // Let the agent settle (its own status echo, the event writes), then watch it idle
    // across more than one lease keep-alive (every ttl/3 ≈ 1.7 s).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = etcd_reads(&etcd).await;
    assert!(
        before > 0,
        "etcd reports its Range count (the agent listed its instances)"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = etcd_reads(&etcd).await;
    assert_eq!(
        before,
        after,
        "an idle agent read the store {} times",
        after - before
    );
    token.cancel();
    agent.await.unwrap().unwrap();
}

/// Status writes to `key` from revision `from` on: (phase, revision) of each.
async fn status_writes(client: &Client, key: &str, from: i64) -> Vec<(InstancePhase, i64)> {
    use futures::StreamExt;
    let now = client
        .store()
        .get(key)
        .await
        .unwrap()
        .map_or(0, |kv| kv.mod_revision);
    let mut out = Vec::new();
    if now < from {
        return out;
    }
    let mut watch = client.store().watch(key, from).await.unwrap();
    while out.last().is_none_or(|(_, rev)| *rev < now) {
        let batch = tokio::time::timeout(DEADLINE, watch.next())
            .await
            .expect("the watch replays history")
            .expect("the watch stays open")
            .expect("no watch error");
        for ev in batch {
            let st: InstanceStatus = serde_json::from_slice(&ev.kv.value).unwrap();
            out.push((st.phase, ev.kv.mod_revision));
        }
    }
    out
}

/// The reporter writes a progress phase only when it lasts, writes the outcome with the
/// events that go with it in one transaction, and survives a stale status revision.
async fn reporter_scenario(client: Client) {
    use deployctl::agent::report::{PendingEvent, Reporter, PROGRESS_DELAY};
    use deployctl::store::EventRecorder;
    let tmp = tempfile::tempdir().unwrap();
    let mut inst = Instance::new("web.m1", spec(tmp.path(), "00"));
    inst.metadata.namespace = Some("default".into());
    let inst = client.create(&inst).await.unwrap();
    let key = keys::status_key("instances", Some("default"), "web.m1");
    let events = Arc::new(EventRecorder::new(client.clone(), "agent/m1"));
    let status = |phase: InstancePhase| InstanceStatus {
        phase,
        observed_generation: 1,
        ..Default::default()
    };
    let from = inst.meta().revision() + 1;

    // A fast step: Staging is replaced by its outcome before it is due, so only the
    // outcome is written, with its event, in one revision.
    let reporter = Reporter::start(client.clone(), events.clone(), &inst);
    reporter.send(Some(status(InstancePhase::Staging)), vec![]);
    reporter.send(
        Some(status(InstancePhase::Running)),
        vec![PendingEvent::new("Normal", "Staged", "staged version 1.0")],
    );
    let mut got = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while got.is_empty() {
        assert!(Instant::now() < deadline, "the outcome was never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
        got = status_writes(&client, &key, from).await;
    }
    assert_eq!(got.len(), 1, "only the outcome: {got:?}");
    assert_eq!(got[0].0, InstancePhase::Running);
    let listed = client
        .list::<Event>(&Scope::Namespace("default".into()))
        .await
        .unwrap();
    let staged: Vec<_> = listed
        .items
        .iter()
        .filter(|e| e.spec().reason == "Staged")
        .collect();
    assert_eq!(staged.len(), 1);
    assert_eq!(
        staged[0].meta().revision(),
        got[0].1,
        "the event is written in the status transaction"
    );

    // A step that lasts: its progress phase is written once it is due, not before.
    let sent = Instant::now();
    reporter.send(Some(status(InstancePhase::Switching)), vec![]);
    let mut writes = got.clone();
    while writes.len() < 2 {
        assert!(
            sent.elapsed() < DEADLINE,
            "the lasting progress was never written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        writes = status_writes(&client, &key, from).await;
    }
    assert!(
        sent.elapsed() >= PROGRESS_DELAY,
        "written after {:?}, before it was due",
        sent.elapsed()
    );
    assert_eq!(writes[1].0, InstancePhase::Switching);

    // Someone else moved the status on (the reporter's revision is stale): the next
    // report re-reads the revision and is written anyway, never lost.
    let mut other = client
        .get::<Instance>(Some("default"), "web.m1")
        .await
        .unwrap()
        .unwrap();
    other.status = Some(status(InstancePhase::Pending));
    client.replace_status(&other).await.unwrap();
    reporter.send(Some(status(InstancePhase::Failed)), vec![]);
    reporter.flush(DEADLINE).await;
    let last = client
        .get::<Instance>(Some("default"), "web.m1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last.status().unwrap().phase, InstancePhase::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reporter_should_coalesce_progress_and_write_events_with_the_status_on_etcd() {
    let etcd = EtcdServer::start();
    let store: Arc<dyn Store> = Arc::new(etcd.connect().await);
    reporter_scenario(Client::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reporter_should_coalesce_progress_and_write_events_with_the_status_on_the_embedded_store()
{
    let temp = deployctl::testing::embedded_temp();
    let store: Arc<dyn Store> = Arc::new(temp.store.clone());
    reporter_scenario(Client::new(store)).await;
}

/// Every status written to `key` so far, oldest first.
async fn status_history(client: &Client, key: &str) -> Vec<InstanceStatus> {
    let now = client
        .store()
        .get(key)
        .await
        .unwrap()
        .map_or(0, |kv| kv.mod_revision);
    let mut out: Vec<(i64, InstanceStatus)> = Vec::new();
    let mut watch = client.store().watch(key, 1).await.unwrap();
    while out.last().is_none_or(|(rev, _)| *rev < now) {
        let batch = tokio::time::timeout(DEADLINE, watch.next())
            .await
            .expect("the watch replays history")
            .expect("the watch stays open")
            .expect("no watch error");
        for ev in batch {
            out.push((
                ev.kv.mod_revision,
                serde_json::from_slice(&ev.kv.value).unwrap(),
            ));
        }
    }
    out.into_iter().map(|(_, s)| s).collect()
}

/// A service that exits at once after a switch: restarts and the last exit reported,
/// never available on that version, the switch failed with ServiceCrashLoop; a service
/// killed while Running is unhealthy until it has stayed up again.
async fn crash_loop_scenario(client: Client, url: StoreUrl) {
    let w = World {
        client,
        url,
        tmp: tempfile::tempdir().unwrap(),
    };
    let state = w.tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    write_artifact(&w.tmp.path().join("artifacts"), "1.0");
    write_artifact(&w.tmp.path().join("artifacts"), "2.0");
    let mut s = spec(w.tmp.path(), "unused");
    s.staged[0].sha256 = None;
    s.get_version = None;
    s.env.insert("STATE".into(), state.display().to_string());
    // 2.0 crashes at once; 1.0 stays up and writes its pid.
    s.service = Some(deployctl::api::Service {
        command: r#"if [ "$DEPLOY_VERSION" = 2.0 ]; then echo starting; exit 1; fi; echo $$ > "$STATE/service.pid"; exec sleep 1000"#.into(),
        stop_timeout_seconds: 2,
    });
    s.health_check = Some(deployctl::api::HealthCheck {
        exec: Some(cmd("true")),
        period_seconds: 1,
        timeout_seconds: 2,
        deadline_seconds: 60,
        ..Default::default()
    });
    w.client.create(&Instance::new("web.m1", s)).await.unwrap();
    let (token, agent) = w.start_agent();
    let inst = w
        .wait_status("Running 1.0", |_, s| {
            s.phase == InstancePhase::Running && s.available
        })
        .await;
    let svc = inst
        .status()
        .unwrap()
        .service
        .clone()
        .expect("service status");
    assert!(
        svc.running && svc.restarts == 0 && svc.last_exit.is_none(),
        "{svc:?}"
    );

    // Killed while Running: unhealthy at once (no health check failure needed), the
    // exit reported; healthy again once the restarted process has stayed up.
    let pid = read_pid(&state.join("service.pid")).expect("1.0 wrote its pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let inst = w
        .wait_status("unhealthy after the service was killed", |_, s| {
            !s.healthy && s.service.as_ref().is_some_and(|v| v.restarts == 1)
        })
        .await;
    let exit = inst
        .status()
        .unwrap()
        .service
        .as_ref()
        .unwrap()
        .last_exit
        .clone()
        .unwrap();
    assert_eq!(
        (exit.signal.as_deref(), exit.message.as_str()),
        (Some("SIGKILL"), "killed by SIGKILL")
    );
    w.wait_status("healthy again after the restart", |_, s| {
        s.healthy
            && s.phase == InstancePhase::Running
            && s.service.as_ref().is_some_and(|v| v.running)
    })
    .await;

    // 2.0 crash-loops: the switch fails with ServiceCrashLoop, never available on 2.0.
    let g = w
        .update_spec(|s| {
            s.staged.push(VersionRef {
                version: "2.0".into(),
                sha256: None,
            });
            s.current = Some("2.0".into());
        })
        .await;
    let inst = w
        .wait_status("ServiceCrashLoop on 2.0", |_, s| {
            s.observed_generation == g && s.phase == InstancePhase::Failed
        })
        .await;
    let st = inst.status().unwrap();
    let f = st.failure.as_ref().unwrap();
    assert_eq!(
        (f.reason.as_str(), f.version.as_str()),
        ("ServiceCrashLoop", "2.0")
    );
    assert!(
        f.message.contains("restarted 3 time(s)") && f.message.contains("exited with status 1"),
        "{f:?}"
    );
    assert!(!st.available && !st.healthy);
    let svc = st.service.as_ref().unwrap();
    assert!(svc.restarts >= 3, "{svc:?}");
    assert_eq!(svc.last_exit.as_ref().unwrap().exit_code, Some(1));
    let key = keys::status_key("instances", Some("default"), "web.m1");
    let on_2 = status_history(&w.client, &key).await;
    let on_2: Vec<_> = on_2
        .iter()
        .filter(|s| s.current_version.as_deref() == Some("2.0"))
        .collect();
    assert!(!on_2.is_empty());
    assert!(
        on_2.iter().all(|s| !s.available),
        "2.0 was reported available: {on_2:#?}"
    );
    let log = std::fs::read_to_string(w.root().join("default/web/logs/service.log")).unwrap();
    assert!(log.matches("starting").count() >= 3, "{log}");

    // Back to 1.0 (as a rollback does): available again, the restart count from zero.
    let g = w.update_spec(|s| s.current = Some("1.0".into())).await;
    let inst = w
        .wait_status("Running 1.0 again", |_, s| {
            s.observed_generation == g && s.phase == InstancePhase::Running && s.available
        })
        .await;
    let svc = inst.status().unwrap().service.clone().unwrap();
    assert_eq!(svc.restarts, 0, "{svc:?}");
    token.cancel();
    agent.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_service_should_report_restarts_and_never_be_available_on_etcd() {
    let etcd = EtcdServer::start();
    let store: Arc<dyn Store> = Arc::new(etcd.connect().await);
    crash_loop_scenario(Client::new(store), StoreUrl::Etcd(vec![etcd.endpoint()])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_service_should_report_restarts_and_never_be_available_on_the_embedded_store(
) {
    let temp = deployctl::testing::embedded_temp();
    let path = temp.path();
    let store: Arc<dyn Store> = Arc::new(temp.store.clone());
    crash_loop_scenario(Client::new(store), StoreUrl::Embedded(path)).await;
}
