//! The Task decision: which machines run the command, which start now, and when it ends.
//!
//! A plain function from the Task, its Application, the Machines and the results the
//! agents wrote to the status it wants and the per-machine orders to write. The chosen
//! machines are fixed the first time (so `one` stays one machine and a machine that joins
//! later is not added); then, on every reconcile: observe the agents' results, apply the
//! failure policy, start machines within `maxParallel`, and finish.

use super::{EventNote, MachineView};
use crate::api::{
    validation::validate_task, Application, MachineRun, MachineRunPhase, Task, TaskPhase,
    TaskStatus,
};
use chrono::{DateTime, Duration, Utc};
use std::collections::BTreeMap;

/// What one Task reconcile wants written.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct TaskPlan {
    /// The Task's new status (written only when it differs from the stored one).
    pub status: TaskStatus,
    /// Machines to order to start the command now, in the order chosen.
    pub orders: Vec<String>,
    /// The TTL after completion has passed: delete the Task and its orders and results.
    pub delete: bool,
    pub events: Vec<EventNote>,
}

/// Decides one Task. `results` are the agents' reports, by machine name.
pub fn plan_task(
    task: &Task,
    app: Option<&Application>,
    machines: &[MachineView],
    results: &BTreeMap<String, MachineRun>,
    now: DateTime<Utc>,
) -> TaskPlan {
    let mut plan = TaskPlan {
        status: task.status.clone().unwrap_or_default(),
        ..Default::default()
    };
    if plan.status.phase.is_finished() {
        plan.delete = ttl_passed(task, &plan.status, now);
        return plan;
    }
    if plan.status.phase == TaskPhase::Pending {
        if let Err(why) = choose(task, app, machines, &mut plan.status) {
            fail_without_running(&mut plan, why, now);
            return plan;
        }
        plan.status.phase = TaskPhase::Running;
        plan.status.start_time = Some(now);
    }
    observe(&mut plan, machines, results, now);
    stop_after_failure(task, &mut plan);
    start(task, &mut plan, now);
    complete(&mut plan, now);
    plan
}

/// Fixes the machines the command runs on: the Application's ready machines, narrowed by
/// the Task's selector and names, and to one of them with `one`.
fn choose(
    task: &Task,
    app: Option<&Application>,
    machines: &[MachineView],
    status: &mut TaskStatus,
) -> Result<(), String> {
    let errors = validate_task(task);
    if !errors.is_empty() {
        let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        return Err(format!("invalid task: {}", list.join("; ")));
    }
    let spec = &task.spec;
    let app = app.ok_or_else(|| format!("application {:?} not found", spec.application))?;
    let mut chosen: Vec<&str> = machines
        .iter()
        .filter(|m| m.ready)
        .filter(|m| app.spec.selector.matches(m.labels()))
        .filter(|m| spec.selector.matches(m.labels()))
        .filter(|m| spec.machines.is_empty() || spec.machines.iter().any(|n| n == m.name()))
        .map(|m| m.name())
        .collect();
    chosen.sort_unstable();
    let missing: Vec<&str> = spec
        .machines
        .iter()
        .map(String::as_str)
        .filter(|n| !chosen.contains(n))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "machines not ready or not running application {:?}: {}",
            spec.application,
            missing.join(", ")
        ));
    }
    if chosen.is_empty() {
        return Err(format!(
            "no ready machine of application {:?} matches",
            spec.application
        ));
    }
    if spec.one {
        chosen.truncate(1);
    }
    status.machines = chosen
        .into_iter()
        .map(|m| MachineRun {
            machine: m.to_string(),
            ..Default::default()
        })
        .collect();
    Ok(())
}

fn fail_without_running(plan: &mut TaskPlan, why: String, now: DateTime<Utc>) {
    plan.events
        .push(EventNote::warning("TaskFailed", why.clone()));
    plan.status.phase = TaskPhase::Failed;
    plan.status.message = Some(why);
    plan.status.completion_time = Some(now);
}

/// Takes each running machine's finished result; a running machine whose agent went
/// away is `NotReady`, and not retried.
fn observe(
    plan: &mut TaskPlan,
    machines: &[MachineView],
    results: &BTreeMap<String, MachineRun>,
    now: DateTime<Utc>,
) {
    let ready = |name: &str| machines.iter().any(|m| m.ready && m.name() == name);
    for run in plan
        .status
        .machines
        .iter_mut()
        .filter(|r| r.phase == MachineRunPhase::Running)
    {
        match results.get(&run.machine) {
            Some(r) if r.phase.is_finished() => {
                *run = MachineRun {
                    machine: run.machine.clone(),
                    ..r.clone()
                };
                if r.phase != MachineRunPhase::Succeeded {
                    plan.events.push(EventNote::warning(
                        "TaskMachineFailed",
                        format!("{}: {}", run.machine, run_summary(run)),
                    ));
                }
            }
            Some(r) if r.start_time.is_some() => run.start_time = r.start_time,
            _ => {}
        }
        if run.phase == MachineRunPhase::Running && !ready(&run.machine) {
            run.phase = MachineRunPhase::NotReady;
            run.finish_time = Some(now);
            run.message = Some("the machine's agent went away while the command ran".into());
            plan.events.push(EventNote::warning(
                "TaskMachineNotReady",
                format!("{}: not ready while the command ran", run.machine),
            ));
        }
    }
}

/// `exit 0 (1.2s)`, `Interrupted: ...`: one machine's result in words.
pub fn run_summary(run: &MachineRun) -> String {
    let took = match (run.start_time, run.finish_time) {
        (Some(a), Some(b)) => format!(" ({:.1}s)", (b - a).num_milliseconds() as f64 / 1000.0),
        _ => String::new(),
    };
    match (run.phase, run.exit_code) {
        (MachineRunPhase::Succeeded | MachineRunPhase::Failed, Some(code)) => {
            format!("exit {code}{took}")
        }
        (phase, _) => match &run.message {
            Some(m) => format!("{}: {m}{took}", phase.as_str()),
            None => format!("{}{took}", phase.as_str()),
        },
    }
}

/// With `stopOnFailure`, once a machine failed no waiting machine starts.
fn stop_after_failure(task: &Task, plan: &mut TaskPlan) {
    if !task.spec.stop_on_failure || plan.status.failed().next().is_none() {
        return;
    }
    for run in plan
        .status
        .machines
        .iter_mut()
        .filter(|r| r.phase == MachineRunPhase::Waiting)
    {
        run.phase = MachineRunPhase::Skipped;
        run.message = Some("not started: an earlier machine failed".into());
    }
}

/// Orders waiting machines to start while fewer than `maxParallel` run.
fn start(task: &Task, plan: &mut TaskPlan, now: DateTime<Utc>) {
    let total = u32::try_from(plan.status.machines.len()).unwrap_or(u32::MAX);
    let slots = task.spec.max_parallel.resolve(total, false).max(1) as usize;
    let running = plan
        .status
        .machines
        .iter()
        .filter(|r| r.phase == MachineRunPhase::Running)
        .count();
    let free = slots.saturating_sub(running);
    for run in plan
        .status
        .machines
        .iter_mut()
        .filter(|r| r.phase == MachineRunPhase::Waiting)
        .take(free)
    {
        run.phase = MachineRunPhase::Running;
        run.start_time = Some(now);
        plan.orders.push(run.machine.clone());
    }
}

fn complete(plan: &mut TaskPlan, now: DateTime<Utc>) {
    let st = &mut plan.status;
    if !st.machines.iter().all(|r| r.phase.is_finished()) {
        return;
    }
    let ok = st
        .machines
        .iter()
        .all(|r| r.phase == MachineRunPhase::Succeeded);
    st.phase = if ok {
        TaskPhase::Succeeded
    } else {
        TaskPhase::Failed
    };
    st.completion_time = Some(now);
    let failed: Vec<&str> = st.failed().map(|r| r.machine.as_str()).collect();
    plan.events.push(if ok {
        EventNote::normal(
            "TaskSucceeded",
            format!("{} machines exited 0", st.machines.len()),
        )
    } else {
        EventNote::warning("TaskFailed", format!("failed on {}", failed.join(", ")))
    });
}

fn ttl_passed(task: &Task, status: &TaskStatus, now: DateTime<Utc>) -> bool {
    let ttl = Duration::seconds(i64::from(task.spec.ttl_seconds_after_finished));
    status.completion_time.is_some_and(|done| done + ttl <= now)
}

#[cfg(test)]
mod tests;
