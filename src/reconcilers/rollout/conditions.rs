//! Conditions: the phase and message a reader sees, and the conditions a tool waits on.

use super::{
    Decision, EventNote, PAUSE_ANALYSIS, PAUSE_FAILURE, PAUSE_STEP, REASON_NO_MACHINES,
    REASON_ROLLED_BACK,
};
use crate::api::{find_condition, set_condition, ConditionStatus, RolloutPhase};
use ConditionStatus::{False, True};

impl Decision<'_> {
    /// Owns `phase`, `message` and `conditions` (`Staged`, `Progressing`, `Available`,
    /// `Paused`, `Degraded`, `Complete`).
    pub(super) fn conditions(&mut self) {
        let (phase, message) = self.phase_and_message();
        if self.no_machines() && !self.had_no_machines() {
            self.events
                .push(EventNote::warning(REASON_NO_MACHINES, message.clone()));
        }
        if phase != self.st.phase && phase == RolloutPhase::Degraded && self.deadline_exceeded {
            self.events.push(EventNote::warning(
                "ProgressDeadlineExceeded",
                message.clone(),
            ));
        }
        self.st.phase = phase;
        self.st.message = message.clone();
        self.set_staged();
        self.set_progressing(&message);
        self.set_available();
        self.set_paused(&message);
        self.set_degraded(&message);
        self.set_complete(&message);
        debug_assert!(find_condition(&self.st.conditions, "Complete").is_some());
    }

    /// The status read already said that no machine matches (no new event).
    fn had_no_machines(&self) -> bool {
        self.rollout.status.as_ref().is_some_and(|s| {
            find_condition(&s.conditions, "Available")
                .is_some_and(|c| c.reason == REASON_NO_MACHINES)
        })
    }

    /// The first rule that holds, in this order: no machine, going back, gone back,
    /// failed, complete (paused by the user, or not), paused by the user, paused at a
    /// step, out of time, waiting at the gate, switching.
    fn phase_and_message(&self) -> (RolloutPhase, String) {
        let st = &self.st;
        let (n, target) = (st.desired, self.target);
        let stable = self.stable().unwrap_or_default();
        if self.no_machines() {
            // Never Complete: a rollout that deploys nothing has not succeeded. Machines
            // may still be registering, so it waits, as for any machine, until the
            // progress deadline.
            let matches_none = "the Application's selector matches no ready machine";
            return if self.deadline_exceeded {
                (
                    RolloutPhase::Degraded,
                    format!(
                        "{matches_none} for {}s (progressDeadlineSeconds): version {target} runs nowhere",
                        self.progress_deadline_duration().as_secs()
                    ),
                )
            } else {
                (
                    RolloutPhase::Progressing,
                    format!("waiting for machines: {matches_none}"),
                )
            };
        }
        if st.aborted && !self.rolled_back {
            return (
                RolloutPhase::RollingBack,
                format!(
                    "rolling back to {stable}: {} machine(s) still on {target}",
                    st.updated
                ),
            );
        }
        if st.aborted {
            let first_failure = self.first_failure();
            let why = if first_failure.is_empty() {
                String::new()
            } else {
                format!(" ({first_failure})")
            };
            return (
                RolloutPhase::Degraded,
                format!("version {target} was rolled back; every machine runs {stable}{why}"),
            );
        }
        if self.failure_paused {
            return (
                RolloutPhase::Degraded,
                format!(
                    "{} machine(s) failed version {target}: {}",
                    st.failed,
                    self.first_failure()
                ),
            );
        }
        if self.complete && self.spec.paused {
            // Visible: a paused rollout starts nothing new, whatever version comes next.
            return (
                RolloutPhase::Paused,
                format!(
                    "paused by user; {n} machine(s) run version {target}: `deployctl rollout resume` continues"
                ),
            );
        }
        if self.complete {
            return (
                RolloutPhase::Complete,
                format!("{n} machine(s) run version {target}"),
            );
        }
        if self.spec.paused {
            return (
                RolloutPhase::Paused,
                "paused by user: `deployctl rollout resume` continues".to_string(),
            );
        }
        if self.step_paused {
            return (RolloutPhase::Paused, self.step_pause_message());
        }
        if let Some(m) = self.analysis_message() {
            return (RolloutPhase::Progressing, m);
        }
        if self.deadline_exceeded {
            return (
                RolloutPhase::Degraded,
                format!(
                    "no progress for {}s (progressDeadlineSeconds)",
                    self.progress_deadline_duration().as_secs()
                ),
            );
        }
        if let Some((reason, message)) = &self.dependency_hold {
            let phase = if *reason == super::PAUSE_DEPENDENCY_DEGRADED {
                RolloutPhase::Paused
            } else {
                RolloutPhase::Progressing
            };
            return (phase, message.clone());
        }
        if !self.gate_open() {
            return (
                RolloutPhase::Progressing,
                format!(
                    "waiting for staged {}/{} (minStaged) before any switch",
                    st.staged, self.min_staged
                ),
            );
        }
        if let Some(m) = self.wave_message() {
            return (RolloutPhase::Progressing, m);
        }
        if st.unavailable >= self.slots {
            return (
                RolloutPhase::Progressing,
                format!(
                    "switching: slots {}/{} busy, {}/{n} available on {target}",
                    st.unavailable, self.slots, st.available
                ),
            );
        }
        (
            RolloutPhase::Progressing,
            format!("switching: {}/{n} available on {target}", st.available),
        )
    }

    /// The newest failure, `machine: reason: message`, or empty.
    fn first_failure(&self) -> String {
        self.st
            .failed_machines
            .first()
            .map(|f| format!("{}: {}", f.machine, f.message))
            .unwrap_or_default()
    }

    /// Paused at a step: until when, or until a promote.
    fn step_pause_message(&self) -> String {
        let steps = self.spec.strategy.steps.len();
        if self.analysis_paused() {
            return format!(
                "analysis at step {}/{steps} inconclusive: `deployctl rollout promote` continues, `deployctl rollout abort` goes back",
                self.step + 1
            );
        }
        let until = self
            .st
            .pause_conditions
            .iter()
            .find(|p| p.reason == PAUSE_STEP)
            .and_then(|p| p.until);
        match until {
            Some(u) => format!(
                "paused at step {}/{steps} until {}",
                self.step + 1,
                u.format("%H:%M:%S")
            ),
            None => format!(
                "paused at step {}/{steps}: `deployctl rollout promote` continues",
                self.step + 1
            ),
        }
    }

    fn set_staged(&mut self) {
        let open = self.gate_open();
        let message = format!(
            "{}/{} machine(s) staged {}; {} needed",
            self.st.staged, self.st.desired, self.target, self.min_staged
        );
        set_condition(
            &mut self.st.conditions,
            "Staged",
            if open { True } else { False },
            if open {
                "MinStagedReached"
            } else {
                "WaitingForStage"
            },
            &message,
            self.now,
        );
    }

    fn set_progressing(&mut self, message: &str) {
        let no_machines = self.no_machines();
        let st = &mut self.st;
        let (status, reason) = if no_machines {
            (
                if self.deadline_exceeded { False } else { True },
                REASON_NO_MACHINES,
            )
        } else if self.deadline_exceeded {
            (False, "ProgressDeadlineExceeded")
        } else if st.aborted {
            (
                False,
                st.abort_reason.as_deref().unwrap_or(REASON_ROLLED_BACK),
            )
        } else if self.complete {
            (True, "NewVersionAvailable")
        } else {
            (True, "RolloutProgressing")
        };
        set_condition(
            &mut st.conditions,
            "Progressing",
            status,
            reason,
            message,
            self.now,
        );
    }

    /// Serving: desired machines running some version, available and not held up. None
    /// matching is `False` (`NoMachines`), never "0 of 0 is enough".
    fn set_available(&mut self) {
        let n = self.st.desired;
        if self.no_machines() {
            set_condition(
                &mut self.st.conditions,
                "Available",
                False,
                REASON_NO_MACHINES,
                "the Application's selector matches no ready machine",
                self.now,
            );
            return;
        }
        let min_available = n.saturating_sub(self.slots);
        let serving = self.count(|v| !v.unavailable() && v.current().is_some());
        let enough = serving >= min_available;
        set_condition(
            &mut self.st.conditions,
            "Available",
            if enough { True } else { False },
            if enough {
                "MinimumAvailable"
            } else {
                "BelowMinimumAvailable"
            },
            &format!("{serving}/{n} machine(s) serving; at least {min_available} wanted"),
            self.now,
        );
    }

    fn set_paused(&mut self, message: &str) {
        let (status, reason) = if self.spec.paused {
            (True, "UserPaused")
        } else if self.failure_paused {
            (True, PAUSE_FAILURE)
        } else if self.step_paused && self.analysis_paused() {
            (True, PAUSE_ANALYSIS)
        } else if self.step_paused {
            (True, PAUSE_STEP)
        } else if self
            .dependency_hold
            .as_ref()
            .is_some_and(|h| h.0 == super::PAUSE_DEPENDENCY_DEGRADED)
        {
            (True, super::PAUSE_DEPENDENCY_DEGRADED)
        } else {
            (False, "NotPaused")
        };
        set_condition(
            &mut self.st.conditions,
            "Paused",
            status,
            reason,
            if status == True { message } else { "" },
            self.now,
        );
    }

    fn set_degraded(&mut self, message: &str) {
        let st = &mut self.st;
        let no_machines = self.desired.is_empty();
        let (status, reason, message) = if no_machines && self.deadline_exceeded {
            (True, REASON_NO_MACHINES, message)
        } else if st.aborted {
            (
                True,
                st.abort_reason.as_deref().unwrap_or(REASON_ROLLED_BACK),
                message,
            )
        } else if self.failure_paused {
            (True, "FailureLimitExceeded", message)
        } else if self.deadline_exceeded {
            (True, "ProgressDeadlineExceeded", message)
        } else {
            (False, "NotDegraded", "")
        };
        set_condition(
            &mut st.conditions,
            "Degraded",
            status,
            reason,
            message,
            self.now,
        );
    }

    fn set_complete(&mut self, message: &str) {
        let complete = self.complete;
        set_condition(
            &mut self.st.conditions,
            "Complete",
            if complete { True } else { False },
            if complete {
                "RolloutCompleted"
            } else {
                "RolloutNotComplete"
            },
            if complete { message } else { "" },
            self.now,
        );
    }
}
