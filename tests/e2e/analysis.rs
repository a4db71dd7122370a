//! Metric analysis end to end: a controller and agents as real processes, an
//! AnalysisTemplate measured from a local HTTP server whose answer the test sets, or by a
//! command; a good canary is promoted, a bad one goes back on every machine.

use crate::common::Backend;
use crate::rollouts::{build_artifact, condition, hook, Fleet, COUNT_ACTIVATIONS};
use deployctl::api::{AnalysisPhase, RolloutPhase};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// A tiny HTTP server on a free loopback port: answers every GET with `{"rate": <rate>}`
/// and records the request lines it saw. Its thread ends with the test process.
struct RateServer {
    port: u16,
    rate: Arc<Mutex<String>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl RateServer {
    fn start(rate: &str) -> RateServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        let port = listener.local_addr().expect("a bound listener has an address").port();
        let rate = Arc::new(Mutex::new(rate.to_string()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (r, q) = (rate.clone(), requests.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut buf = [0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") && got.len() < 65536 {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&got);
                let line = text.lines().next().unwrap_or_default().to_string();
                q.lock().expect("not poisoned").push(line);
                let body = format!(r#"{{"rate": {}}}"#, r.lock().expect("not poisoned"));
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        RateServer {
            port,
            rate,
            requests,
        }
    }
}

fn template(provider: Value, conditions: Value) -> Value {
    let mut metric = json!({
        "name": "rate",
        "provider": provider,
        "interval": "200ms",
        "count": 2,
    });
    if let (Some(m), Some(c)) = (metric.as_object_mut(), conditions.as_object()) {
        m.extend(c.clone());
    }
    json!({
        "apiVersion": "deployctl.dev/v1",
        "kind": "AnalysisTemplate",
        "metadata": { "name": "error-rate" },
        "spec": { "metrics": [metric] },
    })
}

/// One canary, then the analysis, then every machine.
fn analysis_strategy() -> Value {
    json!({
        "maxUnavailable": 1,
        "steps": [
            { "machines": 1 },
            { "analysis": { "templates": [{ "name": "error-rate" }] } },
        ],
    })
}

fn at_v1(label: &'static str, backend: Backend, template: Value) -> (Fleet, Vec<String>) {
    let (f, machines) = Fleet::at_v1(
        label,
        backend,
        3,
        json!({ "activate": [hook(COUNT_ACTIVATIONS)] }),
        json!({}),
        analysis_strategy(),
        json!({ "maxFailures": 0, "action": "Pause" }),
    );
    f.apply(&[template]);
    (f, machines)
}

fn http_template(server: &RateServer) -> Value {
    template(
        json!({ "http": {
            "url": format!("http://127.0.0.1:{}/rate?version={{{{version}}}}", server.port),
            "jsonPath": "$.rate",
        }}),
        json!({ "successCondition": "result < 0.01" }),
    )
}

#[test]
fn an_http_analysis_should_promote_a_good_canary_and_roll_a_bad_one_back_on_every_machine() {
    for (label, backend) in Backend::all() {
        let server = RateServer::start("0.001");
        let (f, machines) = at_v1(label, backend, http_template(&server));
        build_artifact(&f.artifacts(), "v3");

        // Good: two measurements under 1%, then every machine.
        f.run(&["set", "version", "api", "v2"]).ok();
        let r = f.wait_complete("v2", 3);
        let st = r.status.expect("a complete rollout has a status");
        let run = st.analysis_runs.last().expect("the analysis step ran");
        assert_eq!(run.phase, AnalysisPhase::Successful, "[{label}] {run:?}");
        assert_eq!(run.metrics[0].successful, 2, "[{label}] {run:?}");
        assert_eq!(run.metrics[0].measurements[0].value.as_deref(), Some("0.001"));
        let seen = server.requests.lock().expect("not poisoned").clone();
        assert!(
            seen.iter().any(|l| l.starts_with("GET /rate?version=v2 ")),
            "[{label}] the version reached the URL: {seen:?}"
        );

        // Bad: the canary's error rate is 50%; v3 goes back to v2 everywhere.
        *server.rate.lock().expect("not poisoned") = "0.5".into();
        f.run(&["set", "version", "api", "v3"]).ok();
        let r = f.wait("every machine back on v2 and Degraded with AnalysisFailed", || {
            let r = f.get_rollout();
            let back = machines
                .iter()
                .all(|m| f.current(m).as_deref() == Some("releases/v2"));
            let reason = condition(&r, "Degraded")?.1;
            let degraded = r.status.as_ref()?.phase == RolloutPhase::Degraded;
            (back && degraded && reason == "AnalysisFailed").then_some(r)
        });
        let st = r.status.expect("the waited-for condition is in the status");
        let run = st.analysis_runs.last().expect("the analysis step ran");
        assert_eq!(run.phase, AnalysisPhase::Failed, "[{label}] {run:?}");
        assert!(run.message.contains("last value 0.5"), "[{label}] {}", run.message);
        let described = f.run(&["describe", "rollout", "api"]).ok().stdout;
        assert!(described.contains("AnalysisFailed"), "[{label}] {described}");
    }
}

#[test]
fn an_exec_analysis_should_get_its_values_from_the_environment_and_pass_on_exit_zero() {
    let (f, _machines) = at_v1(
        "embedded",
        Backend::embedded(),
        template(
            json!({ "exec": {
                "command": r#"[ "$ANALYSIS_VERSION" = v2 ] && [ "$ANALYSIS_STABLE_VERSION" = v1 ] && [ "$ANALYSIS_APPLICATION" = api ]"#,
                "timeoutSeconds": 10,
            }}),
            json!({}),
        ),
    );
    f.run(&["set", "version", "api", "v2"]).ok();
    let r = f.wait_complete("v2", 3);
    let run = r.status.expect("complete").analysis_runs.pop().expect("ran");
    assert_eq!(run.phase, AnalysisPhase::Successful, "{run:?}");
    assert_eq!(run.metrics[0].successful, 2, "{run:?}");
}
