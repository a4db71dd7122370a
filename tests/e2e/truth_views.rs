//! Machines that rollouts do not count, as every view shows them: an agent killed with
//! SIGKILL (its Machine turns NotReady once its presence lease expires) and a cordoned
//! machine (`spec.unschedulable`), through `get machines`, `get instances`, `describe
//! machine` and the live view of `get rollout NAME -w`, from real `deployctl` processes
//! on both stores.

use crate::common::{run, spawn, tempdir, write, Backend, Spawned};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Short, so that a killed agent's machine turns NotReady within seconds.
const LEASE_TTL: &str = "2s";
/// How long a rollout or a lease expiry may take on a loaded two-core machine.
const DEADLINE: Duration = Duration::from_secs(60);

/// Runs `deployctl ARGS` until its stdout satisfies `check`, or panics with the last
/// output after [`DEADLINE`].
pub(crate) fn poll(store: &str, what: &str, args: &[&str], check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let out = run(store, args);
        if out.code == 0 && check(&out.stdout) {
            return out.stdout;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; `{}` printed:\n{}\n{}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
        std::thread::sleep(Duration::from_millis(200)); // poll interval, not a sync stand-in
    }
}

/// The line of a table or page that starts with `prefix`.
fn line_of<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in\n{text}"))
}

fn manifests(artifacts: &std::path::Path) -> String {
    format!(
        "\
apiVersion: deployctl.dev/v1
kind: Application
metadata: {{name: api}}
spec:
  selector: {{matchLabels: {{role: web}}}}
  artifact: {{url: 'file://{}/app-{{{{version}}}}', format: file}}
---
apiVersion: deployctl.dev/v1
kind: Rollout
metadata: {{name: api}}
spec:
  application: api
  version: 1.0.0
",
        artifacts.display()
    )
}

const CORDON_M0: &str = "\
apiVersion: deployctl.dev/v1
kind: Machine
metadata: {name: m0, labels: {role: web}}
spec: {unschedulable: true}
";

/// A controller and three agents (m0..m2) with 1.0.0 rolled out to all three.
pub(crate) fn fleet_on_1_0_0(store: &str, work: &std::path::Path) -> (Spawned, Vec<Spawned>) {
    let artifacts = work.join("artifacts");
    std::fs::create_dir_all(&artifacts).expect("the work dir is writable");
    std::fs::write(artifacts.join("app-1.0.0"), "1.0.0\n").expect("the work dir is writable");
    let file = write(work, "api.yaml", &manifests(&artifacts));
    run(store, &["apply", "-f", &file]).ok();
    let controller = spawn(
        store,
        &["controller", "--lease-ttl", LEASE_TTL, "--workers", "2"],
    );
    let agents = (0..3)
        .map(|i| {
            let name = format!("m{i}");
            let root = work.join("roots").join(&name).display().to_string();
            spawn(
                store,
                &[
                    "agent",
                    "--name",
                    &name,
                    "--labels",
                    "role=web",
                    "--root",
                    &root,
                    "--lease-ttl",
                    LEASE_TTL,
                ],
            )
        })
        .collect();
    poll(
        store,
        "1.0.0 complete on three machines",
        &["get", "rollout", "api", "-o", "json"],
        |out| {
            let v: Value = serde_json::from_str(out).unwrap_or_default();
            let st = &v["status"];
            st["phase"] == "Complete" && st["available"] == 3 && st["stableVersion"] == "1.0.0"
        },
    );
    (controller, agents)
}

#[test]
fn every_view_should_say_when_a_machine_is_not_ready_or_cordoned_and_why() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let work = tempdir();
        let (_controller, mut agents) = fleet_on_1_0_0(&store, work.path());
        let mut view = spawn(&store, &["get", "rollout", "api", "-w"]);
        view.wait_for_line("with m1 running", |l| {
            l.contains("□ m1") && l.contains("✔ Running")
        });

        // SIGKILL m1's agent: no goodbye, only its lease running out.
        drop(agents.remove(1));
        let machines = poll(&store, "m1 NotReady", &["get", "machines"], |out| {
            out.lines()
                .any(|l| l.starts_with("m1 ") && l.contains("NotReady"))
        });
        let m1 = line_of(&machines, "m1 ");
        assert!(
            m1.contains("agent lease expired") && m1.ends_with(" ago"),
            "{backend}: get machines says why: {machines}"
        );
        assert!(
            !line_of(&machines, "m2 ").contains("NotReady"),
            "{backend}: {machines}"
        );
        let instances = run(&store, &["get", "instances"]).ok().stdout;
        assert!(
            line_of(&instances, "api.m1").contains("machine NotReady: agent lease expired"),
            "{backend}: get instances marks the instance on m1: {instances}"
        );
        let page = run(&store, &["describe", "machine", "m1"]).ok().stdout;
        for want in [
            "State:          NotReady\n",
            "Rollouts:       not counted: NotReady: agent lease expired",
            "Last Heartbeat: none: agent lease expired",
        ] {
            assert!(page.contains(want), "{backend}: {want:?} not in\n{page}");
        }
        view.wait_for_line("with m1 NotReady and why", |l| {
            l.contains("□ m1")
                && l.contains("✖ NotReady")
                && l.contains("not counted: NotReady: agent lease expired")
        });

        // Cordon m0: it keeps running 1.0.0 but is no longer counted.
        let file = write(work.path(), "cordon.yaml", CORDON_M0);
        run(&store, &["apply", "-f", &file]).ok();
        let machines = poll(
            &store,
            "m0 cordoned",
            &["get", "machines", "-o", "wide"],
            |out| {
                out.lines()
                    .any(|l| l.starts_with("m0 ") && l.contains("SchedulingDisabled"))
            },
        );
        assert!(
            line_of(&machines, "m0 ").ends_with("cordoned"),
            "{backend}: {machines}"
        );
        let page = run(&store, &["describe", "machine", "m0"]).ok().stdout;
        for want in [
            "State:          Ready,SchedulingDisabled\n",
            "Rollouts:       not counted: cordoned\n",
            "Applications:\n",
            "  default/api   1.0.0     1.0.0    Running",
        ] {
            assert!(page.contains(want), "{backend}: {want:?} not in\n{page}");
        }
        let heartbeat = line_of(&page, "Last Heartbeat: ");
        assert!(
            heartbeat.contains(" ago (lease 2s, expires in "),
            "{backend}: the heartbeat comes from the live lease: {page}"
        );
        view.wait_for_line("with m0 cordoned", |l| {
            l.contains("□ m0") && l.contains("⊘ Cordoned") && l.contains("not counted: cordoned")
        });
        assert_eq!(
            view.terminate(),
            Some(0),
            "{backend}: the view ends on SIGTERM"
        );
    }
}
