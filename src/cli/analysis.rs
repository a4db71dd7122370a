//! How analysis runs read, for `describe rollout` and the live view: a table of runs with
//! each metric's counts and last value, and a one-line summary of the running one.

use super::output::human_duration;
use crate::api::{AnalysisRunStatus, AnalysisStep, MetricResult};
use chrono::{DateTime, Utc};

/// `analysis: error-rate, smoke` for a step listing.
pub fn step_text(a: &AnalysisStep) -> String {
    let names: Vec<&str> = a.templates.iter().map(|t| t.name.as_str()).collect();
    format!("analysis: {}", names.join(", "))
}

/// A metric's last value, or why there is none.
fn last_value(m: &MetricResult) -> String {
    match m.measurements.last() {
        None => "-".into(),
        Some(x) => x.value.clone().unwrap_or_else(|| "no data".into()),
    }
}

/// One row per metric of every run, newest run last: revision, step, run phase, metric,
/// its phase, counts and last value, and the age of the run.
pub fn run_rows(runs: &[AnalysisRunStatus], now: DateTime<Utc>) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for r in runs {
        let head = vec![
            r.revision.to_string(),
            if r.background {
                format!("{}+ (background)", r.step + 1)
            } else {
                (r.step + 1).to_string()
            },
            r.phase.to_string(),
        ];
        let age = human_duration(now - r.started_at);
        if r.metrics.is_empty() {
            let mut row = head.clone();
            row.extend([
                r.templates.join(","),
                "-".into(),
                "-".into(),
                "-".into(),
                age.clone(),
            ]);
            rows.push(row);
        }
        for m in &r.metrics {
            let mut row = head.clone();
            row.extend([
                m.name.clone(),
                m.phase.to_string(),
                format!(
                    "{}/{}/{}/{}/{}",
                    m.successful, m.failed, m.inconclusive, m.no_data, m.errors
                ),
                last_value(m),
                age.clone(),
            ]);
            rows.push(row);
        }
    }
    rows
}

/// The headers that go with [`run_rows`].
pub const RUN_HEADERS: [&str; 8] = [
    "Revision",
    "Step",
    "Run",
    "Metric",
    "Phase",
    "Ok/Failed/Inconclusive/NoData/Errors",
    "Last",
    "Age",
];

/// `analysis step 2: Running, error-rate/rate 0.001 (2 ok, 0 failed)` for the newest run
/// while it runs (or is inconclusive); `None` otherwise.
pub fn running_summary(runs: &[AnalysisRunStatus]) -> Option<String> {
    use crate::api::AnalysisPhase::{Inconclusive, Running};
    let r = runs
        .iter()
        .rev()
        .find(|r| matches!(r.phase, Running | Inconclusive))?;
    let metrics: Vec<String> = r
        .metrics
        .iter()
        .map(|m| {
            format!(
                "{} {} ({} ok, {} failed, {} inconclusive, {} no data, {} errors)",
                m.name,
                last_value(m),
                m.successful,
                m.failed,
                m.inconclusive,
                m.no_data,
                m.errors
            )
        })
        .collect();
    Some(format!(
        "{} {}: {}, {}",
        if r.background {
            "background analysis from step"
        } else {
            "analysis step"
        },
        r.step + 1,
        r.phase,
        if metrics.is_empty() {
            format!("{} waiting for a first measurement", r.templates.join(","))
        } else {
            metrics.join("; ")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AnalysisPhase, Measurement};

    fn run(phase: AnalysisPhase) -> AnalysisRunStatus {
        let now = Utc::now();
        AnalysisRunStatus {
            revision: 2,
            step: 1,
            background: false,
            phase,
            started_at: now,
            finished_at: None,
            templates: vec!["error-rate".into()],
            args: Default::default(),
            message: String::new(),
            metrics: vec![MetricResult {
                name: "error-rate/rate".into(),
                phase: AnalysisPhase::Running,
                count: 1,
                successful: 1,
                no_data: 0,
                measurements: vec![Measurement {
                    time: now,
                    phase: AnalysisPhase::Successful,
                    value: Some("0.001".into()),
                    message: String::new(),
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn the_running_analysis_should_show_its_last_value_and_counts() {
        let s = running_summary(&[run(AnalysisPhase::Running)]).unwrap();
        assert_eq!(
            s,
            "analysis step 2: Running, error-rate/rate 0.001 (1 ok, 0 failed, 0 inconclusive, 0 no data, 0 errors)"
        );
        assert_eq!(running_summary(&[run(AnalysisPhase::Successful)]), None);
    }

    #[test]
    fn describe_should_list_every_metric_of_every_run() {
        let rows = run_rows(&[run(AnalysisPhase::Running)], Utc::now());
        assert_eq!(rows.len(), 1);
        assert_eq!(
            &rows[0][..7],
            [
                "2",
                "2",
                "Running",
                "error-rate/rate",
                "Running",
                "1/0/0/0/0",
                "0.001"
            ]
        );
        assert_eq!(rows[0].len(), RUN_HEADERS.len());
    }
}
