//! Machine, Application and Rollout reconcilers: decisions and their effects.
//!
//! Each file holds a *decision*: a plain function from observed state (read from the
//! informer caches) to the writes it wants. Decisions never touch the store, so they are
//! unit-tested here with no store at all. The effect step that applies them lives in
//! `controller::wiring`.

pub mod application;
pub mod machine;
pub mod rollout;

use std::collections::BTreeMap;

/// What a decision needs to know about one Machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Its agent's lease is alive.
    pub ready: bool,
    /// Cordoned: keeps what it runs, gets nothing new, leaves the desired count.
    pub unschedulable: bool,
}

impl MachineView {
    /// Counts towards a rollout's desired machines.
    pub fn schedulable_and_ready(&self) -> bool {
        self.ready && !self.unschedulable
    }
}

/// An Event a decision wants recorded: (`Normal`|`Warning`, reason, message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventNote {
    pub type_: &'static str,
    pub reason: &'static str,
    pub message: String,
}

impl EventNote {
    pub fn normal(reason: &'static str, message: impl Into<String>) -> Self {
        EventNote {
            type_: "Normal",
            reason,
            message: message.into(),
        }
    }
    pub fn warning(reason: &'static str, message: impl Into<String>) -> Self {
        EventNote {
            type_: "Warning",
            reason,
            message: message.into(),
        }
    }
}
