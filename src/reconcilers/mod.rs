//! Machine, Application, Rollout and Task reconcilers: decisions and their effects.
//!
//! Each file holds a *decision*: a plain function from observed state (read from the
//! informer caches) to the writes it wants. Decisions never touch the store, so they are
//! unit-tested here with no store at all. The effect step that applies them lives in
//! `controller::wiring`.

pub mod application;
pub mod machine;
pub mod rollout;
pub mod task;

use crate::api::{Machine, Object};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a decision needs to know about one Machine.
#[derive(Clone, Debug, PartialEq)]
pub struct MachineView {
    /// The Machine as cached: shared, not copied (a Rollout reconcile builds 10,000 of
    /// these each time).
    pub machine: Arc<Machine>,
    /// Its agent's lease is alive.
    pub ready: bool,
}

impl MachineView {
    pub fn name(&self) -> &str {
        self.machine.name()
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.machine.metadata.labels
    }

    /// Cordoned: keeps what it runs, gets nothing new, leaves the desired count.
    pub fn unschedulable(&self) -> bool {
        self.machine.spec.unschedulable
    }

    /// Counts towards a rollout's desired machines.
    pub fn schedulable_and_ready(&self) -> bool {
        self.ready && !self.unschedulable()
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
