//! Complete: whether the rollout is done (or fully rolled back), whether it still makes
//! progress in time, and what its revision's history records.

use super::{Decision, EventNote, View, REASON_ABORTED};
use crate::api::{find_condition, ConditionStatus::True};
use std::time::Duration;

impl Decision<'_> {
    /// Owns `stableVersion`, `stableSha256` and the current revision's `result`, and moves
    /// `lastProgressTime` on progress; decides `complete`, `rolled_back` and
    /// `deadline_exceeded`.
    pub(super) fn complete(&mut self) {
        // No machine is no success: a rollout that deploys nothing is not Complete.
        self.complete = !self.st.aborted
            && self.steps_done()
            && self.all_on_target()
            && !self.restart_pending();
        self.rolled_back = self.st.aborted && self.all_back_on_stable();
        self.progress_deadline();
        if self.complete {
            self.record_complete();
        }
        if self.rolled_back {
            self.record_rolled_back();
        }
    }

    /// Past every canary step (or none to take).
    fn steps_done(&self) -> bool {
        let steps = self.spec.strategy.steps.len();
        self.st
            .current_step_index
            .is_none_or(|i| i as usize >= steps)
    }

    /// A `spec.restartAt` some desired machine has not been asked for, or not done yet.
    fn restart_pending(&self) -> bool {
        self.spec.restart_at.is_some_and(|at| {
            self.desired.iter().any(|&i| {
                let inst = &self.instances[i];
                inst.spec.restart_at.is_none_or(|r| r < at)
                    || inst
                        .status
                        .as_ref()
                        .is_none_or(|s| s.restarted_at != Some(at))
            })
        })
    }

    /// Every desired machine runs the stable version, available.
    fn all_back_on_stable(&self) -> bool {
        !self.no_machines()
            && self.stable().is_some_and(|s| {
                self.desired.iter().all(|&i| {
                    (View {
                        inst: &self.instances[i],
                    })
                    .available_on(s)
                })
            })
    }

    /// Progress (more staged, updated or available than the status read) moves
    /// `lastProgressTime`; waiting on machines for longer than `progressDeadlineSeconds`
    /// exceeds the deadline, and short of it the decision wakes up when it would.
    fn progress_deadline(&mut self) {
        let now = self.now;
        let st = &self.st;
        let progressed = self.rollout.status.as_ref().is_none_or(|b| {
            st.staged > b.staged || st.updated > b.updated || st.available > b.available
        });
        if progressed {
            self.st.last_progress_time = Some(now);
        }
        // A bake or a dependency is a wait the user asked for, not a stall: the deadline
        // counts from its end (a time that stays put, so the status does not change on
        // every reconcile).
        let topology_wait = self.dependency_hold.is_some()
            || self
                .st
                .waves
                .iter()
                .any(|w| w.phase == super::waves::WAVE_BAKING);
        if let Some(ended) = self.topology_wait_ended() {
            if self.st.last_progress_time.is_none_or(|t| t < ended) {
                self.st.last_progress_time = Some(ended);
            }
        }
        let deadline = self.progress_deadline_duration();
        let since_progress = self
            .st
            .last_progress_time
            .map_or(Duration::ZERO, |t| (now - t).to_std().unwrap_or_default());
        // No machine at all is waited on too: machines may still be registering, and
        // past the deadline the rollout says that none matches.
        let waiting_on_machines = !self.complete
            && !self.frozen()
            && !self.step_paused
            && !self.analysis_running
            && !self.st.aborted
            && !topology_wait;
        self.deadline_exceeded = waiting_on_machines && since_progress >= deadline;
        if waiting_on_machines && !self.deadline_exceeded {
            self.wake(deadline - since_progress);
        }
    }

    /// When the last bake ended, or the dependencies became Complete, if either has.
    fn topology_wait_ended(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let bake = self
            .st
            .waves
            .iter()
            .filter_map(|w| w.bake_until)
            .filter(|u| *u <= self.now)
            .max();
        let deps =
            crate::api::find_condition(&self.st.conditions, super::depends::CONDITION_DEPENDENCIES)
                .filter(|c| c.status == crate::api::ConditionStatus::True)
                .and_then(|c| c.last_transition_time);
        bake.max(deps)
    }

    /// `strategy.progressDeadlineSeconds`.
    pub(super) fn progress_deadline_duration(&self) -> Duration {
        Duration::from_secs(u64::from(self.spec.strategy.progress_deadline_seconds))
    }

    /// The target becomes the stable version; its revision ends `Complete`.
    fn record_complete(&mut self) {
        // The condition, not the phase: a user's pause shows a complete rollout as Paused.
        let before = self.rollout.status.as_ref();
        let was_complete = before.is_some_and(|b| {
            find_condition(&b.conditions, "Complete").is_some_and(|c| c.status == True)
                && b.target_version.as_deref() == Some(self.target)
        });
        self.st.stable_version = Some(self.target.to_string());
        self.st.stable_sha256 = self.spec.sha256.clone();
        if let Some(last) = self.st.history.last_mut() {
            if last.result.is_empty() {
                last.result = "Complete".into();
                last.completed_at = Some(self.now);
            }
        }
        if !was_complete {
            self.events.push(EventNote::normal(
                "RolloutCompleted",
                format!(
                    "every machine ({}) runs version {}",
                    self.st.desired, self.target
                ),
            ));
        }
    }

    /// Back on the stable version: the revision ends `Aborted` or `RolledBack`.
    fn record_rolled_back(&mut self) {
        let Some(last) = self.st.history.last_mut() else {
            return;
        };
        if !last.result.is_empty() {
            return;
        }
        last.result = match self.st.abort_reason.as_deref() {
            Some(REASON_ABORTED) => "Aborted".into(),
            _ => "RolledBack".into(),
        };
        last.completed_at = Some(self.now);
        self.events.push(EventNote::warning(
            "RolledBack",
            format!(
                "every machine is back on {}",
                self.stable().unwrap_or_default()
            ),
        ));
    }
}
