//! `deployctl logs` as users run it: a real controller and agents deploy an Application
//! whose install hook and service print unique markers, and `logs instance|rollout`
//! (with `--hook`, `--tail`, `-f`) shows them from the agents' disks, on both stores.

use crate::common::{rt, run, spawn, write, Backend, Output, Spawned, DEADLINE};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

/// Lease TTL of the controller and agents: short, so a killed agent turns NotReady soon.
const LEASE_TTL: &str = "3s";

/// A unique word per run, so that no line can come from another run.
fn marker() -> String {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos();
    format!("mk{ns}")
}

/// The Application and Rollout: an install hook that prints `OUT-<marker>-<machine>` on
/// stdout and, once the agent has logged that line, `ERR-<marker>-<machine>` on stderr
/// (so the order it wrote in is known); a service that prints `service-up` and, once
/// `trigger` exists, `LATE-<marker>`.
fn manifests(artifacts: &Path, trigger: &Path, marker: &str) -> String {
    let install = format!(
        r#"echo "OUT-{marker}-$DEPLOY_MACHINE"
until grep -q "OUT-{marker}-$DEPLOY_MACHINE" "$DEPLOY_PATH/logs/install.log" 2>/dev/null; do sleep 0.05; done
echo "ERR-{marker}-$DEPLOY_MACHINE" >&2"#
    );
    let service = format!(
        r#"echo service-up; while [ ! -e "{}" ]; do sleep 0.1; done; echo "LATE-{marker}"; exec sleep 1000"#,
        trigger.display()
    );
    let docs = [
        json!({
            "apiVersion": "deployctl.dev/v1",
            "kind": "Application",
            "metadata": { "name": "api" },
            "spec": {
                "selector": { "matchLabels": { "role": "web" } },
                "artifact": {
                    "url": format!("file://{}/app-{{{{version}}}}", artifacts.display()),
                    "format": "file",
                },
                "hooks": { "install": [{ "command": install, "timeoutSeconds": 30 }] },
                "service": { "command": service, "stopTimeoutSeconds": 1 },
            }
        }),
        json!({
            "apiVersion": "deployctl.dev/v1",
            "kind": "Rollout",
            "metadata": { "name": "api" },
            "spec": { "application": "api", "version": "v1" }
        }),
    ];
    docs.iter()
        .map(|d| serde_json::to_string_pretty(d).expect("json values serialize"))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

fn lines(out: &Output) -> Vec<&str> {
    out.stdout.lines().collect()
}

/// The index of the one line containing `needle`; panics with every line otherwise.
fn line_with(lines: &[&str], needle: &str) -> usize {
    let found: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains(needle))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one line with {needle:?} in:\n{}",
        lines.join("\n")
    );
    found[0]
}

#[test]
fn logs_should_show_hook_and_service_output_per_machine_follow_it_and_name_a_stopped_agent() {
    for (label, backend) in Backend::all() {
        let store = backend.url();
        let work = crate::common::tempdir();
        let artifacts = work.path().join("artifacts");
        write(&artifacts, "app-v1", "v1\n");
        let trigger = work.path().join("trigger");
        let marker = marker();
        let _controller = spawn(
            &store,
            &["controller", "--lease-ttl", LEASE_TTL, "--workers", "2"],
        );
        let mut agents: Vec<Spawned> = ["m0", "m1"]
            .iter()
            .map(|m| {
                let root = work.path().join("roots").join(m);
                spawn(
                    &store,
                    &[
                        "agent",
                        "--name",
                        m,
                        "--labels",
                        "role=web",
                        "--root",
                        root.to_str().expect("utf-8 temp path"),
                        "--lease-ttl",
                        LEASE_TTL,
                    ],
                )
            })
            .collect();
        let file = write(
            work.path(),
            "api.yaml",
            &manifests(&artifacts, &trigger, &marker),
        );
        run(&store, &["apply", "-f", &file]).ok();
        run(&store, &["rollout", "status", "api", "--timeout", "60s"]).ok();

        // Every source of one Instance: the hook's stdout line, then its stderr line.
        let out = run(&store, &["logs", "instance", "api.m0"]).ok();
        let all = lines(&out);
        let o = line_with(&all, &format!("OUT-{marker}-m0"));
        let e = line_with(&all, &format!("ERR-{marker}-m0"));
        assert!(o < e, "[{label}] stdout before stderr:\n{}", out.stdout);
        assert!(
            all[o].contains(" install v1 stdout: OUT-"),
            "[{label}] {}",
            all[o]
        );
        assert!(
            all[e].contains(" install v1 stderr: ERR-"),
            "[{label}] {}",
            all[e]
        );
        assert!(
            all.iter().all(|l| !l.starts_with('[')),
            "[{label}] no machine prefix for one Instance:\n{}",
            out.stdout
        );

        // One hook, the last line only.
        let out = run(
            &store,
            &[
                "logs", "instance", "api.m0", "--hook", "install", "--tail", "1",
            ],
        )
        .ok();
        assert_eq!(lines(&out).len(), 1, "[{label}] {}", out.stdout);
        assert!(
            out.stdout.contains(&format!("stderr: ERR-{marker}-m0")),
            "[{label}] {}",
            out.stdout
        );

        // A rollout: every machine's lines, each prefixed with its machine.
        let out = run(&store, &["logs", "rollout", "api", "--hook", "install"]).ok();
        let all = lines(&out);
        for m in ["m0", "m1"] {
            for word in ["OUT", "ERR"] {
                let i = line_with(&all, &format!("{word}-{marker}-{m}"));
                assert!(
                    all[i].starts_with(&format!("[{m}] ")),
                    "[{label}] {}",
                    all[i]
                );
            }
        }

        // Following: a line the service prints after the command started.
        let mut follow = spawn(
            &store,
            &["logs", "instance", "api.m0", "--hook", "service", "-f"],
        );
        follow.wait_for_line("with the service's first line", |l| {
            l.contains(" service v1 stdout: service-up")
        });
        std::fs::write(&trigger, "").expect("work dir is writable");
        follow.wait_for_line("with the line printed after -f started", |l| {
            l.contains(&format!("service v1 stdout: LATE-{marker}"))
        });
        assert_eq!(
            follow.terminate(),
            Some(0),
            "[{label}] -f ends 0 on SIGTERM"
        );

        // A stopped agent: the command says so within its deadline and fails.
        drop(agents.remove(1)); // SIGKILL m1
        rt().block_on(async {
            let client = backend.client().await;
            let deadline = Instant::now() + DEADLINE;
            while client.machine_present("m1").await.expect("store answers") {
                assert!(
                    Instant::now() < deadline,
                    "[{label}] m1's lease never ran out"
                );
                tokio::time::sleep(Duration::from_millis(100)).await; // polling presence
            }
        });
        let started = Instant::now();
        let out = run(&store, &["logs", "instance", "api.m1"]).code(1);
        assert!(
            out.stderr
                .contains("machine m1 did not answer within 5s: its agent is NotReady"),
            "[{label}] {}",
            out.stderr
        );
        assert!(started.elapsed() < DEADLINE, "[{label}] a bounded wait");
        // The failed request left nothing behind in the store.
        rt().block_on(async {
            let client = backend.client().await;
            let (left, _) = client
                .store()
                .list(&deployctl::store::keys::machine_logs_prefix("m1"), None)
                .await
                .expect("store answers");
            assert!(left.is_empty(), "[{label}] keys left: {left:?}");
        });
    }
}
