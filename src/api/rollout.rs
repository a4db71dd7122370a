//! Rollout: *which* version of one Application, and how to get there.

use super::{object, AnalysisRunStatus, AnalysisStep, BackgroundAnalysis, Condition, IntOrPercent};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

object! {
    /// Which version of one Application the fleet should run, and how to get there.
    /// Long-lived: CI or a GitOps commit changes `spec.version`; history is kept.
    Rollout, spec: RolloutSpec, status: RolloutStatus,
    plural: "rollouts", singular: "rollout", short: ["ro"],
    namespaced: true
}

/// Annotation set by `deployctl rollout promote`: a request token; `full:` prefix skips
/// every remaining step.
pub const ANNOTATION_PROMOTE: &str = "deployctl.dev/promote";
/// Annotation set by `deployctl rollout abort`: go back to the stable version.
pub const ANNOTATION_ABORT: &str = "deployctl.dev/abort";
/// Annotation set by `deployctl rollout retry`: forget failures and try the target again.
pub const ANNOTATION_RETRY: &str = "deployctl.dev/retry";
/// Annotation set by `deployctl rollout undo`: the generation whose version change
/// goes straight to every machine, skipping canary steps.
pub const ANNOTATION_UNDO: &str = "deployctl.dev/undo-generation";

/// What the user wants for a Rollout.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutSpec {
    /// The name of the Application (in the same namespace) this Rollout drives.
    pub application: String,
    /// The version every selected machine should run. Matches
    /// `[A-Za-z0-9][A-Za-z0-9._+-]{0,127}`.
    pub version: String,
    /// The artifact's hex sha256 for this version, when the Application has no `sha256Url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// How fast to go.
    #[serde(default)]
    pub strategy: Strategy,
    /// A user's pause: no new stage or switch starts while true. Distinct from a pause
    /// the controller sets at a pause step or on failure.
    #[serde(default)]
    pub paused: bool,
    /// What to do when machines fail.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// How many past revisions `status.history` keeps (default 10).
    #[serde(default = "default_history_limit")]
    pub revision_history_limit: u32,
    /// Set by `deployctl rollout restart`: every machine re-runs its activation (and
    /// restarts its service) under the same slots, once per new value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_at: Option<DateTime<Utc>>,
    /// Rollouts that must be `Complete` on their own target version before this one
    /// switches any machine (staging goes on meanwhile).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Dependency>,
}

/// One Rollout this one waits for.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Dependency {
    /// The Rollout's name.
    pub rollout: String,
    /// Its namespace (default: this Rollout's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

fn default_history_limit() -> u32 {
    10
}

impl RolloutSpec {
    /// What `set version` and the build webhook change: the version, and the sha256
    /// that goes with it (a changed version without one drops the old digest). True
    /// when the spec changed.
    pub fn set_version(&mut self, version: &str, sha256: Option<&str>) -> bool {
        let before = (self.version.clone(), self.sha256.clone());
        if self.version != version || sha256.is_some() {
            self.sha256 = sha256.map(str::to_string);
        }
        self.version = version.to_string();
        before != (self.version.clone(), self.sha256.clone())
    }
}

/// The same defaults serde applies to a missing field (derive(Default) would say 0).
impl Default for RolloutSpec {
    fn default() -> Self {
        RolloutSpec {
            application: String::new(),
            version: String::new(),
            sha256: None,
            strategy: Strategy::default(),
            paused: false,
            failure_policy: FailurePolicy::default(),
            revision_history_limit: default_history_limit(),
            restart_at: None,
            depends_on: Vec::new(),
        }
    }
}

/// Slots, gates and steps.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Strategy {
    /// Slots: how many machines may be switching or unhealthy at once, as a count or a
    /// percent of the desired machines (rounded down, at least 1). Default 1.
    #[serde(default = "default_max_unavailable")]
    pub max_unavailable: IntOrPercent,
    /// The gate: how many machines must report the version staged before any switches,
    /// as a count or percent (rounded up). Default `100%`.
    #[serde(default = "default_min_staged")]
    pub min_staged: IntOrPercent,
    /// How many machines may stage (download, unpack, install) at once. Default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel_stage: Option<u32>,
    /// Seconds a switched machine must stay healthy before it counts as available.
    #[serde(default)]
    pub min_ready_seconds: u32,
    /// Seconds without progress before the Rollout reports `ProgressDeadlineExceeded`
    /// (default 600).
    #[serde(default = "default_progress_deadline")]
    pub progress_deadline_seconds: u32,
    /// Canary steps, run in order; without steps every machine is switched under slots.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    /// Analysis that runs in the background from `startingStep` until the rollout
    /// completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<BackgroundAnalysis>,
    /// Switch the fleet one group of machines at a time, grouped by a label's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waves: Option<Waves>,
    /// Which machines switch first within the slots (default `Listed`).
    #[serde(default, skip_serializing_if = "SwitchOrder::is_listed")]
    pub order: SwitchOrder,
}

/// Waves: machines grouped by the value of one label switch one group at a time.
/// Staging still happens everywhere first; waves gate switching only.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Waves {
    /// The machine label whose value names a machine's wave, e.g. `zone`.
    pub label_key: String,
    /// The waves' values in the order they switch. Values not listed follow, sorted;
    /// without `order` every value switches in sorted order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub order: Vec<String>,
    /// How long a finished wave must run the target without a failure before the next
    /// one starts, e.g. `10m` (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake: Option<String>,
    /// Slots within one wave, on top of `maxUnavailable` across the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable_per_wave: Option<u32>,
    /// Refuse to switch machines without the label (they are reported, never switched).
    /// When false they form a last wave of their own.
    #[serde(default)]
    pub require_label: bool,
}

/// Which machines switch first within the slots.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SwitchOrder {
    /// In the order of their Instances (by machine name).
    #[default]
    Listed,
    /// Machines already down or failing before healthy ones, so that a healthy machine
    /// is never taken down while a sick one waits. Machines already down count against
    /// `maxUnavailable`, as every unavailable machine does.
    UnavailableFirst,
}

impl SwitchOrder {
    fn is_listed(&self) -> bool {
        *self == SwitchOrder::Listed
    }
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy {
            max_unavailable: default_max_unavailable(),
            min_staged: default_min_staged(),
            max_parallel_stage: None,
            min_ready_seconds: 0,
            progress_deadline_seconds: default_progress_deadline(),
            steps: Vec::new(),
            analysis: None,
            waves: None,
            order: SwitchOrder::Listed,
        }
    }
}

impl Strategy {
    /// Slots: how many of `desired` machines may be switching or unavailable at once
    /// (a percent rounds down; never fewer than 1).
    pub fn slots(&self, desired: u32) -> u32 {
        self.max_unavailable.resolve(desired, false).max(1)
    }

    /// The gate: how many of `desired` machines must have staged the version before any
    /// switches (a percent rounds up; never more than `desired`).
    pub fn min_staged_machines(&self, desired: u32) -> u32 {
        self.min_staged.resolve(desired, true).min(desired)
    }
}

fn default_max_unavailable() -> IntOrPercent {
    IntOrPercent::Int(1)
}
fn default_min_staged() -> IntOrPercent {
    IntOrPercent::Percent("100%".to_string())
}
fn default_progress_deadline() -> u32 {
    600
}

/// One canary step: exactly one of `setWeight`, `machines`, `pause` or `analysis`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Step {
    /// Switch this percent of the desired machines (0 to 100), then go on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_weight: Option<u32>,
    /// Switch this many machines, then go on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machines: Option<u32>,
    /// Stop here: for `duration`, or until `deployctl rollout promote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<PauseStep>,
    /// Run AnalysisTemplates against the machines switched so far; the next step starts
    /// when they are `Successful`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStep>,
}

impl Step {
    /// How many of `n` machines a `setWeight` or `machines` step wants on the target
    /// (a weight rounds up); `None` for a pause step. The reconciler and the views share it.
    pub fn machines_wanted(&self, n: u32) -> Option<u32> {
        match (self.set_weight, self.machines) {
            (Some(w), _) => Some((u64::from(n) * u64::from(w)).div_ceil(100) as u32),
            (_, Some(m)) => Some(m.min(n)),
            _ => None,
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PauseStep {
    /// How long to wait, e.g. `30s` or `5m`. Without it, wait for `rollout promote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailurePolicy {
    /// Machines that may fail the target version before the Rollout turns `Degraded`
    /// (default 0: the first failure acts).
    #[serde(default)]
    pub max_failures: u32,
    /// What to do past `maxFailures` (default `Pause`).
    #[serde(default)]
    pub action: FailureAction,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        FailurePolicy {
            max_failures: 0,
            action: FailureAction::Pause,
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FailureAction {
    /// Stop switching; machines keep what they run. `rollout retry` or a new version goes on.
    #[default]
    Pause,
    /// Switch the updated machines back to the stable version, under the same slots.
    Rollback,
}

/// Where a Rollout is.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RolloutPhase {
    /// Not yet reconciled.
    #[default]
    Pending,
    /// Staging or switching machines towards the target version.
    Progressing,
    /// Stopped by the user, a pause step, or the failure policy `Pause`.
    Paused,
    /// Switching updated machines back to the stable version.
    RollingBack,
    /// Failed past `maxFailures`, past the progress deadline (also when no ready machine
    /// matches the selector by then: condition `Available` reason `NoMachines`), or aborted.
    Degraded,
    /// Every desired machine (at least one) runs the target version healthily. A user's
    /// pause of a complete rollout shows as `Paused`, its `Complete` condition still true.
    Complete,
}

impl std::fmt::Display for RolloutPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// What the controller observes about a Rollout. Counts and a bounded list, never one
/// entry per machine.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub phase: RolloutPhase,
    /// One line for a person.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The version the fleet last completed; new machines get it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_version: Option<String>,
    /// The digest that goes with `stableVersion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_sha256: Option<String>,
    /// The version being rolled out (`spec.version` once observed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
    /// Machines selected and ready.
    #[serde(default)]
    pub desired: u32,
    /// Machines that report the target version staged.
    #[serde(default)]
    pub staged: u32,
    /// Machines whose current version is the target.
    #[serde(default)]
    pub updated: u32,
    /// Updated machines healthy for `minReadySeconds`.
    #[serde(default)]
    pub available: u32,
    /// Machines switching or unhealthy (they use slots).
    #[serde(default)]
    pub unavailable: u32,
    /// Machines that failed the target version in this revision (still counted while it
    /// rolls back, until a retry or a new version).
    #[serde(default)]
    pub failed: u32,
    /// The canary step in force (index into `spec.strategy.steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step_index: Option<u32>,
    /// Pauses the controller set (at a pause step, or on failure). `rollout resume`
    /// clears the user's `spec.paused`, `rollout promote` clears these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pause_conditions: Vec<PauseCondition>,
    /// When the last progress was made, for `progressDeadlineSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_time: Option<DateTime<Utc>>,
    /// `Staged`, `Progressing`, `Available`, `Paused`, `Degraded`, `Complete`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Past revisions, newest last, at most `revisionHistoryLimit`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Revision>,
    /// The newest machine failures of the target's revision, at most 10. Kept while the
    /// rollout goes back (a machine switched back no longer reports its failure).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_machines: Vec<MachineFailure>,
    /// What failed in the newest revisions that had failures, with each machine's last
    /// hook output, newest last, at most 3: why a rollout was rolled back stays readable
    /// after the rollback and after the next version starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failure_history: Vec<RevisionFailures>,
    /// Request tokens (annotations) already acted on: promote, abort, retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_promote: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_abort: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_retry: Option<String>,
    /// True while going (or gone) back to the stable version, after `rollout abort` or
    /// the failure policy `Rollback`, until the version changes or `rollout retry`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub aborted: bool,
    /// Why `aborted`: `RolloutAborted` (by request) or `RolledBack` (failure policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_reason: Option<String>,
    /// The analysis runs of analysis steps, newest last, at most 5, each with its
    /// metrics' newest measurements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis_runs: Vec<AnalysisRunStatus>,
    /// Where each wave stands for the target version, in the order they switch (with
    /// `spec.strategy.waves`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<WaveStatus>,
}

/// One wave of a rollout with `spec.strategy.waves`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaveStatus {
    /// The label's value; empty for the machines without the label.
    pub value: String,
    /// The version this entry describes (entries of another version are started afresh).
    pub version: String,
    /// `Waiting`, `Switching`, `Baking`, `Done`, or `Refused` (machines without the
    /// label under `requireLabel`).
    pub phase: String,
    /// Desired machines in the wave.
    pub machines: u32,
    /// Of those, available on the version.
    pub available: u32,
    /// When every machine of the wave was first available on the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_at: Option<DateTime<Utc>>,
    /// When its bake ends and the next wave may start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_until: Option<DateTime<Utc>>,
}

/// A pause the controller set.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PauseCondition {
    /// `CanaryPauseStep` or `FailurePolicy`.
    pub reason: String,
    pub start_time: DateTime<Utc>,
    /// When a timed pause step ends by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
}

/// One revision of the Rollout: a version that was rolled out.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Revision {
    /// 1, 2, 3, … in the order versions were started.
    pub revision: u32,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    /// `Complete`, `RolledBack`, `Aborted`, `Superseded`, `Adopted` (the fleet already ran
    /// it when the Rollout was created), or empty while in progress.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub result: String,
}

/// One machine that failed, with its last error.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachineFailure {
    pub machine: String,
    pub version: String,
    /// `Stage`, `Switch` or `Health`.
    pub operation: String,
    pub message: String,
    pub time: DateTime<Utc>,
}

/// The failures of one revision, kept in the Rollout's status after the revision ends.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevisionFailures {
    /// The revision's number in `history`.
    pub revision: u32,
    pub version: String,
    /// How many machines failed it (more than `machines` lists past 10).
    pub failed: u32,
    /// The newest failures first, at most 10.
    pub machines: Vec<FailureDetail>,
}

/// One machine's failure of a revision, with what its hooks printed.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailureDetail {
    pub machine: String,
    /// `Stage`, `Switch` or `Health`.
    pub operation: String,
    /// e.g. `HookFailed`, `HealthDeadline`, `ServiceCrashLoop`.
    pub reason: String,
    pub message: String,
    pub time: DateTime<Utc>,
    /// The last lines of hook output (stdout and stderr interleaved) the machine reported
    /// with the failure: at most 20, each at most 200 characters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output: Vec<String>,
}
