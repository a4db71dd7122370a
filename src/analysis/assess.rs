//! How measurements add up: one measurement's phase from its reading and the metric's
//! conditions, a metric's phase from its counts and limits, a run's from its metrics', and
//! when a metric's next measurement is due. Pure: the runner and the tests share it.

use super::condition::{self, Reading};
use crate::api::{
    parse_duration, AnalysisPhase, AnalysisRunStatus, Measurement, Metric, MetricResult, OnNoData,
};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use std::time::Duration;

/// Measurements kept per metric (the counts cover all of them).
pub const MAX_MEASUREMENTS: usize = 10;
/// Characters kept of a measurement's message.
pub const MAX_MEASUREMENT_MESSAGE: usize = 256;
/// The default time between measurements.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// What a provider returned for one measurement.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A number or a boolean, for the conditions.
    Reading(Reading),
    /// An empty result (no sample, a null): counted as `onNoData` says.
    NoData(String),
    /// The measurement could not be taken.
    Error(String),
    /// An `exec` command's exit: 0 passes.
    Exit { passed: bool, message: String },
}

/// One measurement's phase, value and message.
pub fn measurement(metric: &Metric, outcome: &Outcome, now: DateTime<Utc>) -> Measurement {
    let (phase, value, message) = match outcome {
        Outcome::Reading(r) => match judge(metric, *r) {
            Ok(p) => (p, Some(r.to_string()), String::new()),
            Err(e) => (AnalysisPhase::Error, Some(r.to_string()), e.to_string()),
        },
        Outcome::NoData(why) => {
            let phase = match metric.on_no_data {
                OnNoData::Inconclusive => AnalysisPhase::Inconclusive,
                OnNoData::Pass => AnalysisPhase::Successful,
                OnNoData::Fail => AnalysisPhase::Failed,
            };
            (
                phase,
                None,
                format!("no data ({why}); onNoData: {:?}", metric.on_no_data),
            )
        }
        Outcome::Error(e) => (AnalysisPhase::Error, None, e.clone()),
        Outcome::Exit { passed, message } => (
            if *passed {
                AnalysisPhase::Successful
            } else {
                AnalysisPhase::Failed
            },
            None,
            message.clone(),
        ),
    };
    Measurement {
        time: now,
        phase,
        value,
        message: message.chars().take(MAX_MEASUREMENT_MESSAGE).collect(),
    }
}

/// A reading against the conditions: `failureCondition` true fails; then
/// `successCondition` true passes, false fails (or is inconclusive when a
/// `failureCondition` was given and did not hold: neither said yes).
fn judge(metric: &Metric, r: Reading) -> Result<AnalysisPhase, condition::ConditionError> {
    if let Some(f) = &metric.failure_condition {
        if condition::eval(f, r)? {
            return Ok(AnalysisPhase::Failed);
        }
    }
    Ok(
        match (&metric.success_condition, &metric.failure_condition) {
            (Some(s), f) => match (condition::eval(s, r)?, f) {
                (true, _) => AnalysisPhase::Successful,
                (false, Some(_)) => AnalysisPhase::Inconclusive,
                (false, None) => AnalysisPhase::Failed,
            },
            (None, _) => AnalysisPhase::Successful,
        },
    )
}

/// Adds one measurement to a metric's result and updates its counts and phase.
pub fn record(metric: &Metric, result: &mut MetricResult, outcome: &Outcome, now: DateTime<Utc>) {
    let m = measurement(metric, outcome, now);
    result.attempts += 1;
    if m.phase == AnalysisPhase::Error {
        result.errors += 1;
        result.consecutive_errors += 1;
    } else {
        result.consecutive_errors = 0;
        result.count += 1;
        match m.phase {
            AnalysisPhase::Successful => result.successful += 1,
            AnalysisPhase::Failed => result.failed += 1,
            _ => result.inconclusive += 1,
        }
        if matches!(outcome, Outcome::NoData(_)) {
            result.no_data += 1;
        }
    }
    result.measurements.push(m);
    if result.measurements.len() > MAX_MEASUREMENTS {
        let extra = result.measurements.len() - MAX_MEASUREMENTS;
        result.measurements.drain(..extra);
    }
    result.phase = metric_phase(metric, result);
}

/// A metric's phase: failed past `failureLimit` or `consecutiveErrorLimit`, inconclusive
/// past `inconclusiveLimit`, successful after `count` measurements, else running.
pub fn metric_phase(metric: &Metric, r: &MetricResult) -> AnalysisPhase {
    if r.failed > metric.failure_limit || r.consecutive_errors > metric.consecutive_error_limit {
        AnalysisPhase::Failed
    } else if r.inconclusive > metric.inconclusive_limit {
        AnalysisPhase::Inconclusive
    } else if r.count >= metric.count.unwrap_or(1) {
        AnalysisPhase::Successful
    } else {
        AnalysisPhase::Running
    }
}

/// A run's phase from its metrics': any failed fails it, then any inconclusive makes it
/// inconclusive, then any running keeps it running; all successful is success.
pub fn run_phase(metrics: impl IntoIterator<Item = AnalysisPhase>) -> AnalysisPhase {
    let phases: Vec<AnalysisPhase> = metrics.into_iter().collect();
    for p in [
        AnalysisPhase::Failed,
        AnalysisPhase::Inconclusive,
        AnalysisPhase::Running,
    ] {
        if phases.contains(&p) {
            return p;
        }
    }
    AnalysisPhase::Successful
}

/// One line saying why a finished metric ended as it did.
pub fn reason(metric: &Metric, r: &MetricResult) -> String {
    match r.phase {
        AnalysisPhase::Failed if r.consecutive_errors > metric.consecutive_error_limit => format!(
            "{}: {} measurement(s) in a row could not be taken (consecutiveErrorLimit {}): {}",
            r.name,
            r.consecutive_errors,
            metric.consecutive_error_limit,
            r.measurements.last().map_or("", |m| m.message.as_str())
        ),
        AnalysisPhase::Failed => format!(
            "{}: {} measurement(s) failed (failureLimit {}), last value {}",
            r.name,
            r.failed,
            metric.failure_limit,
            last_value(r)
        ),
        AnalysisPhase::Inconclusive => format!(
            "{}: {} inconclusive measurement(s) (inconclusiveLimit {}), {} without data, last value {}",
            r.name, r.inconclusive, metric.inconclusive_limit, r.no_data, last_value(r)
        ),
        p => format!("{}: {p} after {} measurement(s)", r.name, r.count),
    }
}

fn last_value(r: &MetricResult) -> String {
    r.measurements
        .last()
        .and_then(|m| m.value.clone())
        .unwrap_or_else(|| "<none>".into())
}

/// A metric's interval (validated at apply time; a stored bad one counts as the default).
pub fn interval(metric: &Metric) -> Duration {
    metric
        .interval
        .as_deref()
        .and_then(|d| parse_duration(d).ok())
        .unwrap_or(DEFAULT_INTERVAL)
}

/// When the metric's next measurement is due: `initialDelay` after the run started, then
/// one per `interval`.
pub fn next_due(metric: &Metric, r: &MetricResult, started: DateTime<Utc>) -> DateTime<Utc> {
    let delay = metric
        .initial_delay
        .as_deref()
        .and_then(|d| parse_duration(d).ok())
        .unwrap_or_default();
    let wait = delay + interval(metric) * r.attempts;
    ChronoDuration::from_std(wait)
        .ok()
        .and_then(|w| started.checked_add_signed(w))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Adds one measurement of the metric `name` (`<template>/<metric>`) to a run, and
/// updates the run's phase over `all` its metrics (a metric not yet measured is running).
/// A run that is no longer `Running` is left alone.
pub fn apply(
    run: &mut AnalysisRunStatus,
    all: &[(String, Metric)],
    name: &str,
    outcome: &Outcome,
    now: DateTime<Utc>,
) {
    if run.phase != AnalysisPhase::Running {
        return;
    }
    for (n, _) in all {
        if !run.metrics.iter().any(|m| &m.name == n) {
            run.metrics.push(MetricResult {
                name: n.clone(),
                ..Default::default()
            });
        }
    }
    let (Some((_, metric)), Some(result)) = (
        all.iter().find(|(n, _)| n == name),
        run.metrics.iter_mut().find(|m| m.name == name),
    ) else {
        return;
    };
    record(metric, result, outcome, now);
    run.phase = run_phase(run.metrics.iter().map(|m| m.phase));
    if run.phase != AnalysisPhase::Running {
        run.finished_at = Some(now);
        let why: Vec<String> = all
            .iter()
            .filter_map(|(n, m)| {
                let r = run.metrics.iter().find(|r| &r.name == n)?;
                (r.phase == run.phase).then(|| reason(m, r))
            })
            .collect();
        run.message = why.join("; ").chars().take(1024).collect();
    }
}

#[cfg(test)]
mod tests;
