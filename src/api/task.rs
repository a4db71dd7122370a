//! Task: one shell command run on some machines of an Application (`deployctl run`).

use super::{object, selector::LabelSelector, IntOrPercent};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

object! {
    /// A command run on the ready machines of an Application, at most `maxParallel` at a
    /// time, each exactly as a deploy hook runs (in `<path>/current`, with the `DEPLOY_*`
    /// environment and the Application's `env`). An object so that a run outlives the
    /// command line that started it; deleted `ttlSecondsAfterFinished` after it ends.
    Task, spec: TaskSpec, status: TaskStatus,
    plural: "tasks", singular: "task", short: ["tk"],
    namespaced: true
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskSpec {
    /// The Application (same namespace) whose machines run the command.
    pub application: String,
    /// Shell text, run as `<shell> <command>` in `<path>/current`. Values reach it only
    /// through the environment, never spliced into this text.
    pub command: String,
    /// The name of the Application's task (`spec.tasks`) the command came from, if any:
    /// shown by `get tasks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_name: Option<String>,
    /// Narrows the Application's machines by their labels (`run -l`).
    #[serde(default)]
    pub selector: LabelSelector,
    /// Narrows the Application's machines to these names (`run --machines`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub machines: Vec<String>,
    /// Runs on any single ready machine (`run --one`, as for a migration).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub one: bool,
    /// How many machines run the command at once: a count or a percent of the chosen
    /// machines (rounded down, at least 1). Default 1.
    #[serde(default = "default_max_parallel")]
    pub max_parallel: IntOrPercent,
    /// Seconds before a machine's process group is killed and its run counts as failed,
    /// counted from the command's start (a wait for a switch on that machine is not).
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u32,
    /// After a machine fails, no further machine starts (running ones finish). Default on.
    #[serde(default = "default_true")]
    pub stop_on_failure: bool,
    /// Seconds after the Task finished before the controller deletes it (default 3600).
    #[serde(default = "default_ttl")]
    pub ttl_seconds_after_finished: u32,
}

fn default_max_parallel() -> IntOrPercent {
    IntOrPercent::Int(1)
}
fn default_timeout_seconds() -> u32 {
    300
}
fn default_true() -> bool {
    true
}
fn default_ttl() -> u32 {
    3600
}

/// The same defaults serde applies to a missing field (derive(Default) would say 0).
impl Default for TaskSpec {
    fn default() -> Self {
        TaskSpec {
            application: String::new(),
            command: String::new(),
            task_name: None,
            selector: LabelSelector::default(),
            machines: Vec::new(),
            one: false,
            max_parallel: default_max_parallel(),
            timeout_seconds: default_timeout_seconds(),
            stop_on_failure: true,
            ttl_seconds_after_finished: default_ttl(),
        }
    }
}

/// Where a Task as a whole stands.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TaskPhase {
    /// Not yet seen by the controller.
    #[default]
    Pending,
    /// Some machines are still to run or running.
    Running,
    /// Every chosen machine exited 0.
    Succeeded,
    /// Finished, and at least one machine did not exit 0 (or none could be chosen).
    Failed,
}

impl TaskPhase {
    pub fn is_finished(self) -> bool {
        matches!(self, TaskPhase::Succeeded | TaskPhase::Failed)
    }
}

/// Where the command stands on one machine.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MachineRunPhase {
    /// Chosen, not yet ordered to start.
    #[default]
    Waiting,
    /// Ordered; the agent has not reported an end.
    Running,
    /// Exited 0.
    Succeeded,
    /// Exited non-zero, was killed at the timeout, or could not start.
    Failed,
    /// The agent restarted while the command ran: it is not run again, since commands
    /// need not be idempotent.
    Interrupted,
    /// The machine's agent went away while the command ran; not retried.
    NotReady,
    /// Never started: an earlier machine failed with `stopOnFailure`, or the Task was
    /// deleted first.
    Skipped,
}

impl MachineRunPhase {
    pub fn is_finished(self) -> bool {
        !matches!(self, MachineRunPhase::Waiting | MachineRunPhase::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MachineRunPhase::Waiting => "Waiting",
            MachineRunPhase::Running => "Running",
            MachineRunPhase::Succeeded => "Succeeded",
            MachineRunPhase::Failed => "Failed",
            MachineRunPhase::Interrupted => "Interrupted",
            MachineRunPhase::NotReady => "NotReady",
            MachineRunPhase::Skipped => "Skipped",
        }
    }
}

/// The command on one machine, as the agent reported it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachineRun {
    pub machine: String,
    pub phase: MachineRunPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<DateTime<Utc>>,
    /// Why it failed, in words (timeout, could not start, agent restarted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The last lines of its output, bounded as a hook's tail is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_tail: Vec<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskStatus {
    pub phase: TaskPhase,
    /// One entry per chosen machine, in the order they start. Chosen once, when the
    /// controller first sees the Task, so that `--one` stays one machine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub machines: Vec<MachineRun>,
    /// Why the Task failed without running (no machine matched, unknown Application).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<DateTime<Utc>>,
}

impl TaskStatus {
    /// Machines that have not exited 0 among those that finished.
    pub fn failed(&self) -> impl Iterator<Item = &MachineRun> {
        self.machines.iter().filter(|m| {
            m.phase.is_finished()
                && !matches!(
                    m.phase,
                    MachineRunPhase::Succeeded | MachineRunPhase::Skipped
                )
        })
    }
}

/// What the controller writes to one machine to start a Task's command there: all the
/// agent needs besides the Application's own Instance on that machine.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskOrder {
    /// The Application, in the Task's namespace: its Instance on the machine gives the
    /// path, shell, environment and current version.
    pub application: String,
    pub command: String,
    pub timeout_seconds: u32,
}
