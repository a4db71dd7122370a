//! kubectl's everyday verbs end to end: `label`, `annotate`, `cordon`, `uncordon`,
//! `drain`, `delete -l/--all/--wait`, `edit`, `explain` and `rollout undo --to-revision`,
//! each on the embedded store and a real etcd.

use crate::common::{bin, rt, run, run_with_env, spawn, tempdir, write, Backend, DEADLINE};
use deployctl::api::{
    set_condition, ConditionStatus, Instance, InstancePhase, InstanceSpec, InstanceStatus, Machine,
    Object, Rollout,
};

const FLEET: &str = "\
apiVersion: deployctl.dev/v1
kind: Machine
metadata:
  name: m1
  labels: {role: web, zone: a}
---
apiVersion: deployctl.dev/v1
kind: Machine
metadata:
  name: m2
  labels: {role: web, zone: b}
---
apiVersion: deployctl.dev/v1
kind: Machine
metadata:
  name: db1
  labels: {role: db}
---
apiVersion: deployctl.dev/v1
kind: Application
metadata:
  name: api
spec:
  selector:
    matchLabels: {role: web}
  artifact:
    url: https://ci.example.com/api/{{version}}/api.tar.gz
---
apiVersion: deployctl.dev/v1
kind: Rollout
metadata:
  name: api
spec:
  application: api
  version: 1.0.0
";

/// A store holding [`FLEET`].
fn with_fleet(backend: &Backend) -> String {
    let store = backend.url();
    let dir = tempdir();
    let file = write(dir.path(), "fleet.yaml", FLEET);
    run(&store, &["apply", "-f", &file]).ok();
    store
}

/// `get KIND NAME -o yaml`, parsed.
fn get_yaml<K: Object>(store: &str, kind: &str, name: &str) -> K {
    let out = run(store, &["get", kind, name, "-o", "yaml"]).ok();
    serde_yaml::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("get -o yaml is not a {kind}: {e}\n{}", out.stdout))
}

fn labels(store: &str, machine: &str) -> Vec<(String, String)> {
    get_yaml::<Machine>(store, "machine", machine)
        .metadata
        .labels
        .into_iter()
        .collect()
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn label_should_add_keys_refuse_a_change_without_overwrite_and_remove_keys() {
    for (backend, b) in Backend::all() {
        let store = with_fleet(&b);
        let out = run(&store, &["label", "machine", "m1", "group=canary"]).ok();
        assert_eq!(
            out.stdout, "machine.deployctl.dev/m1 labeled\n",
            "{backend}"
        );
        assert_eq!(
            labels(&store, "m1"),
            pairs(&[("group", "canary"), ("role", "web"), ("zone", "a")]),
            "{backend}"
        );

        let out = run(&store, &["label", "machine", "m1", "group=stable"]).code(1);
        assert!(
            out.stderr
                .contains("\"group\" already has a value (canary), and --overwrite is false"),
            "{backend}: {}",
            out.stderr
        );
        assert_eq!(labels(&store, "m1")[0], pairs(&[("group", "canary")])[0]);

        let out = run(&store, &["label", "machine", "m1", "group=canary"]).ok();
        assert_eq!(
            out.stdout, "machine.deployctl.dev/m1 not labeled\n",
            "{backend}"
        );

        run(&store, &["label", "mc/m1", "group=stable", "--overwrite"]).ok();
        run(&store, &["label", "mc", "m1", "zone-"]).ok();
        assert_eq!(
            labels(&store, "m1"),
            pairs(&[("group", "stable"), ("role", "web")]),
            "{backend}"
        );
    }
}

#[test]
fn label_should_reach_every_selected_object_and_refuse_bad_input_changing_nothing() {
    for (backend, b) in Backend::all() {
        let store = with_fleet(&b);
        let out = run(
            &store,
            &["label", "machines", "-l", "role=web", "tier=front"],
        )
        .ok();
        assert_eq!(
            out.stdout, "machine.deployctl.dev/m1 labeled\nmachine.deployctl.dev/m2 labeled\n",
            "{backend}"
        );
        assert!(!labels(&store, "db1").iter().any(|(k, _)| k == "tier"));
        run(&store, &["label", "machines", "--all", "owner=ops"]).ok();
        for m in ["m1", "m2", "db1"] {
            assert!(
                labels(&store, m).contains(&pairs(&[("owner", "ops")])[0]),
                "{backend}: {m}"
            );
        }

        let before = labels(&store, "m1");
        for (args, want) in [
            (
                &["label", "mc", "m1", "bad key=x"][..],
                "invalid key \"bad key\"",
            ),
            (
                &["label", "mc", "m1", "k=not ok"][..],
                "invalid value \"not ok\"",
            ),
            (&["label", "mc", "m1"][..], "no label change given"),
            (
                &["label", "mc", "m1", "-l", "role=web", "k=v"][..],
                "names and -l",
            ),
            (&["label", "mc", "k=v"][..], "no machines named"),
            (
                &["label", "mc", "nope", "k=v"][..],
                "machines \"nope\" not found",
            ),
            (
                &["label", "nokind", "x", "k=v"][..],
                "unknown kind \"nokind\"",
            ),
        ] {
            let out = run(&store, args).code(1);
            assert!(
                out.stderr.contains(want),
                "{backend} {args:?}: {}",
                out.stderr
            );
        }
        assert_eq!(
            labels(&store, "m1"),
            before,
            "{backend}: bad input changed m1"
        );
    }
}

#[test]
fn annotate_should_set_values_labels_cannot_hold_and_leave_the_generation_alone() {
    for (backend, b) in Backend::all() {
        let store = with_fleet(&b);
        let generation = get_yaml::<Rollout>(&store, "ro", "api").metadata.generation;
        let out = run(&store, &["annotate", "ro", "api", "note=paused for the db"]).ok();
        assert_eq!(
            out.stdout, "rollout.deployctl.dev/api annotated\n",
            "{backend}"
        );
        let ro: Rollout = get_yaml(&store, "ro", "api");
        assert_eq!(ro.metadata.annotations["note"], "paused for the db");
        assert_eq!(
            ro.metadata.generation, generation,
            "{backend}: metadata only"
        );

        let out = run(&store, &["annotate", "ro", "api", "note=done"]).code(1);
        assert!(
            out.stderr.contains("--overwrite is false"),
            "{}",
            out.stderr
        );
        run(
            &store,
            &["annotate", "ro", "api", "note=done", "--overwrite"],
        )
        .ok();
        assert_eq!(
            get_yaml::<Rollout>(&store, "ro", "api")
                .metadata
                .annotations["note"],
            "done"
        );
        run(&store, &["annotate", "ro", "api", "note-"]).ok();
        assert!(!get_yaml::<Rollout>(&store, "ro", "api")
            .metadata
            .annotations
            .contains_key("note"));
    }
}

#[test]
fn cordon_and_uncordon_should_flip_unschedulable_and_say_when_it_already_was() {
    for (backend, b) in Backend::all() {
        let store = with_fleet(&b);
        let out = run(&store, &["cordon", "m1"]).ok();
        assert_eq!(
            out.stdout, "machine.deployctl.dev/m1 cordoned\n",
            "{backend}"
        );
        assert!(get_yaml::<Machine>(&store, "mc", "m1").spec.unschedulable);
        let out = run(&store, &["cordon", "m1"]).ok();
        assert_eq!(out.stdout, "machine.deployctl.dev/m1 already cordoned\n");
        let out = run(&store, &["uncordon", "m1"]).ok();
        assert_eq!(out.stdout, "machine.deployctl.dev/m1 uncordoned\n");
        assert!(!get_yaml::<Machine>(&store, "mc", "m1").spec.unschedulable);
        let out = run(&store, &["cordon", "nope"]).code(1);
        assert!(
            out.stderr.contains("machines \"nope\" not found"),
            "{backend}: {}",
            out.stderr
        );
    }
}

/// Writes what the controller and the agents would: both web machines Ready, the
/// Rollout counting `desired` machines, and an Instance of `api` on m1 in `phase`.
async fn observe(b: &Backend, desired: u32, phase: InstancePhase) {
    let client = b.client().await;
    for m in ["m1", "m2"] {
        client
            .update_status::<Machine>(None, m, |s| {
                set_condition(
                    &mut s.conditions,
                    "Ready",
                    ConditionStatus::True,
                    "AgentLeaseAlive",
                    "",
                    chrono::Utc::now(),
                );
            })
            .await
            .expect("the machine exists");
    }
    client
        .update_status::<Rollout>(Some("default"), "api", |s| s.desired = desired)
        .await
        .expect("the rollout exists");
    let existing = client
        .get::<Instance>(Some("default"), "api.m1")
        .await
        .expect("the store answers");
    let inst = match existing {
        Some(i) => i,
        None => {
            let mut i = Instance::new(
                "api.m1",
                InstanceSpec {
                    machine: "m1".into(),
                    application: "api".into(),
                    ..Default::default()
                },
            );
            i.metadata.namespace = Some("default".into());
            client.create(&i).await.expect("a new instance")
        }
    };
    let generation = inst.metadata.generation.unwrap_or(0);
    client
        .update_status::<Instance>(Some("default"), "api.m1", |s| {
            *s = InstanceStatus {
                observed_generation: generation,
                phase,
                ..Default::default()
            };
        })
        .await
        .expect("the instance exists");
}

#[test]
fn drain_should_cordon_then_wait_until_the_rollout_recounts_and_the_instance_settles() {
    for (backend, b) in Backend::all() {
        let store = with_fleet(&b);
        rt().block_on(observe(&b, 2, InstancePhase::Running));

        // Nothing recounts (no controller): drain gives up, naming the rollout.
        let out = run(&store, &["drain", "m1", "--timeout", "1s"]).code(1);
        assert_eq!(
            out.stdout, "machine.deployctl.dev/m1 cordoned\n",
            "{backend}"
        );
        assert!(
            out.stderr.contains(
                "timed out after 1s draining machine \"m1\": rollout default/api counts 2 desired machines, not yet recounted without m1"
            ),
            "{backend}: {}",
            out.stderr
        );
        assert!(get_yaml::<Machine>(&store, "mc", "m1").spec.unschedulable);

        let mut drain = spawn(&store, &["drain", "m1", "--timeout", "60s"]);
        drain.wait_for_line("already cordoned", |l| l.ends_with("already cordoned"));
        drain
            .wait_for_stderr_line(DEADLINE, |l| l.contains("not yet recounted without m1"))
            .expect("drain says what it waits for");
        // The controller recounts, but the agent is still switching on m1.
        rt().block_on(observe(&b, 1, InstancePhase::Switching));
        drain
            .wait_for_stderr_line(DEADLINE, |l| {
                l.contains("instance api.m1 on m1 is switching")
            })
            .expect("drain waits for the switch");
        rt().block_on(observe(&b, 1, InstancePhase::Running));
        drain.wait_for_line("drained", |l| l == "machine.deployctl.dev/m1 drained");
        assert_eq!(drain.terminate(), Some(0), "{backend}: drain exits 0");
    }
}

#[test]
fn drain_help_should_say_it_stops_no_service() {
    let out = run("etcd://127.0.0.1:1", &["drain", "--help"]).ok();
    assert!(
        out.stdout.contains("Drain does not stop services"),
        "{}",
        out.stdout
    );
}

#[test]
fn delete_should_take_a_selector_or_all_and_wait_for_rollouts_unless_told_not_to() {
    for (backend, b) in Backend::all() {
        let store = with_fleet(&b);
        let out = run(&store, &["delete", "machines", "-l", "role=web"]).ok();
        assert_eq!(
            out.stdout, "machine.deployctl.dev/m1 deleted\nmachine.deployctl.dev/m2 deleted\n",
            "{backend}"
        );
        run(&store, &["get", "mc", "db1"]).ok();
        run(&store, &["get", "mc", "m1"]).code(1);

        let out = run(&store, &["delete", "machines", "-l", "role=web"]).ok();
        assert!(
            out.stderr.contains("No machines matched."),
            "{}",
            out.stderr
        );
        let out = run(&store, &["delete", "mc", "db1", "--all"]).code(1);
        assert!(out.stderr.contains("names and --all"), "{}", out.stderr);
        run(&store, &["get", "mc", "db1"]).ok();

        let out = run(&store, &["delete", "machines", "--all"]).ok();
        assert_eq!(
            out.stdout, "machine.deployctl.dev/db1 deleted\n",
            "{backend}"
        );

        let out = run(
            &store,
            &["delete", "ro", "api", "--wait=false", "--timeout", "5s"],
        )
        .ok();
        assert_eq!(
            out.stdout, "rollout.deployctl.dev/api deleted\n",
            "{backend}"
        );
        run(&store, &["get", "ro", "api"]).code(1);
        let out = run(&store, &["delete", "ro", "api", "--ignore-not-found"]).ok();
        assert_eq!(out.stdout, "", "{backend}");
        run(&store, &["delete", "app", "api", "--wait"]).ok();
        run(&store, &["get", "app", "api"]).code(1);
    }
}

#[test]
fn delete_wait_should_refuse_a_value_that_is_not_a_bool() {
    let out = run(
        "etcd://127.0.0.1:1",
        &["delete", "ro", "api", "--wait=maybe"],
    )
    .code(2);
    assert!(out.stderr.contains("--wait"), "{}", out.stderr);
}

/// An editor script that sets `spec.version` to its first argument in the file given
/// as its second, as a person would in vi.
const SET_VERSION: &str = "#!/bin/sh\nsed -i \"s/^  version: .*/  version: $1/\" \"$2\"\n";

/// `deployctl edit ARGS` with `KUBE_EDITOR` (or, with `None`, no `KUBE_EDITOR` and this
/// `EDITOR`).
fn edit(
    store: &str,
    args: &[&str],
    kube_editor: Option<&str>,
    editor: Option<&str>,
) -> crate::common::Output {
    let mut all = vec!["edit"];
    all.extend_from_slice(args);
    run_with_env(
        store,
        &all,
        &[("KUBE_EDITOR", kube_editor), ("EDITOR", editor)],
    )
}

#[test]
fn edit_should_write_the_saved_change_and_cancel_an_unchanged_file() {
    for (backend, b) in Backend::all() {
        let store = with_fleet(&b);
        let dir = tempdir();
        // A path with a space, quoted in the editor value: split into words, no shell.
        let script = write(dir.path(), "my editor/set-version.sh", SET_VERSION);
        let editor = format!("sh '{script}' 2.0.0");
        let out = edit(&store, &["rollout", "api"], Some(&editor), None).ok();
        assert_eq!(
            out.stdout, "rollout.deployctl.dev/api edited\n",
            "{backend}"
        );
        let ro: Rollout = get_yaml(&store, "ro", "api");
        assert_eq!(ro.spec.version, "2.0.0", "{backend}");
        assert_eq!(ro.metadata.generation, Some(2), "{backend}");

        // $EDITOR when $KUBE_EDITOR is unset; KIND/NAME.
        let editor = format!("sh '{script}' 3.0.0");
        edit(&store, &["ro/api"], None, Some(&editor)).ok();
        assert_eq!(
            get_yaml::<Rollout>(&store, "ro", "api").spec.version,
            "3.0.0"
        );

        let before = get_yaml::<Rollout>(&store, "ro", "api")
            .metadata
            .resource_version;
        let out = edit(&store, &["rollout", "api"], Some("true"), None).ok();
        assert_eq!(
            out.stdout, "Edit cancelled, no changes made.\n",
            "{backend}"
        );
        let out = edit(&store, &["rollout", "api"], Some("false"), None).code(1);
        assert!(
            out.stderr.contains("the editor \"false\" failed"),
            "{}",
            out.stderr
        );
        assert_eq!(
            get_yaml::<Rollout>(&store, "ro", "api")
                .metadata
                .resource_version,
            before,
            "{backend}: nothing written"
        );
        // A cluster-scoped kind; a renamed object is refused, naming what the file edits.
        let cordon = write(
            dir.path(),
            "cordon.sh",
            "#!/bin/sh\nsed -i 's/^  unschedulable: false/  unschedulable: true/' \"$1\"\n",
        );
        edit(
            &store,
            &["machine", "m1"],
            Some(&format!("sh {cordon}")),
            None,
        )
        .ok();
        assert!(
            get_yaml::<Machine>(&store, "mc", "m1").spec.unschedulable,
            "{backend}"
        );
        let rename = write(
            dir.path(),
            "rename.sh",
            "#!/bin/sh\nsed -i 's/^  name: m2/  name: m9/' \"$1\"\n",
        );
        let out = edit(
            &store,
            &["machine", "m2"],
            Some(&format!("sh {rename}")),
            None,
        )
        .code(1);
        assert!(
            out.stderr.contains("no valid changes were saved"),
            "{}",
            out.stderr
        );
        run(&store, &["get", "mc", "m9"]).code(1);

        let out = edit(&store, &["instances", "x"], Some("true"), None).code(1);
        assert!(
            out.stderr
                .contains("instances are written by deployctl itself"),
            "{}",
            out.stderr
        );
        let out = edit(&store, &["rollout", "nope"], Some("true"), None).code(1);
        assert!(
            out.stderr.contains("rollouts \"nope\" not found"),
            "{}",
            out.stderr
        );
    }
}

/// An editor script that copies each file it is given to `opened-N.yaml` in `dir`
/// (N counting from 1), then runs `on_first` (sh, `$f` the file) the first time and
/// `on_second` the second.
fn recording_editor(dir: &std::path::Path, on_first: &str, on_second: &str) -> String {
    let d = dir.display();
    write(
        dir,
        "editor.sh",
        &format!(
            "#!/bin/sh\nf=\"$1\"\nn=$(cat '{d}/count' 2>/dev/null || echo 0)\nn=$((n+1))\necho $n > '{d}/count'\ncp \"$f\" '{d}/opened-'$n.yaml\nif [ $n = 1 ]; then\n{on_first}\nelif [ $n = 2 ]; then\n{on_second}\nfi\n"
        ),
    )
}

fn opened(dir: &std::path::Path, n: u32) -> String {
    std::fs::read_to_string(dir.join(format!("opened-{n}.yaml")))
        .unwrap_or_else(|e| panic!("the editor was not opened {n} times: {e}"))
}

#[test]
fn edit_should_reopen_after_a_conflict_with_the_error_on_top_and_keep_both_changes() {
    for (backend, b) in Backend::all() {
        let store = with_fleet(&b);
        let dir = tempdir();
        // While the "editor" is open, another writer labels the rollout: the CAS fails.
        let first = format!(
            "sed -i 's/^  version: .*/  version: 2.0.0/' \"$f\"\n'{}' label rollout api touched=yes >/dev/null || exit 1",
            bin()
        );
        let script = recording_editor(dir.path(), &first, "true");
        let out = edit(
            &store,
            &["rollout", "api"],
            Some(&format!("sh {script}")),
            None,
        )
        .ok();
        assert_eq!(
            out.stdout, "rollout.deployctl.dev/api edited\n",
            "{backend}"
        );

        let reopened = opened(dir.path(), 2);
        assert!(
            reopened.starts_with("# Please edit the object below."),
            "{reopened}"
        );
        assert!(
            reopened.contains("# rollout.deployctl.dev/api changed in the store while it was open"),
            "{backend}: {reopened}"
        );
        assert!(reopened.contains("touched: yes"), "{backend}: {reopened}");
        assert!(
            reopened.contains("  version: 2.0.0"),
            "{backend}: {reopened}"
        );
        assert!(!opened(dir.path(), 1).contains("changed in the store"));

        let ro: Rollout = get_yaml(&store, "ro", "api");
        assert_eq!(ro.spec.version, "2.0.0", "{backend}: the edit was written");
        assert_eq!(
            ro.metadata.labels.get("touched").map(String::as_str),
            Some("yes"),
            "{backend}: the concurrent label survived"
        );
    }
}

#[test]
fn edit_should_reopen_invalid_yaml_with_the_error_and_cancel_when_saved_again_unfixed() {
    for (backend, b) in Backend::all() {
        let store = with_fleet(&b);
        let dir = tempdir();
        let script = recording_editor(
            dir.path(),
            "sed -i 's/^  version: .*/  version: [unclosed/' \"$f\"",
            "sed -i 's/^  version: .*/  version: 4.0.0/' \"$f\"",
        );
        let out = edit(
            &store,
            &["rollout", "api"],
            Some(&format!("sh {script}")),
            None,
        )
        .ok();
        assert_eq!(
            out.stdout, "rollout.deployctl.dev/api edited\n",
            "{backend}"
        );
        let reopened = opened(dir.path(), 2);
        let top: Vec<&str> = reopened
            .lines()
            .take_while(|l| l.starts_with('#'))
            .collect();
        assert!(
            top.iter()
                .any(|l| l.contains("object.yaml") && l.contains("line")),
            "{backend}: no error naming the file and line atop:\n{reopened}"
        );
        assert!(
            reopened.contains("version: [unclosed"),
            "the user's text is kept"
        );
        assert_eq!(
            get_yaml::<Rollout>(&store, "ro", "api").spec.version,
            "4.0.0"
        );

        // A schema error reopens too; saving it again unfixed cancels, writing nothing.
        let dir = tempdir();
        let script = recording_editor(
            dir.path(),
            "sed -i 's/^  application: .*/  application: {not: a name}/' \"$f\"",
            "true",
        );
        let before = get_yaml::<Rollout>(&store, "ro", "api");
        let out = edit(
            &store,
            &["rollout", "api"],
            Some(&format!("sh {script}")),
            None,
        )
        .code(1);
        assert!(
            out.stderr
                .contains("Edit cancelled, no valid changes were saved."),
            "{backend}: {}",
            out.stderr
        );
        let reopened = opened(dir.path(), 2);
        assert!(
            reopened.contains("# ") && reopened.contains("spec.application"),
            "{backend}: {reopened}"
        );
        assert_eq!(
            get_yaml::<Rollout>(&store, "ro", "api"),
            before,
            "{backend}"
        );
    }
}

#[test]
fn explain_should_describe_a_field_from_the_schemas_with_no_store_and_refuse_an_unknown_one() {
    // No store is needed: an unreachable one proves none is asked.
    let store = "etcd://127.0.0.1:1";
    let out = run(store, &["explain", "rollout.spec.strategy"]).ok();
    assert!(
        out.stdout.starts_with(
            "KIND:     Rollout\nVERSION:  deployctl.dev/v1\n\nFIELD:    spec.strategy <object>\n"
        ),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("\n  maxUnavailable\t<integer or string> (default 1)\n"),
        "{}",
        out.stdout
    );
    // Every field the reference lists for Application is reachable by explain.
    let reference = include_str!("../../docs/reference.md");
    assert!(
        reference.contains("| `spec.healthCheck.http.url` |"),
        "the reference changed"
    );
    let out = run(store, &["explain", "app.spec.healthCheck.http.url"]).ok();
    assert!(
        out.stdout
            .contains("FIELD:    spec.healthCheck.http.url <string>"),
        "{}",
        out.stdout
    );

    let out = run(store, &["explain", "ro.spec.strategy.nope"]).code(1);
    assert!(
        out.stderr.contains(
            "field \"nope\" does not exist in rollout.spec.strategy; the fields there are: "
        ) && out.stderr.contains("maxParallelStage, maxUnavailable"),
        "{}",
        out.stderr
    );
    let out = run(store, &["explain", "instance"]).code(1);
    assert!(
        out.stderr
            .contains("instances are written by deployctl itself"),
        "{}",
        out.stderr
    );
}

#[test]
fn rollout_undo_to_revision_should_pick_that_revisions_version_and_refuse_a_missing_one() {
    for (backend, b) in Backend::all() {
        let store = with_fleet(&b);
        rt().block_on(async {
            let client = b.client().await;
            client
                .update_status::<Rollout>(Some("default"), "api", |s| {
                    s.history = ["0.8.0", "0.9.0", "1.0.0"]
                        .iter()
                        .enumerate()
                        .map(|(i, v)| deployctl::api::Revision {
                            revision: i as u32 + 1,
                            version: v.to_string(),
                            sha256: None,
                            started_at: chrono::Utc::now(),
                            completed_at: None,
                            result: "Complete".into(),
                        })
                        .collect();
                })
                .await
                .expect("the rollout exists");
        });
        let out = run(&store, &["rollout", "undo", "api", "--to-revision", "1"]).ok();
        assert_eq!(
            out.stdout, "rollout.deployctl.dev/api rolled back to revision 1 (version 0.8.0)\n",
            "{backend}"
        );
        assert_eq!(
            get_yaml::<Rollout>(&store, "ro", "api").spec.version,
            "0.8.0"
        );

        let before = get_yaml::<Rollout>(&store, "ro", "api");
        let out = run(&store, &["rollout", "undo", "api", "--to-revision", "9"]).code(1);
        assert!(
            out.stderr.contains("no revision 9 in its history"),
            "{backend}: {}",
            out.stderr
        );
        let out = run(&store, &["rollout", "undo", "api", "--to-revision", "1"]).code(1);
        assert!(
            out.stderr.contains("which it already wants"),
            "{backend}: {}",
            out.stderr
        );
        assert_eq!(
            get_yaml::<Rollout>(&store, "ro", "api"),
            before,
            "{backend}: unchanged"
        );
        run(&store, &["rollout", "undo", "api", "--to-revision", "0"]).code(2);
    }
}

#[test]
fn drain_should_finish_once_a_real_controller_recounts_the_rollout_without_the_machine() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let work = tempdir();
        let (_controller, _agents) = crate::truth_views::fleet_on_1_0_0(&store, work.path());
        let out = run(&store, &["drain", "m1", "--timeout", "60s"]).ok();
        assert_eq!(
            out.stdout, "machine.deployctl.dev/m1 cordoned\nmachine.deployctl.dev/m1 drained\n",
            "{backend}: {}",
            out.stderr
        );
        let ro: Rollout = get_yaml(&store, "ro", "api");
        assert_eq!(
            ro.status.map(|s| s.desired),
            Some(2),
            "{backend}: the controller counts two machines once m1 is drained"
        );
        // Drain stops nothing: m1's Instance still runs 1.0.0.
        let inst: Instance = get_yaml(&store, "instance", "api.m1");
        let st = inst.status.expect("the agent reported");
        assert_eq!(st.current_version.as_deref(), Some("1.0.0"), "{backend}");
        assert_eq!(st.phase, InstancePhase::Running, "{backend}");
        run(&store, &["uncordon", "m1"]).ok();
        crate::truth_views::poll(
            &store,
            "m1 counted again",
            &["get", "ro", "api", "-o", "json"],
            |out| out.contains("\"desired\": 3"),
        );
    }
}
