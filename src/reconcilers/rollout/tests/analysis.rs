//! Analysis steps in the Rollout decision: every outcome, `onNoData` in each mode, the
//! consecutive error limit, promote, abort and undo during a run. The runner's part (a
//! measurement added to the run) is played by `measure`, through the same
//! `analysis::assess::apply` the runner calls.

use super::*;
use crate::analysis::assess::{apply, Outcome};
use crate::analysis::condition::Reading;
use crate::api::{
    AnalysisArg, AnalysisPhase, AnalysisStep, HttpMetric, Metric, MetricProvider, OnNoData,
    TemplateRef,
};

fn steps() -> Vec<Step> {
    vec![
        machines_step(1),
        Step {
            analysis: Some(AnalysisStep {
                templates: vec![TemplateRef {
                    name: "error-rate".into(),
                }],
                args: vec![AnalysisArg {
                    name: "service".into(),
                    value: Some("api".into()),
                }],
            }),
            ..Default::default()
        },
        weight_step(50),
    ]
}

fn metric() -> Metric {
    Metric {
        name: "rate".into(),
        provider: MetricProvider {
            http: Some(HttpMetric {
                url: "http://127.0.0.1:1/m".into(),
                json_path: "$.rate".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        success_condition: Some("result < 0.01".into()),
        count: Some(2),
        consecutive_error_limit: 1,
        ..Default::default()
    }
}

/// Version 1.0 complete on 4 machines, then 2.0 started: one canary, the analysis running.
fn at_analysis() -> Fleet {
    let mut fleet = Fleet::new(4, strategy(IntOrPercent::Int(1)));
    fleet.rollout.spec.strategy.steps = steps();
    complete_v1(&mut fleet);
    fleet.set_version("2.0");
    fleet.run(50);
    assert_eq!(fleet.on("2.0"), 1, "the canary");
    let st = fleet.status();
    assert_eq!(st.current_step_index, Some(1));
    assert_eq!(st.analysis_runs.len(), 1);
    assert_eq!(st.analysis_runs[0].phase, AnalysisPhase::Running);
    assert_eq!(st.phase, RolloutPhase::Progressing, "{}", st.message);
    assert!(
        st.message.contains("analysis at step 2/3 running"),
        "{}",
        st.message
    );
    fleet
}

/// What the runner does: one measurement into the running run.
fn measure(fleet: &mut Fleet, m: &Metric, outcome: Outcome) {
    let now = fleet.now;
    let st = fleet.rollout.status.as_mut().expect("reconciled");
    let run = st.analysis_runs.last_mut().expect("a run");
    apply(
        run,
        &[("error-rate/rate".into(), m.clone())],
        "error-rate/rate",
        &outcome,
        now,
    );
}

fn value(v: f64) -> Outcome {
    Outcome::Reading(Reading::Number(v))
}

#[test]
fn a_run_should_be_started_with_the_canary_machines_and_the_step_arguments() {
    let fleet = at_analysis();
    let run = &fleet.status().analysis_runs[0];
    let canary = fleet
        .instances
        .iter()
        .find(|i| i.spec.current.as_deref() == Some("2.0"))
        .unwrap()
        .spec
        .machine
        .clone();
    assert_eq!(run.args["machinesCsv"], canary);
    assert_eq!(run.args["version"], "2.0");
    assert_eq!(run.args["stableVersion"], "1.0");
    assert_eq!(run.args["service"], "api");
    assert_eq!((run.revision, run.step), (2, 1));
}

#[test]
fn a_successful_analysis_should_let_the_rollout_go_on_to_complete() {
    let mut fleet = at_analysis();
    let m = metric();
    measure(&mut fleet, &m, value(0.001));
    fleet.run(50);
    assert_eq!(
        fleet.on("2.0"),
        1,
        "one good measurement of two is not enough"
    );
    measure(&mut fleet, &m, value(0.002));
    fleet.run(100);
    let st = fleet.status();
    assert_eq!(st.analysis_runs[0].phase, AnalysisPhase::Successful);
    assert_eq!(st.phase, RolloutPhase::Complete, "{}", st.message);
    assert_eq!(fleet.on("2.0"), 4);
}

#[test]
fn a_failed_analysis_should_roll_every_machine_back_whatever_the_failure_policy_says() {
    let mut fleet = at_analysis();
    assert_eq!(
        fleet.rollout.spec.failure_policy.action,
        FailureAction::Pause
    );
    measure(&mut fleet, &metric(), value(0.5));
    fleet.run(50);
    let st = fleet.status();
    assert_eq!(
        fleet.on("1.0"),
        4,
        "every machine back on the stable version"
    );
    assert!(st.aborted);
    assert_eq!(st.abort_reason.as_deref(), Some(REASON_ANALYSIS_FAILED));
    assert_eq!(st.phase, RolloutPhase::Degraded);
    let degraded = find_condition(&st.conditions, "Degraded").unwrap();
    assert_eq!(degraded.reason, REASON_ANALYSIS_FAILED);
    assert!(
        st.analysis_runs[0].message.contains("last value 0.5"),
        "{}",
        st.analysis_runs[0].message
    );
    assert!(fleet
        .events
        .iter()
        .any(|e| e.reason == REASON_ANALYSIS_FAILED));
}

#[test]
fn an_inconclusive_analysis_should_pause_and_promote_should_continue() {
    let mut fleet = at_analysis();
    measure(
        &mut fleet,
        &metric(),
        Outcome::NoData("empty vector".into()),
    );
    fleet.run(50);
    let st = fleet.status();
    assert_eq!(st.phase, RolloutPhase::Paused);
    assert_eq!(
        find_condition(&st.conditions, "Paused").unwrap().reason,
        PAUSE_ANALYSIS
    );
    assert!(st
        .pause_conditions
        .iter()
        .any(|p| p.reason == PAUSE_ANALYSIS));
    assert_eq!(fleet.on("2.0"), 1, "nothing more switches while paused");

    fleet.annotate(ANNOTATION_PROMOTE, "p1");
    fleet.run(100);
    let st = fleet.status();
    assert!(st.pause_conditions.is_empty(), "{:?}", st.pause_conditions);
    assert_eq!(st.phase, RolloutPhase::Complete, "{}", st.message);
    assert_eq!(fleet.on("2.0"), 4);
}

#[test]
fn an_inconclusive_analysis_then_abort_should_go_back() {
    let mut fleet = at_analysis();
    measure(
        &mut fleet,
        &metric(),
        Outcome::NoData("empty vector".into()),
    );
    fleet.run(50);
    assert_eq!(fleet.status().phase, RolloutPhase::Paused);
    fleet.annotate(ANNOTATION_ABORT, "a1");
    fleet.run(50);
    let st = fleet.status();
    assert_eq!(fleet.on("1.0"), 4);
    assert!(st.pause_conditions.is_empty(), "{:?}", st.pause_conditions);
    assert_eq!(st.abort_reason.as_deref(), Some(REASON_ABORTED));
}

#[test]
fn on_no_data_should_decide_the_rollout_in_each_mode() {
    for (mode, want_on_new, want_phase) in [
        (OnNoData::Pass, 4, RolloutPhase::Complete),
        (OnNoData::Fail, 0, RolloutPhase::Degraded),
        (OnNoData::Inconclusive, 1, RolloutPhase::Paused),
    ] {
        let mut fleet = at_analysis();
        let mut m = metric();
        m.on_no_data = mode;
        measure(&mut fleet, &m, Outcome::NoData("empty vector".into()));
        measure(&mut fleet, &m, Outcome::NoData("empty vector".into()));
        fleet.run(100);
        assert_eq!(fleet.on("2.0"), want_on_new, "{mode:?}");
        let st = fleet.status();
        assert_eq!(st.phase, want_phase, "{mode:?}: {}", st.message);
        assert_eq!(
            st.analysis_runs[0].metrics[0].no_data,
            2 - (mode == OnNoData::Fail) as u32 - (mode == OnNoData::Inconclusive) as u32,
            "{mode:?}: the run stops at the first decisive measurement"
        );
    }
}

#[test]
fn a_provider_that_keeps_erroring_should_roll_back_past_the_consecutive_error_limit() {
    let mut fleet = at_analysis();
    let m = metric();
    measure(&mut fleet, &m, Outcome::Error("connection refused".into()));
    fleet.run(50);
    assert_eq!(fleet.on("2.0"), 1, "one error is within the limit");
    assert!(!fleet.status().aborted);
    measure(&mut fleet, &m, Outcome::Error("connection refused".into()));
    fleet.run(50);
    let st = fleet.status();
    assert_eq!(fleet.on("1.0"), 4);
    assert_eq!(st.abort_reason.as_deref(), Some(REASON_ANALYSIS_FAILED));
    assert!(
        st.analysis_runs[0]
            .message
            .contains("in a row could not be taken"),
        "{}",
        st.analysis_runs[0].message
    );
}

#[test]
fn promote_during_a_run_should_skip_it_and_go_on() {
    let mut fleet = at_analysis();
    fleet.annotate(ANNOTATION_PROMOTE, "p1");
    fleet.run(100);
    let st = fleet.status();
    assert_eq!(st.analysis_runs[0].phase, AnalysisPhase::Skipped);
    assert!(
        st.analysis_runs[0].message.contains("promote"),
        "{}",
        st.analysis_runs[0].message
    );
    assert_eq!(st.phase, RolloutPhase::Complete, "{}", st.message);
    // A measurement the runner took meanwhile changes nothing: the run is over.
    measure(&mut fleet, &metric(), value(0.9));
    assert_eq!(
        fleet.status().analysis_runs[0].phase,
        AnalysisPhase::Skipped
    );
}

#[test]
fn promote_full_should_say_the_remaining_analysis_is_skipped() {
    let mut fleet = at_analysis();
    fleet.annotate(ANNOTATION_PROMOTE, "full:p1");
    fleet.run(100);
    assert!(
        fleet
            .events
            .iter()
            .any(|e| e.reason == "RolloutPromoted"
                && e.message.contains("remaining analysis skipped"))
    );
    assert_eq!(
        fleet.status().analysis_runs[0].phase,
        AnalysisPhase::Skipped
    );
    assert_eq!(fleet.on("2.0"), 4);
}

#[test]
fn abort_during_a_run_should_stop_it_and_go_back() {
    let mut fleet = at_analysis();
    fleet.annotate(ANNOTATION_ABORT, "a1");
    fleet.run(50);
    let st = fleet.status();
    assert_eq!(st.analysis_runs[0].phase, AnalysisPhase::Skipped);
    assert_eq!(fleet.on("1.0"), 4);
}

#[test]
fn undo_should_skip_analysis() {
    let mut fleet = at_analysis();
    measure(&mut fleet, &metric(), value(0.0));
    measure(&mut fleet, &metric(), value(0.0));
    fleet.run(100);
    assert_eq!(fleet.status().stable_version.as_deref(), Some("2.0"));
    // `rollout undo`: back to 1.0, this generation skips the steps and their analysis.
    fleet.set_version("1.0");
    let g = fleet.rollout.metadata.generation.unwrap().to_string();
    fleet.annotate(ANNOTATION_UNDO, &g);
    fleet.run(100);
    assert_eq!(fleet.on("1.0"), 4);
    assert_eq!(fleet.status().analysis_runs.len(), 1, "no run for the undo");
}

#[test]
fn a_running_analysis_should_not_count_against_the_progress_deadline() {
    let mut fleet = at_analysis();
    fleet.now += ChronoDuration::seconds(3600);
    fleet.run(10);
    let st = fleet.status();
    assert_eq!(st.phase, RolloutPhase::Progressing, "{}", st.message);
    assert_eq!(st.analysis_runs[0].phase, AnalysisPhase::Running);
}

#[test]
fn the_status_should_keep_at_most_five_runs() {
    let mut fleet = at_analysis();
    for v in 3..10 {
        fleet.set_version(&format!("{v}.0"));
        fleet.run(50);
    }
    let runs = &fleet.status().analysis_runs;
    assert_eq!(runs.len(), 5);
    assert!(
        runs[..4].iter().all(|r| r.phase == AnalysisPhase::Skipped),
        "{runs:?}"
    );
    assert_eq!(runs[4].phase, AnalysisPhase::Running);
}

fn background(starting_step: u32) -> Option<crate::api::BackgroundAnalysis> {
    Some(crate::api::BackgroundAnalysis {
        templates: vec![TemplateRef {
            name: "error-rate".into(),
        }],
        args: vec![],
        starting_step,
    })
}

/// 1.0 complete on 4 machines with steps [machines 1, pause, setWeight 50] and background
/// analysis from step 1; then 2.0 started and held at the pause.
fn with_background() -> Fleet {
    let mut fleet = Fleet::new(4, strategy(IntOrPercent::Int(1)));
    fleet.rollout.spec.strategy.steps = vec![machines_step(1), pause_step(), weight_step(50)];
    fleet.rollout.spec.strategy.analysis = background(1);
    complete_v1(&mut fleet);
    assert!(
        fleet.status().analysis_runs.is_empty(),
        "no analysis on the first rollout"
    );
    fleet.set_version("2.0");
    fleet.run(50);
    let runs = &fleet.status().analysis_runs;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(runs[0].background);
    assert_eq!(runs[0].phase, AnalysisPhase::Running);
    fleet
}

#[test]
fn background_analysis_should_run_alongside_the_steps_and_end_when_the_rollout_completes() {
    let mut fleet = with_background();
    measure(&mut fleet, &metric(), value(0.0));
    fleet.annotate(ANNOTATION_PROMOTE, "p1");
    fleet.run(100);
    let st = fleet.status();
    assert_eq!(st.phase, RolloutPhase::Complete, "{}", st.message);
    assert_eq!(st.analysis_runs[0].phase, AnalysisPhase::Skipped);
    assert_eq!(st.analysis_runs[0].message, "the rollout completed");
}

#[test]
fn a_failed_background_analysis_should_roll_back() {
    let mut fleet = with_background();
    measure(&mut fleet, &metric(), value(0.9));
    fleet.run(50);
    let st = fleet.status();
    assert_eq!(fleet.on("1.0"), 4);
    assert_eq!(st.abort_reason.as_deref(), Some(REASON_ANALYSIS_FAILED));
}

#[test]
fn an_inconclusive_background_analysis_should_pause_until_promoted() {
    let mut fleet = with_background();
    measure(&mut fleet, &metric(), Outcome::NoData("empty".into()));
    fleet.run(50);
    let st = fleet.status();
    assert_eq!(st.phase, RolloutPhase::Paused, "{}", st.message);
    assert_eq!(
        find_condition(&st.conditions, "Paused").unwrap().reason,
        PAUSE_ANALYSIS
    );
    assert_eq!(fleet.on("2.0"), 1);
    fleet.annotate(ANNOTATION_PROMOTE, "p1");
    fleet.run(100);
    let st = fleet.status();
    assert_eq!(st.phase, RolloutPhase::Complete, "{}", st.message);
    assert_eq!(st.analysis_runs[0].phase, AnalysisPhase::Skipped);
    assert!(st.analysis_runs[0].message.contains("inconclusive"));
}
