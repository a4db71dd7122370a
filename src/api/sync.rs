//! Sync (`GitSync` in Rust): one `deployctl sync` source and what it last applied.

use super::object;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

object! {
    /// One Git source kept in the store by `deployctl sync`: where it reads from, and
    /// the commit it last applied or refused. Written by the sync process only.
    GitSync, kind: "Sync", spec: GitSyncSpec, status: GitSyncStatus,
    plural: "syncs", singular: "sync", short: [],
    namespaced: false
}

/// The label naming the sync that manages an object (`deployctl.dev/sync=<name>`).
pub const LABEL_SYNC: &str = "deployctl.dev/sync";
/// The commit an object was last applied from.
pub const ANNOTATION_SYNC_COMMIT: &str = "deployctl.dev/sync-commit";
/// The file (relative to the repository root) an object was declared in.
pub const ANNOTATION_SYNC_PATH: &str = "deployctl.dev/sync-path";
/// A hash of the labels and spec as sync last wrote them: a different hash of the
/// stored object means somebody edited it by hand (drift).
pub const ANNOTATION_SYNC_HASH: &str = "deployctl.dev/sync-hash";

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitSyncSpec {
    /// The repository URL, or the absolute path of a local repository.
    pub repo: String,
    /// The branch, tag or commit followed; the remote's default branch when absent.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub ref_: Option<String>,
    /// The directory of the repository holding the manifests (`.` for all of it).
    #[serde(default)]
    pub path: String,
    /// Objects that left the repository are deleted.
    #[serde(default)]
    pub prune: bool,
    /// Seconds between two syncs (0 for `--once`).
    #[serde(default)]
    pub interval_seconds: u64,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitSyncStatus {
    /// The last commit applied in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_commit: Option<String>,
    /// When `lastCommit` was (re)applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<DateTime<Utc>>,
    /// Why the last attempt failed; cleared by the next success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The commit the last error was about, when it got that far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_commit: Option<String>,
    /// When the last error happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_time: Option<DateTime<Utc>>,
    /// How many objects `lastCommit` declares.
    #[serde(default)]
    pub objects: u32,
}
