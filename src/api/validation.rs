//! Semantic checks that a JSON Schema cannot express: names, versions, percents,
//! one-of fields, durations. Each problem names its field path.

use super::*;
use std::collections::{BTreeMap, BTreeSet};

mod analysis;
pub use analysis::validate_analysis_template;

/// One problem with one field, e.g. `spec.strategy.maxUnavailable: must be at most 100%`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path, e.g. `spec.strategy.steps[1].pause.duration`.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

fn err(path: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        path: path.into(),
        message: message.into(),
    }
}

/// A DNS-1123 label: 1 to 63 of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid name {name:?}: must be a DNS-1123 label (1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit)"
        ))
    }
}

/// A version: `[A-Za-z0-9][A-Za-z0-9._+-]{0,127}`. Safe as a directory name.
pub fn check_version(version: &str) -> Result<(), String> {
    let bytes = version.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 128
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid version {version:?}: must match [A-Za-z0-9][A-Za-z0-9._+-]{{0,127}}"
        ))
    }
}

/// The longest pause step: a year (`1y`, 365.25 days, as the duration parser counts
/// it). A longer one is a typo, and a pause past the calendar's end once panicked the
/// reconciler.
pub const MAX_PAUSE: std::time::Duration = std::time::Duration::from_secs(31_557_600);
/// The longest timeout, deadline or period in seconds (a day): every `*Seconds` field.
pub const MAX_SECONDS: u32 = 24 * 60 * 60;
/// The most of anything counted per object (thresholds, kept releases and revisions).
pub const MAX_COUNT: u32 = 1000;

/// A label or annotation key, by Kubernetes' rules: an optional DNS-1123 subdomain
/// prefix (at most 253 characters) and `/`, then a name of 1 to 63 characters from
/// `[A-Za-z0-9._-]`, starting and ending alphanumeric.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let why = if let Some(p) = prefix.filter(|p| !is_dns_subdomain(p)) {
        format!("prefix {p:?} must be a DNS subdomain (lowercase letters, digits, '-' and '.', at most 253 characters)")
    } else if name.is_empty() {
        "the name part must not be empty".to_string()
    } else if !is_label_name(name) {
        "the name part must be at most 63 characters from [A-Za-z0-9._-], starting and ending with a letter or digit".to_string()
    } else {
        return Ok(());
    };
    Err(format!("invalid key {:?}: {why}", quoted(key)))
}

/// A label value, by Kubernetes' rules: empty, or at most 63 characters from
/// `[A-Za-z0-9._-]`, starting and ending alphanumeric.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(format!(
            "invalid value {:?}: must be empty or at most 63 characters from [A-Za-z0-9._-], starting and ending with a letter or digit",
            quoted(value)
        ))
    }
}

/// A value quoted in an error, cut to 80 characters so that a huge one stays readable.
pub(crate) fn quoted(value: &str) -> String {
    match value.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &value[..i]),
        None => value.to_string(),
    }
}

fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

fn check_labels(path: &str, labels: &BTreeMap<String, String>, out: &mut Vec<FieldError>) {
    for (k, v) in labels {
        if let Err(e) = check_label_key(k) {
            out.push(err(path, e));
        } else if let Err(e) = check_label_value(v) {
            out.push(err(format!("{path}.{k}"), e));
        }
    }
}

/// A label selector's keys and values follow the label rules; `In` and `NotIn` need
/// values, `Exists` and `DoesNotExist` take none.
pub fn check_selector(path: &str, sel: &selector::LabelSelector, out: &mut Vec<FieldError>) {
    check_labels(&format!("{path}.matchLabels"), &sel.match_labels, out);
    for (i, e) in sel.match_expressions.iter().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        if let Err(m) = check_label_key(&e.key) {
            out.push(err(format!("{p}.key"), m));
        }
        use selector::LabelOperator::*;
        match e.operator {
            In | NotIn if e.values.is_empty() => out.push(err(
                format!("{p}.values"),
                format!("must not be empty for operator {:?}", e.operator),
            )),
            Exists | DoesNotExist if !e.values.is_empty() => out.push(err(
                format!("{p}.values"),
                format!("must be empty for operator {:?}", e.operator),
            )),
            _ => {}
        }
        for (j, v) in e.values.iter().enumerate() {
            if let Err(m) = check_label_value(v) {
                out.push(err(format!("{p}.values[{j}]"), m));
            }
        }
    }
}

/// A number of seconds from 1 to [`MAX_SECONDS`] (`min` 0 allows zero).
fn check_seconds(path: &str, v: u32, min: u32, out: &mut Vec<FieldError>) {
    if v < min || v > MAX_SECONDS {
        out.push(err(
            path,
            format!("{v} is out of range: must be {min} to {MAX_SECONDS} (a day)"),
        ));
    }
}

/// A count from `min` to [`MAX_COUNT`].
fn check_count(path: &str, v: u32, min: u32, out: &mut Vec<FieldError>) {
    if v < min || v > MAX_COUNT {
        out.push(err(
            path,
            format!("{v} is out of range: must be {min} to {MAX_COUNT}"),
        ));
    }
}

/// No string anywhere in the object holds a NUL byte: it cannot reach a process (an
/// environment value, a command) or a path, and failed only when a hook started.
fn check_no_nul<T: serde::Serialize>(obj: &T, out: &mut Vec<FieldError>) {
    fn walk(v: &serde_json::Value, path: &mut String, out: &mut Vec<FieldError>) {
        use serde_json::Value;
        let len = path.len();
        match v {
            Value::String(s) if s.contains('\0') => {
                out.push(err(path.clone(), "must not contain a NUL byte"));
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push_str(&format!("[{i}]"));
                    walk(item, path, out);
                    path.truncate(len);
                }
            }
            Value::Object(map) => {
                for (k, item) in map {
                    if k.contains('\0') {
                        out.push(err(path.clone(), "a key must not contain a NUL byte"));
                        continue;
                    }
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                    walk(item, path, out);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }
    if let Ok(v) = serde_json::to_value(obj) {
        walk(&v, &mut String::new(), out);
    }
}

fn check_sha256(path: &str, sha: &Option<String>, out: &mut Vec<FieldError>) {
    if let Some(s) = sha {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            out.push(err(
                path,
                format!("invalid sha256 {s:?}: must be 64 hex digits"),
            ));
        }
    }
}

fn check_percent(path: &str, v: &IntOrPercent, out: &mut Vec<FieldError>) {
    if let IntOrPercent::Percent(p) = v {
        if v.percent().is_none() {
            out.push(err(
                path,
                format!("invalid percent {p:?}: must be 0% to 100%"),
            ));
        }
    }
}

/// Most that `spec.artifact.maxUnpackedBytes` may say (1 TiB): past it the limit no longer
/// protects a machine's disk.
pub const MAX_UNPACKED_BYTES_LIMIT: u64 = 1 << 40;
/// Most that `spec.artifact.maxEntries` may say: each entry costs memory in the agent's
/// symlink check.
pub const MAX_ENTRIES_LIMIT: u64 = 10_000_000;

/// The unpack limits of `spec.artifact`: at least 1, at most the constants above.
fn check_artifact_limits(a: &crate::api::Artifact, out: &mut Vec<FieldError>) {
    let fields = [
        (
            "spec.artifact.maxUnpackedBytes",
            a.max_unpacked_bytes,
            MAX_UNPACKED_BYTES_LIMIT,
        ),
        ("spec.artifact.maxEntries", a.max_entries, MAX_ENTRIES_LIMIT),
    ];
    for (path, value, max) in fields {
        match value {
            Some(v) if v == 0 || v > max => {
                out.push(err(path, format!("must be between 1 and {max}, not {v}")))
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod artifact_limit_tests {
    use super::*;
    use crate::api::{Application, ApplicationSpec, Artifact, Object};

    fn app(max_unpacked_bytes: Option<u64>, max_entries: Option<u64>) -> Application {
        Application::new(
            "web",
            ApplicationSpec {
                artifact: Artifact {
                    url: "file:///a/{{version}}.tar.gz".into(),
                    max_unpacked_bytes,
                    max_entries,
                    ..Default::default()
                },
                ..Default::default()
            },
        )
    }

    #[test]
    fn artifact_limits_should_be_refused_out_of_range_naming_the_field() {
        let fields = |a: &Application| -> Vec<String> {
            validate_application(a)
                .into_iter()
                .map(|e| e.path)
                .collect()
        };
        assert!(fields(&app(None, None)).is_empty());
        assert!(fields(&app(Some(1), Some(MAX_ENTRIES_LIMIT))).is_empty());
        assert_eq!(
            fields(&app(Some(0), Some(MAX_ENTRIES_LIMIT + 1))),
            ["spec.artifact.maxUnpackedBytes", "spec.artifact.maxEntries"]
        );
        assert_eq!(
            fields(&app(Some(MAX_UNPACKED_BYTES_LIMIT + 1), Some(0))),
            ["spec.artifact.maxUnpackedBytes", "spec.artifact.maxEntries"]
        );
    }
}

fn check_url_template(path: &str, url: &str, out: &mut Vec<FieldError>) {
    let scheme_ok = ["file://", "http://", "https://"]
        .iter()
        .any(|s| url.starts_with(s));
    if !scheme_ok {
        out.push(err(
            path,
            format!("unsupported URL {url:?}: must start with file://, http:// or https://"),
        ));
    }
}

fn check_commands(path: &str, cmds: &[Command], out: &mut Vec<FieldError>) {
    for (i, c) in cmds.iter().enumerate() {
        if c.command.trim().is_empty() {
            out.push(err(format!("{path}[{i}].command"), "must not be empty"));
        }
        check_seconds(
            &format!("{path}[{i}].timeoutSeconds"),
            c.timeout_seconds,
            1,
            out,
        );
    }
}

fn check_meta(meta: &ObjectMeta, namespaced: bool, out: &mut Vec<FieldError>) {
    if let Err(e) = check_name(&meta.name) {
        out.push(err("metadata.name", e));
    }
    match (&meta.namespace, namespaced) {
        (Some(ns), true) => {
            if let Err(e) = check_name(ns) {
                out.push(err("metadata.namespace", e));
            }
        }
        (Some(_), false) => out.push(err(
            "metadata.namespace",
            "this kind is cluster-scoped and takes no namespace",
        )),
        _ => {}
    }
    check_labels("metadata.labels", &meta.labels, out);
    for key in meta.annotations.keys() {
        if let Err(e) = check_label_key(key) {
            out.push(err("metadata.annotations", e));
        }
    }
}

pub fn validate_application(app: &Application) -> Vec<FieldError> {
    let mut out = Vec::new();
    check_meta(&app.metadata, true, &mut out);
    check_no_nul(app, &mut out);
    let s = &app.spec;
    check_selector("spec.selector", &s.selector, &mut out);
    check_url_template("spec.artifact.url", &s.artifact.url, &mut out);
    if let Some(u) = &s.artifact.sha256_url {
        check_url_template("spec.artifact.sha256Url", u, &mut out);
    }
    if let Some(f) = &s.artifact.file_name {
        if f.is_empty() || f.contains('/') || f == "." || f == ".." {
            out.push(err("spec.artifact.fileName", "must be a plain file name"));
        }
    }
    check_artifact_limits(&s.artifact, &mut out);
    if let Some(p) = &s.path {
        if !p.starts_with('/') {
            out.push(err("spec.path", "must be an absolute path"));
        }
    }
    if let Some(shell) = &s.shell {
        if shell.is_empty() || shell[0].is_empty() {
            out.push(err(
                "spec.shell",
                "must name a program, e.g. [\"/bin/sh\", \"-c\"]",
            ));
        }
    }
    for key in s.env.keys() {
        let ok = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok || key.starts_with("DEPLOY_") {
            out.push(err(
                format!("spec.env.{key}"),
                "must be a shell variable name not starting with DEPLOY_",
            ));
        }
    }
    let h = &s.hooks;
    check_commands("spec.hooks.install", &h.install, &mut out);
    check_commands("spec.hooks.beforeActivate", &h.before_activate, &mut out);
    check_commands("spec.hooks.activate", &h.activate, &mut out);
    check_commands("spec.hooks.afterActivate", &h.after_activate, &mut out);
    check_commands("spec.hooks.clean", &h.clean, &mut out);
    if let Some(g) = &s.get_version {
        check_commands("spec.getVersion", std::slice::from_ref(g), &mut out);
    }
    if let Some(hc) = &s.health_check {
        let n = hc.tcp.is_some() as u8 + hc.http.is_some() as u8 + hc.exec.is_some() as u8;
        if n != 1 {
            out.push(err(
                "spec.healthCheck",
                "must set exactly one of tcp, http or exec",
            ));
        }
        if let Some(http) = &hc.http {
            if !(http.url.starts_with("http://") || http.url.starts_with("https://")) {
                out.push(err(
                    "spec.healthCheck.http.url",
                    "must start with http:// or https://",
                ));
            }
            for (i, code) in http.expect_status.iter().enumerate() {
                if !(100..=599).contains(code) {
                    out.push(err(
                        format!("spec.healthCheck.http.expectStatus[{i}]"),
                        "must be an HTTP status, 100 to 599",
                    ));
                }
            }
        }
        if let Some(e) = &hc.exec {
            check_commands("spec.healthCheck.exec", std::slice::from_ref(e), &mut out);
        }
        for (field, v) in [
            ("periodSeconds", hc.period_seconds),
            ("timeoutSeconds", hc.timeout_seconds),
            ("deadlineSeconds", hc.deadline_seconds),
        ] {
            check_seconds(&format!("spec.healthCheck.{field}"), v, 1, &mut out);
        }
        for (field, v) in [
            ("successThreshold", hc.success_threshold),
            ("failureThreshold", hc.failure_threshold),
        ] {
            check_count(&format!("spec.healthCheck.{field}"), v, 1, &mut out);
        }
    }
    if let Some(svc) = &s.service {
        if svc.command.trim().is_empty() {
            out.push(err("spec.service.command", "must not be empty"));
        }
        check_seconds(
            "spec.service.stopTimeoutSeconds",
            svc.stop_timeout_seconds,
            0,
            &mut out,
        );
    }
    check_count("spec.keepReleases", s.keep_releases, 1, &mut out);
    for (name, cmd) in &s.tasks {
        let path = format!("spec.tasks.{name}");
        if let Err(e) = check_name(name) {
            out.push(err(&path, format!("invalid task name: {e}")));
        }
        check_commands(&path, std::slice::from_ref(cmd), &mut out);
    }
    out
}

/// A Task as `deployctl run` writes it; also checked by the controller before it orders
/// anything, so that a Task written by other means cannot reach an agent unchecked.
pub fn validate_task(t: &Task) -> Vec<FieldError> {
    let mut out = Vec::new();
    check_meta(&t.metadata, true, &mut out);
    check_no_nul(t, &mut out);
    let s = &t.spec;
    if let Err(e) = check_name(&s.application) {
        out.push(err("spec.application", e));
    }
    if s.command.trim().is_empty() {
        out.push(err("spec.command", "must not be empty"));
    }
    if let Some(n) = &s.task_name {
        if let Err(e) = check_name(n) {
            out.push(err("spec.taskName", e));
        }
    }
    check_selector("spec.selector", &s.selector, &mut out);
    for (i, m) in s.machines.iter().enumerate() {
        if let Err(e) = check_name(m) {
            out.push(err(format!("spec.machines[{i}]"), e));
        }
    }
    if s.one && !s.machines.is_empty() && s.machines.len() != 1 {
        out.push(err(
            "spec.one",
            "one machine was asked for, but several machines are named",
        ));
    }
    check_percent("spec.maxParallel", &s.max_parallel, &mut out);
    if s.max_parallel == IntOrPercent::Int(0) || s.max_parallel.percent() == Some(0) {
        out.push(err("spec.maxParallel", "must be at least 1 (or 1%)"));
    }
    if let IntOrPercent::Int(n) = s.max_parallel {
        check_count("spec.maxParallel", n, 1, &mut out);
    }
    check_seconds("spec.timeoutSeconds", s.timeout_seconds, 1, &mut out);
    check_seconds(
        "spec.ttlSecondsAfterFinished",
        s.ttl_seconds_after_finished,
        0,
        &mut out,
    );
    out
}

pub fn validate_rollout(ro: &Rollout) -> Vec<FieldError> {
    let mut out = Vec::new();
    check_meta(&ro.metadata, true, &mut out);
    check_no_nul(ro, &mut out);
    let s = &ro.spec;
    if let Err(e) = check_name(&s.application) {
        out.push(err("spec.application", e));
    }
    if let Err(e) = check_version(&s.version) {
        out.push(err("spec.version", e));
    }
    check_sha256("spec.sha256", &s.sha256, &mut out);
    let st = &s.strategy;
    check_percent(
        "spec.strategy.maxUnavailable",
        &st.max_unavailable,
        &mut out,
    );
    check_percent("spec.strategy.minStaged", &st.min_staged, &mut out);
    if st.max_unavailable == IntOrPercent::Int(0) || st.max_unavailable.percent() == Some(0) {
        out.push(err(
            "spec.strategy.maxUnavailable",
            "must be at least 1 (or 1%)",
        ));
    }
    if st.max_parallel_stage == Some(0) {
        out.push(err("spec.strategy.maxParallelStage", "must be at least 1"));
    }
    check_seconds(
        "spec.strategy.progressDeadlineSeconds",
        st.progress_deadline_seconds,
        1,
        &mut out,
    );
    check_seconds(
        "spec.strategy.minReadySeconds",
        st.min_ready_seconds,
        0,
        &mut out,
    );
    check_count(
        "spec.revisionHistoryLimit",
        s.revision_history_limit,
        0,
        &mut out,
    );
    if let Some(b) = &st.analysis {
        analysis::check_background("spec.strategy.analysis", b, st.steps.len(), &mut out);
    }
    for (i, step) in st.steps.iter().enumerate() {
        let path = format!("spec.strategy.steps[{i}]");
        let n = step.set_weight.is_some() as u8
            + step.machines.is_some() as u8
            + step.pause.is_some() as u8
            + step.analysis.is_some() as u8;
        if n != 1 {
            out.push(err(
                &path,
                "must set exactly one of setWeight, machines, pause or analysis",
            ));
        }
        if let Some(a) = &step.analysis {
            analysis::check_step(&format!("{path}.analysis"), &a.templates, &a.args, &mut out);
        }
        if let Some(w) = step.set_weight {
            if w > 100 {
                out.push(err(format!("{path}.setWeight"), "must be 0 to 100"));
            }
        }
        if let Some(PauseStep { duration: Some(d) }) = &step.pause {
            match parse_duration(d) {
                Err(e) => out.push(err(format!("{path}.pause.duration"), e)),
                Ok(v) if v > MAX_PAUSE => out.push(err(
                    format!("{path}.pause.duration"),
                    format!(
                        "{:?} is too long: a pause may last at most 1 year (1y)",
                        quoted(d)
                    ),
                )),
                Ok(_) => {}
            }
        }
    }
    if let Some(w) = &st.waves {
        check_waves(w, &mut out);
    }
    check_depends_on(ro, &mut out);
    out
}

/// The most waves `order` may list, and the most Rollouts `dependsOn` may name.
pub const MAX_LISTED: usize = 100;

/// `spec.strategy.waves`: a label key, distinct label values, a bake that parses.
fn check_waves(w: &crate::api::Waves, out: &mut Vec<FieldError>) {
    let path = "spec.strategy.waves";
    if let Err(e) = check_label_key(&w.label_key) {
        out.push(err(format!("{path}.labelKey"), e));
    }
    if w.order.len() > MAX_LISTED {
        out.push(err(
            format!("{path}.order"),
            format!(
                "{} values are more than the limit of {MAX_LISTED}",
                w.order.len()
            ),
        ));
        return;
    }
    let mut seen = BTreeSet::new();
    for (i, value) in w.order.iter().enumerate() {
        if value.is_empty() {
            out.push(err(
                format!("{path}.order[{i}]"),
                "must not be empty: machines without the label form the last wave",
            ));
        } else if let Err(e) = check_label_value(value) {
            out.push(err(format!("{path}.order[{i}]"), e));
        } else if !seen.insert(value.as_str()) {
            out.push(err(
                format!("{path}.order[{i}]"),
                format!("{:?} is listed twice", quoted(value)),
            ));
        }
    }
    if let Some(bake) = &w.bake {
        match parse_duration(bake) {
            Err(e) => out.push(err(format!("{path}.bake"), e)),
            Ok(v) if v > MAX_PAUSE => out.push(err(
                format!("{path}.bake"),
                format!(
                    "{:?} is too long: a bake may last at most 1 year (1y)",
                    quoted(bake)
                ),
            )),
            Ok(_) => {}
        }
    }
    if let Some(n) = w.max_unavailable_per_wave {
        check_count(&format!("{path}.maxUnavailablePerWave"), n, 1, out);
    }
}

/// `spec.dependsOn`: names that can exist, none twice, never this Rollout itself.
fn check_depends_on(ro: &Rollout, out: &mut Vec<FieldError>) {
    let own_ns = ro.metadata.namespace.as_deref().unwrap_or("default");
    if ro.spec.depends_on.len() > MAX_LISTED {
        out.push(err(
            "spec.dependsOn",
            format!(
                "{} rollouts are more than the limit of {MAX_LISTED}",
                ro.spec.depends_on.len()
            ),
        ));
        return;
    }
    let mut seen = BTreeSet::new();
    for (i, d) in ro.spec.depends_on.iter().enumerate() {
        let path = format!("spec.dependsOn[{i}]");
        if let Err(e) = check_name(&d.rollout) {
            out.push(err(format!("{path}.rollout"), e));
            continue;
        }
        if let Some(ns) = &d.namespace {
            if let Err(e) = check_name(ns) {
                out.push(err(format!("{path}.namespace"), e));
                continue;
            }
        }
        let ns = d.namespace.as_deref().unwrap_or(own_ns);
        if ns == own_ns && d.rollout == ro.metadata.name {
            out.push(err(
                format!("{path}.rollout"),
                "a rollout cannot depend on itself",
            ));
        } else if !seen.insert((ns, d.rollout.as_str())) {
            out.push(err(
                format!("{path}.rollout"),
                format!("{ns}/{} is listed twice", d.rollout),
            ));
        }
    }
}

pub fn validate_machine(m: &Machine) -> Vec<FieldError> {
    let mut out = Vec::new();
    check_meta(&m.metadata, false, &mut out);
    check_no_nul(m, &mut out);
    out
}

/// Bounds of a Notifier's strings: a URL, a header, a tag.
const MAX_URL_LEN: usize = 2048;
const MAX_HEADER_VALUE_LEN: usize = 1024;
const MAX_HEADERS: usize = 32;
const MAX_TAGS: usize = 16;

pub fn validate_notifier(n: &Notifier) -> Vec<FieldError> {
    let mut out = Vec::new();
    check_meta(&n.metadata, true, &mut out);
    check_no_nul(n, &mut out);
    let s = &n.spec;
    check_selector("spec.selector", &s.selector, &mut out);
    let sinks = [s.webhook.is_some(), s.slack.is_some(), s.graphite.is_some()];
    if sinks.iter().filter(|b| **b).count() != 1 {
        out.push(err(
            "spec",
            "exactly one of webhook, slack and graphite must be given",
        ));
    }
    if let Some(w) = &s.webhook {
        check_url_source("spec.webhook", &w.url, &w.url_from, &mut out);
        if w.headers.len() > MAX_HEADERS {
            out.push(err(
                "spec.webhook.headers",
                format!("at most {MAX_HEADERS} headers"),
            ));
        }
        for (k, v) in &w.headers {
            let path = format!("spec.webhook.headers.{k}");
            let token = !k.is_empty()
                && k.len() <= 128
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                out.push(err(&path, "invalid header name: must be an HTTP token"));
            } else if k.to_ascii_lowercase().starts_with("x-deployctl-")
                || ["content-type", "content-length", "host"].contains(&&*k.to_ascii_lowercase())
            {
                out.push(err(&path, "this header is set by deployctl"));
            } else if ["authorization", "proxy-authorization", "cookie"]
                .contains(&&*k.to_ascii_lowercase())
            {
                out.push(err(
                    &path,
                    "credentials are never stored in objects: put a URL with its token in urlFrom, or sign with secretRef",
                ));
            }
            if v.len() > MAX_HEADER_VALUE_LEN || v.bytes().any(|b| b.is_ascii_control()) {
                out.push(err(
                    &path,
                    format!("invalid header value: at most {MAX_HEADER_VALUE_LEN} bytes, no control characters"),
                ));
            }
        }
        if let Some(src) = &w.secret_ref {
            check_secret_source("spec.webhook.secretRef", src, &mut out);
        }
    }
    if let Some(sl) = &s.slack {
        check_url_source("spec.slack", &sl.url, &sl.url_from, &mut out);
    }
    if let Some(g) = &s.graphite {
        check_url_source("spec.graphite", &g.url, &g.url_from, &mut out);
        if g.tags.len() > MAX_TAGS {
            out.push(err(
                "spec.graphite.tags",
                format!("at most {MAX_TAGS} tags"),
            ));
        }
        for (i, t) in g.tags.iter().enumerate() {
            if let Err(e) = check_label_value(t).and_then(|_| {
                if t.is_empty() {
                    Err("must not be empty".to_string())
                } else {
                    Ok(())
                }
            }) {
                out.push(err(format!("spec.graphite.tags[{i}]"), e));
            }
        }
    }
    if let Some(t) = s.timeout_seconds {
        if !(1..=60).contains(&t) {
            out.push(err(
                "spec.timeoutSeconds",
                format!("{t} is out of range: must be 1 to 60"),
            ));
        }
    }
    out
}

/// One of `url` (an `http(s)` URL) and `urlFrom` (a secret source).
fn check_url_source(
    path: &str,
    url: &Option<String>,
    from: &Option<SecretSource>,
    out: &mut Vec<FieldError>,
) {
    match (url, from) {
        (Some(u), None) => {
            if let Err(e) = check_url(u) {
                out.push(err(format!("{path}.url"), e));
            }
        }
        (None, Some(src)) => check_secret_source(&format!("{path}.urlFrom"), src, out),
        _ => out.push(err(path, "exactly one of url and urlFrom must be given")),
    }
}

/// An absolute `http` or `https` URL of bounded length (also checked when read from a
/// secret source).
pub fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!("invalid URL: longer than {MAX_URL_LEN} bytes"));
    }
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        Ok(_) => Err(format!(
            "invalid URL {:?}: must be http:// or https:// with a host",
            quoted(url)
        )),
        Err(e) => Err(format!("invalid URL {:?}: {e}", quoted(url))),
    }
}

fn check_secret_source(path: &str, src: &SecretSource, out: &mut Vec<FieldError>) {
    match (&src.file, &src.env) {
        (Some(f), None) => {
            if !f.starts_with('/') {
                out.push(err(format!("{path}.file"), "must be an absolute path"));
            }
        }
        (None, Some(e)) => {
            let ok = !e.is_empty()
                && e.len() <= 128
                && !e.as_bytes()[0].is_ascii_digit()
                && e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                out.push(err(
                    format!("{path}.env"),
                    "invalid environment variable name: [A-Za-z_][A-Za-z0-9_]*",
                ));
            }
        }
        _ => out.push(err(path, "exactly one of file and env must be given")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_checks_should_name_the_field() {
        fn errors(spec: serde_json::Value) -> Vec<String> {
            let spec: TaskSpec = serde_json::from_value(spec).expect("test specs are typed");
            validate_task(&Task::new("t", spec))
                .into_iter()
                .map(|e| e.to_string())
                .collect()
        }
        let ok = errors(serde_json::json!({"application": "web", "command": "true"}));
        assert!(ok.is_empty(), "{ok:?}");
        for (spec, want) in [
            (
                serde_json::json!({"application": "web", "command": "  "}),
                "spec.command: must not be empty",
            ),
            (
                serde_json::json!({"application": "Web!", "command": "x"}),
                "spec.application: ",
            ),
            (
                serde_json::json!({"application": "web", "command": "x", "maxParallel": 0}),
                "spec.maxParallel: must be at least 1",
            ),
            (
                serde_json::json!({"application": "web", "command": "x", "maxParallel": "0%"}),
                "spec.maxParallel: must be at least 1",
            ),
            (
                serde_json::json!({"application": "web", "command": "x", "maxParallel": "150%"}),
                "spec.maxParallel: ",
            ),
            (
                serde_json::json!({"application": "web", "command": "x", "timeoutSeconds": 0}),
                "spec.timeoutSeconds: ",
            ),
            (
                serde_json::json!({"application": "web", "command": "x", "machines": ["a", "b"], "one": true}),
                "spec.one: ",
            ),
            (
                serde_json::json!({"application": "web", "command": "x", "machines": ["a/b"]}),
                "spec.machines[0]: ",
            ),
        ] {
            let got = errors(spec.clone());
            assert!(
                got.iter().any(|e| e.starts_with(want)),
                "{spec}: want {want:?}, got {got:?}"
            );
        }
    }

    #[test]
    fn notifier_checks_should_name_the_field() {
        fn errors(spec: serde_json::Value) -> Vec<String> {
            let spec: NotifierSpec = serde_json::from_value(spec).expect("test specs are typed");
            validate_notifier(&Notifier::new("n", spec))
                .into_iter()
                .map(|e| e.to_string())
                .collect()
        }
        assert!(
            errors(serde_json::json!({"webhook": {"url": "https://ci.example/hook"}})).is_empty()
        );
        for (spec, want) in [
            (
                serde_json::json!({}),
                "spec: exactly one of webhook, slack and graphite",
            ),
            (
                serde_json::json!({"slack": {"url": "https://a"}, "graphite": {"url": "http://g"}}),
                "spec: exactly one of webhook, slack and graphite",
            ),
            (
                serde_json::json!({"webhook": {}}),
                "spec.webhook: exactly one of url and urlFrom",
            ),
            (
                serde_json::json!({"webhook": {"url": "ftp://x"}}),
                "spec.webhook.url: invalid URL",
            ),
            (
                serde_json::json!({"slack": {"urlFrom": {"file": "rel/path"}}}),
                "spec.slack.urlFrom.file: must be an absolute path",
            ),
            (
                serde_json::json!({"webhook": {"url": "http://x", "secretRef": {"env": "1BAD"}}}),
                "spec.webhook.secretRef.env: invalid environment variable name",
            ),
            (
                serde_json::json!({"webhook": {"url": "http://x", "headers": {"X-Deployctl-Signature": "x"}}}),
                "spec.webhook.headers.X-Deployctl-Signature: this header is set by deployctl",
            ),
            (
                serde_json::json!({"webhook": {"url": "http://x", "headers": {"Authorization": "Bearer x"}}}),
                "spec.webhook.headers.Authorization: credentials are never stored in objects",
            ),
            (
                serde_json::json!({"graphite": {"url": "http://g", "tags": ["a b"]}}),
                "spec.graphite.tags[0]: invalid value",
            ),
            (
                serde_json::json!({"webhook": {"url": "http://x"}, "timeoutSeconds": 0}),
                "spec.timeoutSeconds: 0 is out of range",
            ),
        ] {
            let got = errors(spec.clone());
            assert!(got.iter().any(|e| e.starts_with(want)), "{spec}: {got:?}");
        }
    }

    #[test]
    fn names_should_be_dns_labels() {
        for good in ["a", "api", "web-1", &"a".repeat(63)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64), "a/b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions_should_match_the_documented_pattern() {
        for good in [
            "1",
            "v1.2.3",
            "1.0+build.5",
            "2024-01-01_rc1",
            &"a".repeat(128),
        ] {
            assert!(check_version(good).is_ok(), "{good}");
        }
        for bad in ["", ".1", "-1", "1/2", "..", "a b", "$(x)", &"a".repeat(129)] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rollout_checks_should_name_the_field() {
        let mut ro = Rollout::new("api", RolloutSpec::default());
        ro.spec.application = "api".into();
        ro.spec.version = "1.0".into();
        ro.spec.strategy.max_unavailable = IntOrPercent::Percent("150%".into());
        ro.spec.strategy.steps = vec![Step {
            set_weight: Some(10),
            machines: Some(1),
            ..Default::default()
        }];
        let paths: Vec<_> = validate_rollout(&ro).into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            vec!["spec.strategy.maxUnavailable", "spec.strategy.steps[0]"]
        );
    }

    fn check_key(key: &str, ok: bool) {
        assert_eq!(check_label_key(key).is_ok(), ok, "key {key:?}");
    }

    #[test]
    fn label_keys_and_values_should_follow_kubernetes_rules() {
        for (key, ok) in [
            ("app", true),
            ("deployctl.dev/sync", true),
            ("a.b-c/X_y.z-9", true),
            ("A", true),
            (&*"k".repeat(63), true),
            (&*format!("{}/k", "p".repeat(253)), false), // a label of the prefix is too long
            (&*"k".repeat(64), false),
            ("", false),
            ("/x", false),
            ("x/", false),
            ("UPPER.dev/x", false),
            ("a/b/c", false),
            ("-x", false),
            ("x-", false),
            ("has space", false),
            ("esc\u{1b}[31m", false),
            ("new\nline", false),
        ] {
            check_key(key, ok);
        }
        for (value, ok) in [
            ("", true),
            ("web", true),
            ("1.0_rc-1", true),
            (&*"v".repeat(63), true),
            (&*"v".repeat(64), false),
            ("-web", false),
            ("a b", false),
            ("a/b", false),
            ("\u{1b}[2J", false),
        ] {
            assert_eq!(check_label_value(value).is_ok(), ok, "value {value:?}");
        }
    }

    fn app(f: impl FnOnce(&mut ApplicationSpec)) -> Vec<String> {
        let mut a = Application::new("api", ApplicationSpec::default());
        a.metadata.namespace = Some("default".into());
        a.spec.artifact.url = "https://x/{{version}}".into();
        f(&mut a.spec);
        validate_application(&a)
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    fn rollout(f: impl FnOnce(&mut Rollout)) -> Vec<String> {
        let mut ro = Rollout::new("api", RolloutSpec::default());
        ro.metadata.namespace = Some("default".into());
        ro.spec.application = "api".into();
        ro.spec.version = "1.0".into();
        f(&mut ro);
        validate_rollout(&ro)
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    fn expect(got: Vec<String>, want: &[&str]) {
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (g, w) in got.iter().zip(want) {
            assert!(g.contains(w), "{g:?} should contain {w:?}");
        }
    }

    #[test]
    fn waves_and_dependencies_should_be_refused_naming_the_field() {
        expect(
            rollout(|r| {
                r.spec.strategy.waves = Some(Waves {
                    label_key: "zone".into(),
                    order: vec!["a".into(), "b".into()],
                    bake: Some("10m".into()),
                    max_unavailable_per_wave: Some(1),
                    require_label: true,
                });
                r.spec.depends_on = vec![Dependency {
                    rollout: "db".into(),
                    namespace: None,
                }];
            }),
            &[],
        );
        expect(
            rollout(|r| {
                r.spec.strategy.waves = Some(Waves {
                    label_key: "bad key".into(),
                    order: vec!["a".into(), "a".into(), "a b".into(), String::new()],
                    bake: Some("soon".into()),
                    max_unavailable_per_wave: Some(0),
                    require_label: false,
                });
            }),
            &[
                "spec.strategy.waves.labelKey: ",
                "spec.strategy.waves.order[1]: \"a\" is listed twice",
                "spec.strategy.waves.order[2]: ",
                "spec.strategy.waves.order[3]: must not be empty",
                "spec.strategy.waves.bake: invalid duration \"soon\"",
                "spec.strategy.waves.maxUnavailablePerWave: 0 is out of range",
            ],
        );
        expect(
            rollout(|r| {
                r.spec.strategy.waves = Some(Waves {
                    label_key: "zone".into(),
                    bake: Some("2y".into()),
                    ..Default::default()
                });
            }),
            &["spec.strategy.waves.bake: \"2y\" is too long"],
        );
        expect(
            rollout(|r| {
                r.spec.strategy.waves = Some(Waves {
                    label_key: "zone".into(),
                    order: (0..101).map(|i| format!("z{i}")).collect(),
                    ..Default::default()
                });
                r.spec.depends_on = (0..101)
                    .map(|i| Dependency {
                        rollout: format!("r{i}"),
                        namespace: None,
                    })
                    .collect();
            }),
            &[
                "spec.strategy.waves.order: 101 values are more than the limit of 100",
                "spec.dependsOn: 101 rollouts are more than the limit of 100",
            ],
        );
        expect(
            rollout(|r| {
                let dep = |name: &str, ns: Option<&str>| Dependency {
                    rollout: name.into(),
                    namespace: ns.map(Into::into),
                };
                r.spec.depends_on = vec![
                    dep("api", None),
                    dep("db", None),
                    dep("db", Some("default")),
                    dep("DB", None),
                    dep("db", Some("other")),
                ];
            }),
            &[
                "spec.dependsOn[0].rollout: a rollout cannot depend on itself",
                "spec.dependsOn[2].rollout: default/db is listed twice",
                "spec.dependsOn[3].rollout: ",
            ],
        );
    }

    #[test]
    fn values_out_of_range_should_be_refused_naming_the_field() {
        expect(app(|_| {}), &[]);
        expect(
            app(|s| {
                s.env.insert("TOKEN".into(), "a\0b".into());
            }),
            &["spec.env.TOKEN: must not contain a NUL byte"],
        );
        expect(
            app(|s| {
                s.hooks.install = vec![Command {
                    command: "echo\0".into(),
                    timeout_seconds: 86_401,
                }];
            }),
            &[
                "spec.hooks.install[0].command: must not contain a NUL byte",
                "spec.hooks.install[0].timeoutSeconds: 86401 is out of range: must be 1 to 86400",
            ],
        );
        expect(
            app(|s| {
                s.health_check = Some(HealthCheck {
                    exec: Some(Command {
                        command: "true".into(),
                        timeout_seconds: 5,
                    }),
                    deadline_seconds: u32::MAX,
                    failure_threshold: 0,
                    ..Default::default()
                });
            }),
            &[
                "spec.healthCheck.deadlineSeconds: 4294967295 is out of range",
                "spec.healthCheck.failureThreshold: 0 is out of range: must be 1 to 1000",
            ],
        );
        expect(
            app(|s| {
                s.selector.match_expressions = vec![
                    selector::LabelExpression {
                        key: "gpu".into(),
                        operator: selector::LabelOperator::Exists,
                        values: vec!["yes".into()],
                    },
                    selector::LabelExpression {
                        key: "zone".into(),
                        operator: selector::LabelOperator::In,
                        values: vec![],
                    },
                ];
                s.selector
                    .match_labels
                    .insert("role".into(), "web\n".into());
            }),
            &[
                "spec.selector.matchLabels.role: invalid value",
                "spec.selector.matchExpressions[0].values: must be empty for operator Exists",
                "spec.selector.matchExpressions[1].values: must not be empty for operator In",
            ],
        );
        expect(
            rollout(|ro| {
                ro.metadata
                    .labels
                    .insert("team".into(), "a\u{1b}[31m".into());
                ro.metadata.annotations.insert("bad key".into(), "x".into());
                ro.metadata.labels.insert("x".repeat(64), "y".into());
            }),
            &[
                "metadata.labels.team: invalid value",
                "metadata.labels: invalid key",
                "metadata.annotations: invalid key \"bad key\"",
            ],
        );
        for (duration, ok) in [
            ("365d", true),
            ("1y", true),
            ("366d", false),
            ("300000years", false),
            ("10000000000000000s", false),
            ("18446744073709551615s", false),
        ] {
            let got = rollout(|ro| {
                ro.spec.strategy.steps = vec![Step {
                    pause: Some(PauseStep {
                        duration: Some(duration.into()),
                    }),
                    ..Default::default()
                }];
            });
            assert_eq!(got.is_empty(), ok, "{duration}: {got:?}");
            if !ok {
                assert!(
                    got[0].starts_with("spec.strategy.steps[0].pause.duration: "),
                    "{got:?}"
                );
            }
        }
        expect(
            rollout(|ro| {
                ro.spec.strategy.progress_deadline_seconds = 86_401;
                ro.spec.strategy.min_ready_seconds = 100_000;
            }),
            &[
                "spec.strategy.progressDeadlineSeconds: 86401 is out of range: must be 1 to 86400",
                "spec.strategy.minReadySeconds: 100000 is out of range: must be 0 to 86400",
            ],
        );
    }
}
