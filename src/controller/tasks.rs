//! The Task reconcile's effects: orders written before the status that records them,
//! agents' results watched, a deleted Task's orders withdrawn, a finished one expired.

use super::context::{Context, Error, Key};
use super::informer::ChangeKind;
use super::runtime::Action;
use crate::api::{Object, ObjectReference, Task, TaskOrder, DEFAULT_NAMESPACE};
use crate::reconcilers::task::plan_task;
use crate::store::{self, Client};
use futures::StreamExt;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

impl Context {
    pub fn on_task(&self, task: &Task, kind: ChangeKind) {
        let namespace = task.namespace().unwrap_or(DEFAULT_NAMESPACE).to_string();
        let name = task.name().to_string();
        if kind == ChangeKind::Deleted {
            // Withdraw every order: agents kill what runs and start nothing more.
            let machines: Vec<String> = task
                .status
                .iter()
                .flat_map(|s| s.machines.iter().map(|m| m.machine.clone()))
                .collect();
            let client = self.client.clone();
            tokio::spawn(async move {
                if let Err(e) = client.delete_task_keys(&namespace, &name, &machines).await {
                    tracing::warn!(task = %name, error = %e, "cannot withdraw a deleted task's orders");
                }
            });
            return;
        }
        self.queue.add(Key::Task { namespace, name });
    }

    pub(super) async fn reconcile_task(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Action, Error> {
        let Some(task) = self.tasks.get(Some(namespace), name) else {
            return Ok(Action::await_change());
        };
        let app = self
            .applications
            .get(Some(namespace), &task.spec.application);
        let running: Vec<String> = task
            .status
            .iter()
            .flat_map(|s| s.machines.iter())
            .filter(|m| !m.phase.is_finished())
            .map(|m| m.machine.clone())
            .collect();
        let results = self.client.task_results(namespace, name, &running).await?;
        let now = chrono::Utc::now();
        let plan = plan_task(&task, app.as_deref(), &self.machine_views(), &results, now);
        if plan.delete {
            let all: Vec<String> = plan
                .status
                .machines
                .iter()
                .map(|m| m.machine.clone())
                .collect();
            self.client.delete_task_keys(namespace, name, &all).await?;
            match self
                .client
                .delete::<Task>(Some(namespace), name, None)
                .await
            {
                Ok(_) | Err(store::Error::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(Action::await_change());
        }
        // Orders first: a status written without its orders would wait forever, while
        // orders written without their status are found again (ordering is idempotent).
        if !plan.orders.is_empty() {
            let order = TaskOrder {
                application: task.spec.application.clone(),
                command: task.spec.command.clone(),
                timeout_seconds: task.spec.timeout_seconds,
            };
            self.client
                .put_task_orders(namespace, name, &order, &plan.orders)
                .await?;
        }
        if task.status.as_ref() != Some(&plan.status) {
            let mut new = Task::clone(&task);
            new.status = Some(plan.status.clone());
            self.client.replace_status(&new).await?;
        }
        let object = ObjectReference {
            kind: Task::KIND.to_string(),
            namespace: Some(namespace.to_string()),
            name: name.to_string(),
        };
        for note in plan.events {
            self.events
                .record(object.clone(), note.type_, note.reason, &note.message)
                .await;
        }
        Ok(match plan.status.completion_time {
            Some(done) if plan.status.phase.is_finished() => {
                let ttl =
                    chrono::Duration::seconds(i64::from(task.spec.ttl_seconds_after_finished));
                let left = (done + ttl - now).to_std().unwrap_or(Duration::ZERO);
                Action::requeue(left)
            }
            _ => Action::await_change(),
        })
    }
}

/// Withdraws the orders (and results) of Tasks that no longer exist: a Task deleted while
/// no controller led. Run once the caches have synced.
pub(super) async fn sweep_orphan_orders(ctx: &Context) {
    let orders = match ctx.client.all_task_orders().await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list task orders to sweep orphans");
            return;
        }
    };
    for (machine, namespace, task) in orders {
        if ctx.tasks.get(Some(&namespace), &task).is_some() {
            continue;
        }
        if let Err(e) = ctx
            .client
            .delete_task_keys(&namespace, &task, std::slice::from_ref(&machine))
            .await
        {
            tracing::warn!(task = %task, machine = %machine, error = %e, "cannot withdraw an orphan task order");
        }
    }
}

/// Enqueues a Task whenever one of its machines' agents writes a result, until `stop`.
pub(super) async fn watch_results(
    ctx: std::sync::Arc<Context>,
    client: Client,
    stop: CancellationToken,
) {
    let mut retry = Duration::from_millis(200);
    loop {
        let mut results = store::watch_task_results(&client);
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                n = results.next() => n,
            };
            match next {
                Some(Ok((namespace, name))) => {
                    retry = Duration::from_millis(200);
                    ctx.queue.add(Key::Task { namespace, name });
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "task results watch failed; retrying");
                    break;
                }
                None => break,
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(Duration::from_secs(30));
    }
}
