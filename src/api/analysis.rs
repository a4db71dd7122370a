//! AnalysisTemplate: metrics that decide whether a canary is promoted or rolled back, and
//! the analysis runs a Rollout keeps in its status.

use super::object;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

object! {
    /// A list of metrics, each measured from Prometheus, a JSON document over HTTP or a
    /// command on the controller's host, with the conditions that pass or fail it. An
    /// `analysis` step of a Rollout names templates of its namespace.
    AnalysisTemplate, spec: AnalysisTemplateSpec, status: AnalysisTemplateStatus,
    plural: "analysistemplates", singular: "analysistemplate", short: ["at"],
    namespaced: true
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnalysisTemplateSpec {
    /// Arguments `{{args.NAME}}` the metrics use; a Rollout's step gives their values,
    /// `value` here is the default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<AnalysisArg>,
    /// The metrics, at least one and at most 10.
    pub metrics: Vec<Metric>,
}

/// A template holds no status.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnalysisTemplateStatus {}

/// A named value for `{{args.NAME}}`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnalysisArg {
    /// `[A-Za-z][A-Za-z0-9_]{0,62}`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// One metric, measured `count` times, `interval` apart.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metric {
    /// Unique in the template: `[a-z0-9-]`, at most 63.
    pub name: String,
    pub provider: MetricProvider,
    /// An expression over `result` (e.g. `result < 0.01`): true passes the measurement.
    /// Not for `exec`, which passes on exit status 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_condition: Option<String>,
    /// An expression over `result`: true fails the measurement (checked first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_condition: Option<String>,
    /// Time between measurements, e.g. `30s` (default `1m`; at least `100ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// How many measurements pass the metric (1 to 1000; default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Time before the first measurement (default none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<String>,
    /// Failed measurements tolerated; one more fails the metric (default 0).
    #[serde(default)]
    pub failure_limit: u32,
    /// Inconclusive measurements tolerated; one more makes the metric inconclusive
    /// (default 0).
    #[serde(default)]
    pub inconclusive_limit: u32,
    /// Measurements in a row that could not be taken (provider errors) tolerated; one more
    /// fails the metric (default 4).
    #[serde(default = "default_consecutive_error_limit")]
    pub consecutive_error_limit: u32,
    /// What an empty result (no sample, a null) counts as (default `Inconclusive`): a quiet
    /// canary is no evidence either way unless you say so.
    #[serde(default)]
    pub on_no_data: OnNoData,
}

fn default_consecutive_error_limit() -> u32 {
    4
}

/// What an empty result counts as.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnNoData {
    #[default]
    Inconclusive,
    Pass,
    Fail,
}

/// Exactly one of `prometheus`, `http` and `exec`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricProvider {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusMetric>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpMetric>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecMetric>,
}

/// An instant query through Prometheus' HTTP API (`/api/v1/query`): one scalar or a
/// one-element vector. Arguments in `query` are escaped for a PromQL string literal.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusMetric {
    /// The server, e.g. `http://prometheus:9090`.
    pub address: String,
    pub query: String,
    /// How long the query may take (1 to 60; default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
}

/// GET a JSON document and read one number or boolean from it. Arguments in `url` are
/// escaped as URL query components.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMetric {
    pub url: String,
    /// An RFC 9535 JSONPath selecting one value, e.g. `$.errorRate`.
    pub json_path: String,
    /// Request headers without credentials (the object is readable by every user).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// How long the request may take (1 to 60; default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
}

/// A command run by `sh -c` on the controller's host; exit status 0 passes. Arguments
/// reach it only as environment variables (`ANALYSIS_VERSION`, `ANALYSIS_ARG_<NAME>`, …),
/// never spliced into the command.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecMetric {
    pub command: String,
    /// How long the command may run before its process group is killed (1 to 600;
    /// default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
}

/// A Rollout step that runs templates to a result before the next step.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnalysisStep {
    /// AnalysisTemplates of the Rollout's namespace, at least one and at most 5.
    pub templates: Vec<TemplateRef>,
    /// Values for the templates' `{{args.NAME}}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<AnalysisArg>,
}

/// Analysis in the background: from `startingStep` until the rollout completes, while the
/// steps go on. A failure aborts and an inconclusive result pauses, as at a step.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackgroundAnalysis {
    /// AnalysisTemplates of the Rollout's namespace, at least one and at most 5.
    pub templates: Vec<TemplateRef>,
    /// Values for the templates' `{{args.NAME}}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<AnalysisArg>,
    /// The step index (0-based) from which it runs (default 0: from the start).
    #[serde(default)]
    pub starting_step: u32,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateRef {
    pub name: String,
}

/// Where an analysis run, a metric or a measurement stands.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AnalysisPhase {
    /// Measurements are still due.
    #[default]
    Running,
    Successful,
    Failed,
    Inconclusive,
    /// The measurement could not be taken (a provider error); counts toward
    /// `consecutiveErrorLimit`, not toward `count`.
    Error,
    /// Skipped: a promote, an abort or a new version ended the run.
    Skipped,
}

impl std::fmt::Display for AnalysisPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// One analysis run of a Rollout: an analysis step of one revision.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnalysisRunStatus {
    /// The revision (in `history`) and the step index it belongs to (for a background
    /// run, the step it started at).
    pub revision: u32,
    pub step: u32,
    /// Started by `strategy.analysis`, not by an analysis step.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub background: bool,
    pub phase: AnalysisPhase,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// The templates, as the step named them.
    pub templates: Vec<String>,
    /// Every argument's value as resolved when the run started (the built-ins included):
    /// a failover resumes with the same values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// One entry per metric once measured, in template order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricResult>,
}

/// A metric's counts and its newest measurements.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricResult {
    /// `<template>/<metric>`.
    pub name: String,
    pub phase: AnalysisPhase,
    /// Measurements taken (errors excluded).
    #[serde(default)]
    pub count: u32,
    #[serde(default)]
    pub successful: u32,
    #[serde(default)]
    pub failed: u32,
    #[serde(default)]
    pub inconclusive: u32,
    /// Measurements that found no data (also counted as what `onNoData` says).
    #[serde(default)]
    pub no_data: u32,
    #[serde(default)]
    pub errors: u32,
    #[serde(default)]
    pub consecutive_errors: u32,
    /// Measurements attempted, errors included: the next is due at
    /// `startedAt + initialDelay + attempts × interval`.
    #[serde(default)]
    pub attempts: u32,
    /// The newest measurements, newest last, at most 10.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measurements: Vec<Measurement>,
}

/// One measurement.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Measurement {
    pub time: DateTime<Utc>,
    pub phase: AnalysisPhase,
    /// The value read, as text; absent when there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Why (no data, an error), at most 256 characters.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}
