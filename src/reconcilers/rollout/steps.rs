//! Steps: where the canary steps stand, and how many machines may run the target.

use super::{Decision, EventNote, PAUSE_STEP};
use crate::api::{parse_duration, PauseCondition, Step};
use chrono::Duration as ChronoDuration;

impl Decision<'_> {
    /// Owns `currentStepIndex`, `handledPromote` and the `CanaryPauseStep` pause; decides
    /// `step`, `step_paused` and `cap`.
    pub(super) fn steps(&mut self) {
        let steps = &self.spec.strategy.steps;
        self.step = self.st.current_step_index.unwrap_or(0) as usize;
        self.cap = self.st.desired;
        if let Some(tok) = self.promote.take() {
            self.promote(&tok);
        }
        // Straight to every machine: after `undo`, when going back, when the target is the
        // stable version (every machine ran it; going back to it is what `undo` does), and
        // on the very first rollout (no stable version: nothing runs that a canary would
        // protect).
        let to_stable = self.stable() == Some(self.target);
        if self.undo || self.st.aborted || self.stable.is_none() || to_stable {
            self.step = steps.len();
        }
        self.settle_analysis_runs();
        while let Some(s) = steps.get(self.step) {
            if let Some(want) = machines_wanted(s, self.st.desired) {
                if self.st.available >= want {
                    self.step += 1;
                    self.st.last_progress_time = Some(self.now);
                    continue;
                }
                self.cap = want;
                break;
            }
            if let Some(a) = &s.analysis {
                if self.analysis_step(&a.templates, &a.args) {
                    continue;
                }
                let target = self.target;
                self.cap = self.count(|v| v.inst.spec.current.as_deref() == Some(target));
                break;
            }
            if self.pause_step(s) {
                continue;
            }
            let target = self.target;
            self.cap = self.count(|v| v.inst.spec.current.as_deref() == Some(target));
            break;
        }
        if !steps.is_empty() {
            self.st.current_step_index = Some(self.step.min(steps.len()) as u32);
        }
        self.background_analysis();
    }

    /// `rollout promote`: past the current step (`full:`: past every step), lifting its
    /// pause.
    fn promote(&mut self, tok: &str) {
        let steps = self.spec.strategy.steps.len();
        self.st.handled_promote = Some(tok.to_string());
        self.st.pause_conditions.retain(|p| p.reason != PAUSE_STEP);
        let from = self.step;
        if tok.starts_with("full:") {
            self.step = steps;
        } else if self.step < steps {
            self.step += 1;
        }
        self.st.last_progress_time = Some(self.now);
        let message = if self.step >= steps {
            "promoted: no steps left (any remaining analysis skipped), switching every machine"
                .to_string()
        } else {
            format!("promoted past step {}/{steps}", from + 1)
        };
        self.events
            .push(EventNote::normal("RolloutPromoted", message));
    }

    /// A pause step: starts its pause, waits for its end, or ends it. True once it is over
    /// (the next step is current).
    fn pause_step(&mut self, s: &Step) -> bool {
        let now = self.now;
        match self
            .st
            .pause_conditions
            .iter()
            .position(|p| p.reason == PAUSE_STEP)
        {
            None => {
                self.start_pause(s);
                false
            }
            Some(i) => match self.st.pause_conditions[i].until {
                Some(until) if until <= now => {
                    self.st.pause_conditions.remove(i);
                    self.step += 1;
                    self.st.last_progress_time = Some(now);
                    true
                }
                Some(until) => {
                    self.wake((until - now).to_std().unwrap_or_default());
                    self.step_paused = true;
                    false
                }
                None => {
                    self.step_paused = true;
                    false
                }
            },
        }
    }

    /// Pauses at this step: until its duration is up, or until a promote without one.
    fn start_pause(&mut self, s: &Step) {
        let now = self.now;
        let steps = self.spec.strategy.steps.len();
        let duration = s
            .pause
            .as_ref()
            .and_then(|p| p.duration.as_deref())
            .and_then(|d| parse_duration(d).ok());
        // Checked: a duration past the calendar's end (one that validation refuses, but the
        // store may hold) waits for a promote; it never skips the pause or panics.
        let until = duration
            .and_then(|d| ChronoDuration::from_std(d).ok())
            .and_then(|d| now.checked_add_signed(d));
        self.st.pause_conditions.push(PauseCondition {
            reason: PAUSE_STEP.into(),
            start_time: now,
            until,
        });
        self.events.push(EventNote::normal(
            "RolloutPaused",
            match s.pause.as_ref().and_then(|p| p.duration.as_deref()) {
                Some(d) => format!("paused at step {}/{steps} for {d}", self.step + 1),
                None => format!(
                    "paused at step {}/{steps}: `deployctl rollout promote` continues",
                    self.step + 1
                ),
            },
        ));
        if let Some(until) = until {
            self.wake((until - now).to_std().unwrap_or_default());
        }
        self.step_paused = true;
    }
}

/// How many of `n` machines a `setWeight` or `machines` step wants on the target; `None`
/// for a pause step.
fn machines_wanted(s: &Step, n: u32) -> Option<u32> {
    s.machines_wanted(n)
}
