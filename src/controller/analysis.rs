//! The leader's analysis runner: for every `Running` analysis run of every Rollout,
//! takes the measurements that are due (each provider on its own task, so that a slow
//! one holds up no other Rollout) and adds them to the run with a compare-and-swap of
//! the Rollout's status. The Rollout decision then acts on the run's phase.
//!
//! Only the leader runs it (it starts in `lead` and ends with the term); the run, its
//! measurements and its phase live in the status, so a new leader resumes where the last
//! one stopped and never loses a `Failed` result.

use super::context::Context;
use crate::analysis::{assess, provider};
use crate::api::{AnalysisPhase, AnalysisRunStatus, AnalysisTemplate, Metric, Object, Rollout};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the runner looks at the cached Rollouts: a run the decision just started is
/// measured within it.
const MAX_WAIT: Duration = Duration::from_millis(250);

/// A Rollout, by namespace and name.
type RolloutKey = (Option<String>, String);
/// One run of a Rollout: revision, step, and whether it runs in the background.
type RunKey = (RolloutKey, u32, u32, bool);

/// Runs until `stop` (leadership lost or shutdown).
pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let in_flight: Arc<Mutex<HashSet<RunKey>>> = Arc::default();
    loop {
        for ro in ctx.rollouts.list() {
            for run in running(&ro) {
                let key = (ro.metadata.namespace.clone(), ro.metadata.name.clone());
                let run_key = (key.clone(), run.revision, run.step, run.background);
                if !in_flight
                    .lock()
                    .expect("the in-flight set is never poisoned")
                    .insert(run_key.clone())
                {
                    continue;
                }
                let ctx = ctx.clone();
                let in_flight = in_flight.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = measure_due(&ctx, &key, run) => {}
                    }
                    in_flight
                        .lock()
                        .expect("the in-flight set is never poisoned")
                        .remove(&run_key);
                });
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(MAX_WAIT) => {}
        }
    }
}

/// The Rollout's running runs (a step's and a background one may run together).
fn running(ro: &Rollout) -> Vec<AnalysisRunStatus> {
    ro.status
        .iter()
        .flat_map(|s| s.analysis_runs.iter())
        .filter(|r| r.phase == AnalysisPhase::Running)
        .cloned()
        .collect()
}

/// What a run measures: every template's metrics (`<template>/<metric>`), and the
/// argument values with the templates' defaults for those the step left out.
struct Plan {
    metrics: Vec<(String, Metric)>,
    /// Each metric's template's declared argument names.
    declared: BTreeMap<String, Vec<String>>,
    values: BTreeMap<String, String>,
}

/// Reads the run's templates; an error is why the run cannot go on (it fails).
async fn plan(ctx: &Context, ns: Option<&str>, run: &AnalysisRunStatus) -> Result<Plan, String> {
    let mut p = Plan {
        metrics: Vec::new(),
        declared: BTreeMap::new(),
        values: run.args.clone(),
    };
    for name in &run.templates {
        let t = ctx
            .client
            .get::<AnalysisTemplate>(ns, name)
            .await
            .map_err(|e| format!("reading analysistemplate {name}: {e}"))?
            .ok_or_else(|| format!("analysistemplate {name} not found"))?;
        let declared: Vec<String> = t.spec.args.iter().map(|a| a.name.clone()).collect();
        for a in &t.spec.args {
            match (&a.value, p.values.contains_key(&a.name)) {
                (_, true) => {}
                (Some(v), false) => {
                    p.values.insert(a.name.clone(), v.clone());
                }
                (None, false) => {
                    return Err(format!(
                        "analysistemplate {name}: argument {:?} has no value: give it in the step's args",
                        a.name
                    ))
                }
            }
        }
        for m in &t.spec.metrics {
            let key = format!("{}/{}", t.name(), m.name);
            p.declared.insert(key.clone(), declared.clone());
            p.metrics.push((key, m.clone()));
        }
    }
    Ok(p)
}

/// Takes the run's due measurements and writes them; returns at once when none is due.
async fn measure_due(ctx: &Context, key: &RolloutKey, run: AnalysisRunStatus) {
    let ns = key.0.as_deref();
    let p = match plan(ctx, ns, &run).await {
        Ok(p) => p,
        Err(why) => return fail_run(ctx, key, &run, why).await,
    };
    let now = Utc::now();
    let due = p.metrics.iter().filter(|(name, m)| {
        let r = run.metrics.iter().find(|r| &r.name == name);
        let finished = r.is_some_and(|r| r.phase != AnalysisPhase::Running);
        !finished && next_due(m, r, run.started_at) <= now
    });
    let taken = due.map(|(name, m)| {
        let declared: Vec<&str> = p.declared[name].iter().map(String::as_str).collect();
        let values = &p.values;
        async move { (name.clone(), provider::measure(m, values, &declared).await) }
    });
    let outcomes = futures::future::join_all(taken).await;
    if !outcomes.is_empty() {
        write_outcomes(ctx, key, &run, &p.metrics, outcomes).await;
    }
}

fn next_due(
    m: &Metric,
    r: Option<&crate::api::MetricResult>,
    started: DateTime<Utc>,
) -> DateTime<Utc> {
    match r {
        Some(r) => assess::next_due(m, r, started),
        None => assess::next_due(m, &Default::default(), started),
    }
}

/// Adds the measurements to the same run (by revision, step and start), retried on a
/// conflict from fresh status. A run the decision ended meanwhile is left alone.
async fn write_outcomes(
    ctx: &Context,
    key: &RolloutKey,
    run: &AnalysisRunStatus,
    all: &[(String, Metric)],
    outcomes: Vec<(String, assess::Outcome)>,
) {
    let now = Utc::now();
    let result = ctx
        .client
        .update_status::<Rollout>(key.0.as_deref(), &key.1, |st| {
            if let Some(r) = same_run(&mut st.analysis_runs, run) {
                for (name, o) in &outcomes {
                    assess::apply(r, all, name, o, now);
                }
            }
        })
        .await;
    if let Err(e) = result {
        tracing::warn!(rollout = %key.1, error = %e, "cannot record analysis measurements");
    }
}

/// Fails the run with `why` (its templates or arguments are unusable).
async fn fail_run(ctx: &Context, key: &RolloutKey, run: &AnalysisRunStatus, why: String) {
    let now = Utc::now();
    let result = ctx
        .client
        .update_status::<Rollout>(key.0.as_deref(), &key.1, |st| {
            if let Some(r) = same_run(&mut st.analysis_runs, run) {
                if r.phase == AnalysisPhase::Running {
                    r.phase = AnalysisPhase::Failed;
                    r.finished_at = Some(now);
                    r.message = why.clone();
                }
            }
        })
        .await;
    if let Err(e) = result {
        tracing::warn!(rollout = %key.1, error = %e, "cannot record a failed analysis run");
    }
}

fn same_run<'a>(
    runs: &'a mut [AnalysisRunStatus],
    run: &AnalysisRunStatus,
) -> Option<&'a mut AnalysisRunStatus> {
    runs.iter_mut().find(|r| {
        r.revision == run.revision
            && r.step == run.step
            && r.background == run.background
            && r.started_at == run.started_at
    })
}
