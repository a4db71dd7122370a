//! Metric analysis: arguments escaped for where they go, the conditions over `result`, how
//! measurements add up to a metric's and a run's phase, and the providers that measure.
//!
//! Everything here but [`provider`] is pure; the leading controller's runner
//! (`controller/analysis.rs`) takes the measurements and the Rollout decision
//! (`reconcilers/rollout/analysis.rs`) acts on the run's phase.

pub mod args;
pub mod assess;
pub mod condition;
pub mod provider;
