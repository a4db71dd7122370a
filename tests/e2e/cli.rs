//! The command line end to end: the built binary against the embedded store and a real
//! etcd.

use crate::common::{rt, run, run_with_stdin, spawn, tempdir, write, Backend, DEADLINE};
use deployctl::api::{
    Application, Machine, Object, Revision, Rollout, RolloutPhase, ANNOTATION_PROMOTE,
    ANNOTATION_UNDO,
};
use std::time::{Duration, Instant};

const APP: &str = "\
apiVersion: deployctl.dev/v1
kind: Application
metadata:
  name: api
  labels: {team: core}
spec:
  selector:
    matchLabels: {role: web}
  artifact:
    url: https://ci.example.com/api/{{version}}/api.tar.gz
  hooks:
    activate:
    - command: systemctl reload api
      timeoutSeconds: 30
  healthCheck:
    http: {url: 'http://127.0.0.1:8080/healthz'}
";

const ROLLOUT: &str = "\
apiVersion: deployctl.dev/v1
kind: Rollout
metadata:
  name: api
spec:
  application: api
  version: 1.0.0
  strategy:
    maxUnavailable: 25%
    steps:
    - setWeight: 10
    - pause: {}
";

fn manifests() -> String {
    format!("{APP}---\n{ROLLOUT}")
}

/// `get KIND NAME -o yaml`, parsed.
fn get_yaml<K: Object>(store: &str, kind: &str, name: &str) -> K {
    let out = run(store, &["get", kind, name, "-o", "yaml"]).ok();
    serde_yaml::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("get -o yaml is not a {kind}: {e}\n{}", out.stdout))
}

/// Everything of every user kind, as `get -o yaml` prints it.
fn snapshot(store: &str) -> String {
    ["machines", "applications", "rollouts"]
        .iter()
        .map(|k| run(store, &["get", k, "-A", "-o", "yaml"]).ok().stdout)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn apply_then_get_yaml_should_round_trip_and_reapply_unchanged() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let dir = tempdir();
        let file = write(dir.path(), "api.yaml", &manifests());
        let out = run(&store, &["apply", "-f", &file]).ok();
        assert_eq!(
            out.stdout,
            "application.deployctl.dev/api created\nrollout.deployctl.dev/api created\n",
            "{backend}"
        );
        let want_app: Application = serde_yaml::from_str(APP).unwrap();
        let want_ro: Rollout = serde_yaml::from_str(ROLLOUT).unwrap();
        let app: Application = get_yaml(&store, "app", "api");
        let ro: Rollout = get_yaml(&store, "rollout", "api");
        assert_eq!(app.spec, want_app.spec, "{backend}");
        assert_eq!(ro.spec, want_ro.spec, "{backend}");
        assert_eq!(app.metadata.labels, want_app.metadata.labels, "{backend}");
        assert_eq!(ro.metadata.generation, Some(1), "{backend}");
        assert!(ro.metadata.uid.is_some(), "{backend}: the store sets uid");

        // What `get -o yaml` printed (a List, with uid, resourceVersion...) applies back
        // to no change at all.
        let listed = run(&store, &["get", "ro", "-o", "yaml"]).ok().stdout;
        let out = run_with_stdin(&store, &["apply", "-f", "-"], Some(&listed)).ok();
        assert_eq!(
            out.stdout, "rollout.deployctl.dev/api unchanged\n",
            "{backend}"
        );
        let json = run(&store, &["get", "app", "api", "-o", "json"])
            .ok()
            .stdout;
        let json_file = write(dir.path(), "api.json", &json);
        let out = run(&store, &["apply", "-f", &json_file]).ok();
        assert_eq!(
            out.stdout, "application.deployctl.dev/api unchanged\n",
            "{backend}"
        );
    }
}

#[test]
fn reapply_should_print_unchanged_and_a_changed_spec_configured_with_a_new_generation() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let dir = tempdir();
        let file = write(dir.path(), "api.yaml", &manifests());
        run(&store, &["apply", "-f", &file]).ok();
        let out = run(&store, &["apply", "-f", &file]).ok();
        assert_eq!(
            out.stdout,
            "application.deployctl.dev/api unchanged\nrollout.deployctl.dev/api unchanged\n",
            "{backend}"
        );
        let changed = write(
            dir.path(),
            "api.yaml",
            &manifests().replace("1.0.0", "1.1.0"),
        );
        let out = run(&store, &["apply", "-f", &changed, "--dry-run"]).ok();
        assert_eq!(
            out.stdout,
            "application.deployctl.dev/api unchanged (dry run)\nrollout.deployctl.dev/api configured (dry run)\n",
            "{backend}"
        );
        assert_eq!(
            get_yaml::<Rollout>(&store, "ro", "api").spec.version,
            "1.0.0",
            "{backend}: dry run wrote"
        );
        let out = run(&store, &["apply", "-f", &changed]).ok();
        assert_eq!(
            out.stdout,
            "application.deployctl.dev/api unchanged\nrollout.deployctl.dev/api configured\n",
            "{backend}"
        );
        let ro: Rollout = get_yaml(&store, "ro", "api");
        assert_eq!(ro.spec.version, "1.1.0", "{backend}");
        assert_eq!(ro.metadata.generation, Some(2), "{backend}");
        // A label-only change configures without a new generation.
        let relabeled = write(
            dir.path(),
            "api.yaml",
            &manifests()
                .replace("1.0.0", "1.1.0")
                .replace("team: core", "team: edge"),
        );
        run(&store, &["apply", "-f", &relabeled]).ok();
        let app: Application = get_yaml(&store, "app", "api");
        assert_eq!(
            app.metadata.labels.get("team").map(String::as_str),
            Some("edge"),
            "{backend}"
        );
        assert_eq!(app.metadata.generation, Some(1), "{backend}");
    }
}

#[test]
fn an_invalid_file_should_exit_nonzero_name_the_problem_and_change_nothing() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let dir = tempdir();
        let file = write(dir.path(), "api.yaml", &manifests());
        run(&store, &["apply", "-f", &file]).ok();
        let before = snapshot(&store);
        // Document 1 is a valid change; document 2 is out of range: nothing may be written.
        let bad = manifests()
            .replace("team: core", "team: other")
            .replace("maxUnavailable: 25%", "maxUnavailable: 150%");
        let bad_file = write(dir.path(), "rollout.yaml", &bad);
        let out = run(&store, &["apply", "-f", &bad_file]).code(1);
        let line = APP.lines().count() + 10; // `---`, then the rollout's 10th line
        assert_eq!(
            out.stderr.trim(),
            format!(
                "error: {bad_file}: document 2 (line {line}), Rollout \"api\": spec.strategy.maxUnavailable: invalid percent \"150%\": must be 0% to 100%"
            ),
            "{backend}"
        );
        assert!(out.stdout.is_empty(), "{backend}: printed {}", out.stdout);
        assert_eq!(snapshot(&store), before, "{backend}: the store changed");
    }
}

#[test]
fn every_kind_of_bad_input_should_be_reported_at_once() {
    // Validation needs no store: an unreachable one proves nothing was even tried.
    let store = "etcd://127.0.0.1:1";
    let dir = tempdir();
    let docs = [
        "kind: Rollout\nmetadata: {name: [\n",                                                     // malformed YAML
        "apiVersion: deployctl.dev/v9\nkind: Rollout\nmetadata: {name: a}\n",                      // unknown apiVersion
        "apiVersion: deployctl.dev/v1\nkind: Pod\nmetadata: {name: a}\n",                          // unknown kind
        "apiVersion: deployctl.dev/v1\nkind: Machine\nmetadata: {name: m, color: red}\n",          // unknown field
        "apiVersion: deployctl.dev/v1\nkind: Machine\nmetadata: {name: m2}\nspec: {unschedulable: maybe}\n", // wrong type
        "apiVersion: deployctl.dev/v1\nkind: Rollout\nmetadata: {name: r}\nspec: {version: '1'}\n", // missing field
        "apiVersion: deployctl.dev/v1\nkind: Machine\nmetadata: {name: Web_1}\n",                  // bad name
        "apiVersion: deployctl.dev/v1\nkind: Rollout\nmetadata: {name: r2}\nspec: {application: a, version: '../1'}\n", // bad version
        "apiVersion: deployctl.dev/v1\nkind: Instance\nmetadata: {name: i}\n",                     // not appliable
    ];
    let file = write(dir.path(), "bad.yaml", &docs.join("---\n"));
    let out = run(store, &["apply", "-f", &file]).code(1);
    let lines: Vec<&str> = out.stderr.lines().collect();
    let want = [
        "document 1 (line 2): malformed YAML",
        "document 2 (line 4), Rollout \"a\": apiVersion: unknown apiVersion \"deployctl.dev/v9\"",
        "document 3 (line 8), \"a\": kind: unknown kind \"Pod\"",
        "document 4 (line 14), Machine \"m\": metadata.color: unknown field",
        "document 5 (line 19), Machine \"m2\": spec.unschedulable: must be true or false, not string \"maybe\"",
        "document 6 (line 21), Rollout \"r\": spec.application: missing required field",
        "document 7 (line 28), Machine \"Web_1\": metadata.name: invalid name \"Web_1\"",
        "document 8 (line 33), Rollout \"r2\": spec.version: invalid version \"../1\"",
        "document 9 (line 35), Instance \"i\": kind: Instance objects are written by deployctl itself",
    ];
    assert_eq!(lines.len(), want.len(), "{}", out.stderr);
    for (got, want) in lines.iter().zip(want) {
        assert!(
            got.starts_with("error: ") && got.contains(&format!("bad.yaml: {want}")),
            "{got:?} lacks {want:?}"
        );
    }
}

#[test]
fn apply_should_be_all_or_nothing_across_files() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let dir = tempdir();
        write(dir.path(), "manifests/a-app.yaml", APP);
        write(
            dir.path(),
            "manifests/nested/b-rollout.yaml",
            &ROLLOUT.replace("1.0.0", "not a version"),
        );
        let out = run(
            &store,
            &[
                "apply",
                "-f",
                &dir.path().join("manifests").display().to_string(),
            ],
        )
        .code(1);
        assert!(
            out.stderr.contains("b-rollout.yaml: document 1"),
            "{backend}: {}",
            out.stderr
        );
        assert!(
            out.stderr
                .contains("spec.version: invalid version \"not a version\""),
            "{backend}: {}",
            out.stderr
        );
        let get = run(&store, &["get", "app", "api"]).code(1);
        assert_eq!(
            get.stderr.trim(),
            "Error from server (NotFound): applications \"api\" not found",
            "{backend}"
        );
        // Fixed, the directory applies in one go, Application before Rollout.
        write(dir.path(), "manifests/nested/b-rollout.yaml", ROLLOUT);
        let out = run(
            &store,
            &[
                "apply",
                "-f",
                &dir.path().join("manifests").display().to_string(),
            ],
        )
        .ok();
        assert_eq!(
            out.stdout,
            "application.deployctl.dev/api created\nrollout.deployctl.dev/api created\n",
            "{backend}"
        );
    }
}

#[test]
fn get_watch_should_see_changes_made_by_another_process() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let dir = tempdir();
        run(
            &store,
            &["apply", "-f", &write(dir.path(), "api.yaml", &manifests())],
        )
        .ok();
        // `-o wide` keeps kubectl's row-per-change table; without `-o`, rollouts get the
        // live view (tests/watch_view.rs).
        let mut watch = spawn(&store, &["get", "rollouts", "-w", "-o", "wide"]);
        watch.wait_for_line("with the header", |l| {
            l.starts_with("NAME") && l.contains("PHASE")
        });
        watch.wait_for_line("with the first row", |l| {
            l.starts_with("api ") && l.contains("1.0.0")
        });
        let out = run(&store, &["set", "version", "api", "2.0.0"]).ok();
        assert_eq!(
            out.stdout, "rollout.deployctl.dev/api version set to 2.0.0\n",
            "{backend}"
        );
        watch.wait_for_line("for the new version", |l| {
            l.starts_with("api ") && l.contains("2.0.0")
        });
        run(&store, &["delete", "rollout", "api"]).ok();
        // kubectl prints a deleted object's row once more.
        watch.wait_for_line("for the deletion", |l| {
            l.starts_with("api ") && l.contains("2.0.0")
        });
        assert_eq!(
            watch.terminate(),
            Some(0),
            "{backend}: -w should exit 0 on SIGTERM"
        );
    }
}

#[test]
fn delete_should_remove_by_name_or_file_and_report_missing_objects() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let dir = tempdir();
        let file = write(dir.path(), "api.yaml", &manifests());
        run(&store, &["apply", "-f", &file]).ok();
        let out = run(&store, &["delete", "ro", "api"]).ok();
        assert_eq!(
            out.stdout, "rollout.deployctl.dev/api deleted\n",
            "{backend}"
        );
        let out = run(&store, &["delete", "ro", "api"]).code(1);
        assert_eq!(
            out.stderr.trim(),
            "Error from server (NotFound): rollouts \"api\" not found",
            "{backend}"
        );
        run(&store, &["delete", "ro", "api", "--ignore-not-found"]).ok();
        let out = run(&store, &["delete", "-f", &file, "--ignore-not-found"]).ok();
        assert_eq!(
            out.stdout, "application.deployctl.dev/api deleted\n",
            "{backend}"
        );
        run(&store, &["get", "app", "api"]).code(1);
    }
}

#[test]
fn label_selectors_should_filter_get() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let dir = tempdir();
        let machines: Vec<String> = [("web-1", "role: web, zone: a"), ("web-2", "role: web, zone: b"), ("db-1", "role: db, zone: a")]
            .iter()
            .map(|(n, l)| format!("apiVersion: deployctl.dev/v1\nkind: Machine\nmetadata:\n  name: {n}\n  labels: {{{l}}}\n"))
            .collect();
        run(
            &store,
            &[
                "apply",
                "-f",
                &write(dir.path(), "m.yaml", &machines.join("---\n")),
            ],
        )
        .ok();
        for (sel, want) in [
            (
                "role=web",
                "machine.deployctl.dev/web-1\nmachine.deployctl.dev/web-2\n",
            ),
            ("role=web,zone=b", "machine.deployctl.dev/web-2\n"),
            ("zone in (a),role!=web", "machine.deployctl.dev/db-1\n"),
            ("!zone", ""),
        ] {
            let out = run(&store, &["get", "machines", "-l", sel, "-o", "name"]).ok();
            assert_eq!(out.stdout, want, "{backend}: -l {sel}");
        }
        let out = run(&store, &["get", "mc", "-l", "role=db", "-o", "wide"]).ok();
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(lines.len(), 2, "{backend}: {}", out.stdout);
        assert!(
            lines[0].starts_with("NAME   STATUS     AGENT    AGE   HOSTNAME   LABELS ")
                && lines[0].ends_with("   NOTE"),
            "{backend}: {}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("db-1   NotReady   <none>   ")
                && lines[1].contains("   role=db,zone=a   ")
                && lines[1].ends_with("no agent has registered"),
            "{backend}: {}",
            lines[1]
        );
        let out = run(&store, &["get", "mc", "-l", "bad label!"]).code(1);
        assert!(
            out.stderr.starts_with("error: invalid label selector"),
            "{backend}: {}",
            out.stderr
        );
    }
}

#[test]
fn an_unreachable_etcd_should_fail_fast_naming_the_endpoint() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
        // dropped: nothing listens there any more
    };
    let store = format!("etcd://127.0.0.1:{port}");
    let started = Instant::now();
    let out = run(&store, &["get", "rollouts"]).code(1);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("127.0.0.1:{port}")),
        "{}",
        out.stderr
    );
}

#[test]
fn concurrent_applies_on_one_embedded_store_should_all_succeed_and_lose_nothing() {
    let b = Backend::embedded();
    let store = b.url();
    let dir = tempdir();
    let shared = write(dir.path(), "shared.yaml", &manifests());
    let n = 6;
    let children: Vec<_> = (0..n)
        .map(|i| {
            let own = write(
                dir.path(),
                &format!("own-{i}.yaml"),
                &format!("apiVersion: deployctl.dev/v1\nkind: Machine\nmetadata: {{name: m-{i}, labels: {{batch: x}}}}\n"),
            );
            let (store, shared) = (store.clone(), shared.clone());
            std::thread::spawn(move || run(&store, &["apply", "-f", &shared, "-f", &own]))
        })
        .collect();
    let mut created = 0;
    for c in children {
        let out = c.join().expect("the apply thread does not panic").ok();
        created += out
            .stdout
            .matches("rollout.deployctl.dev/api created")
            .count();
    }
    assert_eq!(created, 1, "exactly one process creates the shared rollout");
    let out = run(&store, &["get", "mc", "-l", "batch=x", "-o", "name"]).ok();
    assert_eq!(out.stdout.lines().count(), n, "{}", out.stdout);
    let ro: Rollout = get_yaml(&store, "ro", "api");
    assert_eq!(ro.metadata.generation, Some(1));
}

#[test]
fn rollout_requests_should_each_be_one_update_that_says_what_it_did() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let dir = tempdir();
        run(
            &store,
            &["apply", "-f", &write(dir.path(), "api.yaml", &manifests())],
        )
        .ok();
        let said = |args: &[&str]| run(&store, args).ok().stdout;
        assert_eq!(
            said(&["rollout", "pause", "api"]),
            "rollout.deployctl.dev/api paused\n"
        );
        assert!(
            get_yaml::<Rollout>(&store, "ro", "api").spec.paused,
            "{backend}"
        );
        assert_eq!(
            said(&["rollout", "resume", "api"]),
            "rollout.deployctl.dev/api resumed\n"
        );
        assert!(
            !get_yaml::<Rollout>(&store, "ro", "api").spec.paused,
            "{backend}"
        );
        said(&["rollout", "promote", "api", "--full"]);
        let promote = get_yaml::<Rollout>(&store, "ro", "api")
            .metadata
            .annotations[ANNOTATION_PROMOTE]
            .clone();
        assert!(promote.starts_with("full:"), "{backend}: {promote}");
        said(&["rollout", "promote", "api"]);
        let again = get_yaml::<Rollout>(&store, "ro", "api")
            .metadata
            .annotations[ANNOTATION_PROMOTE]
            .clone();
        assert_ne!(again, promote, "{backend}: each promote is a fresh token");
        // A re-apply keeps the request annotation the manifest does not mention.
        run(
            &store,
            &["apply", "-f", &write(dir.path(), "api.yaml", &manifests())],
        )
        .ok();
        assert!(
            get_yaml::<Rollout>(&store, "ro", "api")
                .metadata
                .annotations
                .contains_key(ANNOTATION_PROMOTE),
            "{backend}"
        );
        said(&["rollout", "restart", "api"]);
        assert!(
            get_yaml::<Rollout>(&store, "ro", "api")
                .spec
                .restart_at
                .is_some(),
            "{backend}"
        );

        let out = run(&store, &["set", "version", "api", "1/2"]).code(1);
        assert!(
            out.stderr.contains("invalid version \"1/2\""),
            "{backend}: {}",
            out.stderr
        );
        let out = run(&store, &["rollout", "pause", "nope"]).code(1);
        assert_eq!(
            out.stderr.trim(),
            "Error from server (NotFound): rollouts \"nope\" not found",
            "{backend}"
        );

        // undo: the controller's history (written here as the controller would) decides.
        let rt = crate::common::rt();
        rt.block_on(async {
            let client = b.client().await;
            client
                .update_status::<Rollout>(Some("default"), "api", |s| {
                    let rev = |n: u32, v: &str| Revision {
                        revision: n,
                        version: v.into(),
                        sha256: None,
                        started_at: chrono::Utc::now(),
                        completed_at: None,
                        result: "Complete".into(),
                    };
                    s.history = vec![rev(1, "0.9.0"), rev(2, "1.0.0")];
                })
                .await
                .unwrap();
        });
        let generation = get_yaml::<Rollout>(&store, "ro", "api")
            .metadata
            .generation
            .unwrap();
        assert_eq!(
            said(&["rollout", "undo", "api"]),
            "rollout.deployctl.dev/api rolled back to revision 1 (version 0.9.0)\n"
        );
        let ro: Rollout = get_yaml(&store, "ro", "api");
        assert_eq!(ro.spec.version, "0.9.0", "{backend}");
        assert_eq!(ro.metadata.generation, Some(generation + 1), "{backend}");
        assert_eq!(
            ro.metadata.annotations[ANNOTATION_UNDO],
            (generation + 1).to_string(),
            "{backend}"
        );
        let history = run(&store, &["rollout", "history", "api"]).ok().stdout;
        assert!(
            history.starts_with("REVISION   VERSION   STARTED"),
            "{backend}: {history}"
        );
        assert!(
            history.contains("\n2          1.0.0"),
            "{backend}: {history}"
        );
    }
}

#[test]
fn rollout_status_should_exit_by_outcome() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let dir = tempdir();
        run(
            &store,
            &["apply", "-f", &write(dir.path(), "api.yaml", &manifests())],
        )
        .ok();
        // Nobody completes it: exit 2 at the timeout.
        let started = Instant::now();
        let out = run(&store, &["rollout", "status", "api", "--timeout", "1s"]).code(2);
        assert!(started.elapsed() < DEADLINE, "{backend}");
        assert!(
            out.stderr.contains("timed out"),
            "{backend}: {}",
            out.stderr
        );

        let mut follow = spawn(&store, &["rollout", "status", "api", "--timeout", "1m"]);
        follow.wait_for_line("with the pending state", |l| l.contains("Pending"));
        let rt = crate::common::rt();
        let set_status = |phase: RolloutPhase, target: &str, updated: u32| {
            rt.block_on(async {
                let client = b.client().await;
                client
                    .update_status::<Rollout>(Some("default"), "api", |s| {
                        s.phase = phase;
                        s.observed_generation = 1;
                        s.target_version = Some(target.into());
                        s.desired = 4;
                        s.updated = updated;
                    })
                    .await
                    .unwrap();
            })
        };
        set_status(RolloutPhase::Progressing, "1.0.0", 2);
        follow.wait_for_line("with progress", |l| {
            l.contains("Progressing, 2 of 4 machines updated")
        });
        set_status(RolloutPhase::Complete, "1.0.0", 4);
        follow.wait_for_line("saying it is done", |l| {
            l.contains("successfully rolled out to 1.0.0")
        });
        assert_eq!(follow.terminate(), Some(0), "{backend}: {:?}", follow.seen);

        set_status(RolloutPhase::Degraded, "1.0.0", 1);
        let out = run(&store, &["rollout", "status", "api"]).code(1);
        assert!(
            out.stderr.contains("is degraded"),
            "{backend}: {}",
            out.stderr
        );
    }
}

#[test]
fn describe_should_show_conditions_and_events_of_the_object() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let dir = tempdir();
        run(
            &store,
            &["apply", "-f", &write(dir.path(), "api.yaml", &manifests())],
        )
        .ok();
        let page = run(&store, &["describe", "ro", "api"]).ok().stdout;
        for want in [
            "Name:",
            "api",
            "Namespace:",
            "default",
            "Max Unavailable:",
            "25%",
            "1. setWeight: 10%",
            "2. pause: until promoted",
            "Phase:",
            "Pending",
        ] {
            assert!(page.contains(want), "{backend}: {want:?} not in\n{page}");
        }
        let out = run(&store, &["describe", "app", "nope"]).code(1);
        assert_eq!(
            out.stderr.trim(),
            "Error from server (NotFound): applications \"nope\" not found",
            "{backend}"
        );
        let _ = Machine::KIND;
    }
}

#[test]
fn get_watch_should_keep_working_across_an_etcd_restart() {
    let mut etcd = deployctl::testing::EtcdServer::start();
    let store = etcd.url();
    let dir = tempdir();
    run(
        &store,
        &["apply", "-f", &write(dir.path(), "api.yaml", &manifests())],
    )
    .ok();
    let mut watch = spawn(&store, &["get", "ro", "-w", "-o", "name"]);
    watch.wait_for_line("with the rollout", |l| l == "rollout.deployctl.dev/api");
    etcd.kill();
    etcd.restart();
    run(&store, &["set", "version", "api", "3.0.0"]).ok();
    run(
        &store,
        &[
            "apply",
            "-f",
            &write(
                dir.path(),
                "web.yaml",
                &ROLLOUT.replace("name: api", "name: web"),
            ),
        ],
    )
    .ok();
    // The watch resumed (or relisted) and reports what changed while and after it was away.
    watch.wait_for_line("for the rollout created after the restart", |l| {
        l == "rollout.deployctl.dev/web"
    });
    assert!(
        watch
            .seen
            .iter()
            .filter(|l| *l == "rollout.deployctl.dev/api")
            .count()
            >= 2,
        "{:?}",
        watch.seen
    );
}

/// A tar.gz holding `VERSION`, written to `dir/api-<version>.tar.gz`.
fn write_artifact(dir: &std::path::Path, version: &str) {
    let mut tar = tar::Builder::new(Vec::new());
    let body = format!("{version}\n");
    let mut h = tar::Header::new_gnu();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "VERSION", body.as_bytes()).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar.into_inner().unwrap()).unwrap();
    std::fs::write(
        dir.join(format!("api-{version}.tar.gz")),
        gz.finish().unwrap(),
    )
    .unwrap();
}

#[test]
fn the_cli_should_drive_a_real_rollout_through_a_controller_and_agents() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let dir = tempdir();
        let art = dir.path().join("artifacts");
        std::fs::create_dir_all(&art).unwrap();
        write_artifact(&art, "1.0.0");
        write_artifact(&art, "1.1.0");
        let manifests = format!(
            "apiVersion: deployctl.dev/v1\nkind: Application\nmetadata: {{name: api}}\nspec:\n  selector: {{matchLabels: {{role: web}}}}\n  artifact: {{url: 'file://{}/api-{{{{version}}}}.tar.gz'}}\n---\n\
             apiVersion: deployctl.dev/v1\nkind: Rollout\nmetadata: {{name: api}}\nspec: {{application: api, version: 1.0.0, strategy: {{minReadySeconds: 3}}}}\n",
            art.display()
        );
        let _controller = spawn(&store, &["controller", "--lease-ttl", "3s"]);
        let agents: Vec<_> = (1..=2)
            .map(|i| {
                let root = dir.path().join(format!("root-{i}")).display().to_string();
                spawn(
                    &store,
                    &[
                        "agent",
                        "--name",
                        &format!("web-{i}"),
                        "--labels",
                        "role=web",
                        "--root",
                        &root,
                    ],
                )
            })
            .collect();
        run(
            &store,
            &["apply", "-f", &write(dir.path(), "api.yaml", &manifests)],
        )
        .ok();
        let out = run(&store, &["rollout", "status", "api", "--timeout", "60s"]).ok();
        assert!(
            out.stdout
                .ends_with("rollout \"api\" successfully rolled out to 1.0.0\n"),
            "{backend}: {}",
            out.stdout
        );
        run(&store, &["set", "version", "api", "1.1.0"]).ok();
        // minReadySeconds keeps the first machine updated-but-verifying for seconds, so
        // `rollout status` (started just after the version write) sees that state.
        let out = run(&store, &["rollout", "status", "api", "--timeout", "60s"]).ok();
        assert!(
            out.stdout.contains("1 of 2 machines updated"),
            "{backend}: one slot at a time: {}",
            out.stdout
        );
        let release = dir.path().join("root-2/default/api/current/VERSION");
        assert_eq!(
            std::fs::read_to_string(&release).unwrap(),
            "1.1.0\n",
            "{backend}"
        );
        let inst = run(&store, &["get", "instances", "--no-headers"])
            .ok()
            .stdout;
        assert_eq!(
            inst.lines()
                .filter(|l| l.contains("1.1.0") && l.contains("Running"))
                .count(),
            2,
            "{backend}: {inst}"
        );
        let history = run(&store, &["rollout", "history", "api"]).ok().stdout;
        assert_eq!(
            history.lines().filter(|l| l.ends_with("Complete")).count(),
            2,
            "{backend}: {history}"
        );
        drop(agents);
    }
}

#[test]
fn output_into_a_closed_pipe_should_end_quietly_not_panic() {
    let backend = Backend::embedded();
    let store = backend.url();
    let dir = tempdir();
    let file = write(
        dir.path(),
        "machine.yaml",
        "apiVersion: deployctl.dev/v1\nkind: Machine\nmetadata:\n  name: web-7\n",
    );
    run(&store, &["apply", "-f", &file]).ok();
    // A pipe whose reader is already gone, as after `deployctl get machines | head -0`.
    let (read_end, write_end) = nix::unistd::pipe().expect("can make a pipe");
    drop(read_end);
    let out = std::process::Command::new(crate::common::bin())
        .args(["get", "machines"])
        .env("DEPLOYCTL_STORE", &store)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(write_end))
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("deployctl runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[test]
fn promoting_a_complete_rollout_should_say_there_is_nothing_to_promote() {
    let b = Backend::embedded();
    let store = b.url();
    let dir = tempdir();
    run(
        &store,
        &["apply", "-f", &write(dir.path(), "api.yaml", &manifests())],
    )
    .ok();
    crate::common::rt().block_on(async {
        b.client()
            .await
            .update_status::<Rollout>(Some("default"), "api", |s| {
                s.phase = RolloutPhase::Complete;
                s.observed_generation = 1;
                s.stable_version = Some("1.0.0".into());
            })
            .await
            .expect("the status is written");
    });
    let out = run(&store, &["rollout", "promote", "api"]).ok();
    assert_eq!(
        out.stdout,
        "rollout.deployctl.dev/api is already complete at 1.0.0: nothing to promote\n"
    );
    let after = get_yaml::<Rollout>(&store, "ro", "api");
    assert!(
        !after.metadata.annotations.contains_key(ANNOTATION_PROMOTE),
        "no promote request was written: {:?}",
        after.metadata.annotations
    );
}

/// A value with an ANSI screen clear, a title-setting OSC ended by BEL, a newline and a
/// bidi override: what a hostile writer of the store could put in a label or message.
const HOSTILE: &str = "x\x1b[2J\x1b]0;owned\x07\ny\u{202e}z";
/// How every human-readable output shows [`HOSTILE`].
const HOSTILE_SHOWN: &str = r"x\e[2J\e]0;owned\a\ny\u{202e}z";

/// Panics when `text` holds a control character raw, or lacks the escaped hostile value.
fn assert_escaped(what: &str, text: &str) {
    for raw in ['\x1b', '\x07', '\u{202e}'] {
        assert!(
            !text.contains(raw),
            "{what}: {raw:?} reached the terminal raw:\n{text:?}"
        );
    }
    assert!(
        text.contains(HOSTILE_SHOWN),
        "{what}: {HOSTILE_SHOWN} not in\n{text}"
    );
}

#[test]
fn values_with_control_characters_from_the_store_should_be_shown_escaped_never_raw() {
    use deployctl::api::{Event, EventSpec, MachineStatus, ObjectReference};
    for (backend, b) in Backend::all() {
        let store = b.url();
        let dir = tempdir();
        run(
            &store,
            &["apply", "-f", &write(dir.path(), "api.yaml", &manifests())],
        )
        .ok();
        // Written through the typed client, as a compromised agent or an old version
        // could write them: apply refuses such labels.
        rt().block_on(async {
            let client = b.client().await;
            let mut m = Machine::new("m1", Default::default());
            m.metadata.labels.insert("role".into(), HOSTILE.into());
            m.metadata.annotations.insert("note".into(), HOSTILE.into());
            let mut m = client.create(&m).await.expect("the machine is created");
            m.status = Some(MachineStatus {
                hostname: Some(HOSTILE.into()),
                ..Default::default()
            });
            client
                .replace_status(&m)
                .await
                .expect("its status is written");
            let event = Event::new(
                "m1.hostile",
                EventSpec {
                    involved_object: ObjectReference {
                        kind: "Machine".into(),
                        namespace: None,
                        name: "m1".into(),
                    },
                    type_: "Warning".into(),
                    reason: "Hostile".into(),
                    message: HOSTILE.into(),
                    source: "agent/m1".into(),
                    time: Some(chrono::Utc::now()),
                },
            );
            client.create(&event).await.expect("the event is created");
            let mut ro: Rollout = client
                .get(Some("default"), "api")
                .await
                .expect("the store answers")
                .expect("the rollout was applied");
            ro.status = Some(deployctl::api::RolloutStatus {
                observed_generation: ro.metadata.generation.unwrap_or(0),
                phase: RolloutPhase::Degraded,
                message: HOSTILE.into(),
                ..Default::default()
            });
            client
                .replace_status(&ro)
                .await
                .expect("its status is written");
        });
        for args in [
            &["get", "machines", "-o", "wide"][..],
            &["describe", "machine", "m1"][..],
            &["get", "events"][..],
            &["describe", "event", "m1.hostile"][..],
            &["get", "rollouts", "-o", "wide"][..],
            &["describe", "rollout", "api"][..],
        ] {
            let out = run(&store, args).ok();
            assert_escaped(&format!("{backend}: {args:?}"), &out.stdout);
        }
        // An error that quotes a value from the store is escaped too.
        let out = run(&store, &["rollout", "status", "api", "--timeout", "20s"]).code(1);
        assert_escaped(&format!("{backend}: rollout status"), &out.stdout);
        assert_escaped(&format!("{backend}: rollout status error"), &out.stderr);
        // Machine-readable output stays exact.
        let m: Machine = get_yaml(&store, "machine", "m1");
        assert_eq!(m.metadata.labels["role"], HOSTILE, "{backend}: -o yaml");
        let json = run(&store, &["get", "machine", "m1", "-o", "json"])
            .ok()
            .stdout;
        let m: Machine = serde_json::from_str(&json).expect("get -o json is a Machine");
        assert_eq!(
            m.metadata.annotations["note"], HOSTILE,
            "{backend}: -o json"
        );
    }
}

#[test]
fn agent_with_a_lease_ttl_out_of_range_should_exit_before_registering_its_machine() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let dir = tempdir();
        let root = dir.path().join("root");
        let root = root.display().to_string();
        for ttl in ["0s", "1s", "1000000years"] {
            let out = run(
                &store,
                &["agent", "--name", "m1", "--root", &root, "--lease-ttl", ttl],
            )
            .code(2);
            assert!(
                out.stderr.contains("--lease-ttl") && out.stderr.contains("2s..=10m"),
                "{backend}: {ttl}: {}",
                out.stderr
            );
        }
        let machines = run(&store, &["get", "machines", "-o", "name"]).ok();
        assert_eq!(machines.stdout, "", "{backend}: a machine was registered");
        assert!(
            !std::path::Path::new(&root).exists(),
            "{backend}: the agent created its root"
        );
    }
}

#[test]
fn sync_with_an_interval_out_of_range_should_exit_before_writing_anything() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let dir = tempdir();
        let cache = dir.path().join("cache").display().to_string();
        let repo = dir.path().join("repo").display().to_string();
        for interval in ["0s", "999ms", "1000000years"] {
            let out = run(
                &store,
                &[
                    "sync",
                    "--repo",
                    &repo,
                    "--cache-dir",
                    &cache,
                    "--name",
                    "fleet",
                    "--interval",
                    interval,
                ],
            )
            .code(2);
            assert!(
                out.stderr.contains("--interval") && out.stderr.contains("1s..=1day"),
                "{backend}: {interval}: {}",
                out.stderr
            );
        }
        let syncs = run(&store, &["get", "syncs", "-o", "name"]).ok();
        assert_eq!(syncs.stdout, "", "{backend}: a Sync was written");
        assert!(
            !std::path::Path::new(&cache).exists(),
            "{backend}: the cache was created"
        );
    }
}

#[test]
fn a_store_path_in_a_missing_directory_should_be_refused_unless_create_is_given() {
    let dir = tempdir();
    let missing = dir.path().join("nonexistent/dir");
    let file = missing.join("x.db").display().to_string();
    let out = run(&file, &["--store", &file, "get", "rollouts"]).code(1);
    assert!(
        out.stderr.contains(&format!(
            "directory {} of store file {file} does not exist; pass --create to create it",
            missing.display()
        )),
        "{}",
        out.stderr
    );
    assert!(!missing.exists(), "the refused run created the directory");
    assert!(
        !dir.path().join("nonexistent").exists(),
        "the refused run created a parent"
    );
    // The same through the environment.
    let out = run(&file, &["get", "rollouts"]).code(1);
    assert!(out.stderr.contains("pass --create"), "{}", out.stderr);
    assert!(!missing.exists(), "the refused run created the directory");
    // With --create, the directory and the store are created and used.
    let out = run(&file, &["--store", &file, "--create", "get", "rollouts"]).ok();
    assert!(out.stderr.contains("No resources found"), "{}", out.stderr);
    assert!(std::path::Path::new(&file).is_file(), "no store file");
    // From now on the directory exists: no flag needed.
    run(&file, &["--store", &file, "get", "rollouts"]).ok();
    // A missing file in an existing directory is still created without --create.
    let fresh = dir.path().join("fresh.db").display().to_string();
    run(&fresh, &["get", "rollouts"]).ok();
    assert!(
        std::path::Path::new(&fresh).is_file(),
        "no fresh store file"
    );
}

#[test]
fn rollout_status_should_exit_3_for_a_missing_rollout_and_4_for_an_unreachable_store() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let out = run(&store, &["rollout", "status", "nope", "--timeout", "30s"]).code(3);
        assert!(
            out.stderr.contains(r#"rollouts "nope" not found"#),
            "{backend}: {}",
            out.stderr
        );

        // Deleted while followed: it no longer exists either.
        let dir = tempdir();
        run(
            &store,
            &["apply", "-f", &write(dir.path(), "api.yaml", &manifests())],
        )
        .ok();
        let mut follow = spawn(&store, &["rollout", "status", "api", "--timeout", "1m"]);
        follow.wait_for_line("with the pending state", |l| l.contains("Pending"));
        run(&store, &["delete", "rollout", "api"]).ok();
        let deadline = Instant::now() + DEADLINE;
        let code = loop {
            if let Some(code) = follow.try_exit() {
                break code;
            }
            assert!(Instant::now() < deadline, "{backend}: still following");
            std::thread::sleep(Duration::from_millis(20)); // polling the exit, not a sync stand-in
        };
        assert_eq!(code, Some(3), "{backend}: {}", follow.stderr_so_far());
    }
    // An etcd nobody listens on, and an embedded store file that cannot be opened.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = tempdir();
    let not_a_file = dir.path().display().to_string();
    for store in [format!("etcd://127.0.0.1:{port}"), not_a_file] {
        let out = run(&store, &["rollout", "status", "api", "--timeout", "1m"]).code(4);
        assert!(out.stderr.starts_with("error: "), "{store}: {}", out.stderr);
    }
    let help = run("", &["rollout", "status", "--help"]).ok().stdout;
    for want in [
        "0  the rollout is Complete",
        "3  the rollout does not exist",
        "4  the store cannot be reached",
    ] {
        assert!(help.contains(want), "no {want:?} in:\n{help}");
    }
}

#[test]
fn apply_dry_run_server_should_fail_where_the_write_would_and_client_only_compare() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let dir = tempdir();
        let machine = |key: &str| {
            format!(
                "apiVersion: deployctl.dev/v1\nkind: Machine\nmetadata:\n  name: m1\n  annotations:\n    {key}: {}\n",
                "a".repeat(1 << 20)
            )
        };
        // A request annotation of 1 MiB in the store; apply keeps such annotations, so a
        // manifest with another 1 MiB makes an object past the store's limit.
        let first = write(dir.path(), "first.yaml", &machine("deployctl.dev/note"));
        run(&store, &["apply", "-R", "-f", &first]).ok();
        let second = write(dir.path(), "second.yaml", &machine("note"));
        run(&store, &["diff", "-R", "-f", &second]).code(1);
        for mode in ["--dry-run", "--dry-run=client"] {
            let out = run(&store, &["apply", mode, "-f", &second]).ok();
            assert_eq!(
                out.stdout, "machine.deployctl.dev/m1 configured (dry run)\n",
                "{backend} {mode}"
            );
        }
        for args in [
            &["apply", "--dry-run=server", "-f", &second][..],
            &["apply", "--dry-run=none", "-f", &second][..],
            &["apply", "-f", &second][..],
        ] {
            let out = run(&store, args).code(1);
            assert!(
                out.stderr.contains("larger than") || out.stderr.contains("too large"),
                "{backend} {args:?}: {}",
                out.stderr
            );
        }
        let kept = run(
            &store,
            &[
                "get",
                "machine",
                "m1",
                "-o",
                "jsonpath={.metadata.annotations.note}",
            ],
        )
        .ok();
        assert_eq!(kept.stdout, "", "{backend}: a refused apply wrote");

        let fits = write(
            dir.path(),
            "fits.yaml",
            &machine("deployctl.dev/note").replace("name: m1", "name: m2"),
        );
        let out = run(&store, &["apply", "--dry-run=server", "-f", &fits]).ok();
        assert_eq!(
            out.stdout, "machine.deployctl.dev/m2 created (server dry run)\n",
            "{backend}"
        );
        run(&store, &["get", "machine", "m2"]).code(1);
        // A manifest saved with its resourceVersion applies only to that version.
        let saved = run(&store, &["get", "machine", "m1", "-o", "yaml"])
            .ok()
            .stdout;
        assert!(saved.contains("resourceVersion:"), "{backend}: {saved}");
        let saved = saved
            .replace("  labels: {}\n", "")
            .replace("metadata:\n", "metadata:\n  labels:\n    team: a\n");
        let saved_path = write(dir.path(), "saved.yaml", &saved);
        run(&store, &["label", "machine", "m1", "rack=r1"]).ok();
        for args in [
            &["apply", "--dry-run=server", "-f", &saved_path][..],
            &["apply", "-f", &saved_path][..],
        ] {
            let out = run(&store, args).code(1);
            assert!(
                out.stderr.contains("the manifest names resourceVersion"),
                "{backend} {args:?}: {}",
                out.stderr
            );
        }
        let labels = run(
            &store,
            &["get", "machine", "m1", "-o", "jsonpath={.metadata.labels}"],
        )
        .ok();
        assert!(
            labels.stdout.contains("rack") && !labels.stdout.contains("team"),
            "{backend}: a stale apply wrote: {}",
            labels.stdout
        );
        let bad = run(&store, &["apply", "--dry-run=maybe", "-f", &fits]).code(2);
        assert!(
            bad.stderr.contains("--dry-run"),
            "{backend}: {}",
            bad.stderr
        );
    }
}
