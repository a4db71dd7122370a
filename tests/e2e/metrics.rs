//! `/metrics`, `/healthz` and `/readyz` of real `deployctl controller` and `agent`
//! processes, scraped over loopback HTTP during a rollout, on both stores; and the
//! Grafana dashboard's metric names checked against what a real controller and agent
//! export.

use crate::common::{Backend, Spawned};
use crate::rollouts::{build_artifact, wait_until, Fleet};
use serde_json::{json, Value};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

/// How long an endpoint may take to reach the state a test waits for (a takeover waits
/// out the old leader's 3 s lease; etcd restarts).
const ENDPOINT_DEADLINE: Duration = Duration::from_secs(40);

/// The address a daemon started with `--http-addr 127.0.0.1:0` reports it bound, from
/// its log (text `addr=...` or JSON `"addr":"..."`).
fn served_addr(daemon: &mut Spawned) -> String {
    let line = daemon
        .wait_for_stderr_line(Duration::from_secs(20), |l| {
            l.contains("serving /metrics, /healthz and /readyz")
        })
        .expect("a daemon with --http-addr logs the address it serves on");
    if let Ok(v) = serde_json::from_str::<Value>(&line) {
        return v["fields"]["addr"]
            .as_str()
            .unwrap_or_else(|| panic!("no fields.addr in {line}"))
            .to_string();
    }
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no addr= in {line}"));
    // Text logs may colour nothing here (stderr is a pipe), but strip any escape anyway.
    addr.trim_matches(|c: char| !c.is_ascii_graphic())
        .to_string()
}

/// `GET http://addr/path`: the status and body, or `None` when nothing answered.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let rt = crate::common::rt();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("a plain HTTP client builds");
        let resp = client
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.text().await.ok()?))
    })
}

/// `POST http://addr/path` with a body: the status, or `None` when nothing answered.
fn post(addr: &str, path: &str) -> Option<u16> {
    crate::common::rt().block_on(async {
        let resp = reqwest::Client::new()
            .post(format!("http://{addr}{path}"))
            .body("x")
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        Some(resp.status().as_u16())
    })
}

/// Waits until `GET addr/path` answers `status`; returns the body.
fn wait_status(what: &str, addr: &str, path: &str, status: u16) -> String {
    let mut last = None;
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(what, ENDPOINT_DEADLINE, || {
            let got = get(addr, path);
            last = got.clone();
            got.filter(|(s, _)| *s == status).map(|(_, body)| body)
        })
    }));
    found.unwrap_or_else(|_| panic!("{what}: {path} never answered {status}; last: {last:?}"))
}

/// One sample of a scrape: name, labels, value.
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of an OpenMetrics text scrape (label values without escapes, as
/// deployctl's are).
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {l}"));
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| kv.split_once("=\""))
                .map(|(k, v)| (k.to_string(), v.trim_end_matches('"').to_string()))
                .collect();
            Sample {
                name: name.to_string(),
                labels,
                value: value.parse().unwrap_or_else(|_| panic!("bad value in {l}")),
            }
        })
        .collect()
}

/// The sum of `name`'s samples whose labels include every pair of `with`.
fn total(text: &str, name: &str, with: &[(&str, &str)]) -> f64 {
    samples(text)
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// `GET /metrics`, which must answer 200.
fn scrape(addr: &str) -> String {
    match get(addr, "/metrics") {
        Some((200, body)) => body,
        other => panic!("GET {addr}/metrics: {other:?}"),
    }
}

/// The families a scrape declares (`# TYPE name kind`), with their kind.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, k)| (n.to_string(), k.to_string()))
        .collect()
}

/// True when `name` (as a PromQL query writes it) is a series of a declared family:
/// the family itself, a counter's `_total`, or a histogram's `_bucket`/`_sum`/`_count`.
fn exported(name: &str, families: &BTreeMap<String, String>) -> bool {
    families.iter().any(|(f, kind)| {
        let suffixes: &[&str] = match kind.as_str() {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        suffixes.iter().any(|s| name == format!("{f}{s}"))
    })
}

/// Every `deployctl_*` metric name the dashboard's queries and annotations use.
fn dashboard_metric_names() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/grafana/deployctl.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard is in the repository");
    let dashboard: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let mut exprs = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dashboard, &mut exprs);
    let names: BTreeSet<String> = exprs
        .iter()
        .flat_map(|e| {
            e.match_indices("deployctl_")
                .map(|(i, _)| {
                    e[i..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect::<String>()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        names.len() >= 15,
        "the dashboard uses every metric: {names:?}"
    );
    names
}

/// The labels of the Rollout `api`'s info series at v2 in `phase`.
fn info(phase: &str) -> [(&'static str, &str); 4] {
    [
        ("namespace", "default"),
        ("rollout", "api"),
        ("phase", phase),
        ("version", "v2"),
    ]
}

/// An activate hook that, for v2 only, waits for the fleet's gate file: the rollout
/// stays in progress until the test opens it.
fn gated_activate() -> Value {
    json!({
        "activate": [{
            "command": r#"[ "$DEPLOY_VERSION" = v1 ] || while [ ! -e "$GATE" ]; do sleep 0.1; done"#,
            "timeoutSeconds": 120,
        }],
    })
}

/// Test 1, on both stores: the counts move during a rollout, readiness follows
/// leadership, and the agent's endpoint is off unless asked for.
#[test]
fn a_scrape_during_a_rollout_should_show_its_counts_move_and_readiness_follow_leadership() {
    for (label, backend) in Backend::all() {
        scrape_a_rollout(label, backend);
    }
}

fn scrape_a_rollout(label: &'static str, backend: Backend) {
    let mut f = Fleet::new(label, backend);
    for v in ["v1", "v2"] {
        build_artifact(&f.artifacts(), v);
    }
    let a = f.start_controller_with("ctl-a", &["--http-addr", "127.0.0.1:0"]);
    let ctl = served_addr(f.controllers[a].as_mut().expect("just started"));
    f.start_agent_with(
        "m0",
        &["-v", "--log-format", "json", "--http-addr", "127.0.0.1:0"],
    );
    let agent = served_addr(f.agents.get_mut("m0").expect("just started"));
    agent_without_the_flag_should_serve_nothing(&mut f, label);

    // Ready: the leader has synced its caches, the agent has registered.
    wait_status(&format!("[{label}] controller ready"), &ctl, "/readyz", 200);
    wait_status(&format!("[{label}] agent ready"), &agent, "/readyz", 200);
    wait_status(
        &format!("[{label}] controller healthy"),
        &ctl,
        "/healthz",
        200,
    );
    wait_status(&format!("[{label}] agent healthy"), &agent, "/healthz", 200);
    assert_eq!(get(&ctl, "/nothing").map(|r| r.0), Some(404), "[{label}]");
    assert_eq!(post(&ctl, "/metrics"), Some(405), "[{label}] read-only");

    f.apply(&[
        f.app(gated_activate(), json!({})),
        Fleet::rollout(
            "v1",
            json!({ "maxUnavailable": 1 }),
            json!({ "maxFailures": 0, "action": "Pause" }),
        ),
    ]);
    f.wait_complete("v1", 2);
    f.run(&["set", "version", "api", "v2"]).ok();

    // During: v2 is in progress while the gate holds its activate hooks.
    let during = f.wait(&format!("[{label}] /metrics shows v2 in progress"), || {
        let text = scrape(&ctl);
        (total(&text, "deployctl_rollout_info", &info("Progressing")) == 1.0).then_some(text)
    });
    let agent_during = scrape(&agent);
    std::fs::write(f.gate(), "").expect("the logs dir is writable");
    f.wait_complete("v2", 2);

    // After: the same series moved.
    let after = f.wait(&format!("[{label}] /metrics shows v2 complete"), || {
        let text = scrape(&ctl);
        (total(&text, "deployctl_rollout_info", &info("Complete")) == 1.0).then_some(text)
    });
    let rollout = [("namespace", "default"), ("rollout", "api")];
    let machines = |text: &str, state: &str| {
        total(
            text,
            "deployctl_rollout_machines",
            &[rollout[0], rollout[1], ("state", state)],
        )
    };
    assert_eq!(
        total(&after, "deployctl_rollout_info", &rollout),
        1.0,
        "[{label}] one info series per rollout:\n{after}"
    );
    assert_eq!(machines(&after, "desired"), 2.0, "[{label}]\n{after}");
    assert_eq!(machines(&after, "updated"), 2.0, "[{label}]\n{after}");
    assert_eq!(machines(&after, "available"), 2.0, "[{label}]\n{after}");
    assert!(
        machines(&during, "updated") < 2.0,
        "[{label}] not every machine was updated while the gate held:\n{during}"
    );
    let moved = |name: &str, with: &[(&str, &str)]| {
        let (b, a) = (total(&during, name, with), total(&after, name, with));
        assert!(a > b, "[{label}] {name}{with:?} did not move: {b} -> {a}");
    };
    moved(
        "deployctl_rollout_duration_seconds_count",
        &[("result", "Complete")],
    );
    moved(
        "deployctl_reconcile_duration_seconds_count",
        &[("kind", "Rollout")],
    );
    moved(
        "deployctl_store_requests_total",
        &[("op", "txn"), ("result", "ok")],
    );
    moved("deployctl_workqueue_adds_total", &[]);
    assert_eq!(total(&after, "deployctl_leader", &[]), 1.0, "[{label}]");
    f.wait(
        &format!("[{label}] deployctl_machines counts 2 ready"),
        || {
            let text = scrape(&ctl);
            (total(&text, "deployctl_machines", &[("state", "ready")]) == 2.0).then_some(())
        },
    );
    assert!(
        !after.contains("machine=") && !after.contains("\"m0\"") && !after.contains("\"m1\""),
        "[{label}] no machine names on controller metrics:\n{after}"
    );

    // The agent's own counts moved with its switch to v2.
    let agent_after = scrape(&agent);
    let agent_moved = |name: &str, with: &[(&str, &str)]| {
        let (b, a) = (
            total(&agent_during, name, with),
            total(&agent_after, name, with),
        );
        assert!(
            a > b,
            "[{label}] agent {name}{with:?} did not move: {b} -> {a}"
        );
    };
    agent_moved("deployctl_agent_switches_total", &[("result", "ok")]);
    agent_moved(
        "deployctl_agent_hook_duration_seconds_count",
        &[("hook", "activate")],
    );
    assert!(
        total(&agent_after, "deployctl_agent_artifact_bytes_total", &[]) > 0.0
            && total(
                &agent_after,
                "deployctl_agent_stage_duration_seconds_count",
                &[]
            ) >= 2.0,
        "[{label}] the agent staged v1 and v2:\n{agent_after}"
    );
    assert!(
        total(
            &agent_after,
            "deployctl_store_requests_total",
            &[("op", "txn")]
        ) > 0.0,
        "[{label}] the agent's store writes are counted:\n{agent_after}"
    );

    // Every metric the dashboard draws is one these daemons export.
    let mut exported_families = families(&after);
    exported_families.extend(families(&agent_after));
    for name in dashboard_metric_names() {
        assert!(
            exported(&name, &exported_families),
            "[{label}] the dashboard uses {name}, which no daemon exports"
        );
    }

    // A standby is alive but not ready until it takes over.
    let b = f.start_controller_with("ctl-b", &["--http-addr", "127.0.0.1:0"]);
    let standby = served_addr(f.controllers[b].as_mut().expect("just started"));
    let why = wait_status(
        &format!("[{label}] standby not ready"),
        &standby,
        "/readyz",
        503,
    );
    assert!(why.contains("not leading"), "[{label}] {why}");
    wait_status(
        &format!("[{label}] standby healthy"),
        &standby,
        "/healthz",
        200,
    );
    assert_eq!(total(&scrape(&standby), "deployctl_leader", &[]), 0.0);
    drop(f.controllers[a].take()); // SIGKILL: the standby takes over after the lease
    wait_status(
        &format!("[{label}] new leader ready"),
        &standby,
        "/readyz",
        200,
    );
    assert_eq!(total(&scrape(&standby), "deployctl_leader", &[]), 1.0);
    f.wait(
        &format!("[{label}] the new leader exports the rollout"),
        || {
            let text = scrape(&standby);
            (total(&text, "deployctl_rollout_info", &info("Complete")) == 1.0).then_some(())
        },
    );
}

/// An agent started without `--http-addr` registers and never serves: its log has no
/// "serving" line before "agent registered" (the endpoint is bound before connecting).
fn agent_without_the_flag_should_serve_nothing(f: &mut Fleet, label: &str) {
    f.start_agent_with("m1", &["-v"]);
    let served = Cell::new(false);
    let m1 = f.agents.get_mut("m1").expect("just started");
    let registered = m1.wait_for_stderr_line(Duration::from_secs(20), |l| {
        if l.contains("serving /metrics") {
            served.set(true);
        }
        l.contains("agent registered")
    });
    assert!(registered.is_some(), "[{label}] m1 registers");
    assert!(
        !served.get(),
        "[{label}] an agent serves nothing unless --http-addr is given"
    );
}

/// Test 2, etcd only (the embedded store cannot be stopped under a running process):
/// `/healthz` fails while the store is down and recovers when it is back; an agent
/// started while it is down is not ready until it has registered.
#[test]
fn healthz_should_fail_while_etcd_is_down_and_recover_when_it_is_back() {
    let label = "etcd";
    let mut f = Fleet::new(label, Backend::etcd());
    let a = f.start_controller_with("ctl-a", &["--http-addr", "127.0.0.1:0"]);
    let ctl = served_addr(f.controllers[a].as_mut().expect("just started"));
    f.start_agent_with("m0", &["-v", "--http-addr", "127.0.0.1:0"]);
    let agent = served_addr(f.agents.get_mut("m0").expect("just started"));
    wait_status("controller ready", &ctl, "/readyz", 200);
    wait_status("agent ready", &agent, "/readyz", 200);
    wait_status("controller healthy", &ctl, "/healthz", 200);
    wait_status("agent healthy", &agent, "/healthz", 200);

    let Backend::Etcd(etcd) = &mut f.backend else {
        unreachable!("this test runs on etcd")
    };
    etcd.stop();
    let why = wait_status("controller unhealthy with etcd down", &ctl, "/healthz", 503);
    assert!(why.starts_with("store: "), "{why}");
    wait_status("agent unhealthy with etcd down", &agent, "/healthz", 503);
    // The endpoints answer while the store is down: the process is alive.
    assert_eq!(get(&ctl, "/metrics").map(|r| r.0), Some(200));

    f.start_agent_with("m1", &["-v", "--http-addr", "127.0.0.1:0"]);
    let late = served_addr(f.agents.get_mut("m1").expect("just started"));
    let why = wait_status("late agent not ready", &late, "/readyz", 503);
    assert!(why.contains("not registered"), "{why}");
    wait_status("late agent unhealthy", &late, "/healthz", 503);

    let Backend::Etcd(etcd) = &mut f.backend else {
        unreachable!("this test runs on etcd")
    };
    etcd.restart();
    wait_status("controller healthy again", &ctl, "/healthz", 200);
    wait_status("agent healthy again", &agent, "/healthz", 200);
    wait_status("late agent ready once registered", &late, "/readyz", 200);
    wait_status("late agent healthy", &late, "/healthz", 200);
    let text = scrape(&ctl);
    assert!(
        total(
            &text,
            "deployctl_store_requests_total",
            &[("result", "error")]
        ) > 0.0,
        "the outage shows as failed store requests:\n{text}"
    );
}

/// JSON logs carry the span fields: every agent line names its machine.
#[test]
fn json_logs_should_carry_the_daemons_span_fields() {
    let mut f = Fleet::new("embedded", Backend::embedded());
    f.start_agent_with("m0", &["-v", "--log-format", "json"]);
    let m0 = f.agents.get_mut("m0").expect("just started");
    let line = m0
        .wait_for_stderr_line(Duration::from_secs(20), |l| l.contains("agent registered"))
        .expect("the agent registers");
    let v: Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    assert_eq!(v["level"], "INFO", "{line}");
    assert_eq!(v["fields"]["message"], "agent registered", "{line}");
    assert_eq!(v["span"]["name"], "agent", "{line}");
    assert_eq!(v["span"]["machine"], "m0", "{line}");
}

#[test]
fn a_scrape_after_deployctl_run_should_count_tasks_by_phase_and_commands_by_result() {
    for (label, backend) in Backend::all() {
        let mut f = Fleet::new(label, backend);
        build_artifact(&f.artifacts(), "v1");
        let a = f.start_controller_with("ctl-a", &["--http-addr", "127.0.0.1:0"]);
        let ctl = served_addr(f.controllers[a].as_mut().expect("just started"));
        f.start_agent_with("m0", &["-v", "--http-addr", "127.0.0.1:0"]);
        let agent = served_addr(f.agents.get_mut("m0").expect("just started"));
        f.apply(&[
            f.app(json!({}), json!({})),
            Fleet::rollout(
                "v1",
                json!({ "maxUnavailable": 1 }),
                json!({ "maxFailures": 0, "action": "Pause" }),
            ),
        ]);
        f.wait_complete("v1", 1);

        // One command exits 0, one exits 1, one outlives its timeout.
        f.run(&["run", "api", "--", "true"]).ok();
        f.run(&["run", "api", "--", "false"]).code(1);
        f.run(&["run", "api", "--timeout", "1s", "--", "sleep 60"])
            .code(1);

        let text = scrape(&agent);
        for (result, n) in [
            ("ok", 1.0),
            ("failed", 1.0),
            ("timeout", 1.0),
            ("interrupted", 0.0),
        ] {
            assert_eq!(
                total(
                    &text,
                    "deployctl_agent_task_commands_total",
                    &[("result", result)]
                ),
                n,
                "[{label}] {result}: {text}"
            );
        }
        assert_eq!(
            total(
                &text,
                "deployctl_agent_task_command_duration_seconds_count",
                &[]
            ),
            3.0,
            "[{label}] {text}"
        );
        assert!(
            total(
                &text,
                "deployctl_agent_task_command_duration_seconds_sum",
                &[]
            ) >= 1.0,
            "[{label}] the timed-out command ran its second: {text}"
        );
        // The leader counts its Tasks periodically: wait for the count to reach them.
        wait_until(
            &format!("[{label}] tasks counted by phase"),
            ENDPOINT_DEADLINE,
            || {
                let text = scrape(&ctl);
                let phase = |p| total(&text, "deployctl_tasks", &[("phase", p)]);
                (phase("Succeeded") == 1.0
                    && phase("Failed") == 2.0
                    && phase("Running") == 0.0
                    && phase("Pending") == 0.0)
                    .then_some(())
            },
        );
    }
}
