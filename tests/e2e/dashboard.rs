//! `deployctl dashboard` as users run it: its own process against a real fleet (a
//! controller and agents), looked at in a real browser (Chromium through Playwright, see
//! `browser.rs`), and its live stream read over plain HTTP on both stores.

use crate::common::{spawn, tempdir, write, Backend, Spawned};
use crate::rollouts::{build_artifact, Fleet};
use deployctl::api::{Machine, MachineSpec, Object, RolloutPhase};
use deployctl::testing::browser::Browser;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const TOKEN: &str = "dashboard-test-token-0123456789abcdef";

/// Starts `deployctl dashboard` on a free loopback port with `extra` flags; its URL.
fn start_dashboard(store: &str, extra: &[&str]) -> (Spawned, String) {
    let mut args = vec!["dashboard", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut d = spawn(store, &args);
    let line = d.wait_for_line("with the address", |l| l.starts_with("dashboard on "));
    let url = line
        .trim_start_matches("dashboard on ")
        .trim_end_matches('/')
        .to_string();
    (d, url)
}

/// Where the screenshots go: the test's output directory, kept after the run.
fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).expect("the target dir is writable");
    dir
}

/// The rollout page, its rows live; a set version, a pause step, promote with the token;
/// without it no buttons and 403; a hostile label shown as text; a screenshot of each
/// page; on both stores.
#[test]
fn dashboard_should_show_a_rollout_live_and_promote_it_in_a_real_browser() {
    for (label, backend) in Backend::all() {
        live_rollout_in_a_browser(label, backend);
    }
}

fn live_rollout_in_a_browser(label: &'static str, backend: Backend) {
    let mut f = Fleet::new(label, backend);
    for v in ["v1", "v2"] {
        build_artifact(&f.artifacts(), v);
    }
    f.start_controller_with("ctl-a", &[]);
    for m in ["m0", "m1", "m2"] {
        f.start_agent(m);
    }
    let app = f.app(json!({}), json!({}));
    let steps = json!({ "maxUnavailable": 1, "steps": [{ "machines": 1 }, { "pause": {} }] });
    f.apply(&[app.clone(), Fleet::rollout("v1", steps.clone(), json!({}))]);
    f.wait_complete("v1", 3);
    // A Machine written straight to the store (as a compromised or buggy writer could),
    // with markup in a label: the page must show it as text and run nothing.
    let hostile = "<script>window.__pwned=1</script><img src=x>";
    let rt = crate::common::rt();
    rt.block_on(async {
        let mut m = Machine::new("intruder", MachineSpec::default());
        m.metadata.labels.insert("note".into(), hostile.into());
        f.backend
            .client()
            .await
            .create(&m)
            .await
            .expect("create the Machine");
    });

    let files = tempdir();
    let token_file = write(files.path(), "token", TOKEN);
    let (_dash, url) = start_dashboard(&f.store, &["--allow-actions", "--token-file", &token_file]);
    let mut b = Browser::launch();
    b.goto(&format!("{url}/#/rollouts"));
    b.wait_text("tr.rollout", "v1");
    // A marker that a reload would wipe: the rows below change without one.
    b.eval("window.__marker = 'still here'");
    f.run(&["set", "version", "api", "v2"]).ok();
    b.wait_text("tr.rollout", "v1 → v2");
    let row = b.wait_text("tr.rollout", "Paused");
    assert!(row.contains("2/2"), "the row shows the pause step: {row}");
    assert_eq!(b.eval("window.__marker"), json!("still here"), "no reload");
    b.screenshot(&shots().join(format!("{label}-rollouts.png")));

    // The rollout's page: steps, grid; no action buttons without the token, and the
    // endpoint refuses.
    b.click("tr.rollout a");
    b.wait_text("li.step.current", "pause until promoted");
    b.wait_text("details.group", "v2 (target)");
    // A group opens to list its machines (the one switched to v2 so far).
    b.click("details.group.target summary");
    let member = b.wait_text("details.group.target .members .cell", "healthy");
    assert!(member.starts_with('m'), "a machine of the fleet: {member}");
    assert_eq!(
        b.count("details.group.target .members .cell"),
        1,
        "the canary step's one machine"
    );
    assert_eq!(
        b.count("#actions button"),
        0,
        "no buttons before signing in"
    );
    let promote = format!("{url}/api/namespaces/default/rollouts/api/actions/promote");
    let (status, body) = b.fetch(&promote, "POST", "{}");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("sign in"), "{body}");
    assert_eq!(
        f.get_rollout().status.and_then(|s| s.handled_promote),
        None,
        "a refused action writes nothing"
    );

    // Sign in; promote with a confirmation; the rollout goes on and completes.
    b.call("fill", json!({ "selector": "#token", "value": TOKEN }));
    b.click("#signin button");
    b.wait_text("#notice", "Signed in");
    b.wait_text("#action-promote", "Promote");
    // The session lives in this origin's sessionStorage, not in a cookie that the
    // browser would also send to other ports of 127.0.0.1.
    assert_eq!(b.eval("document.cookie"), json!(""));
    assert_eq!(
        b.eval("(sessionStorage.getItem('deployctl-session') || '').length"),
        json!(64)
    );
    b.screenshot(&shots().join(format!("{label}-rollout.png")));
    // README's picture: `DEPLOYCTL_BLESS=1 cargo test --test e2e dashboard_should_show`.
    if std::env::var_os("DEPLOYCTL_BLESS").is_some() {
        b.screenshot(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png"));
    }
    b.call("acceptNextDialog", json!({}));
    b.click("#action-promote");
    b.wait_text("#notice", "promoted");
    b.wait_text("h1 .phase", "Complete");
    let done = f.wait_complete("v2", 3);
    assert_eq!(done.status.map(|s| s.phase), Some(RolloutPhase::Complete));
    b.wait_text("details.group", "3 v2 (target)");

    // Machines: the hostile label is text; nothing ran.
    b.goto(&format!("{url}/#/machines"));
    b.wait_text("tr.machine", "m2");
    b.wait_text("tr.machine td.apps", "api v2 (Running)");
    // The heartbeat is the agent's lease, read as `describe machine` reads it.
    b.wait_text("tr.machine td.heartbeat", "ago (lease");
    let text = b.wait_text("tr.machine td.labels", "<script>");
    assert!(text.contains(hostile), "shown verbatim: {text}");
    assert_eq!(
        b.count("td.labels script, td.labels img"),
        0,
        "no element made from it"
    );
    assert_eq!(b.eval("window.__pwned === undefined"), json!(true));
    b.screenshot(&shots().join(format!("{label}-machines.png")));

    b.goto(&format!("{url}/#/events"));
    b.wait_text("tr.event", "rollout/api");
    b.screenshot(&shots().join(format!("{label}-events.png")));
    // The one error the page may log is the refused promote this test sent on purpose.
    let errors = b.console_errors();
    let unexpected: Vec<&String> = errors
        .iter()
        .filter(|e| !e.contains("status of 403"))
        .collect();
    assert!(unexpected.is_empty(), "the page logged errors: {errors:?}");
    assert_eq!(errors.len(), 1, "the refused promote: {errors:?}");
}

/// Without `--allow-actions` a valid token still cannot act, and a foreign Origin
/// cannot act even with it.
#[test]
fn dashboard_actions_should_need_allow_actions_the_token_and_the_same_origin() {
    for (_, backend) in Backend::all() {
        actions_need_allow_actions_the_token_and_the_same_origin(&backend);
    }
}

fn actions_need_allow_actions_the_token_and_the_same_origin(backend: &Backend) {
    let store = backend.url();
    let files = tempdir();
    let token_file = write(files.path(), "token", TOKEN);
    let manifest = write(
        files.path(),
        "r.yaml",
        "apiVersion: deployctl.dev/v1\nkind: Application\nmetadata: {name: api}\n\
         spec:\n  artifact: {url: 'file:///nowhere/{{version}}.tar.gz'}\n---\n\
         apiVersion: deployctl.dev/v1\nkind: Rollout\nmetadata: {name: api}\n\
         spec: {application: api, version: 1.0.0}\n",
    );
    crate::common::run(&store, &["apply", "-f", &manifest]).ok();
    let post = |url: &str, headers: &[(&str, &str)]| -> u16 {
        let path = "/api/namespaces/default/rollouts/api/actions/pause";
        let (status, _) = http(url, "POST", path, headers, "{}");
        status
    };
    let bearer = format!("Bearer {TOKEN}");
    {
        let (_d, url) = start_dashboard(&store, &["--token-file", &token_file]);
        let host = url.trim_start_matches("http://").to_string();
        let origin = url.clone();
        let ok_headers = [
            ("Authorization", bearer.as_str()),
            ("Origin", origin.as_str()),
            ("Host", host.as_str()),
        ];
        assert_eq!(
            post(&url, &ok_headers),
            403,
            "actions off without --allow-actions"
        );
    }
    let (_d, url) = start_dashboard(&store, &["--allow-actions", "--token-file", &token_file]);
    let host = url.trim_start_matches("http://").to_string();
    let origin = url.clone();
    assert_eq!(post(&url, &[("Origin", &origin)]), 403, "no token");
    assert_eq!(
        post(
            &url,
            &[
                ("Authorization", &bearer),
                ("Origin", "http://evil.example")
            ]
        ),
        403,
        "another origin"
    );
    assert_eq!(post(&url, &[("Authorization", &bearer)]), 403, "no Origin");
    let (status, _) = http(
        &url,
        "GET",
        "/api/config",
        &[("Host", "evil.example:80")],
        "",
    );
    assert_eq!(status, 421, "a rebound host name is refused");
    assert!(!paused(&store), "nothing was written by a refused action");
    assert_eq!(
        post(
            &url,
            &[
                ("Authorization", &bearer),
                ("Origin", &origin),
                ("Host", &host)
            ]
        ),
        200
    );
    assert!(paused(&store), "the action wrote spec.paused");
    // An action made on what the page showed (its generation) is refused once the
    // rollout changed since.
    let body = r#"{"generation": 1}"#;
    let resume = "/api/namespaces/default/rollouts/api/actions/resume";
    let headers = [
        ("Authorization", bearer.as_str()),
        ("Origin", origin.as_str()),
        ("Host", host.as_str()),
    ];
    let (status, text) = http(&url, "POST", resume, &headers, body);
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("changed since the page showed it"), "{text}");
    assert!(paused(&store), "a refused resume wrote nothing");

    // Guessing: ten wrong tokens, then even the right one is refused for a while.
    let wrong = format!("Bearer {TOKEN}x");
    for _ in 0..10 {
        let (status, _) = http(
            &url,
            "GET",
            "/api/config",
            &[("Authorization", wrong.as_str())],
            "",
        );
        assert_eq!(status, 200, "config answers, signed out");
    }
    let (status, text) = http(
        &url,
        "GET",
        "/api/config",
        &[("Authorization", bearer.as_str())],
        "",
    );
    assert_eq!(status, 429, "{text}");
}

fn paused(store: &str) -> bool {
    let out = crate::common::run(store, &["get", "rollout", "api", "-o", "json"]).ok();
    let v: Value = serde_json::from_str(&out.stdout).expect("get -o json prints JSON");
    v["spec"]["paused"] == json!(true)
}

/// A minimal HTTP/1.1 request; the status and the body read until the connection closes.
fn http(
    url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("the dashboard listens");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut text = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut text);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:.200}"));
    (
        status,
        text.split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string(),
    )
}

/// The live stream on both stores: the first message holds every row, a `set version`
/// arrives as a diff of that one row, a deletion as a deleted key.
#[test]
fn dashboard_stream_should_send_rows_then_only_what_changed_on_both_stores() {
    for (label, backend) in Backend::all() {
        let store = backend.url();
        let files = tempdir();
        let mut docs = String::from(
            "apiVersion: deployctl.dev/v1\nkind: Application\nmetadata: {name: api}\n\
             spec:\n  artifact: {url: 'file:///nowhere/{{version}}.tar.gz'}\n",
        );
        for name in ["a", "b", "c"] {
            docs.push_str(&format!(
                "---\napiVersion: deployctl.dev/v1\nkind: Rollout\nmetadata: {{name: {name}}}\n\
                 spec: {{application: api, version: 1.0.0}}\n"
            ));
        }
        crate::common::run(
            &store,
            &["apply", "-f", &write(files.path(), "r.yaml", &docs)],
        )
        .ok();
        let (_d, url) = start_dashboard(&store, &[]);
        let mut sse = Sse::open(&url, "/api/stream?topic=rollouts");
        let first = sse.next_rows();
        assert_eq!(first["reset"], json!(true), "[{label}] {first}");
        let keys = |m: &Value| -> Vec<String> {
            m["upsert"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r[0].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            keys(&first),
            ["default/a", "default/b", "default/c"],
            "[{label}]"
        );

        crate::common::run(&store, &["set", "version", "b", "2.0.0"]).ok();
        let change = sse.rows_until(|m| keys(m).contains(&"default/b".to_string()));
        assert_eq!(change["reset"], json!(false), "[{label}] a diff: {change}");
        assert_eq!(
            keys(&change),
            ["default/b"],
            "[{label}] only the changed row: {change}"
        );
        let row = &change["upsert"][0][1];
        assert!(
            row["version"].as_str().unwrap().contains("2.0.0"),
            "[{label}] {row}"
        );

        crate::common::run(&store, &["delete", "rollout", "c", "--wait=false"]).ok();
        let gone = sse.rows_until(|m| !m["delete"].as_array().unwrap().is_empty());
        assert_eq!(gone["delete"], json!(["default/c"]), "[{label}] {gone}");
    }
}

/// A Server-Sent Events stream read line by line.
struct Sse {
    lines: std::io::Lines<BufReader<std::net::TcpStream>>,
}

impl Sse {
    fn open(url: &str, path: &str) -> Sse {
        let addr = url.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).expect("the dashboard listens");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        Sse {
            lines: BufReader::new(s).lines(),
        }
    }

    /// The next `rows` message's data.
    fn next_rows(&mut self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut event = String::new();
        while Instant::now() < deadline {
            let line = self
                .lines
                .next()
                .expect("the stream stays open")
                .expect("the stream is readable");
            if let Some(e) = line.strip_prefix("event: ") {
                event = e.to_string();
            } else if let Some(data) = line.strip_prefix("data: ") {
                if event == "rows" {
                    return serde_json::from_str(data).expect("rows data is JSON");
                }
            }
        }
        panic!("no rows message within 30 s");
    }

    /// The first `rows` message for which `pred` holds.
    fn rows_until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..100 {
            let m = self.next_rows();
            if pred(&m) {
                return m;
            }
        }
        panic!("no matching rows message in 100");
    }
}

/// A degraded rollout's page as its status says it (written straight to the store, as a
/// controller would): failed machines with their reason and output, analysis runs,
/// waves, all as text, markup in them included.
#[test]
fn dashboard_should_show_failures_analysis_and_waves_as_text() {
    for (label, backend) in Backend::all() {
        failures_analysis_and_waves_as_text(label, &backend);
    }
}

fn failures_analysis_and_waves_as_text(label: &str, backend: &Backend) {
    let store = backend.url();
    let markup = "<img src=x onerror=\"window.__pwned=1\">";
    let status: deployctl::api::RolloutStatus = serde_json::from_value(json!({
        "observedGeneration": 1,
        "phase": "Degraded",
        "message": format!("1 machine(s) failed {markup}"),
        "targetVersion": "v2",
        "stableVersion": "v1",
        "desired": 4, "staged": 4, "updated": 1, "available": 3, "failed": 1,
        "failureHistory": [{
            "revision": 2, "version": "v2", "failed": 1,
            "machines": [{
                "machine": "m3", "operation": "Switch", "reason": "HookFailed",
                "message": "activate exited 1", "time": "2026-12-01T00:00:00Z",
                "output": ["starting", format!("error: {markup}")],
            }],
        }],
        "analysisRuns": [{
            "revision": 2, "step": 1, "phase": "Failed", "startedAt": "2026-12-01T00:00:00Z",
            "templates": ["error-rate"], "message": "error-rate failed",
            "metrics": [{
                "name": "error-rate", "phase": "Failed", "count": 3, "successful": 1,
                "failed": 2, "measurements": [{
                    "time": "2026-12-01T00:00:00Z", "phase": "Failed", "value": "0.42",
                }],
            }],
        }],
        "waves": [
            {"value": "zone-a", "version": "v2", "phase": "Done", "machines": 2, "available": 2},
            {"value": "zone-b", "version": "v2", "phase": "Current", "machines": 2, "available": 1},
        ],
    }))
    .expect("a RolloutStatus");
    crate::common::rt().block_on(async {
        let mut r = deployctl::api::Rollout::new(
            "web",
            deployctl::api::RolloutSpec {
                application: "web".into(),
                version: "v2".into(),
                ..Default::default()
            },
        );
        r.status = Some(status);
        backend
            .client()
            .await
            .create_with_status(&r)
            .await
            .expect("create the Rollout");
    });
    let (_d, url) = start_dashboard(&store, &[]);
    let mut b = Browser::launch();
    b.goto(&format!("{url}/#/rollouts/default/web"));
    b.wait_text("h1 .phase", "Degraded");
    let failure = b.wait_text("details.failure summary", "m3: Switch HookFailed");
    assert!(failure.contains("activate exited 1"), "{failure}");
    b.click("details.failure summary");
    b.wait_text("details.failure pre", &format!("error: {markup}"));
    b.wait_text(".analysis h3", "error-rate");
    b.wait_text(".analysis td", "0.42");
    b.wait_text("section table td", "zone-b");
    b.wait_text("#message", markup);
    assert_eq!(
        b.count("main img"),
        0,
        "no element made from the store's text"
    );
    assert_eq!(b.eval("window.__pwned === undefined"), json!(true));
    b.screenshot(&shots().join(format!("{label}-degraded.png")));
    let errors = b.console_errors();
    assert!(errors.is_empty(), "the page logged errors: {errors:?}");
}
