use super::*;
use crate::api::{MetricProvider, PrometheusMetric};

fn metric() -> Metric {
    Metric {
        name: "error-rate".into(),
        provider: MetricProvider {
            prometheus: Some(PrometheusMetric {
                address: "http://p:9090".into(),
                query: "x".into(),
                timeout_seconds: None,
            }),
            ..Default::default()
        },
        success_condition: Some("result < 0.01".into()),
        count: Some(3),
        consecutive_error_limit: 2,
        ..Default::default()
    }
}

fn run(m: &Metric, outcomes: &[Outcome]) -> MetricResult {
    let mut r = MetricResult {
        name: format!("t/{}", m.name),
        ..Default::default()
    };
    for o in outcomes {
        record(m, &mut r, o, Utc::now());
    }
    r
}

fn n(v: f64) -> Outcome {
    Outcome::Reading(Reading::Number(v))
}

fn no_data() -> Outcome {
    Outcome::NoData("empty vector".into())
}

#[test]
fn a_metric_should_succeed_after_count_passing_measurements_and_not_before() {
    let m = metric();
    assert_eq!(run(&m, &[n(0.0), n(0.001)]).phase, AnalysisPhase::Running);
    let r = run(&m, &[n(0.0), n(0.001), n(0.002)]);
    assert_eq!(r.phase, AnalysisPhase::Successful);
    assert_eq!((r.count, r.successful), (3, 3));
}

#[test]
fn a_metric_should_fail_one_past_its_failure_limit() {
    let mut m = metric();
    m.failure_limit = 1;
    assert_eq!(run(&m, &[n(0.5)]).phase, AnalysisPhase::Running);
    let r = run(&m, &[n(0.5), n(0.7)]);
    assert_eq!(r.phase, AnalysisPhase::Failed);
    assert!(reason(&m, &r).contains("2 measurement(s) failed (failureLimit 1), last value 0.7"));
}

#[test]
fn no_data_should_be_inconclusive_by_default_and_visible() {
    let m = metric();
    let r = run(&m, &[no_data()]);
    assert_eq!(r.phase, AnalysisPhase::Inconclusive);
    assert_eq!((r.no_data, r.inconclusive), (1, 1));
    assert!(r.measurements[0].message.contains("onNoData: Inconclusive"));
    assert!(reason(&m, &r).contains("1 without data"));
}

#[test]
fn no_data_should_pass_when_on_no_data_is_pass() {
    let mut m = metric();
    m.on_no_data = OnNoData::Pass;
    let r = run(&m, &[no_data(), no_data(), n(0.0)]);
    assert_eq!(r.phase, AnalysisPhase::Successful);
    assert_eq!((r.no_data, r.successful), (2, 3));
}

#[test]
fn no_data_should_fail_when_on_no_data_is_fail() {
    let mut m = metric();
    m.on_no_data = OnNoData::Fail;
    let r = run(&m, &[no_data()]);
    assert_eq!(r.phase, AnalysisPhase::Failed);
    assert_eq!(r.measurements[0].phase, AnalysisPhase::Failed);
}

#[test]
fn a_provider_that_errors_should_fail_the_metric_one_past_the_consecutive_error_limit() {
    let m = metric();
    let err = || Outcome::Error("connection refused".into());
    let r = run(&m, &[err(), err()]);
    assert_eq!(
        r.phase,
        AnalysisPhase::Running,
        "2 errors are within the limit of 2"
    );
    assert_eq!(r.count, 0, "errors are not measurements");
    let r = run(&m, &[err(), err(), err()]);
    assert_eq!(r.phase, AnalysisPhase::Failed);
    assert!(reason(&m, &r).contains("3 measurement(s) in a row could not be taken"));
    assert!(reason(&m, &r).contains("connection refused"));
}

#[test]
fn a_measurement_between_errors_should_reset_the_consecutive_count() {
    let m = metric();
    let err = || Outcome::Error("timeout".into());
    let r = run(&m, &[err(), err(), n(0.0), err(), err()]);
    assert_eq!(r.phase, AnalysisPhase::Running);
    assert_eq!((r.errors, r.consecutive_errors, r.attempts), (4, 2, 5));
}

#[test]
fn neither_condition_holding_should_be_inconclusive_past_the_limit() {
    let mut m = metric();
    m.success_condition = Some("result < 0.01".into());
    m.failure_condition = Some("result > 0.1".into());
    m.inconclusive_limit = 1;
    assert_eq!(run(&m, &[n(0.05)]).phase, AnalysisPhase::Running);
    assert_eq!(
        run(&m, &[n(0.05), n(0.05)]).phase,
        AnalysisPhase::Inconclusive
    );
    assert_eq!(run(&m, &[n(0.5)]).phase, AnalysisPhase::Failed);
}

#[test]
fn an_exec_exit_status_should_pass_or_fail_the_measurement() {
    let mut m = metric();
    m.success_condition = None;
    m.count = Some(1);
    let pass = Outcome::Exit {
        passed: true,
        message: String::new(),
    };
    let fail = Outcome::Exit {
        passed: false,
        message: "exit status 3".into(),
    };
    assert_eq!(run(&m, &[pass]).phase, AnalysisPhase::Successful);
    assert_eq!(run(&m, &[fail]).phase, AnalysisPhase::Failed);
}

#[test]
fn only_the_newest_measurements_should_be_kept() {
    let mut m = metric();
    m.count = Some(50);
    let outcomes: Vec<Outcome> = (0..25).map(|i| n(f64::from(i) / 1000.0)).collect();
    let r = run(&m, &outcomes);
    assert_eq!(r.measurements.len(), MAX_MEASUREMENTS);
    assert_eq!(r.count, 25);
    assert_eq!(
        r.measurements.last().unwrap().value.as_deref(),
        Some("0.024")
    );
}

#[test]
fn a_run_should_fail_on_any_failed_metric_and_succeed_only_when_all_did() {
    use AnalysisPhase::*;
    assert_eq!(run_phase([Successful, Failed, Running]), Failed);
    assert_eq!(run_phase([Successful, Inconclusive, Running]), Inconclusive);
    assert_eq!(run_phase([Successful, Running]), Running);
    assert_eq!(run_phase([Successful, Successful]), Successful);
}

#[test]
fn the_next_measurement_should_be_due_an_interval_after_the_last_attempt() {
    let mut m = metric();
    m.interval = Some("200ms".into());
    m.initial_delay = Some("1s".into());
    let start = Utc::now();
    let mut r = MetricResult::default();
    assert_eq!(next_due(&m, &r, start), start + ChronoDuration::seconds(1));
    r.attempts = 3;
    assert_eq!(
        next_due(&m, &r, start),
        start + ChronoDuration::milliseconds(1600)
    );
}
