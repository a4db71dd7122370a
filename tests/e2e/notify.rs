//! Notifiers and the build webhook end to end: real `deployctl controller` and
//! `deployctl webhook` processes, a receiver speaking real HTTP on loopback, both stores.

use crate::common::{run, spawn, write, Backend, Spawned, DEADLINE};
use deployctl::api::{Notifier, Rollout};
use deployctl::signing;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lease TTL of the controllers: short, so that a takeover is quick.
const LEASE_TTL: &str = "2s";
/// How long deliveries (with their retries, or a takeover) may take on a loaded machine.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(60);
const KEY: &str = "0123456789abcdef0123456789abcdef";

/// What the receiver does with its n-th request (0-based).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Behaviour {
    Answer(u16),
    /// Never answers: the sender is left mid-delivery.
    Hang,
}

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    answered: Behaviour,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("every delivery is JSON")
    }
}

/// A test HTTP server on loopback (hyper, on its own thread and runtime) that records
/// every request and answers as `script` says.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
    _thread: std::thread::JoinHandle<()>,
}

impl Receiver {
    fn start(script: fn(usize) -> Behaviour) -> Receiver {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = got.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a tokio runtime starts");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("can bind a loopback port");
                tx.send(listener.local_addr().expect("a bound address"))
                    .expect("the test waits for the address");
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(
                            move |req: hyper::Request<hyper::body::Incoming>| {
                                let shared = shared.clone();
                                async move {
                                    let headers = req
                                        .headers()
                                        .iter()
                                        .map(|(k, v)| {
                                            (
                                                k.to_string(),
                                                v.to_str().unwrap_or_default().to_string(),
                                            )
                                        })
                                        .collect();
                                    let body = req
                                        .into_body()
                                        .collect()
                                        .await
                                        .map(|b| b.to_bytes().to_vec())
                                        .unwrap_or_default();
                                    let answered = {
                                        let mut got =
                                            shared.lock().expect("no panics while locked");
                                        let b = script(got.len());
                                        got.push(Received {
                                            headers,
                                            body,
                                            answered: b,
                                        });
                                        b
                                    };
                                    let status = match answered {
                                        Behaviour::Answer(s) => s,
                                        Behaviour::Hang => std::future::pending().await,
                                    };
                                    let mut resp =
                                        hyper::Response::new(Full::new(Bytes::from_static(b"ok")));
                                    *resp.status_mut() = hyper::StatusCode::from_u16(status)
                                        .expect("a valid status");
                                    Ok::<_, std::convert::Infallible>(resp)
                                }
                            },
                        );
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        let addr = rx
            .recv_timeout(DEADLINE)
            .expect("the receiver binds within the deadline");
        Receiver {
            url: format!("http://{addr}/hook"),
            got,
            _thread: thread,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().expect("no panics while locked").clone()
    }

    /// Waits until `check` holds on what was received; panics with it (and `why`) if not.
    fn wait(
        &self,
        what: &str,
        why: impl Fn() -> String,
        check: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + DELIVERY_DEADLINE;
        loop {
            let got = self.received();
            if check(&got) {
                return got;
            }
            if Instant::now() > deadline {
                panic!(
                    "receiver: no {what} within {DELIVERY_DEADLINE:?}; got {:#?}\n{}",
                    got.iter()
                        .map(|r| (r.answered, String::from_utf8_lossy(&r.body).into_owned()))
                        .collect::<Vec<_>>(),
                    why()
                );
            }
            std::thread::sleep(Duration::from_millis(50)); // polling a condition with a deadline
        }
    }
}

fn controller(store: &str, identity: &str) -> Spawned {
    spawn(
        store,
        &[
            "-v",
            "controller",
            "--identity",
            identity,
            "--lease-ttl",
            LEASE_TTL,
            "--workers",
            "2",
        ],
    )
}

/// An Application selecting no machine and its Rollout at `version`: enough for the
/// controller to open a revision (`RolloutStarted`) with no agent running.
fn app_and_rollout(version: &str) -> String {
    [
        json!({"apiVersion": "deployctl.dev/v1", "kind": "Application",
               "metadata": {"name": "api", "labels": {"team": "web"}},
               "spec": {"selector": {"matchLabels": {"role": "none"}},
                        "artifact": {"url": "file:///nonexistent/app-{{version}}.tar.gz"}}}),
        json!({"apiVersion": "deployctl.dev/v1", "kind": "Rollout",
               "metadata": {"name": "api", "labels": {"team": "web"}},
               "spec": {"application": "api", "version": version}}),
    ]
    .iter()
    .map(|d| serde_json::to_string_pretty(d).expect("JSON values serialize"))
    .collect::<Vec<_>>()
    .join("\n---\n")
}

/// A Notifier of `RolloutStarted` for team=web Rollouts, signed, with a `timeout`
/// (seconds) per attempt.
fn notifier_doc(url: &str, key_file: &str, timeout: u32) -> String {
    serde_json::to_string_pretty(&json!({
        "apiVersion": "deployctl.dev/v1", "kind": "Notifier",
        "metadata": {"name": "hook"},
        "spec": {
            "selector": {"matchLabels": {"team": "web"}},
            "events": ["RolloutStarted"],
            "webhook": {"url": url, "headers": {"X-Team": "web"}, "secretRef": {"file": key_file}},
            "timeoutSeconds": timeout
        }
    }))
    .expect("JSON values serialize")
}

fn get_notifier(store: &str) -> Notifier {
    let out = run(store, &["get", "notifier", "hook", "-o", "json"]).ok();
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("not a Notifier: {e}\n{}", out.stdout))
}

/// Checks a delivery's signature as a receiver would.
fn assert_signed(r: &Received) {
    let ts = r.header(signing::TIMESTAMP_HEADER);
    let sig = r.header(signing::SIGNATURE_HEADER);
    let now = chrono::Utc::now().timestamp();
    assert_eq!(
        signing::verify(KEY.as_bytes(), ts, sig, &r.body, now),
        Ok(()),
        "headers {:?}",
        r.headers
    );
}

#[test]
fn a_notifier_should_deliver_a_signed_documented_body_and_retry_through_a_failing_receiver() {
    for (label, backend) in Backend::all() {
        let store = backend.url();
        let dir = crate::common::tempdir();
        let key_file = write(dir.path(), "notify.key", &format!("{KEY}\n"));
        // Fails twice, then accepts.
        let receiver = Receiver::start(|n| match n {
            0 | 1 => Behaviour::Answer(500),
            _ => Behaviour::Answer(200),
        });
        let mut ctl = controller(&store, "ctl-a");
        run(
            &store,
            &[
                "apply",
                "-f",
                &write(
                    dir.path(),
                    "n.yaml",
                    &notifier_doc(&receiver.url, &key_file, 5),
                ),
            ],
        )
        .ok();
        run(
            &store,
            &[
                "apply",
                "-f",
                &write(dir.path(), "r.yaml", &app_and_rollout("1.0.0")),
            ],
        )
        .ok();

        let got = receiver.wait(
            "accepted delivery",
            || ctl.stderr_so_far(),
            |g| g.iter().any(|r| r.answered == Behaviour::Answer(200)),
        );
        assert_eq!(
            got.len(),
            3,
            "{label}: two refused attempts, then the accepted one"
        );
        let ids: Vec<String> = got
            .iter()
            .map(|r| r.json()["id"].as_str().unwrap_or_default().to_string())
            .collect();
        assert!(
            ids.iter().all(|id| !id.is_empty() && *id == ids[0]),
            "{label}: the retries resend one event: {ids:?}"
        );
        let ok = &got[2];
        assert_signed(ok);
        assert_eq!(
            ok.header("x-team"),
            Some("web"),
            "{label}: the Notifier's headers"
        );
        assert_eq!(ok.header("x-deployctl-delivery"), Some(ids[0].as_str()));
        assert_eq!(ok.header("content-type"), Some("application/json"));
        let body = ok.json();
        assert_eq!(body["event"], "RolloutStarted", "{label}: {body}");
        assert_eq!(body["reason"], "RolloutStarted");
        assert_eq!(body["namespace"], "default");
        assert_eq!(body["rollout"], "api");
        assert_eq!(body["version"], "1.0.0");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("1.0.0")),
            "{label}: {body}"
        );
        for field in ["previousVersion", "phase", "time"] {
            assert!(
                body.get(field).is_some(),
                "{label}: {field} missing from {body}"
            );
        }
        for count in ["desired", "staged", "updated", "available", "failed"] {
            assert!(
                body["counts"][count].is_u64(),
                "{label}: counts.{count} in {body}"
            );
        }

        // The status says it, once written.
        let deadline = Instant::now() + DELIVERY_DEADLINE;
        let st = loop {
            let st = get_notifier(&store).status.unwrap_or_default();
            if st.deliveries == 1 || Instant::now() > deadline {
                break st;
            }
            std::thread::sleep(Duration::from_millis(100)); // polling a condition with a deadline
        };
        assert_eq!(st.deliveries, 1, "{label}: {st:?}");
        assert_eq!(st.failed_attempts, 2, "{label}: {st:?}");
        assert_eq!(st.last_error, None, "{label}: cleared by the delivery");
        assert_eq!(
            st.last_delivered.as_ref().map(|d| d.id.as_str()),
            Some(ids[0].as_str())
        );
        let table = run(&store, &["get", "notifiers"]).ok().stdout;
        assert!(
            table.contains("DELIVERED") && table.contains("RolloutStarted api"),
            "{label}: {table}"
        );
        let page = run(&store, &["describe", "notifier", "hook"]).ok().stdout;
        assert!(
            page.contains("Failed Attempts:") && page.contains("from file"),
            "{label}: {page}"
        );
        assert!(!page.contains(KEY), "{label}: describe never shows the key");
        let _ = ctl.terminate();
    }
}

#[test]
fn a_controller_killed_mid_delivery_should_lose_nothing_after_failover() {
    for (label, backend) in Backend::all() {
        let store = backend.url();
        let dir = crate::common::tempdir();
        let key_file = write(dir.path(), "notify.key", KEY);
        // The first request is never answered: its sender dies with it in flight (the
        // attempt's 60 s timeout outlives every step below).
        let receiver = Receiver::start(|n| {
            if n == 0 {
                Behaviour::Hang
            } else {
                Behaviour::Answer(200)
            }
        });
        let mut a = controller(&store, "ctl-a");
        a.wait_for_stderr_line(DEADLINE, |l| l.contains("leading"))
            .unwrap_or_else(|| panic!("{label}: ctl-a never led"));
        let mut b = controller(&store, "ctl-b");
        run(
            &store,
            &[
                "apply",
                "-f",
                &write(
                    dir.path(),
                    "n.yaml",
                    &notifier_doc(&receiver.url, &key_file, 60),
                ),
            ],
        )
        .ok();
        run(
            &store,
            &[
                "apply",
                "-f",
                &write(dir.path(), "r.yaml", &app_and_rollout("1.0.0")),
            ],
        )
        .ok();
        let first = receiver.wait(
            "first (hanging) delivery",
            || a.stderr_so_far(),
            |g| !g.is_empty(),
        );
        let first_id = first[0].json()["id"].as_str().expect("an id").to_string();
        // A hanging sink delays no reconcile: the leader still takes a new version.
        run(&store, &["set", "version", "api", "1.5.0"]).ok();
        let deadline = Instant::now() + DELIVERY_DEADLINE;
        while rollout_of(&store)
            .status
            .and_then(|s| s.target_version)
            .as_deref()
            != Some("1.5.0")
        {
            assert!(
                Instant::now() < deadline,
                "{label}: the rollout was not reconciled while a delivery hung\n{}",
                a.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(100)); // polling a condition with a deadline
        }
        assert_eq!(
            receiver.received().len(),
            1,
            "{label}: ctl-a is still stuck on the first delivery"
        );

        drop(a); // SIGKILL, mid-delivery
                 // A second event while the leader is gone or just replaced.
        run(&store, &["set", "version", "api", "2.0.0"]).ok();

        let got = receiver.wait(
            "all three events accepted",
            || b.stderr_so_far(),
            |g| {
                let ok: Vec<Value> = g
                    .iter()
                    .filter(|r| r.answered == Behaviour::Answer(200))
                    .map(Received::json)
                    .collect();
                let says = |version: &str| {
                    ok.iter()
                        .any(|v| v["message"].as_str().is_some_and(|m| m.contains(version)))
                };
                ok.iter().any(|v| v["id"] == first_id.as_str()) && says("1.5.0") && says("2.0.0")
            },
        );
        let accepted: Vec<Value> = got
            .iter()
            .filter(|r| r.answered == Behaviour::Answer(200))
            .map(Received::json)
            .collect();
        assert!(
            accepted.iter().any(|v| v["id"] == first_id.as_str()),
            "{label}: the event in flight when ctl-a died is delivered again by ctl-b: {accepted:#?}"
        );
        for r in got.iter().filter(|r| r.answered == Behaviour::Answer(200)) {
            assert_signed(r);
        }
        let st = get_notifier(&store).status.unwrap_or_default();
        assert!(st.deliveries >= 2, "{label}: {st:?}");
        let _ = b.terminate();
    }
}

/// A running `deployctl webhook` and where it listens.
struct Webhook {
    _process: Spawned,
    base: String,
}

fn start_webhook(store: &str, key_file: &str) -> Webhook {
    let mut p = spawn(
        store,
        &[
            "webhook",
            "--listen",
            "127.0.0.1:0",
            "--secret-file",
            key_file,
        ],
    );
    let line = p.wait_for_line("webhook listening", |l| {
        l.starts_with("webhook listening on ")
    });
    let addr = line.trim_start_matches("webhook listening on ").to_string();
    Webhook {
        _process: p,
        base: format!("http://{addr}"),
    }
}

/// POSTs `body` to `path`, signed with `key` at `ts` (`None`: unsigned); returns the
/// status and the JSON answer.
fn post(base: &str, path: &str, body: &[u8], sign: Option<(&str, i64)>) -> (u16, Value) {
    let rt = crate::common::rt();
    rt.block_on(async {
        let mut req = reqwest::Client::new()
            .post(format!("{base}{path}"))
            .timeout(DEADLINE)
            .body(body.to_vec());
        if let Some((key, ts)) = sign {
            req = req
                .header(signing::TIMESTAMP_HEADER, ts.to_string())
                .header(
                    signing::SIGNATURE_HEADER,
                    signing::sign(key.as_bytes(), ts, body),
                );
        }
        let resp = req.send().await.expect("the webhook answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("a readable answer");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    })
}

fn rollout_of(store: &str) -> Rollout {
    let out = run(store, &["get", "rollout", "api", "-o", "json"]).ok();
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("not a Rollout: {e}\n{}", out.stdout))
}

#[test]
fn the_webhook_should_set_versions_and_refuse_unsigned_replayed_bad_or_oversized_requests() {
    for (label, backend) in Backend::all() {
        let store = backend.url();
        let dir = crate::common::tempdir();
        let key_file = write(dir.path(), "webhook.key", &format!("{KEY}\n"));
        run(
            &store,
            &[
                "apply",
                "-f",
                &write(dir.path(), "r.yaml", &app_and_rollout("1.0.0")),
            ],
        )
        .ok();
        let hook = start_webhook(&store, &key_file);
        let path = "/v1/namespaces/default/rollouts/api/version";
        let now = chrono::Utc::now().timestamp();
        let sha = "ab".repeat(32);
        let good = format!(r#"{{"version": "1.1.0", "sha256": "{sha}"}}"#);

        // 401: unsigned, signed with another key, replayed from 6 minutes ago.
        let (s, v) = post(&hook.base, path, good.as_bytes(), None);
        assert_eq!(s, 401, "{label}: {v}");
        assert!(
            v["error"]
                .as_str()
                .is_some_and(|e| e.contains("missing header")),
            "{label}: {v}"
        );
        assert_eq!(
            post(
                &hook.base,
                path,
                good.as_bytes(),
                Some(("another-key-entirely", now))
            )
            .0,
            401,
            "{label}"
        );
        let (s, v) = post(&hook.base, path, good.as_bytes(), Some((KEY, now - 360)));
        assert_eq!(s, 401, "{label}: a replay is refused: {v}");
        assert!(
            v["error"]
                .as_str()
                .is_some_and(|e| e.contains("replay window")),
            "{label}: {v}"
        );
        assert_eq!(
            rollout_of(&store).spec.version,
            "1.0.0",
            "{label}: refused requests change nothing"
        );

        // 400 naming the field.
        let (s, v) = post(
            &hook.base,
            path,
            br#"{"version": "../etc"}"#,
            Some((KEY, now)),
        );
        assert_eq!(s, 400, "{label}: {v}");
        assert!(
            v["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("version: invalid version")),
            "{label}: {v}"
        );
        let (s, v) = post(
            &hook.base,
            path,
            br#"{"version": "1.2", "sha256": "zz"}"#,
            Some((KEY, now)),
        );
        assert_eq!(
            (s, v["error"].as_str().map(|e| e.starts_with("sha256:"))),
            (400, Some(true)),
            "{label}: {v}"
        );

        // 404 for an unknown rollout (once signed).
        let (s, v) = post(
            &hook.base,
            "/v1/namespaces/default/rollouts/nope/version",
            good.as_bytes(),
            Some((KEY, now)),
        );
        assert_eq!(s, 404, "{label}: {v}");

        // 413 past 64 KiB, before anything is parsed.
        let big = format!(
            r#"{{"version": "1.1.0", "pad": "{}"}}"#,
            "x".repeat(64 * 1024)
        );
        assert_eq!(
            post(&hook.base, path, big.as_bytes(), Some((KEY, now))).0,
            413,
            "{label}"
        );

        // 200: set, then set again (idempotent).
        let (s, v) = post(&hook.base, path, good.as_bytes(), Some((KEY, now)));
        assert_eq!(
            (s, v["changed"].clone()),
            (200, json!(true)),
            "{label}: {v}"
        );
        let ro = rollout_of(&store);
        assert_eq!(
            (ro.spec.version.as_str(), ro.spec.sha256.as_deref()),
            ("1.1.0", Some(sha.as_str())),
            "{label}"
        );
        let generation = ro.metadata.generation;
        let (s, v) = post(&hook.base, path, good.as_bytes(), Some((KEY, now)));
        assert_eq!(
            (s, v["changed"].clone()),
            (200, json!(false)),
            "{label}: {v}"
        );
        assert_eq!(
            rollout_of(&store).metadata.generation,
            generation,
            "{label}: nothing written again"
        );

        // Docker Hub's payload: the pushed tag is the version, and the old digest goes.
        let hub = br#"{"callback_url": "https://registry.hub.docker.com/u/acme/api/hook/x/",
                       "push_data": {"pushed_at": 1700000000, "pusher": "ci", "tag": "2.0.0"},
                       "repository": {"repo_name": "acme/api", "namespace": "acme", "name": "api"}}"#;
        let (s, v) = post(&hook.base, path, hub, Some((KEY, now)));
        assert_eq!(s, 200, "{label}: {v}");
        let ro = rollout_of(&store);
        assert_eq!(
            (ro.spec.version.as_str(), ro.spec.sha256.as_deref()),
            ("2.0.0", None),
            "{label}"
        );

        // Not the endpoint, not POST.
        assert_eq!(
            post(&hook.base, "/v1/other", b"{}", Some((KEY, now))).0,
            404,
            "{label}"
        );
    }
}

/// The request timeout does not depend on the store: the embedded one only.
#[test]
fn the_webhook_should_answer_408_to_a_body_that_never_finishes() {
    use std::io::{Read, Write};
    let backend = Backend::embedded();
    let dir = crate::common::tempdir();
    let key_file = write(dir.path(), "webhook.key", KEY);
    let hook = start_webhook(&backend.url(), &key_file);
    let addr = hook.base.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).expect("the webhook accepts");
    // A test client's request, its body promised but never sent in full.
    conn.write_all(
        b"POST /v1/namespaces/default/rollouts/api/version HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"version\"",
    )
    .expect("can send");
    conn.set_read_timeout(Some(DEADLINE))
        .expect("a read timeout");
    let mut answer = vec![0u8; 512];
    let n = conn
        .read(&mut answer)
        .expect("an answer before the hang guard");
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body: not received within 10s"), "{answer}");
}
