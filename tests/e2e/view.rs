//! The live rollout view as users run it: `get rollout NAME -w` from the built binary,
//! printing plain blocks to a pipe, and `get rollouts -w`, which prints kubectl's rows
//! there (the live table is for a terminal), on both stores.

use crate::common::{run, spawn, tempdir, write, Backend};

const MANIFESTS: &str = "\
apiVersion: deployctl.dev/v1
kind: Application
metadata: {name: api}
spec:
  artifact: {url: 'file:///nowhere/{{version}}.tar.gz'}
---
apiVersion: deployctl.dev/v1
kind: Rollout
metadata: {name: api}
spec:
  application: api
  version: 1.0.0
  strategy:
    steps: [{setWeight: 50}, {pause: {}}]
";

#[test]
fn get_watch_of_a_rollout_should_draw_the_live_view_as_plain_blocks_and_of_all_rows() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let dir = tempdir();
        run(
            &store,
            &["apply", "-f", &write(dir.path(), "api.yaml", MANIFESTS)],
        )
        .ok();
        let mut one = spawn(&store, &["get", "rollout", "api", "-w"]);
        let mut all = spawn(&store, &["get", "rollouts", "-w", "--no-color"]);
        one.wait_for_line("with the status symbol", |l| {
            l == "Status:        ◌ Pending"
        });
        one.wait_for_line("with the step", |l| l == "  Step:        0/2");
        one.wait_for_line("with the target", |l| l == "Versions:      1.0.0 (target)");
        all.wait_for_line("with get's header", |l| {
            l.starts_with("NAME") && l.contains("PHASE") && !l.contains("GATE")
        });
        all.wait_for_line("with the rollout", |l| {
            l.starts_with("api ") && l.contains("Pending") && l.contains("1.0.0")
        });

        run(&store, &["set", "version", "api", "2.0.0"]).ok();
        one.wait_for_line("for the new version", |l| {
            l == "Versions:      2.0.0 (target)"
        });
        all.wait_for_line("for the new version", |l| {
            l.starts_with("api ") && l.contains("2.0.0")
        });

        run(&store, &["delete", "rollout", "api"]).ok();
        one.wait_for_line("for the deletion", |l| {
            l == "rollout \"api\" not found; waiting for it to appear"
        });
        // The deletion prints the rollout's last row again, as kubectl does.
        all.wait_for_line("for the deletion", |l| {
            l.starts_with("api ") && l.contains("2.0.0")
        });
        assert_eq!(
            all.seen.len(),
            4,
            "{backend}: header, row, change, deletion: {:?}",
            all.seen
        );
        for (name, w) in [("one", &mut one), ("all", &mut all)] {
            let codes = w.seen.iter().find(|l| l.contains('\x1b'));
            assert!(
                codes.is_none(),
                "{backend} {name}: escape codes in a pipe: {codes:?}"
            );
            assert_eq!(
                w.terminate(),
                Some(0),
                "{backend} {name}: exit 0 on SIGTERM"
            );
        }
    }
}
