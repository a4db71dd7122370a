//! New revision: a new target version opens a revision, its steps from the start, its
//! failures forgotten.

use super::{Decision, EventNote};
use crate::api::Revision;

impl Decision<'_> {
    /// Owns `history` (a new entry, the last one superseded, trimmed to the limit),
    /// `targetVersion`, `observedGeneration`, and resets what a new version starts afresh.
    pub(super) fn new_revision(&mut self) {
        if self.st.target_version.as_deref() != Some(self.target) {
            self.supersede_last_revision();
            let next = self.open_revision();
            self.start_afresh();
            self.events.push(EventNote::normal(
                "RolloutStarted",
                format!("rolling out version {} (revision {next})", self.target),
            ));
        }
        self.st.observed_generation = self.generation();
    }

    /// The revision still running, if any, ends as `Superseded`.
    fn supersede_last_revision(&mut self) {
        if let Some(last) = self.st.history.last_mut() {
            if last.result.is_empty() {
                last.result = "Superseded".into();
                last.completed_at = Some(self.now);
            }
        }
    }

    /// Appends the target's revision, keeps at most `revisionHistoryLimit` (at least one),
    /// and returns its number.
    fn open_revision(&mut self) -> u32 {
        let next = self.st.history.last().map_or(1, |r| r.revision + 1);
        self.st.history.push(Revision {
            revision: next,
            version: self.target.to_string(),
            sha256: self.spec.sha256.clone(),
            started_at: self.now,
            completed_at: None,
            result: String::new(),
        });
        let limit = self.spec.revision_history_limit.max(1) as usize;
        if self.st.history.len() > limit {
            let extra = self.st.history.len() - limit;
            self.st.history.drain(..extra);
        }
        next
    }

    /// Steps from the first, no pause, no abort, no failures, progress from now.
    fn start_afresh(&mut self) {
        let st = &mut self.st;
        st.target_version = Some(self.target.to_string());
        st.current_step_index = (!self.spec.strategy.steps.is_empty()).then_some(0);
        st.pause_conditions.clear();
        st.aborted = false;
        st.abort_reason = None;
        st.failed_machines.clear();
        st.last_progress_time = Some(self.now);
    }
}
