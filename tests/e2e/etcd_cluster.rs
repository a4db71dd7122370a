//! The CLI against a 3-member etcd cluster with one member down: every call succeeds.

use crate::common::*;
use deployctl::testing::EtcdCluster;

/// `get rollouts` ten times, each a new process: each must succeed and list `web`.
fn get_rollouts_ten_times(store: &str, down: &str) {
    for call in 0..10 {
        let out = run(store, &["get", "rollouts"]);
        assert_eq!(
            out.code, 0,
            "call {call} with {down} down failed:\n{}",
            out.stderr
        );
        assert!(
            out.stdout.lines().any(|l| l.starts_with("web ")),
            "call {call} with {down} down did not list the rollout:\n{}",
            out.stdout
        );
    }
}

#[test]
fn get_rollouts_should_succeed_every_time_with_one_etcd_member_of_three_down() {
    let mut cluster = EtcdCluster::start(3);
    let store = cluster.url();
    let root = env!("CARGO_MANIFEST_DIR");
    for manifest in ["application_basic.yaml", "rollout_basic.yaml"] {
        run(
            &store,
            &["apply", "-f", &format!("{root}/manifests/{manifest}")],
        )
        .ok();
    }

    // The first endpoint of the URL: every new process tries it first.
    cluster.kill(0);
    get_rollouts_ten_times(&store, "the first member");
    cluster.restart(0);

    // The leader: the others elect a new one meanwhile.
    let leader = cluster.wait_for_leader();
    cluster.kill(leader);
    get_rollouts_ten_times(&store, "the leader");
}
