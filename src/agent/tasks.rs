//! Runs the Task orders of this machine (`deployctl run`), each exactly as a hook runs,
//! and reports each under this machine's own status keys. A command is run at most once:
//! a `Running` report found at start-up means the agent died under it (`Interrupted`).

use super::hooks::{self, DeployVars, HookEnv, HookError};
use super::instance::layout_of;
use crate::api::{Command, Instance, MachineRun, MachineRunPhase, Object, TaskOrder};
use crate::store::{Client, TaskOrderEvent};
use chrono::Utc;
use futures::StreamExt;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The label a Task's output lines carry, like a hook's name.
const LABEL: &str = "task";

/// Watches this machine's orders until `shutdown`; a withdrawn order (a deleted Task)
/// kills its command's process group.
pub async fn serve(client: Client, machine: String, root: PathBuf, shutdown: CancellationToken) {
    let mut running: HashMap<(String, String), CancellationToken> = HashMap::new();
    let mut orders = client.watch_task_orders(&machine);
    let mut error_backoff = Duration::from_millis(500);
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = orders.next() => ev,
        };
        running.retain(|_, stop| !stop.is_cancelled());
        match event {
            None => orders = client.watch_task_orders(&machine),
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

/// One order on this machine.
struct OrderRun {
    client: Client,
    machine: String,
    root: PathBuf,
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
                r.phase = MachineRunPhase::Interrupted;
                r.finish_time = Some(Utc::now());
                r.message = Some("the agent restarted while the command ran; not run again".into());
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
        match outcome {
            Ok(tail) => {
                run.output_tail = tail;
                self.finish(&mut run, MachineRunPhase::Succeeded, Some(0), String::new());
            }
            Err(Failure::Hook(e)) => {
                run.output_tail = e.tail().to_vec();
                let code = match &e {
                    HookError::Failed { code, .. } => *code,
                    _ => None,
                };
                self.finish(&mut run, MachineRunPhase::Failed, code, e.to_string());
            }
            Err(Failure::Setup(why)) => self.finish(&mut run, MachineRunPhase::Failed, None, why),
        }
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
        hooks::run_command(&env, &cmd, &layout.current_link(), LABEL)
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
