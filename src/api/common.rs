//! Small types used by several kinds: counts-or-percents, conditions, durations.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A count of machines (`2`) or a percent of the desired machines (`"25%"`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum IntOrPercent {
    /// A number of machines.
    Int(u32),
    /// A percent of the desired machines, `"0%"` to `"100%"`.
    #[schemars(regex(pattern = r"^[0-9]{1,3}%$"))]
    Percent(String),
}

impl IntOrPercent {
    /// The percent value, if this is a well-formed percent (0 to 100).
    pub fn percent(&self) -> Option<u32> {
        match self {
            IntOrPercent::Int(_) => None,
            IntOrPercent::Percent(p) => p.strip_suffix('%')?.parse().ok().filter(|v| *v <= 100),
        }
    }

    /// Resolves against `total` machines. Percents round up when `round_up`
    /// (minStaged: never fewer than asked) and down otherwise (maxUnavailable: never more).
    pub fn resolve(&self, total: u32, round_up: bool) -> u32 {
        match self {
            IntOrPercent::Int(n) => *n,
            IntOrPercent::Percent(_) => {
                let p = u64::from(self.percent().unwrap_or(100));
                let t = u64::from(total);
                let v = if round_up {
                    (t * p).div_ceil(100)
                } else {
                    t * p / 100
                };
                v as u32
            }
        }
    }
}

impl fmt::Display for IntOrPercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrPercent::Int(n) => write!(f, "{n}"),
            IntOrPercent::Percent(p) => f.write_str(p),
        }
    }
}

/// `True`, `False` or `Unknown`, as in Kubernetes conditions.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ConditionStatus {
    True,
    False,
    #[default]
    Unknown,
}

impl fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        })
    }
}

/// One observed aspect of an object, with why and since when.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// `Ready`, `Staged`, `Progressing`, `Available`, `Paused`, `Degraded`, `Complete`.
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    /// One CamelCase word a program can match on, e.g. `ProgressDeadlineExceeded`.
    #[serde(default)]
    pub reason: String,
    /// What a person should know.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<DateTime<Utc>>,
}

/// Finds a condition by type.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Sets a condition, keeping `lastTransitionTime` unless `status` changed.
/// Returns true when anything changed.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status == status && c.reason == reason && c.message == message {
                return false;
            }
            if c.status != status {
                c.last_transition_time = Some(now);
            }
            c.status = status;
            c.reason = reason.to_string();
            c.message = message.to_string();
            true
        }
        None => {
            conditions.push(Condition {
                type_: type_.to_string(),
                status,
                reason: reason.to_string(),
                message: message.to_string(),
                last_transition_time: Some(now),
            });
            true
        }
    }
}

/// A command run through the Application's shell. Values reach it only through
/// `DEPLOY_*` environment variables, never spliced into the text.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Command {
    /// Shell text, run as `<shell> <command>` (default `/bin/sh -c`) in the release directory.
    pub command: String,
    /// Seconds before the whole process group is killed and the hook counts as failed.
    #[serde(default = "default_hook_timeout")]
    pub timeout_seconds: u32,
}

fn default_hook_timeout() -> u32 {
    300
}

/// Parses a duration such as `30s`, `5m` or `1h30m`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e}"))
}
