//! `metadata` of every object, as in Kubernetes.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The namespace used when a namespaced object names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Identity and bookkeeping of an object. `uid`, `generation`, `resourceVersion` and
/// `creationTimestamp` are set by the store; values a user sends for them are ignored,
/// except that `apply` of a `resourceVersion` writes only over that version.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// A DNS-1123 label: lowercase letters, digits and `-`, at most 63 characters.
    pub name: String,
    /// The namespace of a namespaced object (`default` when omitted). Machines have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels select Machines for an Application and objects for `get -l`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form notes. Keys under `deployctl.dev/` are requests to the controller
    /// (`rollout promote`, `abort`, `retry`, `undo`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Unique for the life of the object; set on create and kept on update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Goes up by one each time `spec` changes (and only then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The store revision of the last write to metadata or spec. Every update is a
    /// compare-and-swap on it. In a manifest, `apply` refuses to write over another
    /// version (a conflict); leave it out to apply over whatever the store holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// When the object was created; set on create and kept on update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<DateTime<Utc>>,
    /// Store revision of the status key, used for the compare-and-swap of status writes.
    /// Never serialized: status has its own key and its own owner.
    #[serde(skip)]
    #[schemars(skip)]
    pub status_version: i64,
}

impl ObjectMeta {
    /// The `resourceVersion` as the store revision it stands for (0: never stored).
    pub fn revision(&self) -> i64 {
        self.resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// `namespace/name`, or `name` for cluster-scoped objects.
    pub fn key(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}
