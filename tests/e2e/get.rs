//! `deployctl get` as kubectl users type it: `-o jsonpath=`, `-o custom-columns=`,
//! `--sort-by`, `--show-labels`, `-L`, `--no-headers`, KIND/NAME, `ro,app`, `all`, and
//! `-w` into a pipe, from the built binary on both stores.

use crate::common::{run, spawn, tempdir, write, Backend};
use std::time::Duration;

/// A fixed object set: one Application, two Rollouts with labels and versions that sort
/// differently from their names.
const OBJECTS: &str = "\
apiVersion: deployctl.dev/v1
kind: Application
metadata: {name: api, labels: {team: core}}
spec:
  artifact: {url: 'file:///nowhere/{{version}}.tar.gz'}
---
apiVersion: deployctl.dev/v1
kind: Rollout
metadata:
  name: api
  labels: {team: core, app.kubernetes.io/name: api}
spec:
  application: api
  version: 2.1.0
  strategy:
    steps: [{setWeight: 25}, {pause: {}}]
---
apiVersion: deployctl.dev/v1
kind: Rollout
metadata: {name: web}
spec:
  application: api
  version: 0.9.1
";

fn applied(b: &Backend) -> String {
    let store = b.url();
    let dir = tempdir();
    run(
        &store,
        &["apply", "-f", &write(dir.path(), "objects.yaml", OBJECTS)],
    )
    .ok();
    store
}

/// Runs `get ARGS` and returns its stdout, failing on a non-zero exit.
fn get(store: &str, args: &[&str]) -> String {
    let argv: Vec<&str> = std::iter::once("get").chain(args.iter().copied()).collect();
    run(store, &argv).ok().stdout
}

#[test]
fn get_jsonpath_should_print_kubectls_text_for_a_fixed_object_set() {
    for (backend, b) in Backend::all() {
        let store = applied(&b);
        for (args, want) in [
            (
                &["ro", "-o", "jsonpath={.items[*].metadata.name}"][..],
                "api web",
            ),
            (
                &[
                    "ro",
                    "-o",
                    r#"jsonpath={range .items[*]}{.metadata.name}{"\t"}{.spec.version}{"\n"}{end}"#,
                ][..],
                "api\t2.1.0\nweb\t0.9.1\n",
            ),
            (
                &["ro", "api", "-o", "jsonpath={.spec.version}"][..],
                "2.1.0",
            ),
            (
                &["ro/api", "-o", "jsonpath={.metadata.labels}"][..],
                r#"{"app.kubernetes.io/name":"api","team":"core"}"#,
            ),
            (
                &["ro", "api", "-o", "jsonpath={.spec.strategy.steps[0]}"][..],
                r#"{"setWeight":25}"#,
            ),
            (&["ro", "-o", "jsonpath={.kind}"][..], "List"),
            (
                &[
                    "ro",
                    "-o",
                    r#"jsonpath={.items[?(@.spec.version=="0.9.1")].metadata.name}"#,
                ][..],
                "web",
            ),
            (
                &[
                    "ro",
                    "-l",
                    "team=core",
                    "-o",
                    "jsonpath={.items[*].metadata.name}",
                ][..],
                "api",
            ),
            (
                &[
                    "ro,app",
                    "-o",
                    "jsonpath={range .items[*]}{.kind}/{.metadata.name} {end}",
                ][..],
                "Rollout/api Rollout/web Application/api ",
            ),
            (
                &[
                    "ro",
                    "--sort-by",
                    ".spec.version",
                    "-o",
                    "jsonpath={.items[*].metadata.name}",
                ][..],
                "web api",
            ),
            (&["ro", "-o", "jsonpath={.items[*].nothing}"][..], ""),
        ] {
            assert_eq!(get(&store, args), want, "{backend}: get {args:?}");
        }
    }
}

#[test]
fn get_custom_columns_should_print_kubectls_table_for_a_fixed_object_set() {
    for (backend, b) in Backend::all() {
        let store = applied(&b);
        let spec = "custom-columns=NAME:.metadata.name,VERSION:.spec.version,\
                    STEPS:.spec.strategy.steps[*].setWeight,LABELS:.metadata.labels";
        for (args, want) in [
            (
                &["ro", "-o", spec][..],
                "\
NAME   VERSION   STEPS    LABELS
api    2.1.0     25       map[app.kubernetes.io/name:api team:core]
web    0.9.1     <none>   <none>
",
            ),
            (
                &[
                    "ro",
                    "-o",
                    spec,
                    "--sort-by",
                    "{.spec.version}",
                    "--no-headers",
                ][..],
                "\
web   0.9.1   <none>   <none>
api   2.1.0   25       map[app.kubernetes.io/name:api team:core]
",
            ),
            (
                &["all", "-o", "custom-columns=KIND:.kind,NAME:.metadata.name"][..],
                "\
KIND          NAME
Application   api
Rollout       api
Rollout       web
",
            ),
        ] {
            assert_eq!(get(&store, args), want, "{backend}: get {args:?}");
        }
    }
}

#[test]
fn get_should_take_kind_slash_name_comma_joined_kinds_and_label_columns() {
    for (backend, b) in Backend::all() {
        let store = applied(&b);
        assert_eq!(
            get(&store, &["ro/web", "app/api", "-o", "name"]),
            "rollout.deployctl.dev/web\napplication.deployctl.dev/api\n",
            "{backend}"
        );
        assert_eq!(
            get(&store, &["ro,app", "-o", "name"]),
            "rollout.deployctl.dev/api\nrollout.deployctl.dev/web\napplication.deployctl.dev/api\n",
            "{backend}"
        );
        // Several kinds: one table per kind, NAME cells naming the kind, as kubectl's.
        let tables = get(&store, &["ro,app"]);
        let blocks: Vec<&str> = tables.split("\n\n").collect();
        assert_eq!(blocks.len(), 2, "{backend}: {tables}");
        assert!(
            blocks[0]
                .lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("rollout.deployctl.dev/api ")),
            "{backend}: {tables}"
        );
        assert!(
            blocks[1]
                .lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("application.deployctl.dev/api ")),
            "{backend}: {tables}"
        );

        let labelled = get(
            &store,
            &["ro", "--show-labels", "-L", "app.kubernetes.io/name"],
        );
        let lines: Vec<&str> = labelled.lines().collect();
        assert!(
            lines[0].ends_with(" AGE   NAME   LABELS"),
            "{backend}: {labelled}"
        );
        assert!(
            lines[1].starts_with("api ")
                && lines[1].ends_with("   api    app.kubernetes.io/name=api,team=core"),
            "{backend}: {labelled}"
        );
        assert!(
            lines[2].starts_with("web ") && lines[2].ends_with("          <none>"),
            "{backend}: {labelled}"
        );
        let bare = get(&store, &["ro", "--no-headers"]);
        assert!(
            bare.lines().count() == 2 && bare.starts_with("api "),
            "{backend}: {bare}"
        );

        let mixed = run(&store, &["get", "ro", "ro/api"]).code(1);
        assert!(
            mixed.stderr.contains("no need to specify a resource type"),
            "{backend}: {}",
            mixed.stderr
        );
        let bad = run(&store, &["get", "ro", "-o", "jsonpath={.items[}"]).code(2);
        assert!(
            bad.stderr.contains("--output") && bad.stderr.contains("error parsing jsonpath"),
            "{backend}: {}",
            bad.stderr
        );
        let missing = run(&store, &["get", "ro/api", "ro/nope", "-o", "name"]).code(1);
        assert_eq!(missing.stdout, "rollout.deployctl.dev/api\n", "{backend}");
        assert!(
            missing.stderr.contains(r#"rollouts "nope" not found"#),
            "{backend}: {}",
            missing.stderr
        );
    }
}

#[test]
fn get_watch_into_a_pipe_should_print_the_header_once_and_one_row_per_change() {
    for (backend, b) in Backend::all() {
        let store = applied(&b);
        let header = get(&store, &["ro"]).lines().next().map(str::to_string);
        let header = header.expect("get ro prints a header");
        let mut watch = spawn(&store, &["get", "ro", "-w"]);
        watch.wait_for_line("with web listed", |l| l.starts_with("web "));

        run(&store, &["set", "version", "api", "3.0.0"]).ok();
        watch.wait_for_line("for api 3.0.0", |l| {
            l.starts_with("api ") && l.contains("3.0.0")
        });
        run(&store, &["set", "version", "web", "1.0.0"]).ok();
        watch.wait_for_line("for web 1.0.0", |l| {
            l.starts_with("web ") && l.contains("1.0.0")
        });
        run(&store, &["delete", "rollout", "web"]).ok();
        // A fourth change marks the end: every line before it came from the three.
        run(&store, &["set", "version", "api", "4.0.0"]).ok();
        watch.wait_for_line("for api 4.0.0", |l| {
            l.starts_with("api ") && l.contains("4.0.0")
        });

        let lines = &watch.seen;
        assert_eq!(lines.len(), 1 + 2 + 3 + 1, "{backend}: {lines:#?}");
        assert_eq!(lines[0], header, "{backend}: the header of get without -w");
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("NAME")).count(),
            1,
            "{backend}: one header: {lines:#?}"
        );
        let columns = header.split_whitespace().count();
        for l in &lines[1..] {
            assert_eq!(
                l.split_whitespace().count(),
                columns,
                "{backend}: {l:?} under {header:?}"
            );
        }
        assert!(
            lines[5].starts_with("web ") && lines[5].contains("1.0.0"),
            "{backend}: the deletion prints web's last row: {lines:#?}"
        );
        assert_eq!(watch.terminate(), Some(0), "{backend}: exit 0 on SIGTERM");

        let mut only = spawn(
            &store,
            &[
                "get",
                "ro",
                "--watch-only",
                "-o",
                "custom-columns=NAME:.metadata.name,V:.spec.version",
            ],
        );
        // Nothing is printed until a change; then the header with the change. The watch
        // may start after a change (which it then lists silently): change again until
        // a row comes.
        let mut sets = 0;
        while only.line_within(Duration::from_millis(500)).is_none() {
            sets += 1;
            assert!(sets < 40, "{backend}: no row after {sets} changes");
            run(&store, &["set", "version", "api", &format!("5.0.{sets}")]).ok();
        }
        only.wait_for_line("for the first change's row", |l| l.starts_with("api "));
        assert_eq!(only.seen[0], "NAME   V", "{backend}: {:?}", only.seen);
        assert!(
            only.seen[1].starts_with("api    5.0."),
            "{backend}: {:?}",
            only.seen
        );
        assert!(
            only.seen.iter().skip(1).all(|l| l.starts_with("api ")),
            "{backend}: rows only after the header: {:?}",
            only.seen
        );
        assert_eq!(only.terminate(), Some(0), "{backend}");
    }
}
