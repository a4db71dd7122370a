//! Event: a record of something the controller or an agent did.

use super::object;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

object! {
    /// Something the controller or an agent did, about one object. Events expire
    /// (they are bound to a lease of an hour) and at most a few are kept per object.
    Event, spec: EventSpec, status: EventStatus,
    plural: "events", singular: "event", short: ["ev"],
    namespaced: true
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventSpec {
    /// The object this event is about.
    pub involved_object: ObjectReference,
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub type_: String,
    /// One CamelCase word, e.g. `Switched`, `StageFailed`.
    pub reason: String,
    pub message: String,
    /// `controller` or `agent/<machine>`.
    pub source: String,
    pub time: Option<DateTime<Utc>>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectReference {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

/// Events have no status; the type exists so that every kind has the same shape.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct EventStatus {}
