//! Application: *how* to deploy one piece of software onto the machines it selects.

use super::{object, selector::LabelSelector, Command};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

object! {
    /// How to deploy one piece of software: which machines, which artifact, where, and
    /// with which hooks and health check. A Rollout says which version.
    Application, spec: ApplicationSpec, status: ApplicationStatus,
    plural: "applications", singular: "application", short: ["app", "apps"],
    namespaced: true
}

/// What the user wants for an Application.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplicationSpec {
    /// Which Machines run this Application. An empty selector selects every Machine.
    #[serde(default)]
    pub selector: LabelSelector,
    /// Where the build artifact comes from and how it is packed.
    pub artifact: Artifact,
    /// The deploy root on each machine. Defaults to `<agent root>/<namespace>/<app>`.
    /// Releases go to `<path>/releases/<version>`; `<path>/current` is a symlink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The shell hooks run through, as a program and its leading arguments.
    /// Default: `["/bin/sh", "-c"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    /// Extra environment variables for hooks, the health check and the service.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Commands run at each step of a deploy.
    #[serde(default)]
    pub hooks: Hooks,
    /// Named commands for `deployctl run APP NAME` (e.g. `migrate`), run like hooks.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tasks: BTreeMap<String, Command>,
    /// Prints the version really installed; when it differs from what the agent
    /// believes is current, the Instance reports drift and is re-converged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_version: Option<Command>,
    /// How the agent knows the switched version works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// A long-running command the agent keeps running from `current`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Service>,
    /// How many releases to keep on disk, current and stable included (default 3).
    #[serde(default = "default_keep_releases")]
    pub keep_releases: u32,
}

fn default_keep_releases() -> u32 {
    3
}

/// The same defaults serde applies to a missing field (derive(Default) would say 0).
impl Default for ApplicationSpec {
    fn default() -> Self {
        ApplicationSpec {
            selector: Default::default(),
            artifact: Default::default(),
            path: None,
            shell: None,
            env: Default::default(),
            hooks: Default::default(),
            tasks: BTreeMap::new(),
            get_version: None,
            health_check: None,
            service: None,
            keep_releases: default_keep_releases(),
        }
    }
}

/// Where an artifact comes from. `{{version}}` in any URL is replaced by the version.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Artifact {
    /// `file://`, `http://` or `https://` URL template, e.g.
    /// `https://ci.example.com/api/{{version}}/api.tar.gz`.
    pub url: String,
    /// URL template of a file whose first word is the artifact's hex sha256. Without it,
    /// the Rollout's `sha256` is used; with neither, the digest is not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256_url: Option<String>,
    /// How the artifact is packed (default: `tar.gz`).
    #[serde(default)]
    pub format: ArtifactFormat,
    /// For `format: file`, the file name inside the release directory
    /// (default: the last segment of the URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    /// The most bytes unpacking may write (default 8 GiB: far above a real release, low
    /// enough that an archive bomb stops before it fills the disk). An archive that
    /// goes past it is refused, naming the entry; a download stops past it and an
    /// eighth (what an archive adds to its content) and 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unpacked_bytes: Option<u64>,
    /// The most entries (files, directories, links) an archive may have (default
    /// 200000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<u64>,
    /// Keep setuid, setgid and sticky bits from the archive's modes. Off by default:
    /// the agent unpacks as root, and whoever serves the artifact could otherwise
    /// plant a setuid-root program on every machine.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preserve_setid: bool,
}

/// The packing of an artifact.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ArtifactFormat {
    /// A gzip-compressed tar archive.
    #[default]
    #[serde(rename = "tar.gz")]
    TarGz,
    #[serde(rename = "tar")]
    Tar,
    #[serde(rename = "zip")]
    Zip,
    /// One file, copied into the release directory as it is.
    #[serde(rename = "file")]
    File,
}

/// Lists of commands, run in order; the first that fails fails the step.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hooks {
    /// After the artifact is unpacked, in the new release directory (stage step).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub install: Vec<Command>,
    /// Before `current` is switched to the new release.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub before_activate: Vec<Command>,
    /// Right after `current` is switched (e.g. reload the server).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub activate: Vec<Command>,
    /// After the health check has passed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after_activate: Vec<Command>,
    /// Before a release directory is deleted by retention.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clean: Vec<Command>,
}

/// Exactly one of `tcp`, `http` or `exec`, with its timing.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// Healthy when a TCP connection opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,
    /// Healthy when a GET answers with an expected status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    /// Healthy when the command exits 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Command>,
    /// Seconds between checks (default 2).
    #[serde(default = "default_period")]
    pub period_seconds: u32,
    /// Seconds before one check counts as failed (default 2).
    #[serde(default = "default_period")]
    pub timeout_seconds: u32,
    /// Consecutive successes that make the instance healthy (default 1).
    #[serde(default = "default_one")]
    pub success_threshold: u32,
    /// Consecutive failures that make it unhealthy (default 3).
    #[serde(default = "default_three")]
    pub failure_threshold: u32,
    /// Seconds after a switch before a failed check counts; the switch fails when the
    /// check has not passed by then (default 60).
    #[serde(default = "default_deadline")]
    pub deadline_seconds: u32,
}

fn default_period() -> u32 {
    2
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            tcp: None,
            http: None,
            exec: None,
            period_seconds: default_period(),
            timeout_seconds: default_period(),
            success_threshold: default_one(),
            failure_threshold: default_three(),
            deadline_seconds: default_deadline(),
        }
    }
}
fn default_one() -> u32 {
    1
}
fn default_three() -> u32 {
    3
}
fn default_deadline() -> u32 {
    60
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpCheck {
    /// Host to connect to (default `127.0.0.1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub port: u16,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCheck {
    /// e.g. `http://127.0.0.1:8080/healthz`.
    pub url: String,
    /// Statuses that count as healthy (default: any 2xx).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect_status: Vec<u16>,
}

/// A long-running process kept alive from `current`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    /// Shell text run in `<path>/current`; restarted when it exits and on every switch.
    pub command: String,
    /// Seconds to wait after SIGTERM before SIGKILL (default 10).
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_seconds: u32,
}

fn default_stop_timeout() -> u32 {
    10
}

impl Default for Service {
    fn default() -> Self {
        Service {
            command: String::new(),
            stop_timeout_seconds: default_stop_timeout(),
        }
    }
}

/// What the controller observes about an Application.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplicationStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default)]
    pub observed_generation: i64,
    /// Machines selected (ready or not).
    #[serde(default)]
    pub machines: u32,
    /// Instances whose machine is ready.
    #[serde(default)]
    pub ready_machines: u32,
    /// The version new machines receive (the owning Rollout's stable version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_version: Option<String>,
}
