//! Notifier: where the leading controller sends a namespace's Rollout events.

use super::{object, selector::LabelSelector};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

object! {
    /// Sends the events of some Rollouts of its namespace to a webhook, Slack or
    /// Graphite. Secrets (URLs with tokens, signing keys) are never in the object: it
    /// names a file or an environment variable of the controller that holds them.
    Notifier, spec: NotifierSpec, status: NotifierStatus,
    plural: "notifiers", singular: "notifier", short: ["nt"],
    namespaced: true
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotifierSpec {
    /// Which Rollouts of the namespace it covers, by their labels. Empty covers all.
    #[serde(default)]
    pub selector: LabelSelector,
    /// Which events it sends. Empty sends every one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<NotifyEvent>,
    /// POSTs the documented JSON body (README, "Notifications"). One sink of three.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSink>,
    /// A Slack incoming webhook: a readable one-line message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<SlackSink>,
    /// Graphite's events API (`/events`), with `what`, `tags` and `data`, for Grafana's
    /// deploy annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graphite: Option<GraphiteSink>,
    /// How long one delivery attempt may take (1 to 60; default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
}

/// The Rollout events a Notifier can send.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub enum NotifyEvent {
    /// A new version started rolling out (event reason `RolloutStarted`).
    RolloutStarted,
    /// A pause step was reached (`RolloutPaused`).
    StepPaused,
    /// A pause was promoted (`RolloutPromoted`).
    Promoted,
    /// Every machine runs the version (`RolloutCompleted`).
    Completed,
    /// No progress: the deadline passed, too many machines failed, or no machine matches
    /// (`ProgressDeadlineExceeded`, `FailureLimitExceeded`, `NoMachines`).
    Degraded,
    /// Aborted by request (`RolloutAborted`).
    Aborted,
    /// Every machine is back on the stable version (`RolledBack`).
    RolledBack,
}

impl NotifyEvent {
    pub const ALL: [NotifyEvent; 7] = [
        NotifyEvent::RolloutStarted,
        NotifyEvent::StepPaused,
        NotifyEvent::Promoted,
        NotifyEvent::Completed,
        NotifyEvent::Degraded,
        NotifyEvent::Aborted,
        NotifyEvent::RolledBack,
    ];

    /// The notification a Rollout event's reason stands for, if any.
    pub fn from_reason(reason: &str) -> Option<NotifyEvent> {
        Some(match reason {
            "RolloutStarted" => NotifyEvent::RolloutStarted,
            "RolloutPaused" => NotifyEvent::StepPaused,
            "RolloutPromoted" => NotifyEvent::Promoted,
            "RolloutCompleted" => NotifyEvent::Completed,
            "ProgressDeadlineExceeded" | "FailureLimitExceeded" | "NoMachines" => {
                NotifyEvent::Degraded
            }
            "RolloutAborted" => NotifyEvent::Aborted,
            "RolledBack" => NotifyEvent::RolledBack,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::RolloutStarted => "RolloutStarted",
            NotifyEvent::StepPaused => "StepPaused",
            NotifyEvent::Promoted => "Promoted",
            NotifyEvent::Completed => "Completed",
            NotifyEvent::Degraded => "Degraded",
            NotifyEvent::Aborted => "Aborted",
            NotifyEvent::RolledBack => "RolledBack",
        }
    }
}

/// Where the controller reads a secret: a file (its whole content, trimmed) or an
/// environment variable of the controller process. Exactly one.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretSource {
    /// An absolute path on the controller's machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The name of an environment variable of the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSink {
    /// An `http` or `https` URL without secrets in it. One of `url` and `urlFrom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Where the controller reads a URL that carries a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_from: Option<SecretSource>,
    /// Extra request headers (no secrets: the object is readable by every user).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The HMAC key: every delivery then carries `X-Deployctl-Timestamp` and
    /// `X-Deployctl-Signature: sha256=<hex HMAC-SHA256(key, timestamp + "." + body)>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretSource>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SlackSink {
    /// The incoming-webhook URL. Slack's URLs are secrets: prefer `urlFrom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Where the controller reads the incoming-webhook URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_from: Option<SecretSource>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GraphiteSink {
    /// The events endpoint, e.g. `http://graphite:8080/events/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Where the controller reads a URL that carries credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_from: Option<SecretSource>,
    /// Tags added to `deployctl`, the namespace, the Rollout and the event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotifierStatus {
    /// The store revision of the last Event delivered (or skipped as not selected):
    /// delivery resumes after it, on any controller.
    #[serde(default)]
    pub last_delivered_revision: i64,
    /// The last notification delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivered: Option<Delivered>,
    /// Notifications delivered since the Notifier was created.
    #[serde(default)]
    pub deliveries: u64,
    /// Failed attempts since the Notifier was created (each retried).
    #[serde(default)]
    pub failed_attempts: u64,
    /// Why the last attempt failed; cleared by the next delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_time: Option<DateTime<Utc>>,
}

/// One delivered notification.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delivered {
    /// The notification, e.g. `StepPaused`.
    pub event: String,
    pub rollout: String,
    /// The uid of the Event it came from: the body's `id`, for receivers that dedupe.
    pub id: String,
    pub time: Option<DateTime<Utc>>,
}
