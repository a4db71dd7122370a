//! Instance: one Application on one Machine, like a Pod bound to a node.

use super::{object, Artifact, Command, HealthCheck, Hooks, Service};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

object! {
    /// One Application on one Machine. The controller writes the spec (self-contained: the
    /// agent needs nothing else); that machine's agent writes the status.
    Instance, spec: InstanceSpec, status: InstanceStatus,
    plural: "instances", singular: "instance", short: ["inst"],
    namespaced: true
}

impl Instance {
    /// The name of the Instance of `app` on `machine`.
    pub fn name_for(app: &str, machine: &str) -> String {
        format!("{app}.{machine}")
    }
}

/// Everything the agent needs, copied from the Application and the Rollout.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceSpec {
    /// The Machine this Instance runs on.
    pub machine: String,
    /// The Application's name (same namespace).
    pub application: String,
    pub artifact: Artifact,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub hooks: Hooks,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_version: Option<Command>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Service>,
    #[serde(default)]
    pub keep_releases: u32,
    /// Seconds the health check must pass after a switch before it counts as done.
    #[serde(default)]
    pub min_ready_seconds: u32,
    /// Versions to have staged (downloaded, verified, unpacked, installed) and keep.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub staged: Vec<VersionRef>,
    /// The version `current` should point at. The agent switches only to a staged version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Re-run activation (and restart the service) once for each new value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_at: Option<DateTime<Utc>>,
    /// Bumped by `rollout retry`: a new generation, so the agent tries a failed
    /// operation again (it never retries one for the same generation by itself).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
}

impl InstanceSpec {
    /// The releases the agent keeps: `keepReleases`, where 0 (unset: Applications default
    /// to 3 and refuse 0) means 3, so that a missing value deletes less, not more.
    pub fn releases_to_keep(&self) -> u32 {
        match self.keep_releases {
            0 => 3,
            n => n,
        }
    }
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// A version and, when known, its artifact's sha256.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VersionRef {
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// What the agent is doing.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum InstancePhase {
    /// Nothing reported yet.
    #[default]
    Pending,
    /// Fetching, unpacking or installing a version.
    Staging,
    /// Running hooks and swapping `current`.
    Switching,
    /// Switched; waiting for the health check (and `minReadySeconds`).
    Verifying,
    /// `current` is the wanted version and healthy.
    Running,
    /// The last operation failed; see `failure`.
    Failed,
    /// `getVersion` disagrees with `current`; being re-converged.
    Drifted,
}

impl std::fmt::Display for InstancePhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// What the agent observes: its truth is the disk.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceStatus {
    /// The `metadata.generation` of the spec this status answers.
    #[serde(default)]
    pub observed_generation: i64,
    /// What the agent is doing. A progress phase (Staging, Switching, Verifying) is
    /// reported once it has lasted a second: a faster step shows only its outcome.
    #[serde(default)]
    pub phase: InstancePhase,
    /// Where `current` points on disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
    /// Versions fully staged under `releases/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub staged_versions: Vec<String>,
    /// True when the health check passes (or there is none) for `currentVersion`.
    #[serde(default)]
    pub healthy: bool,
    /// Since when `currentVersion` has been healthy without a break.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_since: Option<DateTime<Utc>>,
    /// True once the switch to `currentVersion` is done: hooks ran and the health check
    /// held for `minReadySeconds`.
    #[serde(default)]
    pub available: bool,
    /// The `restartAt` last carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_at: Option<DateTime<Utc>>,
    /// The last failure, kept until that version is asked for again with a new generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<InstanceFailure>,
    /// The last 20 lines of the last hook's output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_hook_output: Vec<String>,
    /// The supervised service's process, when the spec has a `service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceStatus>,
    /// When this status was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
}

/// Why an operation on one version failed.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceFailure {
    pub version: String,
    /// `Stage`, `Switch` or `Health`.
    pub operation: String,
    /// e.g. `ChecksumMismatch`, `HookFailed`, `HookTimeout`, `HealthDeadline`,
    /// `ServiceCrashLoop` (operation `Health`), `NotStaged`.
    pub reason: String,
    pub message: String,
    pub time: DateTime<Utc>,
}

/// The supervised service's process as the agent last saw it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceStatus {
    /// The process is up now; false while the agent waits to restart it.
    #[serde(default)]
    pub running: bool,
    /// When the running process started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// Times the process exited (or could not start) and was restarted, since the agent
    /// last started it on purpose (a switch, a restart, a changed service spec).
    #[serde(default)]
    pub restarts: u32,
    /// How the process last ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<ServiceExit>,
    /// When the agent starts it again, while it waits out the backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_restart_at: Option<DateTime<Utc>>,
}

/// How a service process ended.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceExit {
    /// The exit status, when it exited by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that killed it (e.g. `SIGKILL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// What happened, e.g. `exited with status 1` or `cannot start: ...`.
    pub message: String,
    pub time: DateTime<Utc>,
}
