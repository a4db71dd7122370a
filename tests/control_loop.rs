//! The control loop in one process: the real controller and real agents (as library
//! calls) on a real store, deploying real artifacts. The process-level end-to-end tests
//! are in tests/e2e/; these are quicker to debug.

use deployctl::agent::{self, AgentConfig};
use deployctl::api::*;
use deployctl::controller::{self, ControllerConfig};
use deployctl::store::{Client, Scope, StoreUrl};
use deployctl::testing::EtcdServer;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Writes `app-<version>.tar.gz` holding `VERSION` into `dir`.
fn build_artifact(dir: &Path, version: &str) -> PathBuf {
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
        .expect("appending to an in-memory tar");
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .expect("finishing the artifact");
    path
}

async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn rollout_should_stage_switch_and_complete_on_every_machine(url: StoreUrl) {
    let work = tempfile::tempdir().expect("temp dir");
    let artifacts = work.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    build_artifact(&artifacts, "1.0");
    build_artifact(&artifacts, "2.0");
    let log = work.path().join("activations.log");

    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(controller::run(
        ControllerConfig {
            store: url.clone(),
            identity: "test-controller".into(),
            lease_ttl: Duration::from_secs(5),
            workers: 2,
            http: None,
        },
        shutdown.clone(),
    )));
    for i in 0..3 {
        tasks.push(tokio::spawn(agent::run(
            AgentConfig {
                store: url.clone(),
                name: format!("m{i}"),
                labels: [("role".to_string(), "web".to_string())].into(),
                root: work.path().join(format!("m{i}")),
                lease_ttl: Duration::from_secs(5),
                http: None,
            },
            shutdown.clone(),
        )));
    }

    let client = Client::new(url.connect().await.expect("store reachable"));
    let mut app = Application::new(
        "api",
        ApplicationSpec {
            artifact: Artifact {
                url: format!("file://{}/app-{{{{version}}}}.tar.gz", artifacts.display()),
                ..Default::default()
            },
            keep_releases: 3,
            ..Default::default()
        },
    );
    app.spec
        .selector
        .match_labels
        .insert("role".into(), "web".into());
    app.spec.hooks.activate.push(Command {
        command: format!(
            "echo \"$DEPLOY_MACHINE $DEPLOY_VERSION $DEPLOY_PREVIOUS_VERSION\" >> {}",
            log.display()
        ),
        timeout_seconds: 10,
    });
    client.create(&app).await.expect("create application");
    let mut ro = Rollout::new(
        "api",
        RolloutSpec {
            application: "api".into(),
            version: "1.0".into(),
            revision_history_limit: 10,
            ..Default::default()
        },
    );
    ro.spec.strategy.max_unavailable = IntOrPercent::Int(2);
    client.create(&ro).await.expect("create rollout");

    let complete = |version: &'static str| {
        let client = client.clone();
        async move || {
            let r: Rollout = client.get(Some("default"), "api").await.ok()??;
            let st = r.status?;
            (st.phase == RolloutPhase::Complete
                && st.stable_version.as_deref() == Some(version)
                && st.desired == 3)
                .then_some(st)
        }
    };
    wait_for(
        "version 1.0 complete",
        Duration::from_secs(60),
        complete("1.0"),
    )
    .await;
    client
        .update::<Rollout>(Some("default"), "api", |r| r.spec.version = "2.0".into())
        .await
        .expect("set version");
    let st = wait_for(
        "version 2.0 complete",
        Duration::from_secs(60),
        complete("2.0"),
    )
    .await;
    assert_eq!((st.updated, st.available), (3, 3));
    assert_eq!(
        st.history
            .iter()
            .map(|r| r.version.as_str())
            .collect::<Vec<_>>(),
        ["1.0", "2.0"]
    );

    for i in 0..3 {
        let current = work.path().join(format!("m{i}/default/api/current"));
        let body = std::fs::read_to_string(current.join("VERSION")).expect("current/VERSION");
        assert_eq!(body, "2.0\n", "m{i}");
    }
    let lines = std::fs::read_to_string(&log).unwrap();
    let mut seen: Vec<&str> = lines.lines().collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "m0 1.0 ",
            "m0 2.0 1.0",
            "m1 1.0 ",
            "m1 2.0 1.0",
            "m2 1.0 ",
            "m2 2.0 1.0"
        ],
        "one activation per machine and version, with the right environment"
    );

    let instances = client.list::<Instance>(&Scope::All).await.unwrap().items;
    assert_eq!(instances.len(), 3);
    shutdown.cancel();
    for t in tasks {
        let r = tokio::time::timeout(Duration::from_secs(15), t)
            .await
            .expect("stops on shutdown");
        r.expect("task does not panic").expect("clean exit");
    }
}

/// A machine whose agent stops leaves the desired count once its lease expires; the
/// rollout completes without it; when the agent comes back it converges to the new
/// version by itself.
async fn machine_whose_lease_expired_should_leave_the_desired_count_and_converge_on_return(
    url: StoreUrl,
) {
    let work = tempfile::tempdir().expect("temp dir");
    let artifacts = work.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    build_artifact(&artifacts, "1.0");
    build_artifact(&artifacts, "2.0");
    let shutdown = CancellationToken::new();
    let ttl = Duration::from_secs(2);
    let controller = tokio::spawn(controller::run(
        ControllerConfig {
            store: url.clone(),
            identity: "test-controller".into(),
            lease_ttl: Duration::from_secs(5),
            workers: 2,
            http: None,
        },
        shutdown.clone(),
    ));
    let agent = |i: usize, token: CancellationToken| {
        tokio::spawn(agent::run(
            AgentConfig {
                store: url.clone(),
                name: format!("m{i}"),
                labels: Default::default(),
                root: work.path().join(format!("m{i}")),
                lease_ttl: ttl,
                http: None,
            },
            token,
        ))
    };
    let mut agents: Vec<_> = (0..3)
        .map(|i| {
            let token = shutdown.child_token();
            (agent(i, token.clone()), token)
        })
        .collect();

    let client = Client::new(url.connect().await.expect("store reachable"));
    let app = Application::new(
        "api",
        ApplicationSpec {
            artifact: Artifact {
                url: format!("file://{}/app-{{{{version}}}}.tar.gz", artifacts.display()),
                ..Default::default()
            },
            ..Default::default()
        },
    );
    client.create(&app).await.expect("create application");
    let ro = Rollout::new(
        "api",
        RolloutSpec {
            application: "api".into(),
            version: "1.0".into(),
            ..Default::default()
        },
    );
    client.create(&ro).await.expect("create rollout");
    let status = |version: &'static str, desired: u32| {
        let client = client.clone();
        async move || {
            let r: Rollout = client.get(Some("default"), "api").await.ok()??;
            let st = r.status?;
            (st.phase == RolloutPhase::Complete
                && st.stable_version.as_deref() == Some(version)
                && st.desired == desired)
                .then_some(st)
        }
    };
    wait_for(
        "1.0 on three machines",
        Duration::from_secs(60),
        status("1.0", 3),
    )
    .await;

    // m2's agent stops: after its lease TTL it is NotReady and leaves the desired count.
    let (m2, token) = agents.pop().expect("three agents");
    token.cancel();
    m2.await.expect("agent task").expect("clean stop");
    let machine_not_ready = {
        let client = client.clone();
        async move || {
            let m: Machine = client.get(None, "m2").await.ok()??;
            let ready = m
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            (ready.status == ConditionStatus::False).then_some(())
        }
    };
    wait_for("m2 NotReady", Duration::from_secs(30), machine_not_ready).await;
    client
        .update::<Rollout>(Some("default"), "api", |r| r.spec.version = "2.0".into())
        .await
        .expect("set version");
    wait_for(
        "2.0 complete on the two ready machines",
        Duration::from_secs(60),
        status("2.0", 2),
    )
    .await;
    let version_on = |i: usize| {
        std::fs::read_to_string(
            work.path()
                .join(format!("m{i}/default/api/current/VERSION")),
        )
        .unwrap_or_default()
    };
    assert_eq!(
        version_on(2),
        "1.0\n",
        "a machine without its agent is left alone"
    );

    // The agent comes back: the machine converges to the stable version by itself.
    agents.push((agent(2, shutdown.child_token()), shutdown.child_token()));
    wait_for(
        "2.0 on all three machines",
        Duration::from_secs(60),
        status("2.0", 3),
    )
    .await;
    assert_eq!(version_on(2), "2.0\n");
    assert_eq!(version_on(0), "2.0\n");

    shutdown.cancel();
    for (t, _) in agents {
        let r = tokio::time::timeout(Duration::from_secs(15), t)
            .await
            .expect("stops on shutdown");
        r.expect("task does not panic").expect("clean exit");
    }
    let r = tokio::time::timeout(Duration::from_secs(15), controller)
        .await
        .expect("stops");
    r.expect("task does not panic").expect("clean exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_machine_whose_lease_expired_should_leave_the_desired_count_and_converge_on_return(
) {
    let dir = tempfile::tempdir().unwrap();
    let url = StoreUrl::Embedded(dir.path().join("store.db"));
    machine_whose_lease_expired_should_leave_the_desired_count_and_converge_on_return(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_machine_whose_lease_expired_should_leave_the_desired_count_and_converge_on_return() {
    let etcd = EtcdServer::start();
    let url = StoreUrl::parse(Some(&etcd.url())).unwrap();
    machine_whose_lease_expired_should_leave_the_desired_count_and_converge_on_return(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_rollout_should_stage_switch_and_complete_on_every_machine() {
    let dir = tempfile::tempdir().unwrap();
    let url = StoreUrl::Embedded(dir.path().join("store.db"));
    rollout_should_stage_switch_and_complete_on_every_machine(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_rollout_should_stage_switch_and_complete_on_every_machine() {
    let etcd = EtcdServer::start();
    let url = StoreUrl::parse(Some(&etcd.url())).unwrap();
    rollout_should_stage_switch_and_complete_on_every_machine(url).await;
}

/// Starts the controller and `n` agents (`m0`..), deploys `api` 1.0 (a `VERSION` file)
/// with `GREETING=hi` in its env, and waits for the rollout to complete.
async fn fleet_with_api(
    url: &StoreUrl,
    work: &Path,
    n: usize,
    shutdown: &CancellationToken,
) -> Client {
    let artifacts = work.join("artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifact dir");
    build_artifact(&artifacts, "1.0");
    tokio::spawn(controller::run(
        ControllerConfig {
            store: url.clone(),
            identity: "test-controller".into(),
            lease_ttl: Duration::from_secs(5),
            workers: 2,
            http: None,
        },
        shutdown.clone(),
    ));
    for i in 0..n {
        tokio::spawn(agent::run(
            AgentConfig {
                store: url.clone(),
                name: format!("m{i}"),
                labels: [("role".to_string(), "web".to_string())].into(),
                root: work.join(format!("m{i}")),
                lease_ttl: Duration::from_secs(5),
                http: None,
            },
            shutdown.clone(),
        ));
    }
    let client = Client::new(url.connect().await.expect("store reachable"));
    let mut app = Application::new(
        "api",
        ApplicationSpec {
            artifact: Artifact {
                url: format!("file://{}/app-{{{{version}}}}.tar.gz", artifacts.display()),
                ..Default::default()
            },
            keep_releases: 3,
            ..Default::default()
        },
    );
    app.spec.env.insert("GREETING".into(), "hi".into());
    client.create(&app).await.expect("create application");
    let ro = Rollout::new(
        "api",
        RolloutSpec {
            application: "api".into(),
            version: "1.0".into(),
            ..Default::default()
        },
    );
    client.create(&ro).await.expect("create rollout");
    wait_for(
        "version 1.0 complete",
        Duration::from_secs(60),
        async || {
            let r: Rollout = client.get(Some("default"), "api").await.ok()??;
            let st = r.status?;
            (st.phase == RolloutPhase::Complete && st.desired == n as u32).then_some(())
        },
    )
    .await;
    client
}

async fn run_task(client: &Client, name: &str, edit: impl FnOnce(&mut TaskSpec)) -> TaskStatus {
    let mut spec = TaskSpec {
        application: "api".into(),
        ..Default::default()
    };
    edit(&mut spec);
    client
        .create(&Task::new(name, spec))
        .await
        .expect("create task");
    wait_for(
        &format!("task {name} finished"),
        Duration::from_secs(60),
        async || {
            let t: Task = client.get(Some("default"), name).await.ok()??;
            t.status.filter(|s| s.phase.is_finished())
        },
    )
    .await
}

async fn tasks_should_run_like_hooks_within_max_parallel_and_stop_after_a_failure(url: StoreUrl) {
    let work = tempfile::tempdir().expect("temp dir");
    let shutdown = CancellationToken::new();
    let client = fleet_with_api(&url, work.path(), 4, &shutdown).await;

    // Every machine once, at most 2 at a time, in `current`, with the hook environment.
    let log = work.path().join("runs.log");
    let st = run_task(&client, "reload", |s| {
        s.max_parallel = IntOrPercent::Int(2);
        s.command = format!(
            "echo \"$DEPLOY_MACHINE start $(date +%s%N)\" >> {log}; sleep 0.3; \
             echo \"$DEPLOY_MACHINE end $(date +%s%N)\" >> {log}; \
             echo \"v=$DEPLOY_VERSION $GREETING $(cat VERSION)\"",
            log = log.display()
        );
    })
    .await;
    assert_eq!(st.phase, TaskPhase::Succeeded, "{st:?}");
    assert_eq!(st.machines.len(), 4);
    for m in &st.machines {
        assert_eq!(m.phase, MachineRunPhase::Succeeded, "{m:?}");
        assert_eq!(m.exit_code, Some(0));
        assert_eq!(m.output_tail, ["v=1.0 hi 1.0"], "{m:?}");
    }
    let text = std::fs::read_to_string(&log).expect("the runs wrote their log");
    let mut spans: BTreeMap<String, (Option<u128>, Option<u128>)> = BTreeMap::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let t: u128 = parts[2].parse().expect("date +%s%N prints nanoseconds");
        let span = spans.entry(parts[0].to_string()).or_default();
        let slot = if parts[1] == "start" {
            &mut span.0
        } else {
            &mut span.1
        };
        assert!(slot.is_none(), "{} ran twice: {text}", parts[0]);
        *slot = Some(t);
    }
    assert_eq!(spans.len(), 4, "every machine ran: {text}");
    let spans: Vec<(u128, u128)> = spans
        .values()
        .map(|(a, b)| (a.expect("a start"), b.expect("an end")))
        .collect();
    for &(start, _) in &spans {
        let overlapping = spans
            .iter()
            .filter(|(a, b)| *a <= start && start < *b)
            .count();
        assert!(overlapping <= 2, "more than 2 at once: {text}");
    }

    // A failure on m1 names it, and stops the machines not yet started.
    let st = run_task(&client, "check", |s| {
        s.command = "test \"$DEPLOY_MACHINE\" != m1".into();
    })
    .await;
    assert_eq!(st.phase, TaskPhase::Failed);
    let phases: Vec<(&str, MachineRunPhase, Option<i32>)> = st
        .machines
        .iter()
        .map(|m| (m.machine.as_str(), m.phase, m.exit_code))
        .collect();
    assert_eq!(
        phases,
        [
            ("m0", MachineRunPhase::Succeeded, Some(0)),
            ("m1", MachineRunPhase::Failed, Some(1)),
            ("m2", MachineRunPhase::Skipped, None),
            ("m3", MachineRunPhase::Skipped, None),
        ]
    );

    // Deleting a Task mid-run kills the running command's process group.
    let pid_file = work.path().join("sleeper.pid");
    let mut spec = TaskSpec {
        application: "api".into(),
        one: true,
        command: format!("sh -c 'echo $$ > {}; exec sleep 300'", pid_file.display()),
        ..Default::default()
    };
    spec.timeout_seconds = 600;
    client
        .create(&Task::new("sleeper", spec))
        .await
        .expect("create task");
    let pid: i32 = wait_for("the sleeper started", Duration::from_secs(30), async || {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    })
    .await;
    client
        .delete::<Task>(Some("default"), "sleeper", None)
        .await
        .expect("delete task");
    wait_for("the sleeper killed", Duration::from_secs(30), async || {
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        (!alive).then_some(())
    })
    .await;
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_tasks_should_run_like_hooks_within_max_parallel_and_stop_after_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let url = StoreUrl::Embedded(dir.path().join("store.db"));
    tasks_should_run_like_hooks_within_max_parallel_and_stop_after_a_failure(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_tasks_should_run_like_hooks_within_max_parallel_and_stop_after_a_failure() {
    let etcd = EtcdServer::start();
    let url = StoreUrl::parse(Some(&etcd.url())).unwrap();
    tasks_should_run_like_hooks_within_max_parallel_and_stop_after_a_failure(url).await;
}

async fn orders_of_a_task_deleted_while_no_controller_ran_should_be_withdrawn(url: StoreUrl) {
    let client = Client::new(url.connect().await.expect("store reachable"));
    let order = TaskOrder {
        application: "api".into(),
        command: "true".into(),
        timeout_seconds: 10,
    };
    client
        .put_task_orders("default", "gone", &order, &["m0".into()])
        .await
        .expect("an order of a Task that does not exist");
    let shutdown = CancellationToken::new();
    tokio::spawn(controller::run(
        ControllerConfig {
            store: url.clone(),
            identity: "test-controller".into(),
            lease_ttl: Duration::from_secs(5),
            workers: 2,
            http: None,
        },
        shutdown.clone(),
    ));
    wait_for(
        "the orphan order withdrawn",
        Duration::from_secs(30),
        async || {
            let orders = client.all_task_orders().await.ok()?;
            orders.is_empty().then_some(())
        },
    )
    .await;
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_orders_of_a_task_deleted_while_no_controller_ran_should_be_withdrawn() {
    let dir = tempfile::tempdir().unwrap();
    let url = StoreUrl::Embedded(dir.path().join("store.db"));
    orders_of_a_task_deleted_while_no_controller_ran_should_be_withdrawn(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_orders_of_a_task_deleted_while_no_controller_ran_should_be_withdrawn() {
    let etcd = EtcdServer::start();
    let url = StoreUrl::parse(Some(&etcd.url())).unwrap();
    orders_of_a_task_deleted_while_no_controller_ran_should_be_withdrawn(url).await;
}
