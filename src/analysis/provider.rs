//! The providers: a Prometheus instant query, a JSON document over HTTP, a command on the
//! controller's host. Each turns one measurement into an [`Outcome`]; none panics or
//! reads without bound.

use super::args::{self, Dest};
use super::assess::Outcome;
use super::condition::Reading;
use crate::api::{ExecMetric, HttpMetric, Metric, PrometheusMetric};
use std::collections::BTreeMap;
use std::time::Duration;

/// The most of a response body read (Prometheus or a JSON document).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default timeouts when a metric gives none.
pub const DEFAULT_HTTP_TIMEOUT: u32 = 10;
pub const DEFAULT_EXEC_TIMEOUT: u32 = 30;

/// Takes one measurement of `metric` with the run's argument `values`; `declared` are the
/// template's argument names.
pub async fn measure(
    metric: &Metric,
    values: &BTreeMap<String, String>,
    declared: &[&str],
) -> Outcome {
    let p = &metric.provider;
    if let Some(pr) = &p.prometheus {
        prometheus(pr, values, declared).await
    } else if let Some(h) = &p.http {
        http(h, values, declared).await
    } else if let Some(e) = &p.exec {
        exec(e, values).await
    } else {
        Outcome::Error("no provider (validation refuses this)".into())
    }
}

fn client(timeout_seconds: Option<u32>) -> Result<reqwest::Client, String> {
    let t = timeout_seconds.unwrap_or(DEFAULT_HTTP_TIMEOUT).clamp(1, 60);
    reqwest::Client::builder()
        .timeout(Duration::from_secs(u64::from(t)))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// GETs `url` and reads at most [`MAX_BODY_BYTES`] of a 2xx answer as JSON.
async fn get_json(
    client: &reqwest::Client,
    url: reqwest::Url,
    headers: &BTreeMap<String, String>,
) -> Result<serde_json::Value, String> {
    let mut req = client.get(url.clone());
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let mut resp = req
        .send()
        .await
        .map_err(|e| format!("GET {}: {e}", url.as_str()))?;
    let status = resp.status();
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("reading the answer of {}: {e}", url.as_str()))?
    {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(format!("answer larger than {MAX_BODY_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        let text: String = String::from_utf8_lossy(&body).chars().take(200).collect();
        return Err(format!("GET {} answered {status}: {text}", url.as_str()));
    }
    serde_json::from_slice(&body).map_err(|e| format!("the answer is not JSON: {e}"))
}

/// A JSON value as a reading: a number, a boolean, or a string holding a number
/// (Prometheus' way); null is no data.
fn reading(v: &serde_json::Value) -> Result<Option<Reading>, String> {
    match v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Bool(b) => Ok(Some(Reading::Bool(*b))),
        serde_json::Value::Number(n) => n
            .as_f64()
            .map(|f| Some(Reading::Number(f)))
            .ok_or_else(|| format!("{n} is not a finite number")),
        serde_json::Value::String(s) => match s.parse::<f64>() {
            Ok(f) if f.is_nan() => Ok(None),
            Ok(f) => Ok(Some(Reading::Number(f))),
            Err(_) => Err(format!(
                "{:?} is not a number",
                s.chars().take(64).collect::<String>()
            )),
        },
        other => Err(format!(
            "expected a number or a boolean, found {}",
            match other {
                serde_json::Value::Array(_) => "an array",
                _ => "an object",
            }
        )),
    }
}

/// GET a JSON document and read the one value `jsonPath` selects.
pub async fn http(h: &HttpMetric, values: &BTreeMap<String, String>, declared: &[&str]) -> Outcome {
    let run = async {
        let url =
            args::render(&h.url, values, declared, Dest::UrlQuery).map_err(|e| e.to_string())?;
        let url = reqwest::Url::parse(&url).map_err(|e| format!("invalid URL: {e}"))?;
        let path = serde_json_path::JsonPath::parse(&h.json_path)
            .map_err(|e| format!("invalid jsonPath: {e}"))?;
        let doc = get_json(&client(h.timeout_seconds)?, url, &h.headers).await?;
        let found = path.query(&doc).all();
        match found.as_slice() {
            [] => Ok(Outcome::NoData(format!("{} selects nothing", h.json_path))),
            [v] => Ok(match reading(v)? {
                Some(r) => Outcome::Reading(r),
                None => Outcome::NoData(format!("{} is null", h.json_path)),
            }),
            more => Err(format!(
                "{} selects {} values, not one",
                h.json_path,
                more.len()
            )),
        }
    };
    run.await.unwrap_or_else(Outcome::Error)
}

/// The instant-query endpoint under `address`, keeping a path prefix with or without
/// its trailing slash (`http://host/prometheus` -> `http://host/prometheus/api/v1/query`,
/// where `Url::join` would drop `prometheus`).
fn query_url(address: &str) -> Result<reqwest::Url, String> {
    let mut url = reqwest::Url::parse(address).map_err(|e| format!("invalid address: {e}"))?;
    if url.cannot_be_a_base() {
        return Err(format!(
            "invalid address: {address:?} is not an http(s) URL"
        ));
    }
    let path = format!("{}/api/v1/query", url.path().trim_end_matches('/'));
    url.set_path(&path);
    url.set_query(None);
    Ok(url)
}

/// An instant query: one scalar or a one-element vector; an empty vector (or NaN) is no
/// data.
pub async fn prometheus(
    p: &PrometheusMetric,
    values: &BTreeMap<String, String>,
    declared: &[&str],
) -> Outcome {
    let run = async {
        let query =
            args::render(&p.query, values, declared, Dest::PromQl).map_err(|e| e.to_string())?;
        let mut url = query_url(&p.address)?;
        url.query_pairs_mut().append_pair("query", &query);
        let doc = get_json(&client(p.timeout_seconds)?, url, &BTreeMap::new()).await?;
        if doc["status"] != "success" {
            return Err(format!(
                "prometheus: {}",
                doc["error"].as_str().unwrap_or("the query did not succeed")
            ));
        }
        let data = &doc["data"];
        let value = match (data["resultType"].as_str(), &data["result"]) {
            (Some("scalar"), v) => v[1].clone(),
            (Some("vector"), serde_json::Value::Array(items)) => match items.as_slice() {
                [] => return Ok(Outcome::NoData("the query returned an empty vector".into())),
                [one] => one["value"][1].clone(),
                more => {
                    return Err(format!(
                        "the query returned {} series, not one: aggregate it (sum, max)",
                        more.len()
                    ))
                }
            },
            (t, _) => {
                return Err(format!(
                    "the query returned a {}, not a scalar or a vector",
                    t.unwrap_or("nothing")
                ))
            }
        };
        Ok(match reading(&value)? {
            Some(r) => Outcome::Reading(r),
            None => Outcome::NoData("the value is NaN".into()),
        })
    };
    run.await.unwrap_or_else(Outcome::Error)
}

/// The environment an `exec` command starts from: nothing of the controller's (its etcd
/// password, the variables Notifiers read secrets from), only these and `ANALYSIS_*`.
const EXEC_BASE_ENV: [&str; 2] = ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/"];

/// `sh -c command` in its own process group, killed at its timeout, started through
/// `env -i` so that it sees none of the controller's environment: its values are only the
/// `ANALYSIS_*` variables (each one `NAME=value` argument, never shell text). Exit status
/// 0 passes.
pub async fn exec(e: &ExecMetric, values: &BTreeMap<String, String>) -> Outcome {
    use crate::agent::hooks::{run_command, HookEnv, HookError};
    let mut shell: Vec<String> = vec!["/usr/bin/env".into(), "-i".into()];
    shell.extend(EXEC_BASE_ENV.iter().map(|s| s.to_string()));
    shell.extend(
        args::env(values)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}")),
    );
    shell.extend(["/bin/sh".to_string(), "-c".to_string()]);
    let env = HookEnv {
        shell,
        vars: BTreeMap::new(),
        log: None,
    };
    let cmd = crate::api::Command {
        command: e.command.clone(),
        timeout_seconds: e.timeout_seconds.unwrap_or(DEFAULT_EXEC_TIMEOUT),
    };
    match run_command(&env, &cmd, std::path::Path::new("/"), "analysis").await {
        Ok(_) => Outcome::Exit {
            passed: true,
            message: String::new(),
        },
        Err(err @ (HookError::Failed { .. } | HookError::Timeout { .. })) => {
            let tail = err.tail().last().cloned().unwrap_or_default();
            let status = match &err {
                HookError::Failed { status, .. } => status.clone(),
                _ => format!("timed out after {}s", cmd.timeout_seconds),
            };
            Outcome::Exit {
                passed: false,
                message: if tail.is_empty() {
                    status
                } else {
                    format!("{status}: {tail}")
                },
            }
        }
        Err(other) => Outcome::Error(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_exec_command_should_see_its_values_and_none_of_the_controllers_environment() {
        // A variable of this process (the controller's, in production) that must not leak.
        std::env::set_var("DEPLOYCTL_TEST_ANALYSIS_SECRET", "hunter2");
        let values = args::builtins("1.0$(touch /tmp/x)", None, "api", "default", &[]);
        let e = ExecMetric {
            command: r#"[ -z "$DEPLOYCTL_TEST_ANALYSIS_SECRET" ] && [ "$ANALYSIS_VERSION" = '1.0$(touch /tmp/x)' ]"#.into(),
            timeout_seconds: Some(10),
        };
        let got = exec(&e, &values).await;
        assert_eq!(
            got,
            Outcome::Exit {
                passed: true,
                message: String::new()
            }
        );
    }

    #[tokio::test]
    async fn an_exec_command_past_its_timeout_should_fail_the_measurement() {
        let e = ExecMetric {
            command: "sleep 30".into(),
            timeout_seconds: Some(1),
        };
        match exec(&e, &BTreeMap::new()).await {
            Outcome::Exit { passed, message } => {
                assert!(!passed);
                assert!(message.contains("timed out after 1s"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_query_url_should_keep_the_address_path_with_or_without_a_trailing_slash() {
        for (address, want) in [
            ("http://p:9090", "http://p:9090/api/v1/query"),
            ("http://p:9090/", "http://p:9090/api/v1/query"),
            ("http://h/prometheus", "http://h/prometheus/api/v1/query"),
            ("http://h/prometheus/", "http://h/prometheus/api/v1/query"),
        ] {
            assert_eq!(query_url(address).unwrap().as_str(), want, "{address}");
        }
        assert!(query_url("mailto:a@b").is_err());
    }

    #[test]
    fn json_values_should_read_as_numbers_booleans_or_no_data() {
        use serde_json::json;
        assert_eq!(reading(&json!(0.5)), Ok(Some(Reading::Number(0.5))));
        assert_eq!(reading(&json!("0.25")), Ok(Some(Reading::Number(0.25))));
        assert_eq!(reading(&json!(true)), Ok(Some(Reading::Bool(true))));
        assert_eq!(reading(&json!(null)), Ok(None));
        assert_eq!(reading(&json!("NaN")), Ok(None));
        assert!(reading(&json!([1])).is_err());
        assert!(reading(&json!("x")).is_err());
    }
}
