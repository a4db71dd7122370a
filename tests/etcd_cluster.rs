//! The etcd backend against a real 3-member cluster with a member killed or frozen: the
//! store routes around it, as etcd's own clients do.

use deployctl::store::etcd::EtcdStore;
use deployctl::store::{Compare, EtcdOptions, Op, Store, Txn};
use deployctl::testing::EtcdCluster;
use futures::StreamExt;
use std::time::Duration;

/// How long an awaited watch event may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);
/// Rounds of requests per killed member.
const ROUNDS: usize = 100;

/// The cluster's endpoints with `first` first: a new store sends its first request there.
fn endpoints_from(cluster: &EtcdCluster, first: usize) -> Vec<String> {
    let mut endpoints = cluster.endpoints();
    endpoints.rotate_left(first);
    endpoints
}

/// `ROUNDS` gets, lists, CAS writes and lease grants with keep-alives through one store;
/// every one must succeed.
async fn every_request_succeeds(store: &EtcdStore, down: &str) {
    let key = format!("/avail/{down}");
    let mut revision = 0;
    for round in 0..ROUNDS {
        let at = format!("round {round} with {down} down");
        let txn = Txn {
            compares: vec![Compare::mod_revision(key.clone(), revision)],
            ops: vec![Op::Put {
                key: key.clone(),
                value: round.to_string().into_bytes(),
                lease: 0,
            }],
        };
        let written = store
            .txn(txn)
            .await
            .unwrap_or_else(|e| panic!("{at}: txn: {e}"));
        assert!(written.succeeded, "{at}: the CAS lost to nobody");
        revision = written.revision;
        let got = store
            .get(&key)
            .await
            .unwrap_or_else(|e| panic!("{at}: get: {e}"))
            .unwrap_or_else(|| panic!("{at}: the key written is missing"));
        assert_eq!(got.value, round.to_string().into_bytes(), "{at}");
        let (listed, _) = store
            .list("/avail/", None)
            .await
            .unwrap_or_else(|e| panic!("{at}: list: {e}"));
        assert!(listed.iter().any(|kv| kv.key == key), "{at}: list");
        let lease = store
            .grant_lease(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{at}: grant lease: {e}"));
        store
            .keep_alive(lease)
            .await
            .unwrap_or_else(|e| panic!("{at}: keep lease alive: {e}"));
    }
}

#[tokio::test]
async fn a_store_should_serve_every_request_with_any_one_member_of_three_killed() {
    let mut cluster = EtcdCluster::start(3);
    // The leader first, then every other member, each killed alone in turn.
    let leader = cluster.wait_for_leader();
    let victims = std::iter::once(leader).chain((0..3).filter(|m| *m != leader));
    for victim in victims {
        let was_leader = cluster.leader() == Some(victim);
        let down = format!(
            "member {victim}{}",
            if was_leader { " (the leader)" } else { "" }
        );
        // Connected while every member runs, preferring the one about to die.
        let store = EtcdStore::connect(&endpoints_from(&cluster, victim))
            .await
            .unwrap_or_else(|e| panic!("connect: {e}\n{}", cluster.logs()));
        cluster.kill(victim);
        every_request_succeeds(&store, &down).await;
        cluster.restart(victim);
        cluster.wait_for_leader();
    }
}

#[tokio::test]
async fn a_write_should_succeed_while_the_member_it_went_to_is_frozen() {
    let cluster = EtcdCluster::start(3);
    let store = EtcdStore::connect(&cluster.endpoints())
        .await
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", cluster.logs()));
    store.put("/frozen/k", b"0".to_vec()).await.expect("put");
    // Member 0 answered first, so requests go there: it now takes them and never answers,
    // like a member cut off by a partition.
    cluster.freeze(0);
    let mut revision = store
        .get("/frozen/k")
        .await
        .expect("get")
        .expect("kv")
        .mod_revision;
    for i in 1..=20 {
        let written = store
            .txn(Txn {
                compares: vec![Compare::mod_revision("/frozen/k", revision)],
                ops: vec![Op::Put {
                    key: "/frozen/k".into(),
                    value: i.to_string().into_bytes(),
                    lease: 0,
                }],
            })
            .await
            .unwrap_or_else(|e| panic!("write {i} with member 0 frozen: {e}"));
        assert!(written.succeeded, "write {i}: the CAS lost to nobody");
        revision = written.revision;
    }
    cluster.thaw(0);
}

#[tokio::test]
async fn a_watch_should_keep_delivering_after_its_member_is_killed() {
    let mut cluster = EtcdCluster::start(3);
    let store = EtcdStore::connect(&cluster.endpoints())
        .await
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", cluster.logs()));
    let mut watch = store.watch("/w/", 1).await.expect("watch");
    // The watch stream runs on member 0, where the store's requests go first.
    assert_eq!(
        watch_streams(&cluster, 0).await,
        1.0,
        "the watch is on member 0"
    );
    store.put("/w/a", b"1".to_vec()).await.expect("put");
    assert_eq!(next_keys(&mut watch).await, vec!["/w/a"]);

    cluster.kill(0);
    store
        .put("/w/b", b"2".to_vec())
        .await
        .expect("put with member 0 dead");
    assert_eq!(next_keys(&mut watch).await, vec!["/w/b"]);
}

/// Watch streams open on `member`, from its metrics.
async fn watch_streams(cluster: &EtcdCluster, member: usize) -> f64 {
    const NAME: &str = "etcd_debugging_mvcc_watch_stream_total";
    let url = format!("http://{}/metrics", cluster.endpoints()[member]);
    let body = reqwest::get(url)
        .await
        .expect("etcd serves /metrics")
        .text()
        .await
        .expect("a metrics body");
    body.lines()
        .find_map(|l| l.strip_prefix(NAME)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {NAME} in etcd's metrics"))
}

/// The keys of the watch's next batch, within the deadline.
async fn next_keys(watch: &mut deployctl::store::WatchStream) -> Vec<String> {
    let batch = tokio::time::timeout(DEADLINE, watch.next())
        .await
        .expect("an event within the deadline")
        .expect("the watch goes on")
        .expect("no error");
    batch.into_iter().map(|e| e.kv.key).collect()
}

#[tokio::test]
async fn connect_should_succeed_with_the_first_endpoint_dead_with_and_without_a_user() {
    let mut cluster = EtcdCluster::start(3);
    let mut admin = etcd_client::Client::connect(cluster.endpoints(), None)
        .await
        .expect("the test cluster answers");
    admin
        .user_add("root", "pw", None)
        .await
        .expect("user added");
    admin
        .user_grant_role("root", "root")
        .await
        .expect("role granted");
    admin.auth_enable().await.expect("auth enabled");
    cluster.kill(0);

    let with_user = EtcdOptions {
        user: Some("root".into()),
        password: Some("pw".into()),
        ..EtcdOptions::default()
    };
    let store = EtcdStore::connect_with(&cluster.endpoints(), &with_user)
        .await
        .unwrap_or_else(|e| panic!("connect with a user and member 0 dead: {e}"));
    store.put("/c/k", b"v".to_vec()).await.expect("put");
    assert_eq!(
        store.get("/c/k").await.expect("get").map(|kv| kv.value),
        Some(b"v".to_vec())
    );

    // Without a user etcd refuses every request now; the refusal (not the dead member) is
    // what connecting reports.
    let err = EtcdStore::connect(&cluster.endpoints())
        .await
        .expect_err("auth is on");
    assert!(
        err.to_string().contains("user"),
        "want the missing user named: {err}"
    );
}

#[tokio::test]
async fn connect_should_name_every_member_when_none_answers_and_not_suggest_tls_for_a_refusal() {
    let mut cluster = EtcdCluster::start(3);
    let endpoints = cluster.endpoints();
    for member in 0..3 {
        cluster.kill(member);
    }
    let err = EtcdStore::connect(&endpoints)
        .await
        .expect_err("every member is dead");
    let text = err.to_string();
    for endpoint in &endpoints {
        assert!(
            text.contains(&format!("{endpoint}: ")),
            "{endpoint} not named: {text}"
        );
    }
    assert!(text.to_lowercase().contains("refused"), "{text}");
    assert!(
        !text.contains("TLS"),
        "a refused connection is no TLS problem: {text}"
    );
    assert!(!text.contains("etcds://"), "{text}");
}
