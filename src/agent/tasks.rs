//! Runs the Task orders of this machine (`deployctl run`), each exactly as a hook runs,
//! and reports each under this machine's own status keys. A command is run at most once:
//! a `Running` report found at start-up means the agent died under it (`Interrupted`),
//! and the process group it left ([`super::task_groups`]) is killed.

use super::hooks::{self, DeployVars, HookEnv, HookError};
use super::instance::layout_of;
use super::task_groups::{Left, RecordGuard, Records};
use crate::api::{Command, Instance, MachineRun, MachineRunPhase, Object, TaskOrder};
use crate::store::{Client, TaskOrderEvent};
use chrono::Utc;
use futures::stream::BoxStream;
use futures::StreamExt;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The label a Task's output lines carry, like a hook's name.
const LABEL: &str = "task";

/// Watches this machine's orders until `shutdown`; a withdrawn order (a deleted Task)
/// kills its command's process group.
pub async fn serve(client: Client, machine: String, root: PathBuf, shutdown: CancellationToken) {
    let watch = {
        let (client, machine) = (client.clone(), machine.clone());
        move || client.watch_task_orders(&machine)
    };
    serve_orders(client, machine, root, watch, shutdown).await;
}

/// The orders of one machine, as (namespace, task).
type OrderKey = (String, String);

/// [`serve`] over the order streams `watch` opens (a new one whenever one ends).
async fn serve_orders(
    client: Client,
    machine: String,
    root: PathBuf,
    mut watch: impl FnMut() -> BoxStream<'static, crate::store::Result<TaskOrderEvent>>,
    shutdown: CancellationToken,
) {
    let records = Records::new(&root);
    let mut running: HashMap<OrderKey, CancellationToken> = HashMap::new();
    let mut orders = watch();
    let mut error_backoff = Duration::from_millis(500);
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = orders.next() => ev,
        };
        running.retain(|_, stop| !stop.is_cancelled());
        match event {
            None => orders = watch(),
            Some(Err(e)) => {
                tracing::warn!(error = %e, ?error_backoff, "task order watch failed; relisting");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(error_backoff) => {}
                }
                error_backoff = (error_backoff * 2).min(Duration::from_secs(30));
            }
            Some(Ok(TaskOrderEvent::Deleted { namespace, task })) => {
                if let Some(stop) = running.remove(&(namespace, task)) {
                    stop.cancel();
                }
            }
            Some(Ok(TaskOrderEvent::Listed { orders: present })) => {
                error_backoff = Duration::from_millis(500);
                withdraw_missing(&mut running, &present);
                kill_orphans(&records, &running, &present);
            }
            Some(Ok(TaskOrderEvent::Put {
                namespace,
                task,
                order,
            })) => {
                error_backoff = Duration::from_millis(500);
                let key = (namespace.clone(), task.clone());
                if running.contains_key(&key) {
                    continue;
                }
                let stop = shutdown.child_token();
                running.insert(key, stop.clone());
                let run = OrderRun {
                    client: client.clone(),
                    machine: machine.clone(),
                    root: root.clone(),
                    records: records.clone(),
                    namespace,
                    task,
                };
                tokio::spawn(async move {
                    run.start(order, &stop).await;
                    stop.cancel();
                });
            }
        }
    }
    for stop in running.values() {
        stop.cancel();
    }
}

/// Stops the running orders a (re)list no longer holds: withdrawn while the watch was
/// broken, so their `Deleted` never came.
fn withdraw_missing(
    running: &mut HashMap<OrderKey, CancellationToken>,
    present: &BTreeSet<OrderKey>,
) {
    running.retain(|key, stop| {
        let keep = present.contains(key);
        if !keep {
            tracing::info!(namespace = %key.0, task = %key.1, "task order withdrawn while the watch was broken; stopping its command");
            stop.cancel();
        }
        keep
    });
}

/// Kills the commands a previous agent left whose orders are gone (Tasks deleted while no
/// agent ran). Those with an order are handled by their run, which reports `Interrupted`.
fn kill_orphans(
    records: &Records,
    running: &HashMap<OrderKey, CancellationToken>,
    present: &BTreeSet<OrderKey>,
) {
    for key in records.all() {
        if present.contains(&key) || running.contains_key(&key) {
            continue;
        }
        let left = records.kill_left(&key.0, &key.1);
        tracing::info!(namespace = %key.0, task = %key.1, ?left, "a withdrawn task's command left by a previous agent");
    }
}

/// One order on this machine.
struct OrderRun {
    client: Client,
    machine: String,
    root: PathBuf,
    /// Where the command's process group is recorded while it runs.
    records: Records,
    namespace: String,
    task: String,
}

impl OrderRun {
    /// Runs the order unless a report says it ran (or started) before, then reports.
    async fn start(&self, order: Option<TaskOrder>, stop: &CancellationToken) {
        let before = match self
            .client
            .task_result(&self.machine, &self.namespace, &self.task)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(task = %self.task, error = %e, "cannot read a task's report; not running it");
                return;
            }
        };
        match before {
            Some(r) if r.phase.is_finished() => return,
            Some(mut r) => {
                let left = self.records.kill_left(&self.namespace, &self.task);
                r.phase = MachineRunPhase::Interrupted;
                r.finish_time = Some(Utc::now());
                r.message = Some(
                    match left {
                        Left::Killed => "the agent restarted while the command ran; its process group was killed; not run again",
                        Left::Nothing | Left::Reused => "the agent restarted while the command ran; not run again",
                    }
                    .into(),
                );
                crate::observe::metrics().task_command_ended("interrupted", None);
                self.report(&r).await;
                return;
            }
            None => {}
        }
        let mut run = MachineRun {
            machine: self.machine.clone(),
            phase: MachineRunPhase::Running,
            start_time: Some(Utc::now()),
            ..Default::default()
        };
        let Some(order) = order else {
            self.finish(
                &mut run,
                MachineRunPhase::Failed,
                None,
                "the order is not valid JSON of a task order".into(),
            );
            self.report(&run).await;
            return;
        };
        // Reported before the command starts: a crash from here on is `Interrupted`.
        if !self.report(&run).await {
            return;
        }
        let outcome = tokio::select! {
            _ = stop.cancelled() => return, // withdrawn: dropping the run kills its group
            o = self.execute(&order, &mut run) => o,
        };
        let result = match outcome {
            Ok(tail) => {
                run.output_tail = tail;
                self.finish(&mut run, MachineRunPhase::Succeeded, Some(0), String::new());
                "ok"
            }
            Err(Failure::Hook(e)) => {
                run.output_tail = e.tail().to_vec();
                let (code, result) = match &e {
                    HookError::Failed { code, .. } => (*code, "failed"),
                    HookError::Timeout { .. } => (None, "timeout"),
                    HookError::Spawn { .. } => (None, "failed"),
                };
                self.finish(&mut run, MachineRunPhase::Failed, code, e.to_string());
                result
            }
            Err(Failure::Setup(why)) => {
                self.finish(&mut run, MachineRunPhase::Failed, None, why);
                "failed"
            }
        };
        let took = run
            .start_time
            .zip(run.finish_time)
            .and_then(|(a, b)| (b - a).to_std().ok());
        crate::observe::metrics().task_command_ended(result, took);
        self.report(&run).await;
    }

    fn finish(&self, run: &mut MachineRun, phase: MachineRunPhase, code: Option<i32>, why: String) {
        run.phase = phase;
        run.exit_code = code;
        run.finish_time = Some(Utc::now());
        run.message = (!why.is_empty()).then_some(why);
    }

    /// The command in `<path>/current`, with the Instance's shell and environment.
    /// `run.start_time` becomes the time the command starts, after any switch: the
    /// Task's lines in the `task` log are those between its start and finish.
    async fn execute(
        &self,
        order: &TaskOrder,
        run: &mut MachineRun,
    ) -> Result<Vec<String>, Failure> {
        let name = Instance::name_for(&order.application, &self.machine);
        let inst = self
            .client
            .get::<Instance>(Some(&self.namespace), &name)
            .await
            .map_err(|e| Failure::Setup(format!("cannot read instance {name}: {e}")))?
            .ok_or_else(|| {
                Failure::Setup(format!(
                    "application {} has no instance on this machine",
                    order.application
                ))
            })?;
        let spec = inst.spec();
        let layout = layout_of(&self.root, &self.namespace, spec);
        // Never while a switch changes `current`: it runs in the release the switch left.
        let _path = super::switch_lock::lock(&layout.path).await;
        run.start_time = Some(Utc::now());
        let version = layout.current_version().ok_or_else(|| {
            Failure::Setup(format!(
                "application {} has no current release on this machine",
                order.application
            ))
        })?;
        let env = HookEnv::new(
            spec.shell.as_deref(),
            &spec.env,
            &DeployVars {
                app: &order.application,
                namespace: &self.namespace,
                version: &version,
                previous_version: None,
                release_dir: &layout.release(&version),
                path: &layout.path,
                machine: &self.machine,
            },
        )
        .with_log(super::logs::open(
            &self.root,
            &self.namespace,
            &order.application,
        ));
        let cmd = Command {
            command: order.command.clone(),
            timeout_seconds: order.timeout_seconds,
        };
        // The timeout counts from here, after any switch: `run_command_observed` starts it
        // at the spawn.
        let record = RecordGuard::new(&self.records, &self.namespace, &self.task);
        hooks::run_command_observed(&env, &cmd, &layout.current_link(), LABEL, |pgid| {
            record.started(pgid)
        })
        .await
        .map_err(Failure::Hook)
    }

    /// Writes the report; false when the store refused it.
    async fn report(&self, run: &MachineRun) -> bool {
        match self
            .client
            .put_task_result(&self.machine, &self.namespace, &self.task, run)
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(task = %self.task, error = %e, "cannot report a task's result");
                false
            }
        }
    }
}

enum Failure {
    Hook(HookError),
    Setup(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::InstanceSpec;
    use crate::store::StoreUrl;
    use futures::channel::mpsc;
    use std::path::Path;
    use std::time::Instant;

    const DEADLINE: Duration = Duration::from_secs(30);

    /// Polls `check` until it gives a value, failing after [`DEADLINE`].
    async fn wait_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            assert!(Instant::now() < until, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn alive(pid: i32) -> bool {
        super::super::task_groups::start_time(pid).is_some()
    }

    /// Application `api` on machine `m0`, with `current` pointing at release `v1`.
    async fn machine_with_api(client: &Client, root: &Path) {
        let spec = InstanceSpec {
            machine: "m0".into(),
            application: "api".into(),
            ..Default::default()
        };
        client
            .create(&Instance::new(&Instance::name_for("api", "m0"), spec))
            .await
            .expect("create instance");
        let app = root.join("default/api");
        std::fs::create_dir_all(app.join("releases/v1")).expect("release dir");
        std::os::unix::fs::symlink("releases/v1", app.join("current")).expect("current");
    }

    fn put(task: &str, command: String, timeout_seconds: u32) -> TaskOrderEvent {
        TaskOrderEvent::Put {
            namespace: "default".into(),
            task: task.into(),
            order: Some(TaskOrder {
                application: "api".into(),
                command,
                timeout_seconds,
            }),
        }
    }

    fn listed(tasks: &[&str]) -> TaskOrderEvent {
        TaskOrderEvent::Listed {
            orders: tasks
                .iter()
                .map(|t| ("default".to_string(), t.to_string()))
                .collect(),
        }
    }

    /// A command that writes its sleeper's pid to `file` and sleeps.
    fn sleeper(file: &Path) -> String {
        format!("sh -c 'echo $$ > {}; exec sleep 300'", file.display())
    }

    async fn pid_in(file: &Path) -> i32 {
        wait_for("the sleeper's pid", async || {
            std::fs::read_to_string(file).ok()?.trim().parse().ok()
        })
        .await
    }

    async fn relist_kill_and_wait(label: &str, client: Client) {
        let root = tempfile::tempdir().expect("temp dir");
        machine_with_api(&client, root.path()).await;
        let (tx, rx) = mpsc::unbounded();
        let mut rx = Some(rx);
        let watch = move || match rx.take() {
            Some(rx) => rx.boxed(),
            None => futures::stream::pending().boxed(),
        };
        let shutdown = CancellationToken::new();
        let agent = tokio::spawn(serve_orders(
            client.clone(),
            "m0".into(),
            root.path().to_path_buf(),
            watch,
            shutdown.clone(),
        ));
        let send = |ev| tx.unbounded_send(Ok(ev)).expect("serve listens");
        let records = Records::new(root.path());

        // An order runs and its process group is recorded; a relist without it (deleted
        // while the watch was broken) kills it and drops the record.
        let pid_file = root.path().join("t1.pid");
        send(put("t1", sleeper(&pid_file), 600));
        send(listed(&["t1"]));
        let pid = pid_in(&pid_file).await;
        wait_for("t1's group recorded", async || {
            records
                .all()
                .contains(&("default".into(), "t1".into()))
                .then_some(())
        })
        .await;
        send(listed(&[]));
        wait_for("t1's command killed", async || (!alive(pid)).then_some(())).await;
        wait_for("t1's record dropped", async || {
            records.all().is_empty().then_some(())
        })
        .await;

        // A group a previous agent recorded for an order that is gone is killed too.
        let mut left = std::process::Command::new("/bin/sh");
        std::os::unix::process::CommandExt::process_group(&mut left, 0);
        let mut left = left.args(["-c", "sleep 300 & wait"]).spawn().expect("sh");
        let left_pid = left.id() as i32;
        records.record("default", "gone", left_pid).expect("record");
        send(listed(&[]));
        tokio::task::spawn_blocking(move || left.wait())
            .await
            .expect("wait does not panic")
            .expect("the leader is reaped");
        assert!(records.all().is_empty(), "[{label}] its record is dropped");

        // The timeout counts from the command's start, not while it waits for a switch:
        // the path is held past the 1 s timeout (the wait the timeout must not count),
        // then the command runs and succeeds.
        let layout_path = root.path().join("default/api");
        let held = super::super::switch_lock::lock(&layout_path).await;
        send(put("t2", "echo ran".into(), 1));
        wait_for("t2 reported running", async || {
            let r = client.task_result("m0", "default", "t2").await.ok()??;
            (r.phase == MachineRunPhase::Running).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        drop(held);
        let done = wait_for("t2 finished", async || {
            client
                .task_result("m0", "default", "t2")
                .await
                .ok()?
                .filter(|r| r.phase.is_finished())
        })
        .await;
        assert_eq!(
            (done.phase, done.output_tail.as_slice()),
            (MachineRunPhase::Succeeded, ["ran".to_string()].as_slice()),
            "[{label}] {done:?}"
        );

        shutdown.cancel();
        tokio::time::timeout(DEADLINE, agent)
            .await
            .expect("serve stops on shutdown")
            .expect("serve does not panic");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serve_should_kill_orders_missing_from_a_relist_and_not_time_a_switch_wait_on_both_stores(
    ) {
        let embedded = crate::testing::embedded_temp();
        relist_kill_and_wait("embedded", Client::new(embedded.store())).await;
        let etcd = crate::testing::EtcdServer::start();
        let store = StoreUrl::parse(Some(&etcd.url()))
            .expect("the test etcd's url")
            .connect()
            .await
            .expect("the test etcd is up");
        relist_kill_and_wait("etcd", Client::new(store)).await;
    }
}
