//! Checks of AnalysisTemplates and of a Rollout's analysis steps: one provider per metric,
//! conditions that parse and read only `result`, placeholders that name a declared argument
//! or a built-in, bounded durations, counts and strings.

use super::{check_name, check_url, err, quoted, FieldError, MAX_COUNT};
use crate::analysis::{args, condition};
use crate::api::{parse_duration, AnalysisArg, AnalysisTemplate, BackgroundAnalysis, TemplateRef};
use std::collections::BTreeSet;
use std::time::Duration;

/// At most this many metrics per template, templates per step, and arguments.
pub const MAX_METRICS: usize = 10;
pub const MAX_TEMPLATES: usize = 5;
pub const MAX_ARGS: usize = 32;
/// At most this long an argument value (it is spliced, escaped, into queries and URLs).
pub const MAX_ARG_VALUE: usize = 1024;
/// The shortest interval (a measurement every 100 ms at most) and the longest delay.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

fn check_arg_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphabetic()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid argument name {:?}: must match [A-Za-z][A-Za-z0-9_]{{0,62}}",
            quoted(name)
        ))
    }
}

fn check_args(path: &str, list: &[AnalysisArg], out: &mut Vec<FieldError>) {
    if list.len() > MAX_ARGS {
        out.push(err(path, format!("at most {MAX_ARGS} arguments")));
    }
    let mut seen = BTreeSet::new();
    for (i, a) in list.iter().enumerate() {
        if let Err(e) = check_arg_name(&a.name) {
            out.push(err(format!("{path}[{i}].name"), e));
        } else if !seen.insert(a.name.as_str()) {
            out.push(err(
                format!("{path}[{i}].name"),
                format!("duplicate argument {:?}", a.name),
            ));
        }
        if a.value.as_ref().is_some_and(|v| v.len() > MAX_ARG_VALUE) {
            out.push(err(
                format!("{path}[{i}].value"),
                format!("longer than {MAX_ARG_VALUE} bytes"),
            ));
        }
    }
}

fn check_duration(path: &str, text: &Option<String>, min: Duration, out: &mut Vec<FieldError>) {
    let Some(t) = text else { return };
    match parse_duration(t) {
        Err(e) => out.push(err(path, e)),
        Ok(d) if d < min || d > MAX_INTERVAL => out.push(err(
            path,
            format!("{:?} is out of range: must be {min:?} to 1 day", quoted(t)),
        )),
        Ok(_) => {}
    }
}

fn check_timeout(path: &str, t: Option<u32>, max: u32, out: &mut Vec<FieldError>) {
    if let Some(t) = t {
        if !(1..=max).contains(&t) {
            out.push(err(
                path,
                format!("{t} is out of range: must be 1 to {max}"),
            ));
        }
    }
}

fn check_template_text(path: &str, text: &str, declared: &[&str], out: &mut Vec<FieldError>) {
    if text.trim().is_empty() {
        out.push(err(path, "must not be empty"));
    } else if let Err(e) = args::check(text, declared) {
        out.push(err(path, e.to_string()));
    }
}

pub fn validate_analysis_template(t: &AnalysisTemplate) -> Vec<FieldError> {
    let mut out = Vec::new();
    super::check_meta(&t.metadata, true, &mut out);
    super::check_no_nul(t, &mut out);
    let s = &t.spec;
    check_args("spec.args", &s.args, &mut out);
    let declared: Vec<&str> = s.args.iter().map(|a| a.name.as_str()).collect();
    if s.metrics.is_empty() || s.metrics.len() > MAX_METRICS {
        out.push(err(
            "spec.metrics",
            format!("must list 1 to {MAX_METRICS} metrics"),
        ));
    }
    let mut names = BTreeSet::new();
    for (i, m) in s.metrics.iter().enumerate() {
        let path = format!("spec.metrics[{i}]");
        if let Err(e) = check_name(&m.name) {
            out.push(err(format!("{path}.name"), e));
        } else if !names.insert(m.name.as_str()) {
            out.push(err(
                format!("{path}.name"),
                format!("duplicate metric {:?}", m.name),
            ));
        }
        let p = &m.provider;
        let n = p.prometheus.is_some() as u8 + p.http.is_some() as u8 + p.exec.is_some() as u8;
        if n != 1 {
            out.push(err(
                format!("{path}.provider"),
                "must set exactly one of prometheus, http and exec",
            ));
        }
        if let Some(pr) = &p.prometheus {
            let pp = format!("{path}.provider.prometheus");
            if let Err(e) = check_url(&pr.address) {
                out.push(err(format!("{pp}.address"), e));
            }
            check_template_text(&format!("{pp}.query"), &pr.query, &declared, &mut out);
            check_timeout(
                &format!("{pp}.timeoutSeconds"),
                pr.timeout_seconds,
                60,
                &mut out,
            );
        }
        if let Some(h) = &p.http {
            let hp = format!("{path}.provider.http");
            check_template_text(&format!("{hp}.url"), &h.url, &declared, &mut out);
            // The URL must parse once its placeholders are filled with plain words.
            let sample = (h.url.len() <= args::MAX_TEXT_LEN)
                .then(|| h.url.replace("{{", "x").replace("}}", "x"));
            if let Some(Err(e)) = sample.as_deref().map(check_url) {
                out.push(err(format!("{hp}.url"), e));
            }
            if let Err(e) = serde_json_path::JsonPath::parse(&h.json_path) {
                out.push(err(
                    format!("{hp}.jsonPath"),
                    format!("invalid JSONPath: {e}"),
                ));
            }
            for (k, v) in &h.headers {
                let lower = k.to_ascii_lowercase();
                if ["authorization", "proxy-authorization", "cookie"].contains(&lower.as_str()) {
                    out.push(err(
                        format!("{hp}.headers.{k}"),
                        "credentials are never stored in objects: the object is readable by every user",
                    ));
                } else if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err()
                    || reqwest::header::HeaderValue::from_str(v).is_err()
                {
                    out.push(err(
                        format!("{hp}.headers.{k}"),
                        "invalid header name or value",
                    ));
                }
            }
            check_timeout(
                &format!("{hp}.timeoutSeconds"),
                h.timeout_seconds,
                60,
                &mut out,
            );
        }
        if let Some(e) = &p.exec {
            let ep = format!("{path}.provider.exec");
            if e.command.trim().is_empty() {
                out.push(err(format!("{ep}.command"), "must not be empty"));
            } else if args::has_placeholders(&e.command) {
                out.push(err(
                    format!("{ep}.command"),
                    "placeholders are never spliced into shell text: read $ANALYSIS_VERSION, $ANALYSIS_ARG_<NAME>, … from the environment",
                ));
            }
            check_timeout(
                &format!("{ep}.timeoutSeconds"),
                e.timeout_seconds,
                600,
                &mut out,
            );
            if m.success_condition.is_some() || m.failure_condition.is_some() {
                out.push(err(
                    &path,
                    "exec passes on exit status 0: successCondition and failureCondition do not apply",
                ));
            }
        } else if m.success_condition.is_none() && m.failure_condition.is_none() {
            out.push(err(
                &path,
                "must set successCondition, failureCondition or both",
            ));
        }
        for (field, c) in [
            ("successCondition", &m.success_condition),
            ("failureCondition", &m.failure_condition),
        ] {
            if let Some(Err(e)) = c.as_deref().map(condition::check) {
                out.push(err(format!("{path}.{field}"), e.to_string()));
            }
        }
        check_duration(
            &format!("{path}.interval"),
            &m.interval,
            MIN_INTERVAL,
            &mut out,
        );
        check_duration(
            &format!("{path}.initialDelay"),
            &m.initial_delay,
            Duration::ZERO,
            &mut out,
        );
        if let Some(c) = m.count {
            if !(1..=MAX_COUNT).contains(&c) {
                out.push(err(
                    format!("{path}.count"),
                    format!("{c} is out of range: must be 1 to {MAX_COUNT}"),
                ));
            }
        }
        for (field, v) in [
            ("failureLimit", m.failure_limit),
            ("inconclusiveLimit", m.inconclusive_limit),
            ("consecutiveErrorLimit", m.consecutive_error_limit),
        ] {
            if v > MAX_COUNT {
                out.push(err(
                    format!("{path}.{field}"),
                    format!("{v} is out of range: must be 0 to {MAX_COUNT}"),
                ));
            }
        }
    }
    out
}

/// A Rollout's `analysis` step or `strategy.analysis`: 1 to 5 templates by name,
/// well-formed arguments.
pub(super) fn check_step(
    path: &str,
    templates: &[TemplateRef],
    args: &[AnalysisArg],
    out: &mut Vec<FieldError>,
) {
    if templates.is_empty() || templates.len() > MAX_TEMPLATES {
        out.push(err(
            format!("{path}.templates"),
            format!("must name 1 to {MAX_TEMPLATES} AnalysisTemplates"),
        ));
    }
    for (i, t) in templates.iter().enumerate() {
        if let Err(e) = check_name(&t.name) {
            out.push(err(format!("{path}.templates[{i}].name"), e));
        }
    }
    check_args(&format!("{path}.args"), args, out);
}

/// `strategy.analysis`: as a step's, and a `startingStep` within the steps.
pub(super) fn check_background(
    path: &str,
    b: &BackgroundAnalysis,
    steps: usize,
    out: &mut Vec<FieldError>,
) {
    check_step(path, &b.templates, &b.args, out);
    if b.starting_step as usize > steps {
        out.push(err(
            format!("{path}.startingStep"),
            format!(
                "{} is past the last step (there are {steps})",
                b.starting_step
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AnalysisTemplateSpec, HttpMetric, Metric, MetricProvider, Object};

    fn template(metric: Metric) -> AnalysisTemplate {
        let mut t = AnalysisTemplate::new(
            "error-rate",
            AnalysisTemplateSpec {
                args: vec![AnalysisArg {
                    name: "service".into(),
                    value: None,
                }],
                metrics: vec![metric],
            },
        );
        t.metadata.namespace = Some("default".into());
        t
    }

    fn http_metric() -> Metric {
        Metric {
            name: "rate".into(),
            provider: MetricProvider {
                http: Some(HttpMetric {
                    url: "http://127.0.0.1:1/m?svc={{args.service}}&v={{version}}".into(),
                    json_path: "$.rate".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            success_condition: Some("result < 0.01".into()),
            ..Default::default()
        }
    }

    fn paths(t: &AnalysisTemplate) -> Vec<String> {
        validate_analysis_template(t)
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn a_good_template_should_validate() {
        assert_eq!(paths(&template(http_metric())), Vec::<String>::new());
    }

    #[test]
    fn an_unknown_placeholder_should_be_refused_naming_the_field() {
        let mut m = http_metric();
        m.provider.http.as_mut().unwrap().url = "http://h/m?x={{args.other}}".into();
        let errs = paths(&template(m));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with(
                "spec.metrics[0].provider.http.url: unknown placeholder {{args.other}}"
            ),
            "{errs:?}"
        );
    }

    #[test]
    fn a_condition_over_another_variable_should_be_refused_naming_the_field() {
        let mut m = http_metric();
        m.failure_condition = Some("errors > 1".into());
        let errs = paths(&template(m));
        assert_eq!(
            errs,
            vec!["spec.metrics[0].failureCondition: unknown variable \"errors\": only `result` is defined"]
        );
    }

    #[test]
    fn an_exec_command_with_a_placeholder_should_be_refused() {
        let mut m = http_metric();
        m.success_condition = None;
        m.provider = MetricProvider {
            exec: Some(crate::api::ExecMetric {
                command: "curl http://x/{{version}}".into(),
                timeout_seconds: None,
            }),
            ..Default::default()
        };
        let errs = paths(&template(m));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0]
            .starts_with("spec.metrics[0].provider.exec.command: placeholders are never spliced"));
    }

    #[test]
    fn credentials_intervals_and_providers_should_be_checked() {
        let mut m = http_metric();
        m.interval = Some("10ms".into());
        m.provider
            .http
            .as_mut()
            .unwrap()
            .headers
            .insert("Authorization".into(), "Bearer x".into());
        m.provider.exec = Some(crate::api::ExecMetric {
            command: "true".into(),
            timeout_seconds: None,
        });
        let errs = paths(&template(m)).join("\n");
        assert!(
            errs.contains("spec.metrics[0].interval: \"10ms\" is out of range"),
            "{errs}"
        );
        assert!(
            errs.contains(
                "spec.metrics[0].provider.http.headers.Authorization: credentials are never stored"
            ),
            "{errs}"
        );
        assert!(
            errs.contains(
                "spec.metrics[0].provider: must set exactly one of prometheus, http and exec"
            ),
            "{errs}"
        );
    }

    #[test]
    fn a_rollouts_analysis_should_name_templates_and_start_within_the_steps() {
        use crate::api::{AnalysisStep, Rollout, RolloutSpec, Step};
        let mut ro = Rollout::new(
            "api",
            RolloutSpec {
                application: "api".into(),
                version: "1.0".into(),
                ..Default::default()
            },
        );
        ro.metadata.namespace = Some("default".into());
        ro.spec.strategy.steps = vec![Step {
            analysis: Some(AnalysisStep {
                templates: vec![],
                args: vec![AnalysisArg {
                    name: "9bad".into(),
                    value: None,
                }],
            }),
            ..Default::default()
        }];
        ro.spec.strategy.analysis = Some(BackgroundAnalysis {
            templates: vec![TemplateRef {
                name: "Error_Rate".into(),
            }],
            args: vec![],
            starting_step: 2,
        });
        let paths: Vec<String> = super::super::validate_rollout(&ro)
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            paths,
            vec![
                "spec.strategy.analysis.templates[0].name",
                "spec.strategy.analysis.startingStep",
                "spec.strategy.steps[0].analysis.templates",
                "spec.strategy.steps[0].analysis.args[0].name",
            ]
        );
    }
}
