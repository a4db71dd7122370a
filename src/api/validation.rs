//! Semantic checks that a JSON Schema cannot express: names, versions, percents,
//! one-of fields, durations. Each problem names its field path.

use super::*;

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
        if c.timeout_seconds == 0 {
            out.push(err(
                format!("{path}[{i}].timeoutSeconds"),
                "must be at least 1",
            ));
        }
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
    for key in meta.labels.keys().chain(meta.annotations.keys()) {
        let ok = !key.is_empty()
            && key.len() <= 253
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if !ok {
            out.push(err(
                "metadata.labels",
                format!("invalid key {key:?}: letters, digits, '-', '_', '.', '/' only"),
            ));
        }
    }
}

pub fn validate_application(app: &Application) -> Vec<FieldError> {
    let mut out = Vec::new();
    check_meta(&app.metadata, true, &mut out);
    let s = &app.spec;
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
            ("successThreshold", hc.success_threshold),
            ("failureThreshold", hc.failure_threshold),
            ("deadlineSeconds", hc.deadline_seconds),
        ] {
            if v == 0 {
                out.push(err(
                    format!("spec.healthCheck.{field}"),
                    "must be at least 1",
                ));
            }
        }
    }
    if let Some(svc) = &s.service {
        if svc.command.trim().is_empty() {
            out.push(err("spec.service.command", "must not be empty"));
        }
    }
    if s.keep_releases == 0 {
        out.push(err("spec.keepReleases", "must be at least 1"));
    }
    out
}

pub fn validate_rollout(ro: &Rollout) -> Vec<FieldError> {
    let mut out = Vec::new();
    check_meta(&ro.metadata, true, &mut out);
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
    if st.progress_deadline_seconds == 0 {
        out.push(err(
            "spec.strategy.progressDeadlineSeconds",
            "must be at least 1",
        ));
    }
    for (i, step) in st.steps.iter().enumerate() {
        let path = format!("spec.strategy.steps[{i}]");
        let n = step.set_weight.is_some() as u8
            + step.machines.is_some() as u8
            + step.pause.is_some() as u8;
        if n != 1 {
            out.push(err(
                &path,
                "must set exactly one of setWeight, machines or pause",
            ));
        }
        if let Some(w) = step.set_weight {
            if w > 100 {
                out.push(err(format!("{path}.setWeight"), "must be 0 to 100"));
            }
        }
        if let Some(PauseStep { duration: Some(d) }) = &step.pause {
            if let Err(e) = parse_duration(d) {
                out.push(err(format!("{path}.pause.duration"), e));
            }
        }
    }
    out
}

pub fn validate_machine(m: &Machine) -> Vec<FieldError> {
    let mut out = Vec::new();
    check_meta(&m.metadata, false, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
            pause: None,
        }];
        let paths: Vec<_> = validate_rollout(&ro).into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            vec!["spec.strategy.maxUnavailable", "spec.strategy.steps[0]"]
        );
    }
}
