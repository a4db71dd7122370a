//! GitOps end to end: `deployctl sync` and `deployctl diff` against a Git repository made
//! by the test (the git command line), on the embedded store and a real etcd.

use crate::common::{rt, run, spawn, tempdir, write, Backend, Output, DEADLINE};
use deployctl::api::{
    Application, Event, GitSync, Rollout, ANNOTATION_SYNC_COMMIT, ANNOTATION_SYNC_PATH, LABEL_SYNC,
};
use deployctl::store::Scope;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const APP: &str = "\
apiVersion: deployctl.dev/v1
kind: Application
metadata:
  name: NAME
spec:
  selector:
    matchLabels: {role: web}
  artifact:
    url: https://ci.example.com/NAME/{{version}}/NAME.tar.gz
";

const ROLLOUT: &str = "\
apiVersion: deployctl.dev/v1
kind: Rollout
metadata:
  name: api
spec:
  application: api
  version: VERSION
";

fn app(name: &str) -> String {
    APP.replace("NAME", name)
}

fn rollout(version: &str) -> String {
    ROLLOUT.replace("VERSION", version)
}

/// Runs git in `dir`; fails the test with the install hint when git is missing.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run git ({e}): install it, e.g. `apt-get install git`"));
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A Git repository made by the test, and a cache directory for the sync's clone.
struct Repo {
    dir: tempfile::TempDir,
    cache: tempfile::TempDir,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempdir();
        git(dir.path(), &["init", "--quiet", "-b", "main"]);
        Repo {
            dir,
            cache: tempdir(),
        }
    }

    fn path(&self) -> String {
        self.dir.path().display().to_string()
    }

    fn write(&self, file: &str, text: &str) {
        write(self.dir.path(), file, text);
    }

    fn remove(&self, file: &str) {
        git(self.dir.path(), &["rm", "--quiet", file]);
    }

    /// Commits everything; returns the commit id.
    fn commit(&self, message: &str) -> String {
        git(self.dir.path(), &["add", "-A"]);
        git(self.dir.path(), &["commit", "--quiet", "-m", message]);
        git(self.dir.path(), &["rev-parse", "HEAD"])
    }

    /// `deployctl sync --repo <this> --path manifests --cache-dir <cache> EXTRA...`
    fn sync(&self, store: &str, extra: &[&str]) -> Output {
        let repo = self.path();
        let cache = self.cache.path().display().to_string();
        let mut args = vec![
            "sync",
            "--repo",
            &repo,
            "--path",
            "manifests",
            "--cache-dir",
            &cache,
        ];
        args.extend_from_slice(extra);
        run(store, &args)
    }
}

fn rollout_of(b: &Backend) -> Option<Rollout> {
    rt().block_on(async {
        b.client()
            .await
            .get::<Rollout>(Some("default"), "api")
            .await
            .expect("the store answers")
    })
}

fn app_of(b: &Backend, name: &str) -> Option<Application> {
    rt().block_on(async {
        b.client()
            .await
            .get::<Application>(Some("default"), name)
            .await
            .expect("the store answers")
    })
}

fn sync_of(b: &Backend, name: &str) -> Option<GitSync> {
    rt().block_on(async {
        b.client()
            .await
            .get::<GitSync>(None, name)
            .await
            .expect("the store answers")
    })
}

fn short(sha: &str) -> &str {
    &sha[..7]
}

#[test]
fn sync_should_apply_a_commit_and_then_follow_a_version_bump() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let repo = Repo::new();
        repo.write("manifests/app.yaml", &app("api"));
        repo.write("manifests/rollout.yaml", &rollout("1.0.0"));
        repo.write("README.md", "not a manifest, outside --path\n");
        let v1 = repo.commit("v1");
        let out = repo.sync(&store, &["--once", "--name", "fleet"]).ok();
        assert!(
            out.stdout.contains(
                "application.deployctl.dev/api created\nrollout.deployctl.dev/api created\n"
            ),
            "{backend}: {}",
            out.stdout
        );
        let ro = rollout_of(&b).expect("the rollout was synced");
        assert_eq!(ro.spec.version, "1.0.0", "{backend}");
        assert_eq!(ro.metadata.generation, Some(1), "{backend}");
        assert_eq!(
            ro.metadata.labels.get(LABEL_SYNC).map(String::as_str),
            Some("fleet")
        );
        assert_eq!(
            ro.metadata.annotations.get(ANNOTATION_SYNC_COMMIT),
            Some(&v1)
        );
        assert_eq!(
            ro.metadata
                .annotations
                .get(ANNOTATION_SYNC_PATH)
                .map(String::as_str),
            Some("manifests/rollout.yaml")
        );
        let st = sync_of(&b, "fleet")
            .expect("the Sync object exists")
            .status
            .unwrap_or_default();
        assert_eq!(st.last_commit.as_deref(), Some(v1.as_str()), "{backend}");
        assert_eq!(st.objects, 2, "{backend}");
        assert!(
            st.last_sync_time.is_some() && st.last_error.is_none(),
            "{backend}: {st:?}"
        );

        // CI bumps the version: the spec follows, with a new generation.
        repo.write("manifests/rollout.yaml", &rollout("1.1.0"));
        let v2 = repo.commit("v2");
        repo.sync(&store, &["--once", "--name", "fleet"]).ok();
        let ro = rollout_of(&b).expect("the rollout is still there");
        assert_eq!(ro.spec.version, "1.1.0", "{backend}");
        assert_eq!(ro.metadata.generation, Some(2), "{backend}");
        assert_eq!(
            ro.metadata.annotations.get(ANNOTATION_SYNC_COMMIT),
            Some(&v2)
        );
        // The Application's spec did not change: same generation, new commit recorded.
        let a = app_of(&b, "api").expect("the application is still there");
        assert_eq!(a.metadata.generation, Some(1), "{backend}");
        assert_eq!(
            a.metadata.annotations.get(ANNOTATION_SYNC_COMMIT),
            Some(&v2)
        );

        let get = run(&store, &["get", "syncs"]).ok();
        assert!(
            get.stdout
                .lines()
                .any(|l| l.starts_with("fleet ") && l.contains(short(&v2))),
            "{backend}: {}",
            get.stdout
        );
        let describe = run(&store, &["describe", "sync", "fleet"]).ok();
        assert!(
            describe.stdout.contains(&v2),
            "{backend}: {}",
            describe.stdout
        );
    }
}

#[test]
fn sync_prune_should_delete_only_its_own_objects_that_left_the_repository() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let repo = Repo::new();
        repo.write("manifests/api.yaml", &app("api"));
        repo.write("manifests/web.yaml", &app("web"));
        repo.commit("two apps");
        repo.sync(&store, &["--once", "--prune", "--name", "fleet"])
            .ok();
        // A hand-made object, and one managed by another sync source.
        let dir = tempdir();
        run(
            &store,
            &["apply", "-f", &write(dir.path(), "hand.yaml", &app("hand"))],
        )
        .ok();
        let other = Repo::new();
        other.write("manifests/other.yaml", &app("other"));
        other.commit("other");
        other
            .sync(&store, &["--once", "--prune", "--name", "other"])
            .ok();
        assert!(app_of(&b, "web").is_some(), "{backend}");

        repo.remove("manifests/web.yaml");
        repo.commit("web leaves");
        let out = repo
            .sync(&store, &["--once", "--prune", "--name", "fleet"])
            .ok();
        assert!(
            out.stdout.contains("application.deployctl.dev/web pruned"),
            "{backend}: {}",
            out.stdout
        );
        assert!(
            app_of(&b, "web").is_none(),
            "{backend}: web should be pruned"
        );
        assert!(
            app_of(&b, "api").is_some(),
            "{backend}: api is still declared"
        );
        assert!(
            app_of(&b, "hand").is_some(),
            "{backend}: unmanaged objects stay"
        );
        assert!(
            app_of(&b, "other").is_some(),
            "{backend}: another sync's objects stay"
        );

        // Without --prune nothing is deleted.
        repo.remove("manifests/api.yaml");
        repo.write("manifests/new.yaml", &app("new"));
        repo.commit("api leaves");
        repo.sync(&store, &["--once", "--name", "fleet"]).ok();
        assert!(
            app_of(&b, "api").is_some(),
            "{backend}: no --prune, no delete"
        );
    }
}

#[test]
fn a_bad_commit_should_apply_nothing_and_leave_the_last_good_one_in_force() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let repo = Repo::new();
        repo.write("manifests/app.yaml", &app("api"));
        repo.write("manifests/rollout.yaml", &rollout("1.0.0"));
        let good = repo.commit("v1");
        repo.sync(&store, &["--once", "--name", "fleet"]).ok();

        // A valid bump and a new app, together with an invalid file: none of it applies.
        repo.write("manifests/rollout.yaml", &rollout("2.0.0"));
        repo.write("manifests/web.yaml", &app("web"));
        repo.write(
            "manifests/broken.yaml",
            &app("broken").replace("  selector:", "  replicas: 3\n  selector:"),
        );
        let bad = repo.commit("broken");
        let out = repo.sync(&store, &["--once", "--name", "fleet"]).code(1);
        // The refusal is printed once, and nothing claims a dry run.
        assert_eq!(
            out.stderr.matches("replicas").count(),
            1,
            "{backend}: {}",
            out.stderr
        );
        assert!(
            !out.stdout.contains("dry run") && !out.stderr.contains("dry run"),
            "{backend}: {out:?}"
        );
        for want in [
            format!("commit {}", short(&bad)),
            "manifests/broken.yaml".to_string(),
            "replicas".to_string(),
        ] {
            assert!(
                out.stderr.contains(&want),
                "{backend}: no {want:?} in {}",
                out.stderr
            );
        }
        let ro = rollout_of(&b).expect("the rollout is still there");
        assert_eq!(
            ro.spec.version, "1.0.0",
            "{backend}: the bad commit's bump applied"
        );
        assert_eq!(
            ro.metadata.annotations.get(ANNOTATION_SYNC_COMMIT),
            Some(&good)
        );
        assert!(
            app_of(&b, "web").is_none(),
            "{backend}: web came from the bad commit"
        );
        let st = sync_of(&b, "fleet")
            .expect("the Sync object exists")
            .status
            .unwrap_or_default();
        assert_eq!(st.last_commit.as_deref(), Some(good.as_str()), "{backend}");
        assert_eq!(
            st.last_error_commit.as_deref(),
            Some(bad.as_str()),
            "{backend}"
        );
        assert!(
            st.last_error
                .as_deref()
                .is_some_and(|e| e.contains("manifests/broken.yaml")),
            "{backend}: {st:?}"
        );
        let describe = run(&store, &["describe", "sync", "fleet"]).ok();
        assert!(
            describe.stdout.contains("manifests/broken.yaml"),
            "{backend}: {}",
            describe.stdout
        );
        assert!(
            describe.stdout.contains("BadCommit"),
            "{backend}: no event: {}",
            describe.stdout
        );

        // While the bad commit is the newest, the good one stays in force: a hand edit
        // is still reverted.
        run(&store, &["set", "version", "api", "6.6.6"]).ok();
        repo.sync(&store, &["--once", "--name", "fleet"]).code(1);
        assert_eq!(
            rollout_of(&b).map(|r| r.spec.version).as_deref(),
            Some("1.0.0"),
            "{backend}: the last good commit is not in force"
        );
        assert!(
            app_of(&b, "web").is_none(),
            "{backend}: web came from the bad commit"
        );

        // The fix is the next commit: it syncs, and the error is cleared.
        repo.remove("manifests/broken.yaml");
        let fixed = repo.commit("fix");
        repo.sync(&store, &["--once", "--name", "fleet"]).ok();
        assert_eq!(
            rollout_of(&b).map(|r| r.spec.version).as_deref(),
            Some("2.0.0")
        );
        assert!(app_of(&b, "web").is_some(), "{backend}");
        let st = sync_of(&b, "fleet")
            .expect("the Sync object exists")
            .status
            .unwrap_or_default();
        assert_eq!(st.last_commit.as_deref(), Some(fixed.as_str()), "{backend}");
        assert_eq!(st.last_error, None, "{backend}");
    }
}

#[test]
fn a_hand_edit_should_be_reverted_by_the_next_sync_and_recorded_as_drift() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let repo = Repo::new();
        repo.write("manifests/app.yaml", &app("api"));
        repo.write("manifests/rollout.yaml", &rollout("1.0.0"));
        repo.commit("v1");
        repo.sync(&store, &["--once", "--name", "fleet"]).ok();
        run(&store, &["set", "version", "api", "6.6.6"]).ok();
        assert_eq!(
            rollout_of(&b).map(|r| r.spec.version).as_deref(),
            Some("6.6.6")
        );

        let out = repo.sync(&store, &["--once", "--name", "fleet"]).ok();
        assert!(
            out.stdout.contains("1 drifted"),
            "{backend}: {}",
            out.stdout
        );
        assert_eq!(
            rollout_of(&b).map(|r| r.spec.version).as_deref(),
            Some("1.0.0"),
            "{backend}: the hand edit stayed"
        );
        let events = rt().block_on(async {
            b.client()
                .await
                .list::<Event>(&Scope::All)
                .await
                .expect("the store answers")
                .items
        });
        let drift: Vec<&Event> = events.iter().filter(|e| e.spec.reason == "Drift").collect();
        assert_eq!(drift.len(), 1, "{backend}: {events:#?}");
        let o = &drift[0].spec.involved_object;
        assert_eq!(
            (o.kind.as_str(), o.name.as_str()),
            ("Rollout", "api"),
            "{backend}"
        );
        assert!(drift[0].spec.message.contains("6.6.6") || drift[0].spec.message.contains("spec"));

        // Nothing edited since: the next sync changes nothing and records no drift.
        let out = repo.sync(&store, &["--once", "--name", "fleet"]).ok();
        assert!(
            out.stdout.contains("0 changed, 0 drifted"),
            "{backend}: {}",
            out.stdout
        );
    }
}

#[test]
fn diff_should_exit_1_with_differences_and_0_after_apply() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let dir = tempdir();
        let file = write(
            dir.path(),
            "api.yaml",
            &format!("{}---\n{}", app("api"), rollout("1.0.0")),
        );
        let out = run(&store, &["diff", "-f", &file]).code(1);
        assert!(
            out.stdout.contains(
                "--- live/rollout.deployctl.dev/api\n+++ merged/rollout.deployctl.dev/api\n"
            ),
            "{backend}: {}",
            out.stdout
        );
        assert!(
            out.stdout.contains("+  version: 1.0.0"),
            "{backend}: {}",
            out.stdout
        );
        assert!(rollout_of(&b).is_none(), "{backend}: diff wrote");
        run(&store, &["apply", "-f", &file]).ok();
        let out = run(&store, &["diff", "-f", &file]).code(0);
        assert_eq!(out.stdout, "", "{backend}");
        let changed = write(dir.path(), "api.yaml", &rollout("1.0.1"));
        let out = run(&store, &["diff", "-f", &changed]).code(1);
        assert!(
            out.stdout
                .contains("-  version: 1.0.0\n+  version: 1.0.1\n"),
            "{backend}: {}",
            out.stdout
        );
        let bad = write(dir.path(), "bad.yaml", &rollout("not a version"));
        let out = run(&store, &["diff", "-f", &bad]).code(2);
        assert!(
            out.stderr.contains("spec.version"),
            "{backend}: {}",
            out.stderr
        );
    }
}

#[test]
fn sync_dry_run_should_print_the_diff_and_what_it_would_prune_and_write_nothing() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let repo = Repo::new();
        repo.write("manifests/api.yaml", &app("api"));
        repo.write("manifests/web.yaml", &app("web"));
        repo.commit("v1");
        let out = repo
            .sync(&store, &["--dry-run", "--prune", "--name", "fleet"])
            .code(1);
        assert!(
            out.stdout
                .contains("+++ merged/application.deployctl.dev/web"),
            "{backend}: {}",
            out.stdout
        );
        assert!(
            app_of(&b, "api").is_none() && sync_of(&b, "fleet").is_none(),
            "{backend}: dry run wrote"
        );
        repo.sync(&store, &["--once", "--prune", "--name", "fleet"])
            .ok();
        repo.sync(&store, &["--dry-run", "--prune", "--name", "fleet"])
            .code(0);

        repo.remove("manifests/web.yaml");
        repo.commit("web leaves");
        let out = repo
            .sync(&store, &["--dry-run", "--prune", "--name", "fleet"])
            .code(1);
        assert!(
            out.stdout
                .contains("--- live/application.deployctl.dev/web"),
            "{backend}: {}",
            out.stdout
        );
        assert!(
            out.stderr
                .contains("application.deployctl.dev/web pruned (dry run)"),
            "{backend}: {}",
            out.stderr
        );
        assert!(app_of(&b, "web").is_some(), "{backend}: dry run pruned");
    }
}

#[test]
fn a_running_sync_should_follow_new_commits_past_a_bad_one_until_terminated() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let repo = Repo::new();
        repo.write("manifests/app.yaml", &app("api"));
        repo.write("manifests/rollout.yaml", &rollout("1.0.0"));
        let v1 = repo.commit("v1");
        let (path, cache) = (repo.path(), repo.cache.path().display().to_string());
        let mut daemon = spawn(
            &store,
            &[
                "sync",
                "--repo",
                &path,
                "--path",
                "manifests",
                "--cache-dir",
                &cache,
                "--interval",
                "1s", // the shortest interval sync takes
                "--name",
                "fleet",
            ],
        );
        daemon.wait_for_line("applying v1", |l| {
            l.contains(&format!("commit {} applied", short(&v1)))
        });
        repo.write("manifests/rollout.yaml", &rollout("1.2.0"));
        let v2 = repo.commit("v2");
        daemon.wait_for_line("applying v2", |l| {
            l.contains(&format!("commit {} applied", short(&v2)))
        });
        assert_eq!(
            rollout_of(&b).map(|r| r.spec.version).as_deref(),
            Some("1.2.0"),
            "{backend}"
        );
        // A bad commit does not stop it: the next good commit is applied.
        repo.write("manifests/rollout.yaml", &rollout("not a version"));
        let bad = repo.commit("bad");
        let deadline = Instant::now() + DEADLINE;
        while sync_of(&b, "fleet")
            .and_then(|s| s.status)
            .and_then(|st| st.last_error_commit)
            .as_deref()
            != Some(bad.as_str())
        {
            assert!(
                Instant::now() < deadline,
                "{backend}: the bad commit was never seen"
            );
            std::thread::sleep(Duration::from_millis(50)); // polling the status, with a deadline
        }
        repo.write("manifests/rollout.yaml", &rollout("1.3.0"));
        let v3 = repo.commit("v3");
        daemon.wait_for_line("applying v3 after a bad commit", |l| {
            l.contains(&format!("commit {} applied", short(&v3)))
        });
        assert_eq!(
            rollout_of(&b).map(|r| r.spec.version).as_deref(),
            Some("1.3.0"),
            "{backend}"
        );
        // A second sync of the same repository may not share the running one's clone.
        let out = repo.sync(&store, &["--once", "--name", "fleet"]).code(1);
        assert!(
            out.stderr.contains("in use by another deployctl sync"),
            "{backend}: {}",
            out.stderr
        );
        assert_eq!(
            daemon.terminate(),
            Some(0),
            "{backend}: SIGTERM should exit 0"
        );
    }
}

#[test]
fn apply_of_an_object_a_sync_owns_should_warn_keep_its_label_and_be_reverted_as_drift() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let repo = Repo::new();
        repo.write("manifests/app.yaml", &app("api"));
        repo.write("manifests/rollout.yaml", &rollout("1.0.0"));
        repo.commit("v1");
        repo.sync(&store, &["--once", "--name", "fleet"]).ok();

        let local = tempdir();
        let server = write(local.path(), "server.yaml", &rollout("8.0.0"));
        let out = run(&store, &["apply", "--dry-run=server", "-f", &server]).ok();
        assert_eq!(
            out.stdout, "rollout.deployctl.dev/api configured (server dry run)\n",
            "{backend}"
        );
        assert!(
            out.stderr.contains(r#"is managed by sync "fleet""#),
            "{backend}: {}",
            out.stderr
        );
        assert_eq!(
            rollout_of(&b).map(|r| r.spec.version).as_deref(),
            Some("1.0.0"),
            "{backend}: a server dry run wrote"
        );

        let file = write(local.path(), "by-hand.yaml", &rollout("7.0.0"));
        let out = run(&store, &["apply", "-f", &file]).ok();
        assert!(
            out.stderr.contains(r#"rollout.deployctl.dev/api is managed by sync "fleet": its next pass reverts this change"#),
            "{backend}: {}",
            out.stderr
        );
        let label = run(
            &store,
            &[
                "get",
                "ro",
                "api",
                "-o",
                "jsonpath={.metadata.labels['deployctl.dev/sync']}",
            ],
        )
        .ok()
        .stdout;
        assert_eq!(label, "fleet", "{backend}: apply dropped the sync's label");

        let out = repo.sync(&store, &["--once", "--name", "fleet"]).ok();
        assert!(
            out.stdout.contains("1 drifted"),
            "{backend}: {}",
            out.stdout
        );
        assert_eq!(
            rollout_of(&b).map(|r| r.spec.version).as_deref(),
            Some("1.0.0"),
            "{backend}: the sync did not revert the apply"
        );
    }
}
