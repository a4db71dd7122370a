//! Metric analysis end to end: a controller and agents as real processes, an
//! AnalysisTemplate measured from a local HTTP server whose answer the test sets, or by a
//! command; a good canary is promoted, a bad one goes back on every machine.

use crate::common::Backend;
use crate::rollouts::{build_artifact, condition, hook, Fleet, COUNT_ACTIVATIONS};
use deployctl::api::{AnalysisPhase, AnalysisRunStatus, RolloutPhase};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// A tiny HTTP server on a free loopback port: answers every GET with `body` (JSON, or
/// Prometheus' text format for a scrape) and records the request lines it saw. Its thread
/// ends with the test process.
struct RateServer {
    port: u16,
    body: Arc<Mutex<String>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl RateServer {
    fn start(body: &str) -> RateServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        let port = listener
            .local_addr()
            .expect("a bound listener has an address")
            .port();
        let body = Arc::new(Mutex::new(body.to_string()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (r, q) = (body.clone(), requests.clone());
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
                let body = r.lock().expect("not poisoned").clone();
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        RateServer {
            port,
            body,
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

/// Waits until every machine is back on `stable` and the Rollout is Degraded with
/// `AnalysisFailed`; returns the newest analysis run.
fn rolled_back_by_analysis(f: &Fleet, machines: &[String], stable: &str) -> AnalysisRunStatus {
    let release = format!("releases/{stable}");
    let r = f.wait(
        &format!("every machine back on {stable} and Degraded with AnalysisFailed"),
        || {
            let r = f.get_rollout();
            let back = machines
                .iter()
                .all(|m| f.current(m).as_deref() == Some(release.as_str()));
            let degraded = r.status.as_ref()?.phase == RolloutPhase::Degraded;
            (back && degraded && condition(&r, "Degraded")?.1 == "AnalysisFailed").then_some(r)
        },
    );
    let mut st = r.status.expect("the waited-for condition is in the status");
    st.analysis_runs.pop().expect("the analysis ran")
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
        let server = RateServer::start(r#"{"rate": 0.001}"#);
        let (f, machines) = at_v1(label, backend, http_template(&server));
        build_artifact(&f.artifacts(), "v3");

        // Good: two measurements under 1%, then every machine.
        f.run(&["set", "version", "api", "v2"]).ok();
        let r = f.wait_complete("v2", 3);
        let st = r.status.expect("a complete rollout has a status");
        let run = st.analysis_runs.last().expect("the analysis step ran");
        assert_eq!(run.phase, AnalysisPhase::Successful, "[{label}] {run:?}");
        assert_eq!(run.metrics[0].successful, 2, "[{label}] {run:?}");
        assert_eq!(
            run.metrics[0].measurements[0].value.as_deref(),
            Some("0.001")
        );
        let seen = server.requests.lock().expect("not poisoned").clone();
        assert!(
            seen.iter().any(|l| l.starts_with("GET /rate?version=v2 ")),
            "[{label}] the version reached the URL: {seen:?}"
        );

        // Bad: the canary's error rate is 50%; v3 goes back to v2 everywhere.
        *server.body.lock().expect("not poisoned") = r#"{"rate": 0.5}"#.into();
        f.run(&["set", "version", "api", "v3"]).ok();
        let run = rolled_back_by_analysis(&f, &machines, "v2");
        assert_eq!(run.phase, AnalysisPhase::Failed, "[{label}] {run:?}");
        assert!(
            run.message.contains("last value 0.5"),
            "[{label}] {}",
            run.message
        );
        let described = f.run(&["describe", "rollout", "api"]).ok().stdout;
        assert!(
            described.contains("AnalysisFailed"),
            "[{label}] {described}"
        );
        assert!(
            described.contains("Analysis Runs") && described.contains("error-rate/rate"),
            "[{label}] describe shows the runs: {described}"
        );
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
    let run = r
        .status
        .expect("complete")
        .analysis_runs
        .pop()
        .expect("ran");
    assert_eq!(run.phase, AnalysisPhase::Successful, "{run:?}");
    assert_eq!(run.metrics[0].successful, 2, "{run:?}");
}

/// A real Prometheus on a free loopback port with its own data dir, scraping `target`
/// every second; killed on drop.
struct Prometheus {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One GET on loopback; the body.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

impl Prometheus {
    fn start(target: u16) -> Prometheus {
        let bin = "/usr/bin/prometheus";
        assert!(
            std::path::Path::new(bin).exists(),
            "{bin} is missing: install it: apt-get install prometheus or hack/install-deps"
        );
        let dir = tempfile::tempdir().expect("a temporary dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: canary\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .expect("the temp dir is writable");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let child = std::process::Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// Waits until a query returns a sample.
    fn wait_for_sample(&self, query: &str) {
        let path = format!(
            "/api/v1/query?query={}",
            deployctl::analysis::args::escape(query, deployctl::analysis::args::Dest::UrlQuery)
        );
        crate::rollouts::wait_until(
            "prometheus to have scraped the canary's metric",
            std::time::Duration::from_secs(60),
            || http_get(self.port, &path).filter(|b| b.contains("\"value\"")),
        );
    }
}

#[test]
fn a_prometheus_analysis_should_promote_on_a_real_prometheus_and_roll_back_past_the_limit() {
    for (label, backend) in Backend::all() {
        let exporter = RateServer::start(
            "# TYPE canary_error_ratio gauge\ncanary_error_ratio{version=\"v2\"} 0.001\ncanary_error_ratio{version=\"v3\"} 0.2\n",
        );
        let prom = Prometheus::start(exporter.port);
        prom.wait_for_sample(r#"canary_error_ratio{version="v3"}"#);
        let (f, machines) = at_v1(
            label,
            backend,
            template(
                json!({ "prometheus": {
                    "address": format!("http://127.0.0.1:{}", prom.port),
                    "query": "max(canary_error_ratio{version=\"{{version}}\"})",
                }}),
                json!({ "successCondition": "result < 0.01" }),
            ),
        );
        build_artifact(&f.artifacts(), "v3");
        f.run(&["set", "version", "api", "v2"]).ok();
        let r = f.wait_complete("v2", 3);
        let run = r
            .status
            .expect("complete")
            .analysis_runs
            .pop()
            .expect("ran");
        assert_eq!(run.phase, AnalysisPhase::Successful, "[{label}] {run:?}");
        assert_eq!(
            run.metrics[0].measurements[0].value.as_deref(),
            Some("0.001")
        );

        f.run(&["set", "version", "api", "v3"]).ok();
        let run = rolled_back_by_analysis(&f, &machines, "v2");
        assert_eq!(run.phase, AnalysisPhase::Failed, "[{label}] {run:?}");
        assert!(
            run.message.contains("last value 0.2"),
            "[{label}] {}",
            run.message
        );
    }
}

#[test]
fn promote_full_should_skip_a_running_analysis_and_say_so() {
    // A first measurement an hour away: the run is still running when promoted.
    let server = RateServer::start(r#"{"rate": 0.001}"#);
    let mut t = http_template(&server);
    t["spec"]["metrics"][0]["initialDelay"] = json!("1h");
    let (f, _machines) = at_v1("embedded", Backend::embedded(), t);
    f.run(&["set", "version", "api", "v2"]).ok();
    f.wait("the analysis run to start", || {
        let r = f.get_rollout();
        r.status?.analysis_runs.last().map(|_| ())
    });
    let out = f.run(&["rollout", "promote", "api", "--full"]).ok();
    assert!(
        out.stdout.contains("the remaining analysis is skipped"),
        "{}",
        out.stdout
    );
    let r = f.wait_complete("v2", 3);
    let run = r
        .status
        .expect("complete")
        .analysis_runs
        .pop()
        .expect("ran");
    assert_eq!(run.phase, AnalysisPhase::Skipped, "{run:?}");
}

#[test]
fn a_failing_background_analysis_should_roll_back_while_the_steps_wait() {
    let server = RateServer::start(r#"{"rate": 0.3}"#);
    let (f, machines) = Fleet::at_v1(
        "etcd",
        Backend::etcd(),
        3,
        json!({ "activate": [hook(COUNT_ACTIVATIONS)] }),
        json!({}),
        json!({
            "maxUnavailable": 1,
            "steps": [{ "machines": 1 }, { "pause": {} }],
            "analysis": { "templates": [{ "name": "error-rate" }], "startingStep": 1 },
        }),
        json!({ "maxFailures": 0, "action": "Pause" }),
    );
    f.apply(&[http_template(&server)]);
    f.run(&["set", "version", "api", "v2"]).ok();
    let run = rolled_back_by_analysis(&f, &machines, "v1");
    assert!(run.background, "{run:?}");
    assert_eq!(run.phase, AnalysisPhase::Failed, "{run:?}");
}

#[test]
fn a_failover_should_resume_the_run_and_an_escaped_version_should_reach_the_url_intact() {
    let server = RateServer::start(r#"{"rate": 0.001}"#);
    let mut t = http_template(&server);
    t["spec"]["metrics"][0]["count"] = json!(6);
    t["spec"]["metrics"][0]["interval"] = json!("500ms");
    let (mut f, _machines) = at_v1("etcd", Backend::etcd(), t);
    // A `+` spliced raw into a query reads as a space.
    let version = "v2+b.1";
    build_artifact(&f.artifacts(), version);
    let standby = f.start_controller_with("ctl-b", &[]);
    f.run(&["set", "version", "api", version]).ok();
    let started = f.wait("two measurements taken by the first leader", || {
        let r = f.get_rollout();
        let run = r.status?.analysis_runs.pop()?;
        (run.metrics.first()?.successful >= 2).then_some(run.started_at)
    });
    f.kill_controller(0);
    let led = f.controllers[standby]
        .as_mut()
        .expect("only the first controller was killed")
        .wait_for_stderr_line(std::time::Duration::from_secs(30), |l| {
            l.contains("became the leader")
        });
    assert!(led.is_some(), "the standby never took over");
    let r = f.wait_complete(version, 3);
    let runs = r.status.expect("complete").analysis_runs;
    assert_eq!(runs.len(), 1, "resumed, not restarted: {runs:?}");
    assert_eq!(runs[0].started_at, started);
    assert_eq!(runs[0].phase, AnalysisPhase::Successful);
    assert_eq!(runs[0].metrics[0].successful, 6, "{runs:?}");
    let seen = server.requests.lock().expect("not poisoned").clone();
    assert!(
        seen.iter()
            .all(|l| l.starts_with("GET /rate?version=v2%2Bb.1 ")),
        "{seen:?}"
    );
}
