//! Machine: one deployment target, registered by its agent or declared ahead.

use super::{object, Condition};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

object! {
    /// One deployment target (a VM or a bare-metal server). Usually created by its agent
    /// on first start; may be declared ahead with labels.
    Machine, spec: MachineSpec, status: MachineStatus,
    plural: "machines", singular: "machine", short: ["mc", "mach"],
    namespaced: false
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachineSpec {
    /// Cordon: no new Instance is placed here, and rollouts leave it out of the desired count.
    #[serde(default)]
    pub unschedulable: bool,
}

/// What the agent and the controller observe about a Machine.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachineStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// When the agent last (re)started and registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// `Ready`: true while the agent's lease is alive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Per application: `namespace/app` and the version it runs here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applications: Vec<MachineApplication>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachineApplication {
    /// `namespace/app`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
    #[serde(default)]
    pub phase: String,
}
