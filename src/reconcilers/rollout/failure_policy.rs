//! Failure policy: which desired machines failed the target, and what `failurePolicy` does
//! once more than `maxFailures` did (roll back, or pause).

use super::{Decision, EventNote, View, MAX_FAILED_MACHINES, PAUSE_FAILURE, REASON_ROLLED_BACK};
use crate::api::{FailureAction, MachineFailure, PauseCondition};

impl Decision<'_> {
    /// Owns `failedMachines` and the `FailurePolicy` pause; a rollback sets `aborted`
    /// (reason `RolledBack`).
    pub(super) fn failure_policy(&mut self) {
        self.st.failed_machines = self.failed_machines();
        let over_failures = self.st.failed > self.spec.failure_policy.max_failures;
        if over_failures && !self.st.aborted {
            let can_roll_back = self.stable.is_some_and(|s| s != self.target);
            if self.spec.failure_policy.action == FailureAction::Rollback && can_roll_back {
                self.roll_back_for_failures();
            } else if !self.has_failure_pause() {
                self.pause_for_failures();
            }
        }
        self.failure_paused = self.has_failure_pause();
    }

    /// The machines that failed the target: newest first, at most [`MAX_FAILED_MACHINES`].
    fn failed_machines(&self) -> Vec<MachineFailure> {
        let mut failures: Vec<MachineFailure> = self
            .desired
            .iter()
            .filter_map(|&i| {
                let inst = &*self.instances[i];
                let f = inst.status.as_ref()?.failure.as_ref()?;
                ((View { inst }).failed(self.target)).then(|| MachineFailure {
                    machine: inst.spec.machine.clone(),
                    version: f.version.clone(),
                    operation: f.operation.clone(),
                    message: format!("{}: {}", f.reason, f.message),
                    time: f.time,
                })
            })
            .collect();
        failures.sort_by(|a, b| b.time.cmp(&a.time).then(a.machine.cmp(&b.machine)));
        failures.truncate(MAX_FAILED_MACHINES);
        failures
    }

    fn has_failure_pause(&self) -> bool {
        self.st
            .pause_conditions
            .iter()
            .any(|p| p.reason == PAUSE_FAILURE)
    }

    /// `Rollback` with a stable version to go back to: abort towards it.
    fn roll_back_for_failures(&mut self) {
        self.st.aborted = true;
        self.st.abort_reason = Some(REASON_ROLLED_BACK.into());
        self.events.push(EventNote::warning(
            "RollingBack",
            format!(
                "{} machine(s) failed version {} (maxFailures {}): switching back to {}",
                self.st.failed,
                self.target,
                self.spec.failure_policy.max_failures,
                self.stable.unwrap_or_default()
            ),
        ));
    }

    /// `Pause`, or `Rollback` with nothing to go back to: stop until a retry or a new
    /// version.
    fn pause_for_failures(&mut self) {
        self.st.pause_conditions.push(PauseCondition {
            reason: PAUSE_FAILURE.into(),
            start_time: self.now,
            until: None,
        });
        self.events.push(EventNote::warning(
            "FailureLimitExceeded",
            format!(
                "{} machine(s) failed version {} (maxFailures {}): paused; `deployctl rollout retry` or a new version continues",
                self.st.failed,
                self.target,
                self.spec.failure_policy.max_failures
            ),
        ));
    }
}
