//! `deployctl run`: a command on the machines of an Application, as a Task object.

use super::get::shutdown_signal;
use super::output::escape;
use super::{connect, duration_in, GlobalArgs};
use crate::api::selector::LabelSelector;
use crate::api::validation::validate_task;
use crate::api::{
    Application, IntOrPercent, MachineRunPhase, Object, Task, TaskPhase, TaskSpec, TaskStatus,
};
use crate::reconcilers::task::run_summary;
use crate::store::{Client, ObjectEvent, Scope};
use clap::{ArgAction, Args};
use futures::StreamExt;
use std::collections::BTreeSet;
use std::time::Duration;

pub const EXAMPLES: &str = "\
Examples:
  # Reload nginx on every ready machine of web, one machine at a time
  deployctl run web -- systemctl reload nginx

  # The Application's named task `migrate` (spec.tasks), on any one machine
  deployctl run api --one migrate

  # A quarter of the canaries at a time, carrying on after a failure, with the
  # output
  deployctl run web -l track=canary --max-parallel 25% --stop-on-failure=false \\
    --output -- ./bin/clear-cache

  # Start it and return; follow it later
  deployctl run web --detach -- ./bin/warm-cache
  deployctl describe task web-run-5f3a9c

Exit codes: 0 when every machine exited 0, 1 otherwise, 2 on a usage error.
The command runs in <path>/current through the Application's shell, with the
DEPLOY_* variables and the Application's env; words after -- are joined with
spaces.";

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The Application whose ready machines run the command.
    pub application: String,
    /// A task the Application declares in `spec.tasks` (instead of a command after --).
    pub task: Option<String>,
    /// The command, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
    /// Only the machines with these labels (kubectl's -l syntax).
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Only these machines (comma-separated names).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub machines: Vec<String>,
    /// Any single ready machine (as for a migration).
    #[arg(long)]
    pub one: bool,
    /// Machines running at once: a count or a percent of the chosen machines.
    #[arg(long, default_value = "1", value_parser = parse_max_parallel)]
    pub max_parallel: IntOrPercent,
    /// Per machine, before its process group is killed, counted from the command's start:
    /// waiting for a rollout's switch on that machine does not count (default: the named
    /// task's, or 5m).
    #[arg(long, value_parser = duration_in(Duration::from_secs(1), Duration::from_secs(86_400)))]
    pub timeout: Option<Duration>,
    /// After a failure, start no further machine.
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub stop_on_failure: bool,
    /// Create the Task and return at once, printing its name.
    #[arg(long)]
    pub detach: bool,
    /// Print each machine's output tail as its result arrives.
    #[arg(long)]
    pub output: bool,
    /// How long the finished Task is kept before it is deleted.
    #[arg(long, default_value = "1h", value_parser = duration_in(Duration::ZERO, Duration::from_secs(30 * 86_400)))]
    pub ttl: Duration,
}

fn parse_max_parallel(text: &str) -> Result<IntOrPercent, String> {
    let v = match text.parse::<u32>() {
        Ok(n) => IntOrPercent::Int(n),
        Err(_) => IntOrPercent::Percent(text.to_string()),
    };
    let ok = match &v {
        IntOrPercent::Int(n) => *n >= 1,
        IntOrPercent::Percent(_) => v.percent().is_some_and(|p| p >= 1),
    };
    if ok {
        Ok(v)
    } else {
        Err(format!(
            "{text:?} is neither a count (1 or more) nor a percent (1% to 100%)"
        ))
    }
}

/// Usage errors exit 2, as clap's own do.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("give a command after -- or the name of a task of application {0:?}, not both")]
    CommandOrTask(String),
    #[error("application {app:?} has no task {name:?}; its tasks: {known}")]
    UnknownTask {
        app: String,
        name: String,
        known: String,
    },
    #[error("invalid selector {0:?}: {1}")]
    Selector(String, String),
    #[error("application {0:?} not found")]
    NoApplication(String),
    #[error("invalid task: {0}")]
    Invalid(String),
}

pub async fn run(g: &GlobalArgs, args: RunArgs) -> anyhow::Result<i32> {
    let client = connect(g).await?;
    let task = match build_task(&client, g, &args).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(2);
        }
    };
    let created = client.create(&task).await?;
    let name = created.metadata.name.clone();
    if args.detach {
        outln!("task.deployctl.dev/{name} created");
        return Ok(0);
    }
    follow(&client, &g.namespace, &name, args.output).await
}

/// The Task `args` describe, checked as the controller will check it.
async fn build_task(client: &Client, g: &GlobalArgs, args: &RunArgs) -> Result<Task, RunError> {
    let app: Application = client
        .get(Some(&g.namespace), &args.application)
        .await
        .ok()
        .flatten()
        .ok_or_else(|| RunError::NoApplication(args.application.clone()))?;
    let (command, timeout, task_name) = match (&args.task, args.command.is_empty()) {
        (Some(name), true) => {
            let Some(cmd) = app.spec.tasks.get(name) else {
                let known: Vec<&str> = app.spec.tasks.keys().map(String::as_str).collect();
                return Err(RunError::UnknownTask {
                    app: args.application.clone(),
                    name: name.clone(),
                    known: if known.is_empty() {
                        "<none>".into()
                    } else {
                        known.join(", ")
                    },
                });
            };
            (cmd.command.clone(), cmd.timeout_seconds, Some(name.clone()))
        }
        (None, false) => (args.command.join(" "), 300, None),
        _ => return Err(RunError::CommandOrTask(args.application.clone())),
    };
    let selector = match &args.selector {
        Some(s) => LabelSelector::parse(s).map_err(|e| RunError::Selector(s.clone(), e))?,
        None => LabelSelector::default(),
    };
    let timeout_seconds = args
        .timeout
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(timeout);
    let spec = TaskSpec {
        application: args.application.clone(),
        command,
        task_name: task_name.clone(),
        selector,
        machines: args.machines.clone(),
        one: args.one,
        max_parallel: args.max_parallel.clone(),
        timeout_seconds,
        stop_on_failure: args.stop_on_failure,
        ttl_seconds_after_finished: u32::try_from(args.ttl.as_secs()).unwrap_or(u32::MAX),
    };
    let mut task = Task::new(
        &task_object_name(&args.application, task_name.as_deref()),
        spec,
    );
    task.metadata.namespace = Some(g.namespace.clone());
    let errors = validate_task(&task);
    if !errors.is_empty() {
        let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        return Err(RunError::Invalid(list.join("; ")));
    }
    Ok(task)
}

/// `<app>-<task or run>-<6 hex>`, cut to a DNS label's 63 characters.
fn task_object_name(app: &str, task: Option<&str>) -> String {
    let suffix = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let mut head = format!("{app}-{}", task.unwrap_or("run"));
    head.truncate(63 - suffix.len() - 1);
    format!("{}-{suffix}", head.trim_end_matches('-'))
}

/// Prints each machine's result as it arrives, then a summary; 0 when all exited 0.
async fn follow(client: &Client, ns: &str, name: &str, output: bool) -> anyhow::Result<i32> {
    let mut stream = client.list_watch::<Task>(Scope::Namespace(ns.to_string()));
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut printed: BTreeSet<String> = BTreeSet::new();
    loop {
        let event = tokio::select! {
            e = stream.next() => e,
            _ = &mut shutdown => {
                eprintln!("stopped following; the task goes on: deployctl describe task {name}");
                return Ok(1);
            }
        };
        let Some(event) = event else {
            anyhow::bail!("the watch on task {name:?} ended");
        };
        let task = match event {
            Ok(ObjectEvent::Restarted(items)) => match items.into_iter().find(|t| t.name() == name)
            {
                Some(t) => t,
                None => anyhow::bail!("task {name:?} was deleted"),
            },
            Ok(ObjectEvent::Applied(t)) if t.name() == name => t,
            Ok(ObjectEvent::Deleted(t)) if t.name() == name => {
                anyhow::bail!("task {name:?} was deleted")
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "watch interrupted; resuming");
                continue;
            }
        };
        let st = task.status.clone().unwrap_or_default();
        print_new_results(&st, &mut printed, output);
        if st.phase.is_finished() {
            return Ok(summary(&st));
        }
    }
}

fn print_new_results(st: &TaskStatus, printed: &mut BTreeSet<String>, output: bool) {
    for m in &st.machines {
        let done = m.phase.is_finished() && m.phase != MachineRunPhase::Skipped;
        if !done || !printed.insert(m.machine.clone()) {
            continue;
        }
        outln!("{}: {}", escape(&m.machine), escape(&run_summary(m)));
        if output {
            for line in &m.output_tail {
                outln!("  {}", escape(line));
            }
        }
    }
}

/// The last lines: counts, the failing machines named; the exit code.
fn summary(st: &TaskStatus) -> i32 {
    if let Some(why) = &st.message {
        eprintln!("error: {}", escape(why));
    }
    let ok = st
        .machines
        .iter()
        .filter(|m| m.phase == MachineRunPhase::Succeeded)
        .count();
    let skipped = st
        .machines
        .iter()
        .filter(|m| m.phase == MachineRunPhase::Skipped)
        .count();
    let failed: Vec<String> = st
        .failed()
        .map(|m| format!("{} ({})", m.machine, m.phase.as_str()))
        .collect();
    let mut line = format!("{ok}/{} machines succeeded", st.machines.len());
    if !failed.is_empty() {
        line.push_str(&format!("; failed: {}", failed.join(", ")));
    }
    if skipped > 0 {
        line.push_str(&format!("; {skipped} not started"));
    }
    outln!("{}", escape(&line));
    i32::from(st.phase != TaskPhase::Succeeded)
}
