//! Analysis steps: start a run (the leading controller's runner measures it and writes
//! its phase), hold the step while it runs, go on when it succeeds, abort on failure
//! (reason `AnalysisFailed`, whatever `failurePolicy` says) and pause when inconclusive
//! (`AnalysisInconclusive`). A run nothing waits for any more (a promote, an abort, an
//! undo, a new version) is marked `Skipped`, so the runner stops measuring it.

use super::{Decision, EventNote, PAUSE_ANALYSIS, REASON_ANALYSIS_FAILED};
use crate::analysis::args;
use crate::api::{AnalysisPhase, AnalysisRunStatus, AnalysisStep, PauseCondition};

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
            .rposition(|r| r.revision == revision && r.step == step)
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
        for run in &mut self.st.analysis_runs {
            let current = going_on && Some(run.revision) == revision && run.step == step;
            if run.phase == AnalysisPhase::Running && !current {
                run.phase = AnalysisPhase::Skipped;
                run.finished_at = Some(now);
                run.message = if Some(run.revision) == revision {
                    why.to_string()
                } else {
                    "a newer version started".to_string()
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
        let still_inconclusive = revision
            .and_then(|r| self.run_index(r, step))
            .is_some_and(|i| self.st.analysis_runs[i].phase == AnalysisPhase::Inconclusive)
            && going_on;
        if !still_inconclusive {
            self.st
                .pause_conditions
                .retain(|p| p.reason != PAUSE_ANALYSIS);
        }
    }

    /// An analysis step: true once it succeeded (the next step is current).
    pub(super) fn analysis_step(&mut self, a: &AnalysisStep) -> bool {
        let Some(revision) = self.revision_number() else {
            return true;
        };
        let step = self.step as u32;
        let Some(i) = self.run_index(revision, step) else {
            self.start_run(a, revision, step);
            return false;
        };
        let steps = self.spec.strategy.steps.len();
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
                            "analysis at step {}/{steps} failed ({}): switching back to {}",
                            step + 1,
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
                            "analysis at step {}/{steps} inconclusive ({}): paused; `deployctl rollout promote` continues, `deployctl rollout abort` goes back",
                            step + 1,
                            self.st.analysis_runs[i].message
                        ),
                    ));
                }
                self.step_paused = true;
                false
            }
            AnalysisPhase::Successful | AnalysisPhase::Skipped | AnalysisPhase::Error => {
                self.step += 1;
                self.st.last_progress_time = Some(self.now);
                true
            }
        }
    }

    /// A new run for this step, with its arguments resolved now: the built-ins (the
    /// canary machines are those switched to the target) and the step's values.
    fn start_run(&mut self, a: &AnalysisStep, revision: u32, step: u32) {
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
        for arg in &a.args {
            if let Some(v) = &arg.value {
                values.insert(arg.name.clone(), v.clone());
            }
        }
        let templates: Vec<String> = a.templates.iter().map(|t| t.name.clone()).collect();
        let steps = self.spec.strategy.steps.len();
        self.events.push(EventNote::normal(
            "AnalysisStarted",
            format!(
                "analysis at step {}/{steps} started: {} on {} machine(s)",
                step + 1,
                templates.join(", "),
                machines.len()
            ),
        ));
        let runs = &mut self.st.analysis_runs;
        runs.push(AnalysisRunStatus {
            revision,
            step,
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
        let run = self.st.analysis_runs.last()?;
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
