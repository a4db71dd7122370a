//! Analysis steps: start a run (the leading controller's runner measures it and writes
//! its phase), hold the step while it runs, go on when it succeeds, abort on failure
//! (reason `AnalysisFailed`, whatever `failurePolicy` says) and pause when inconclusive
//! (`AnalysisInconclusive`). A run nothing waits for any more (a promote, an abort, an
//! undo, a new version) is marked `Skipped`, so the runner stops measuring it.

use super::{Decision, EventNote, PAUSE_ANALYSIS, REASON_ANALYSIS_FAILED};
use crate::analysis::args;
use crate::api::{AnalysisArg, AnalysisPhase, AnalysisRunStatus, PauseCondition, TemplateRef};

/// At most this many runs are kept in the status, newest last.
pub const MAX_ANALYSIS_RUNS: usize = 5;

impl Decision<'_> {
    /// The number of the target's revision in `history`.
    fn revision_number(&self) -> Option<u32> {
        self.st
            .history
            .last()
            .filter(|r| r.version == self.target)
            .map(|r| r.revision)
    }

    fn run_index(&self, revision: u32, step: u32) -> Option<usize> {
        self.st
            .analysis_runs
            .iter()
            .rposition(|r| r.revision == revision && r.step == step && !r.background)
    }

    fn background_index(&self, revision: u32) -> Option<usize> {
        self.st
            .analysis_runs
            .iter()
            .rposition(|r| r.revision == revision && r.background)
    }

    /// `strategy.analysis` applies now: this revision has steps to protect (the same
    /// rule as the steps themselves), is past `startingStep`, and is not complete.
    fn background_wanted(&self) -> bool {
        let Some(b) = &self.spec.strategy.analysis else {
            return false;
        };
        let to_stable = self.stable() == Some(self.target);
        !self.undo
            && !self.st.aborted
            && self.stable.is_some()
            && !to_stable
            && self.step >= b.starting_step as usize
    }

    /// Called by the steps phase once it knows the step in force: a running run that is
    /// not this revision's current step (promoted past, gone back, a new version) is
    /// skipped, and the inconclusive pause is lifted unless the current step's run is
    /// still inconclusive.
    pub(super) fn settle_analysis_runs(&mut self) {
        let revision = self.revision_number();
        let step = self.step as u32;
        let going_on = !self.st.aborted && !self.undo;
        let why = if self.st.aborted {
            "the rollout is going back to the stable version"
        } else if self.undo {
            "rollout undo skips analysis"
        } else {
            "rollout promote skipped it"
        };
        let now = self.now;
        let mut skipped = Vec::new();
        let background = self.background_wanted();
        let completed = self.stable() == Some(self.target);
        for run in &mut self.st.analysis_runs {
            let this_revision = Some(run.revision) == revision;
            let current = going_on
                && this_revision
                && if run.background {
                    background
                } else {
                    run.step == step
                };
            if run.phase == AnalysisPhase::Running && !current {
                run.phase = AnalysisPhase::Skipped;
                run.finished_at = Some(now);
                run.message = if !this_revision {
                    "a newer version started".to_string()
                } else if run.background && completed && going_on {
                    "the rollout completed".to_string()
                } else {
                    why.to_string()
                };
                skipped.push((run.step, run.message.clone()));
            }
        }
        for (s, m) in skipped {
            self.events.push(EventNote::normal(
                "AnalysisSkipped",
                format!("analysis at step {}: {m}", s + 1),
            ));
        }
        let inconclusive = |i: Option<usize>| {
            i.is_some_and(|i| self.st.analysis_runs[i].phase == AnalysisPhase::Inconclusive)
        };
        let still_inconclusive = going_on
            && (inconclusive(revision.and_then(|r| self.run_index(r, step)))
                || (background && inconclusive(revision.and_then(|r| self.background_index(r)))));
        if !still_inconclusive {
            self.st
                .pause_conditions
                .retain(|p| p.reason != PAUSE_ANALYSIS);
        }
    }

    /// An analysis step: true once it succeeded (the next step is current).
    pub(super) fn analysis_step(
        &mut self,
        templates: &[TemplateRef],
        args: &[AnalysisArg],
    ) -> bool {
        let Some(revision) = self.revision_number() else {
            return true;
        };
        let step = self.step as u32;
        let Some(i) = self.run_index(revision, step) else {
            self.start_run(templates, args, revision, step, false);
            return false;
        };
        self.act_on_run(i)
    }

    /// `strategy.analysis`, after the steps phase found the step in force: starts the
    /// background run once past `startingStep`; a failure aborts and an inconclusive
    /// result pauses, as at a step; success or a run still going changes nothing.
    pub(super) fn background_analysis(&mut self) {
        if !self.background_wanted() {
            return;
        }
        let (Some(b), Some(revision)) = (&self.spec.strategy.analysis, self.revision_number())
        else {
            return;
        };
        match self.background_index(revision) {
            None => {
                let step = b.starting_step;
                self.start_run(&b.templates, &b.args, revision, step, true);
                // A background run holds no step: the rollout goes on meanwhile.
                self.analysis_running = false;
            }
            Some(i) => {
                let promoted_now = self.st.handled_promote
                    != self
                        .rollout
                        .status
                        .as_ref()
                        .and_then(|s| s.handled_promote.clone());
                let run = &mut self.st.analysis_runs[i];
                if promoted_now && run.phase == AnalysisPhase::Inconclusive {
                    // `rollout promote` goes on past an inconclusive result.
                    run.phase = AnalysisPhase::Skipped;
                    run.finished_at = Some(self.now);
                    run.message = "rollout promote went on past an inconclusive result".into();
                    self.st
                        .pause_conditions
                        .retain(|p| p.reason != PAUSE_ANALYSIS);
                    return;
                }
                let phase = self.st.analysis_runs[i].phase;
                if matches!(phase, AnalysisPhase::Failed | AnalysisPhase::Inconclusive) {
                    self.act_on_run(i);
                    if phase == AnalysisPhase::Inconclusive {
                        let target = self.target;
                        self.cap = self.count(|v| v.inst.spec.current.as_deref() == Some(target));
                    }
                }
            }
        }
    }

    /// What a run's phase means for the rollout: true when it lets the step go on.
    fn act_on_run(&mut self, i: usize) -> bool {
        let steps = self.spec.strategy.steps.len();
        let step = self.st.analysis_runs[i].step;
        let what = if self.st.analysis_runs[i].background {
            "background analysis".to_string()
        } else {
            format!("analysis at step {}/{steps}", step + 1)
        };
        match self.st.analysis_runs[i].phase {
            AnalysisPhase::Running => {
                self.analysis_running = true;
                false
            }
            AnalysisPhase::Failed => {
                if !self.st.aborted {
                    self.st.aborted = true;
                    self.st.abort_reason = Some(REASON_ANALYSIS_FAILED.into());
                    self.events.push(EventNote::warning(
                        REASON_ANALYSIS_FAILED,
                        format!(
                            "{what} failed ({}): switching back to {}",
                            self.st.analysis_runs[i].message,
                            self.stable().unwrap_or("nothing")
                        ),
                    ));
                }
                false
            }
            AnalysisPhase::Inconclusive => {
                if !self
                    .st
                    .pause_conditions
                    .iter()
                    .any(|p| p.reason == PAUSE_ANALYSIS)
                {
                    self.st.pause_conditions.push(PauseCondition {
                        reason: PAUSE_ANALYSIS.into(),
                        start_time: self.now,
                        until: None,
                    });
                    self.events.push(EventNote::warning(
                        PAUSE_ANALYSIS,
                        format!(
                            "{what} inconclusive ({}): paused; `deployctl rollout promote` continues, `deployctl rollout abort` goes back",
                            self.st.analysis_runs[i].message
                        ),
                    ));
                }
                self.step_paused = true;
                false
            }
            AnalysisPhase::Successful | AnalysisPhase::Skipped | AnalysisPhase::Error => {
                if !self.st.analysis_runs[i].background {
                    self.step += 1;
                    self.st.last_progress_time = Some(self.now);
                }
                true
            }
        }
    }

    /// A new run for this step, with its arguments resolved now: the built-ins (the
    /// canary machines are those switched to the target) and the step's values.
    fn start_run(
        &mut self,
        templates: &[TemplateRef],
        args: &[AnalysisArg],
        revision: u32,
        step: u32,
        background: bool,
    ) {
        let target = self.target;
        let mut machines: Vec<String> = self
            .desired
            .iter()
            .map(|&i| &self.instances[i])
            .filter(|inst| inst.spec.current.as_deref() == Some(target))
            .map(|inst| inst.spec.machine.clone())
            .collect();
        machines.sort();
        let mut values = args::builtins(
            target,
            self.stable(),
            &self.spec.application,
            self.rollout
                .metadata
                .namespace
                .as_deref()
                .unwrap_or("default"),
            &machines,
        );
        for arg in args {
            if let Some(v) = &arg.value {
                values.insert(arg.name.clone(), v.clone());
            }
        }
        let templates: Vec<String> = templates.iter().map(|t| t.name.clone()).collect();
        let steps = self.spec.strategy.steps.len();
        let what = if background {
            format!("background analysis from step {}/{steps}", step + 1)
        } else {
            format!("analysis at step {}/{steps}", step + 1)
        };
        self.events.push(EventNote::normal(
            "AnalysisStarted",
            format!(
                "{what} started: {} on {} machine(s)",
                templates.join(", "),
                machines.len()
            ),
        ));
        let runs = &mut self.st.analysis_runs;
        runs.push(AnalysisRunStatus {
            revision,
            step,
            background,
            phase: AnalysisPhase::Running,
            started_at: self.now,
            finished_at: None,
            templates,
            args: values,
            message: String::new(),
            metrics: Vec::new(),
        });
        if runs.len() > MAX_ANALYSIS_RUNS {
            let extra = runs.len() - MAX_ANALYSIS_RUNS;
            runs.drain(..extra);
        }
        self.analysis_running = true;
        self.st.last_progress_time = Some(self.now);
    }

    /// While a run holds the current step: what it stands at, for the status message.
    pub(super) fn analysis_message(&self) -> Option<String> {
        if !self.analysis_running {
            return None;
        }
        let run = self.st.analysis_runs.iter().rev().find(|r| !r.background)?;
        let steps = self.spec.strategy.steps.len();
        let metrics: Vec<String> = run
            .metrics
            .iter()
            .map(|m| {
                let last = m
                    .measurements
                    .last()
                    .map(|x| x.value.clone().unwrap_or_else(|| "no data".into()))
                    .unwrap_or_else(|| "-".into());
                format!(
                    "{} {} ({} ok, {} failed, {} inconclusive, {} errors)",
                    m.name, last, m.successful, m.failed, m.inconclusive, m.errors
                )
            })
            .collect();
        Some(format!(
            "analysis at step {}/{steps} running: {}",
            run.step + 1,
            if metrics.is_empty() {
                "no measurement yet".to_string()
            } else {
                metrics.join("; ")
            }
        ))
    }
}

impl Decision<'_> {
    /// Paused because the current step's analysis was inconclusive.
    pub(super) fn analysis_paused(&self) -> bool {
        self.st
            .pause_conditions
            .iter()
            .any(|p| p.reason == PAUSE_ANALYSIS)
    }
}
