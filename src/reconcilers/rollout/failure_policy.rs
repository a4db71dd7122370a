//! Failure policy: which desired machines failed the target, and what `failurePolicy` does
//! once more than `maxFailures` did (roll back, or pause). A revision's failures are kept:
//! a machine switched back no longer reports its failure, but the revision still failed.

use super::{
    Decision, EventNote, View, MAX_FAILED_MACHINES, MAX_FAILED_REVISIONS, MAX_LINE_CHARS,
    MAX_MESSAGE_CHARS, MAX_OUTPUT_LINES, PAUSE_FAILURE, REASON_ROLLED_BACK,
};
use crate::api::{FailureAction, FailureDetail, MachineFailure, PauseCondition, RevisionFailures};

impl Decision<'_> {
    /// Owns `failedMachines`, `failureHistory`, the kept `failed` count and the
    /// `FailurePolicy` pause; a rollback sets `aborted` (reason `RolledBack`).
    pub(super) fn failure_policy(&mut self) {
        let fresh = self.fresh_failures();
        self.keep_failures(&fresh);
        let over_failures = self.st.failed > self.spec.failure_policy.max_failures;
        if over_failures && !self.st.aborted {
            let can_roll_back = self.stable().is_some_and(|s| s != self.target);
            if self.spec.failure_policy.action == FailureAction::Rollback && can_roll_back {
                self.roll_back_for_failures();
            } else if !self.has_failure_pause() {
                self.pause_for_failures();
            }
        }
        self.failure_paused = self.has_failure_pause();
    }

    /// The desired machines that report a failure of the target now, with their output.
    fn fresh_failures(&self) -> Vec<FailureDetail> {
        self.desired
            .iter()
            .filter_map(|&i| {
                let inst = &*self.instances[i];
                let st = inst.status.as_ref()?;
                let f = st.failure.as_ref()?;
                ((View { inst }).failed(self.target)).then(|| FailureDetail {
                    machine: inst.spec.machine.clone(),
                    operation: f.operation.clone(),
                    reason: f.reason.clone(),
                    message: bounded(&f.message, MAX_MESSAGE_CHARS),
                    time: f.time,
                    output: tail(&st.last_hook_output),
                })
            })
            .collect()
    }

    /// Merges what machines report now with what this revision recorded before (unless a
    /// new version or a retry forgot it): `failedMachines`, the revision's entry in
    /// `failureHistory`, and `failed`, which never drops below the count recorded.
    fn keep_failures(&mut self, fresh: &[FailureDetail]) {
        let revision = self
            .st
            .history
            .last()
            .filter(|r| r.version == self.target)
            .map(|r| r.revision);
        if let (true, Some(n)) = (self.failures_reset, revision) {
            // A retry forgets what this revision recorded: its machines try again.
            self.st.failure_history.retain(|e| e.revision != n);
        }
        let recorded = revision.and_then(|n| {
            self.st
                .failure_history
                .iter()
                .find(|e| e.revision == n)
                .cloned()
        });
        let mut details: Vec<FailureDetail> = fresh.to_vec();
        if let Some(old) = &recorded {
            for d in &old.machines {
                if !details.iter().any(|f| f.machine == d.machine) {
                    details.push(d.clone());
                }
            }
        }
        details.sort_by(|a, b| b.time.cmp(&a.time).then(a.machine.cmp(&b.machine)));
        let listed_before = if self.failures_reset {
            0
        } else {
            self.before_failed()
        };
        self.st.failed = self
            .st
            .failed
            .max(listed_before)
            .max(recorded.as_ref().map_or(0, |r| r.failed))
            .max(details.len() as u32);
        details.truncate(MAX_FAILED_MACHINES);
        self.st.failed_machines = details
            .iter()
            .map(|d| MachineFailure {
                machine: d.machine.clone(),
                version: self.target.to_string(),
                operation: d.operation.clone(),
                message: format!("{}: {}", d.reason, d.message),
                time: d.time,
            })
            .collect();
        if let (Some(n), false) = (revision, details.is_empty()) {
            self.record_revision_failures(n, details);
        }
    }

    /// `failed` as the status read had it.
    fn before_failed(&self) -> u32 {
        self.rollout.status.as_ref().map_or(0, |s| s.failed)
    }

    /// The revision's entry in `failureHistory`, newest last, at most
    /// [`MAX_FAILED_REVISIONS`] entries.
    fn record_revision_failures(&mut self, revision: u32, machines: Vec<FailureDetail>) {
        let entry = RevisionFailures {
            revision,
            version: self.target.to_string(),
            failed: self.st.failed,
            machines,
        };
        let history = &mut self.st.failure_history;
        history.retain(|e| e.revision != revision);
        history.push(entry);
        if history.len() > MAX_FAILED_REVISIONS {
            let extra = history.len() - MAX_FAILED_REVISIONS;
            history.drain(..extra);
        }
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
                self.stable().unwrap_or_default()
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

/// The last [`MAX_OUTPUT_LINES`] lines, each at most [`MAX_LINE_CHARS`] characters.
fn tail(lines: &[String]) -> Vec<String> {
    let skip = lines.len().saturating_sub(MAX_OUTPUT_LINES);
    lines[skip..]
        .iter()
        .map(|l| bounded(l, MAX_LINE_CHARS))
        .collect()
}

/// `text` cut to at most `max` characters, `…` marking a cut.
fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((cut, _)) => {
            let keep = text[..cut]
                .char_indices()
                .nth(max - 1)
                .map_or(cut, |(i, _)| i);
            format!("{}…", &text[..keep])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_should_cut_long_text_on_a_character_boundary_and_mark_it() {
        assert_eq!(bounded("short", 10), "short");
        assert_eq!(bounded("exactly10!", 10), "exactly10!");
        let cut = bounded(&"é".repeat(300), MAX_LINE_CHARS);
        assert_eq!(cut.chars().count(), MAX_LINE_CHARS);
        assert!(cut.ends_with('…'), "{cut}");
    }

    #[test]
    fn tail_should_keep_the_last_lines_only() {
        let lines: Vec<String> = (0..50).map(|i| format!("line {i}")).collect();
        let kept = tail(&lines);
        assert_eq!(kept.len(), MAX_OUTPUT_LINES);
        assert_eq!(kept.first().map(String::as_str), Some("line 30"));
        assert_eq!(kept.last().map(String::as_str), Some("line 49"));
    }
}
