//! Manifests written to stall, bloat or crash `apply`: each is refused at once by the
//! real binary, naming the limit, with bounded output and the store unchanged.

use crate::common::{run, tempdir, write, Backend, Output, DEADLINE};
use std::sync::mpsc;

const APP: &str = "\
apiVersion: deployctl.dev/v1
kind: Application
metadata:
  name: api
spec:
  artifact:
    url: https://ci.example.com/api/{{version}}/api.tar.gz
";

const ROLLOUT: &str = "\
apiVersion: deployctl.dev/v1
kind: Rollout
metadata:
  name: api
spec:
  application: api
  version: 1.0.0
";

/// Runs `deployctl ARGS` to completion, failing the test if it has not exited within
/// [`DEADLINE`] (a hang guard, not a timing assertion).
fn run_guarded(store: &str, args: &[&str]) -> Output {
    let (tx, rx) = mpsc::channel();
    let store = store.to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let _ = tx.send(run(&store, &args));
    });
    rx.recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("deployctl did not exit within {DEADLINE:?}"))
}

/// Every object of every user kind, as `get -o yaml` prints it.
fn snapshot(store: &str) -> String {
    ["machines", "applications", "rollouts"]
        .iter()
        .map(|k| run(store, &["get", k, "-A", "-o", "yaml"]).ok().stdout)
        .collect::<Vec<_>>()
        .join("\n")
}

fn mkfifo(path: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .expect("a temporary path has no NUL byte");
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
    let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "cannot make a FIFO at {}", path.display());
}

#[test]
fn apply_should_refuse_a_fifo_named_yaml_at_once_and_change_nothing() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let dir = tempdir();
        let app = write(dir.path(), "app.yaml", APP);
        run(&store, &["apply", "-f", &app]).ok();
        let before = snapshot(&store);

        let manifests = dir.path().join("manifests");
        write(&manifests, "rollout.yaml", ROLLOUT);
        let fifo = manifests.join("z.yaml");
        mkfifo(&fifo);
        let want = format!(
            "error: {}: not a regular file (a FIFO): refused",
            fifo.display()
        );
        for arg in [manifests.display().to_string(), fifo.display().to_string()] {
            let out = run_guarded(&store, &["apply", "-f", &arg]).code(1);
            assert_eq!(out.stderr.trim(), want, "{backend}: -f {arg}");
            assert!(out.stdout.is_empty(), "{backend}: printed {}", out.stdout);
        }
        assert_eq!(snapshot(&store), before, "{backend}: the store changed");
    }
}

#[test]
fn apply_should_refuse_an_object_past_the_store_limit_and_write_nothing() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let dir = tempdir();
        // A 50 MB annotation: the embedded store used to take it.
        let note = "a".repeat(50 << 20);
        let file = write(
            dir.path(),
            "machine.yaml",
            &format!(
                "apiVersion: deployctl.dev/v1\nkind: Machine\nmetadata:\n  name: big\n  annotations:\n    note: {note}\n"
            ),
        );
        let out = run_guarded(&store, &["apply", "-f", &file]).code(1);
        assert_eq!(
            out.stderr.trim(),
            format!("error: {file}: larger than the limit of 4194304 bytes for one file"),
            "{backend}"
        );
        // Within the file limit, past the object limit: named by file, document and object.
        let note = "a".repeat(2 << 20);
        let file = write(
            dir.path(),
            "machine.yaml",
            &format!(
                "{APP}---\napiVersion: deployctl.dev/v1\nkind: Machine\nmetadata:\n  name: big\n  annotations:\n    note: {note}\n"
            ),
        );
        let out = run_guarded(&store, &["apply", "-f", &file]).code(1);
        let want = format!(
            "error: {file}: document 2 (line 9), Machine \"big\": the object is 2097285 bytes \
             encoded, larger than the store's limit of 1556480 bytes (1.5 MiB) for one object"
        );
        assert_eq!(out.stderr.trim(), want, "{backend}");
        assert_eq!(
            run(&store, &["get", "machines", "-o", "name"]).ok().stdout,
            "",
            "{backend}: the machine was written"
        );
        assert_eq!(
            run(&store, &["get", "applications", "-o", "name"])
                .ok()
                .stdout,
            "",
            "{backend}: apply is all or nothing"
        );
    }
}

#[test]
fn apply_should_print_at_most_twenty_errors_then_count_the_rest() {
    // Validation needs no store: an unreachable one proves nothing was even tried.
    let store = "etcd://127.0.0.1:1";
    let dir = tempdir();
    let docs: Vec<String> = (0..30)
        .map(|i| {
            format!("apiVersion: deployctl.dev/v1\nkind: Machine\nmetadata: {{name: Bad_{i}}}\n")
        })
        .collect();
    let file = write(dir.path(), "bad.yaml", &docs.join("---\n"));
    let out = run_guarded(store, &["apply", "-f", &file]).code(1);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 21, "{}", out.stderr);
    assert!(
        lines[0].contains("Machine \"Bad_0\": metadata.name: invalid name"),
        "{}",
        lines[0]
    );
    assert!(lines[19].contains("Machine \"Bad_19\""), "{}", lines[19]);
    assert_eq!(lines[20], "error: and 10 more error(s)");
}

#[test]
fn hostile_documents_should_be_refused_at_once_with_bounded_output() {
    let store = "etcd://127.0.0.1:1";
    let dir = tempdir();
    let big = "x".repeat(1 << 20);
    let refs: String = (0..200).map(|_| "    - *big\n").collect();
    let cases = [
        ("deep.yaml", "[".repeat(200_000), "nested deeper than the limit of 64 levels"),
        ("deep-map.yaml", "{a: ".repeat(200_000), "nested deeper than the limit of 64 levels"),
        ("deep.json", "[".repeat(200_000), "nested deeper than the limit of 64 levels"),
        (
            "bomb.yaml",
            format!("apiVersion: deployctl.dev/v1\nkind: Machine\nmetadata:\n  name: &big {big}\n  labels:\n{refs}"),
            "aliases expand the document past the limit of 1048576 bytes",
        ),
        (
            "dup.json",
            "{\"apiVersion\": \"deployctl.dev/v1\", \"kind\": \"Machine\", \"kind\": \"Rollout\"}".into(),
            "(line 1): duplicate key \"kind\"",
        ),
    ];
    for (name, text, want) in cases {
        let file = write(dir.path(), name, &text);
        let out = run_guarded(store, &["apply", "--dry-run", "-f", &file]).code(1);
        assert_eq!(out.stderr.lines().count(), 1, "{name}: {}", out.stderr);
        assert!(out.stderr.contains(want), "{name}: {}", out.stderr);
        assert!(
            out.stderr.len() < 1000,
            "{name}: {} bytes of errors",
            out.stderr.len()
        );
    }
}
