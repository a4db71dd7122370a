//! One conformance suite for every `Store` backend: each case runs against a real etcd
//! (`etcd::<case>`) and against the embedded store (`embedded::<case>`).

mod common;

use deployctl::api::{Object, Rollout, RolloutSpec};
use deployctl::store::{
    keys, Client, Compare, Error, EventType, ObjectEvent, ObjectWatch, Op, Scope, Store, Txn,
    WatchEvent, WatchStream, Write,
};
use deployctl::testing::EtcdServer;
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long any awaited event or condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(15);

/// A backend under test and what keeps it alive.
struct Fixture {
    store: Arc<dyn Store>,
    backend: Backend,
}

enum Backend {
    Etcd(EtcdServer),
    Embedded(deployctl::testing::TempEmbedded),
}

impl Fixture {
    async fn etcd() -> Fixture {
        let server = EtcdServer::start();
        let store = Arc::new(server.connect().await);
        Fixture {
            store,
            backend: Backend::Etcd(server),
        }
    }

    fn embedded() -> Fixture {
        let temp = deployctl::testing::embedded_temp();
        Fixture {
            store: temp.store(),
            backend: Backend::Embedded(temp),
        }
    }

    /// Breaks whatever connection `self.store` holds, and returns a store to write with
    /// afterwards: etcd is restarted (same port and data) and written through the same
    /// handle; the embedded store has no connection to break, so a second handle on the
    /// same file writes while the first keeps watching (another process's view).
    fn disrupt(&mut self) -> Arc<dyn Store> {
        match &mut self.backend {
            Backend::Etcd(server) => {
                server.restart();
                self.store.clone()
            }
            Backend::Embedded(temp) => temp.open_another(),
        }
    }
}

/// Generates `etcd::<case>` and `embedded::<case>` for every case.
macro_rules! conformance {
    (store: [$($case:ident),* $(,)?], fixture: [$($fcase:ident),* $(,)?]) => {
        mod etcd {
            $(
                #[tokio::test]
                async fn $case() {
                    let f = super::Fixture::etcd().await;
                    super::$case(f.store.clone()).await;
                }
            )*
            $(
                #[tokio::test]
                async fn $fcase() {
                    let mut f = super::Fixture::etcd().await;
                    super::$fcase(&mut f).await;
                }
            )*
        }
        mod embedded {
            $(
                #[tokio::test]
                async fn $case() {
                    let f = super::Fixture::embedded();
                    super::$case(f.store.clone()).await;
                }
            )*
            $(
                #[tokio::test]
                async fn $fcase() {
                    let mut f = super::Fixture::embedded();
                    super::$fcase(&mut f).await;
                }
            )*
        }
    };
}

conformance! {
    store: [
        create_should_fail_when_the_key_already_exists,
        get_should_return_none_for_a_missing_key,
        list_should_return_sorted_keys_under_a_prefix_at_now_and_at_an_older_revision,
        list_should_return_every_key_even_past_one_page,
        update_with_a_stale_revision_should_conflict_and_change_nothing,
        a_transaction_should_write_all_of_many_puts_at_one_revision_or_nothing,
        delete_should_remove_the_key_and_be_seen_by_a_watch,
        watch_should_deliver_history_then_live_events_in_revision_order,
        watch_from_a_compacted_revision_should_say_compacted_then_end,
        list_at_a_compacted_revision_should_say_compacted,
        revoking_a_lease_should_delete_its_keys,
        an_expired_lease_should_delete_its_keys,
        keep_alive_should_hold_a_lease_past_its_ttl,
        put_with_an_unknown_lease_should_fail_with_lease_not_found,
        granting_a_chosen_lease_id_should_grant_once_and_hold_keys,
        events_of_many_writers_should_share_the_windows_lease,
        presence_should_give_the_agents_start_and_lease_ttl_until_the_lease_ends,
        spec_and_status_updates_should_never_clobber_each_other,
        client_delete_should_remove_spec_and_status,
        list_watch_should_emit_restarted_then_merged_applied_and_deleted,
        write_batch_should_land_hundreds_of_writes_and_report_a_conflict,
        a_write_past_the_request_limit_should_be_refused_naming_it_and_change_nothing,
        task_orders_should_reach_only_their_machines_watch_and_results_read_back,
    ],
    fixture: [
        watch_should_resume_after_a_disconnect_without_loss_or_repeats,
    ]
}

// ---------------------------------------------------------------------------------------
// Helpers

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.to_string(),
        value: value.as_bytes().to_vec(),
        lease: 0,
    }
}

async fn must_put(store: &Arc<dyn Store>, key: &str, value: &str) -> i64 {
    let res = store
        .put(key, value.as_bytes().to_vec())
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
    assert!(res.succeeded, "an unconditional put always succeeds");
    res.revision
}

/// Reads events from `watch` until `n` have arrived; fails after [`DEADLINE`].
async fn next_events(watch: &mut WatchStream, n: usize) -> Vec<WatchEvent> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(Ok(batch))) => {
                assert!(!batch.is_empty(), "a watch never yields an empty batch");
                out.extend(batch);
            }
            Ok(Some(Err(e))) => panic!("watch failed after {} events: {e}", out.len()),
            Ok(None) => panic!("watch ended after {} of {n} events", out.len()),
            Err(_) => panic!(
                "only {} of {n} events within {DEADLINE:?}: {out:?}",
                out.len()
            ),
        }
    }
    out
}

fn keys_and_values(events: &[WatchEvent]) -> Vec<(EventType, String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e.kind,
                e.kv.key.clone(),
                String::from_utf8_lossy(&e.kv.value).into_owned(),
            )
        })
        .collect()
}

/// Polls `check` until it returns true; fails with `what` after [`DEADLINE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {DEADLINE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn next_object_event(watch: &mut ObjectWatch<Rollout>) -> ObjectEvent<Rollout> {
    match tokio::time::timeout(DEADLINE, watch.next()).await {
        Ok(Some(Ok(ev))) => ev,
        other => panic!("want an object event, got {other:?}"),
    }
}

fn rollout(name: &str, version: &str) -> Rollout {
    Rollout::new(
        name,
        RolloutSpec {
            application: name.to_string(),
            version: version.to_string(),
            ..Default::default()
        },
    )
}

// ---------------------------------------------------------------------------------------
// Keys, lists and transactions

/// One limit for both stores: the largest write either takes is what etcd takes by
/// default, and a larger one is refused by name before anything is written.
async fn a_write_past_the_request_limit_should_be_refused_naming_it_and_change_nothing(
    store: Arc<dyn Store>,
) {
    use deployctl::store::{request_bytes, MAX_REQUEST_BYTES};
    let with_value = |len: usize| Txn {
        compares: vec![],
        ops: vec![Op::Put {
            key: "/t/big".into(),
            value: vec![b'x'; len],
            lease: 0,
        }],
    };
    let overhead = request_bytes(&with_value(0));
    // Exactly at the limit: written (etcd's own check agrees).
    let at_limit = with_value(MAX_REQUEST_BYTES - overhead);
    assert_eq!(request_bytes(&at_limit), MAX_REQUEST_BYTES);
    let res = store.txn(at_limit).await.expect("a write at the limit");
    assert!(res.succeeded);
    let kv = store.get("/t/big").await.expect("get").expect("written");
    assert_eq!(kv.value.len(), MAX_REQUEST_BYTES - overhead);

    // One byte past it, or a 50 MB value: refused, naming the limit; the key keeps its value.
    for len in [MAX_REQUEST_BYTES - overhead + 1, 50 << 20] {
        let err = store
            .txn(with_value(len))
            .await
            .expect_err("past the limit");
        assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("the write of /t/big")
                && text.contains("larger than the store's limit of 1572864 bytes"),
            "{text}"
        );
        let kv = store
            .get("/t/big")
            .await
            .expect("get")
            .expect("still there");
        assert_eq!(kv.mod_revision, res.revision, "nothing was written");
    }

    // Through the typed client: an object with a 2 MB annotation is not created.
    let client = Client::new(store.clone());
    let mut ro = rollout("huge", "1.0.0");
    ro.metadata
        .annotations
        .insert("note".into(), "a".repeat(2 << 20));
    let err = client.create(&ro).await.expect_err("too large");
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    let listed = client.list::<Rollout>(&Scope::All).await.expect("list");
    assert!(listed.items.is_empty(), "nothing was written");
}

async fn create_should_fail_when_the_key_already_exists(store: Arc<dyn Store>) {
    let create = |value: &str| Txn {
        compares: vec![Compare::absent("/t/a")],
        ops: vec![put("/t/a", value)],
    };
    let first = store.txn(create("one")).await.expect("first create");
    assert!(first.succeeded);
    let second = store.txn(create("two")).await.expect("second create");
    assert!(
        !second.succeeded,
        "a second create of the same key must fail"
    );
    assert_eq!(
        second.revision, first.revision,
        "a failed txn writes nothing"
    );

    let kv = store.get("/t/a").await.expect("get").expect("created");
    assert_eq!(kv.value, b"one");
    assert_eq!(kv.create_revision, first.revision);
    assert_eq!(kv.mod_revision, first.revision);
    assert_eq!(kv.lease, 0);
}

async fn get_should_return_none_for_a_missing_key(store: Arc<dyn Store>) {
    must_put(&store, "/t/ab", "x").await;
    assert_eq!(
        store.get("/t/a").await.expect("get"),
        None,
        "a prefix is not a key"
    );
    assert_eq!(store.get("/t/abc").await.expect("get"), None);
}

async fn list_should_return_sorted_keys_under_a_prefix_at_now_and_at_an_older_revision(
    store: Arc<dyn Store>,
) {
    must_put(&store, "/t/b", "b1").await;
    must_put(&store, "/t/a", "a1").await;
    must_put(&store, "/u/x", "outside").await;
    must_put(&store, "/t", "not under /t/").await;
    let old = must_put(&store, "/t/c/d", "d1").await;
    must_put(&store, "/t/a", "a2").await;
    must_put(&store, "/t/e", "e1").await;
    store
        .txn(Txn {
            compares: vec![],
            ops: vec![Op::Delete { key: "/t/b".into() }],
        })
        .await
        .expect("delete");

    let (now, now_rev) = store.list("/t/", None).await.expect("list now");
    let got: Vec<(&str, &[u8])> = now
        .iter()
        .map(|kv| (kv.key.as_str(), &kv.value[..]))
        .collect();
    assert_eq!(
        got,
        vec![("/t/a", &b"a2"[..]), ("/t/c/d", b"d1"), ("/t/e", b"e1")]
    );
    let (_, head) = store.list("/nothing/", None).await.expect("list empty");
    assert_eq!(now_rev, head, "list reports the current revision");

    let (then, then_rev) = store.list("/t/", Some(old)).await.expect("list old");
    let got: Vec<(&str, &[u8])> = then
        .iter()
        .map(|kv| (kv.key.as_str(), &kv.value[..]))
        .collect();
    assert_eq!(
        got,
        vec![("/t/a", &b"a1"[..]), ("/t/b", b"b1"), ("/t/c/d", b"d1")]
    );
    assert_eq!(then_rev, old);
    assert!(then.iter().all(|kv| kv.mod_revision <= old));
}

async fn list_should_return_every_key_even_past_one_page(store: Arc<dyn Store>) {
    // More than one page of the etcd backend (1000 keys), in a few transactions.
    let total = 2_345;
    let names: Vec<String> = (0..total).map(|i| format!("/t/k{i:05}")).collect();
    for chunk in names.chunks(800) {
        let res = store
            .txn(Txn {
                compares: vec![],
                ops: chunk.iter().map(|k| put(k, "v")).collect(),
            })
            .await
            .expect("bulk put");
        assert!(res.succeeded);
    }
    let (kvs, rev) = store.list("/t/", None).await.expect("list");
    let got: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(got.len(), total);
    assert_eq!(got, names.iter().map(String::as_str).collect::<Vec<_>>());
    // A write between pages must not leak in: list again at the same revision.
    must_put(&store, "/t/k00000x", "late").await;
    let (again, again_rev) = store.list("/t/", Some(rev)).await.expect("list at rev");
    assert_eq!(again_rev, rev);
    assert_eq!(again.len(), total);
}

async fn update_with_a_stale_revision_should_conflict_and_change_nothing(store: Arc<dyn Store>) {
    let r1 = must_put(&store, "/t/k", "v1").await;
    let cas = |rev: i64, value: &str| Txn {
        compares: vec![Compare::mod_revision("/t/k", rev)],
        ops: vec![put("/t/k", value)],
    };
    let r2 = store.txn(cas(r1, "v2")).await.expect("cas");
    assert!(r2.succeeded, "a CAS on the revision just read succeeds");
    assert!(r2.revision > r1);
    let stale = store.txn(cas(r1, "v3")).await.expect("stale cas");
    assert!(!stale.succeeded, "a CAS on a stale revision must fail");
    let kv = store.get("/t/k").await.expect("get").expect("exists");
    assert_eq!(kv.value, b"v2");
    assert_eq!(kv.mod_revision, r2.revision);
    assert_eq!(kv.create_revision, r1);
    // Compare on a missing key: mod revision 0.
    let absent = store
        .txn(Txn {
            compares: vec![Compare::mod_revision("/t/missing", 0)],
            ops: vec![put("/t/missing", "new")],
        })
        .await
        .expect("cas on missing");
    assert!(absent.succeeded, "a missing key has mod revision 0");
}

async fn a_transaction_should_write_all_of_many_puts_at_one_revision_or_nothing(
    store: Arc<dyn Store>,
) {
    let ops: Vec<Op> = (0..500).map(|i| put(&format!("/t/{i:03}"), "v")).collect();
    let res = store
        .txn(Txn {
            compares: vec![Compare::absent("/t/guard")],
            ops: ops.clone(),
        })
        .await
        .expect("txn of 500 puts");
    assert!(res.succeeded);
    let (kvs, _) = store.list("/t/", None).await.expect("list");
    assert_eq!(kvs.len(), 500);
    assert!(
        kvs.iter().all(|kv| kv.mod_revision == res.revision),
        "all 500 puts happen at the one revision of the txn"
    );

    must_put(&store, "/t/guard", "set").await;
    let failed = store
        .txn(Txn {
            compares: vec![Compare::absent("/t/guard")],
            ops: (0..500).map(|i| put(&format!("/u/{i:03}"), "v")).collect(),
        })
        .await
        .expect("failing txn");
    assert!(!failed.succeeded);
    let (none, _) = store.list("/u/", None).await.expect("list");
    assert!(none.is_empty(), "a failed txn writes nothing");
}

async fn delete_should_remove_the_key_and_be_seen_by_a_watch(store: Arc<dyn Store>) {
    let created = must_put(&store, "/t/k", "v").await;
    let mut watch = store.watch("/t/", created + 1).await.expect("watch");
    let res = store
        .txn(Txn {
            compares: vec![Compare::exists("/t/k")],
            ops: vec![Op::Delete { key: "/t/k".into() }],
        })
        .await
        .expect("delete");
    assert!(res.succeeded);
    assert_eq!(store.get("/t/k").await.expect("get"), None);
    let events = next_events(&mut watch, 1).await;
    assert_eq!(events[0].kind, EventType::Delete);
    assert_eq!(events[0].kv.key, "/t/k");
    assert_eq!(events[0].kv.mod_revision, res.revision);
    assert!(events[0].kv.value.is_empty());
    // Deleting again: the compare fails.
    let again = store
        .txn(Txn {
            compares: vec![Compare::exists("/t/k")],
            ops: vec![Op::Delete { key: "/t/k".into() }],
        })
        .await
        .expect("delete again");
    assert!(!again.succeeded);
}

// ---------------------------------------------------------------------------------------
// Watches

async fn watch_should_deliver_history_then_live_events_in_revision_order(store: Arc<dyn Store>) {
    let before = must_put(&store, "/t/old", "before the watch's start").await;
    let r1 = must_put(&store, "/t/a", "1").await;
    must_put(&store, "/u/a", "other prefix").await;
    must_put(&store, "/t/b", "2").await;
    let mut watch = store.watch("/t/", r1).await.expect("watch");
    // Live: one txn of two keys, then a delete.
    store
        .txn(Txn {
            compares: vec![],
            ops: vec![put("/t/c", "3"), put("/t/a", "4")],
        })
        .await
        .expect("txn");
    store
        .txn(Txn {
            compares: vec![],
            ops: vec![Op::Delete { key: "/t/b".into() }],
        })
        .await
        .expect("delete");
    let events = next_events(&mut watch, 5).await;
    use EventType::{Delete, Put};
    assert_eq!(
        keys_and_values(&events),
        vec![
            (Put, "/t/a".into(), "1".into()),
            (Put, "/t/b".into(), "2".into()),
            (Put, "/t/c".into(), "3".into()),
            (Put, "/t/a".into(), "4".into()),
            (Delete, "/t/b".into(), "".into()),
        ]
    );
    let revs: Vec<i64> = events.iter().map(|e| e.kv.mod_revision).collect();
    assert!(
        revs.windows(2).all(|w| w[0] <= w[1]),
        "in revision order: {revs:?}"
    );
    assert_eq!(revs[2], revs[3], "one txn, one revision");
    assert!(revs[0] > before);
}

async fn watch_should_resume_after_a_disconnect_without_loss_or_repeats(f: &mut Fixture) {
    let store = f.store.clone();
    let r1 = must_put(&store, "/t/a", "1").await;
    let mut watch = store.watch("/t/", r1).await.expect("watch");
    let first = next_events(&mut watch, 1).await;
    assert_eq!(keys_and_values(&first)[0].2, "1");

    let writer = f.disrupt();
    // After an etcd restart the first writes may find the connection still down.
    let mut written = 0;
    let deadline = Instant::now() + DEADLINE;
    while written < 2 {
        let value = (written + 2).to_string();
        match writer.put("/t/a", value.into_bytes()).await {
            Ok(_) => written += 1,
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("write after the disruption: {e}"),
        }
    }
    let events = next_events(&mut watch, 2).await;
    let values: Vec<String> = keys_and_values(&events).into_iter().map(|e| e.2).collect();
    assert_eq!(
        values,
        vec!["2", "3"],
        "resumed after the last delivered revision"
    );
    // Nothing more: no event was delivered twice.
    let extra = tokio::time::timeout(Duration::from_millis(300), watch.next()).await;
    assert!(extra.is_err(), "unexpected extra item: {extra:?}");
}

async fn watch_from_a_compacted_revision_should_say_compacted_then_end(store: Arc<dyn Store>) {
    let first = must_put(&store, "/t/a", "1").await;
    must_put(&store, "/t/a", "2").await;
    let head = must_put(&store, "/t/a", "3").await;
    store.compact(head).await.expect("compact");
    let mut watch = store.watch("/t/", first).await.expect("watch");
    match tokio::time::timeout(DEADLINE, watch.next()).await {
        Ok(Some(Err(Error::Compacted {
            requested,
            compacted,
        }))) => {
            assert_eq!(requested, first);
            assert!(
                compacted >= head,
                "compacted at {compacted}, want >= {head}"
            );
        }
        other => panic!("want Err(Compacted), got {other:?}"),
    }
    match tokio::time::timeout(DEADLINE, watch.next()).await {
        Ok(None) => {}
        other => panic!("the stream must end after Compacted, got {other:?}"),
    }
    // From the compaction revision on, history is still there.
    let mut watch = store.watch("/t/", head).await.expect("watch at head");
    let events = next_events(&mut watch, 1).await;
    assert_eq!(keys_and_values(&events)[0].2, "3");
    // Compacting again at or before the compaction revision is harmless (a periodic
    // compactor may race another); compacting past the current revision is refused.
    store
        .compact(head)
        .await
        .expect("compacting twice is harmless");
    store
        .compact(first)
        .await
        .expect("compacting an older revision is harmless");
    let future = store.compact(head + 100).await;
    assert!(future.is_err(), "compacting a future revision: {future:?}");
}

async fn list_at_a_compacted_revision_should_say_compacted(store: Arc<dyn Store>) {
    let first = must_put(&store, "/t/a", "1").await;
    let head = must_put(&store, "/t/a", "2").await;
    store.compact(head).await.expect("compact");
    match store.list("/t/", Some(first)).await {
        Err(Error::Compacted { requested, .. }) => assert_eq!(requested, first),
        other => panic!("want Err(Compacted), got {other:?}"),
    }
    let (kvs, _) = store.list("/t/", Some(head)).await.expect("list at head");
    assert_eq!(kvs[0].value, b"2");
}

// ---------------------------------------------------------------------------------------
// Leases

async fn revoking_a_lease_should_delete_its_keys(store: Arc<dyn Store>) {
    let lease = store
        .grant_lease(Duration::from_secs(60))
        .await
        .expect("grant");
    let res = store
        .txn(Txn {
            compares: vec![],
            ops: vec![
                Op::Put {
                    key: "/t/leased".into(),
                    value: b"v".to_vec(),
                    lease,
                },
                put("/t/kept", "v"),
            ],
        })
        .await
        .expect("put with lease");
    assert!(res.succeeded);
    let kv = store.get("/t/leased").await.expect("get").expect("exists");
    assert_eq!(kv.lease, lease);
    store
        .keep_alive(lease)
        .await
        .expect("a live lease can be kept alive");

    let mut watch = store.watch("/t/", res.revision + 1).await.expect("watch");
    store.revoke_lease(lease).await.expect("revoke");
    assert_eq!(store.get("/t/leased").await.expect("get"), None);
    assert!(store.get("/t/kept").await.expect("get").is_some());
    let events = next_events(&mut watch, 1).await;
    assert_eq!(events[0].kind, EventType::Delete);
    assert_eq!(events[0].kv.key, "/t/leased");

    assert!(matches!(
        store.keep_alive(lease).await,
        Err(Error::LeaseNotFound(l)) if l == lease
    ));
    assert!(matches!(
        store.revoke_lease(lease).await,
        Err(Error::LeaseNotFound(l)) if l == lease
    ));
}

async fn an_expired_lease_should_delete_its_keys(store: Arc<dyn Store>) {
    let lease = store
        .grant_lease(Duration::from_secs(1))
        .await
        .expect("grant");
    store
        .txn(Txn {
            compares: vec![],
            ops: vec![Op::Put {
                key: "/t/leased".into(),
                value: b"v".to_vec(),
                lease,
            }],
        })
        .await
        .expect("put with lease");
    assert!(store.get("/t/leased").await.expect("get").is_some());
    eventually("the expired lease's key is deleted", || {
        let store = store.clone();
        async move { store.get("/t/leased").await.expect("get").is_none() }
    })
    .await;
    assert!(matches!(
        store.keep_alive(lease).await,
        Err(Error::LeaseNotFound(l)) if l == lease
    ));
}

async fn keep_alive_should_hold_a_lease_past_its_ttl(store: Arc<dyn Store>) {
    let ttl = Duration::from_secs(1);
    let lease = store.grant_lease(ttl).await.expect("grant");
    store
        .txn(Txn {
            compares: vec![],
            ops: vec![Op::Put {
                key: "/t/held".into(),
                value: b"v".to_vec(),
                lease,
            }],
        })
        .await
        .expect("put with lease");
    // Refresh well within the TTL for longer than any TTL a backend may round up to
    // (etcd's minimum is 2 s): the key must stay.
    let until = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < until {
        store.keep_alive(lease).await.expect("keep alive");
        assert!(
            store.get("/t/held").await.expect("get").is_some(),
            "a refreshed lease must not expire"
        );
        tokio::time::sleep(ttl / 4).await;
    }
    // Then stop refreshing: it expires.
    eventually("the no longer refreshed lease expires", || {
        let store = store.clone();
        async move { store.get("/t/held").await.expect("get").is_none() }
    })
    .await;
    // A refresh after expiry says so (on etcd, through the stream the refreshes kept open).
    assert!(matches!(
        store.keep_alive(lease).await,
        Err(Error::LeaseNotFound(l)) if l == lease
    ));
}

async fn put_with_an_unknown_lease_should_fail_with_lease_not_found(store: Arc<dyn Store>) {
    let lease = store
        .grant_lease(Duration::from_secs(60))
        .await
        .expect("grant");
    store.revoke_lease(lease).await.expect("revoke");
    let res = store
        .txn(Txn {
            compares: vec![],
            ops: vec![Op::Put {
                key: "/t/k".into(),
                value: b"v".to_vec(),
                lease,
            }],
        })
        .await;
    assert!(
        matches!(res, Err(Error::LeaseNotFound(l)) if l == lease),
        "got {res:?}"
    );
    assert_eq!(store.get("/t/k").await.expect("get"), None);
}

async fn granting_a_chosen_lease_id_should_grant_once_and_hold_keys(store: Arc<dyn Store>) {
    let id = 0x1234_5678_9abc;
    let ttl = Duration::from_secs(60);
    assert!(
        store.grant_lease_id(id, ttl).await.expect("grant"),
        "a new id is granted"
    );
    assert!(
        !store.grant_lease_id(id, ttl).await.expect("grant again"),
        "a live id is not granted twice"
    );
    let res = store
        .txn(Txn {
            compares: vec![],
            ops: vec![Op::Put {
                key: "/t/leased".into(),
                value: b"v".to_vec(),
                lease: id,
            }],
        })
        .await
        .expect("put with the chosen lease");
    assert!(res.succeeded);
    assert_eq!(
        store
            .get("/t/leased")
            .await
            .expect("get")
            .expect("put")
            .lease,
        id
    );
    store.revoke_lease(id).await.expect("revoke");
    assert_eq!(store.get("/t/leased").await.expect("get"), None);
    assert!(
        store
            .grant_lease_id(id, ttl)
            .await
            .expect("grant after revoke"),
        "a revoked id can be granted again"
    );
}

async fn presence_should_give_the_agents_start_and_lease_ttl_until_the_lease_ends(
    store: Arc<dyn Store>,
) {
    let client = Client::new(store.clone());
    assert_eq!(
        client.presence("m1").await.expect("read presence"),
        None,
        "no agent registered: no presence"
    );
    let ttl = Duration::from_secs(60);
    let lease = store.grant_lease(ttl).await.expect("grant");
    let started = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
        .expect("a valid timestamp")
        .with_timezone(&chrono::Utc);
    let value = serde_json::to_vec(&serde_json::json!({"hostname": "h", "startedAt": started}))
        .expect("json serializes");
    client
        .register_presence("m1", lease, value)
        .await
        .expect("register presence");
    let p = client
        .presence("m1")
        .await
        .expect("read presence")
        .expect("a registered agent has a presence");
    assert_eq!(p.started_at, Some(started));
    let t = p.ttl.expect("the lease is alive");
    assert_eq!(t.granted, ttl);
    assert!(
        t.remaining <= ttl && t.remaining >= ttl - Duration::from_secs(10),
        "{t:?}"
    );
    assert!(
        p.since_refresh().expect("a live lease") <= Duration::from_secs(10),
        "{p:?}"
    );
    store.revoke_lease(lease).await.expect("revoke");
    assert_eq!(store.lease_ttl(lease).await.expect("read ttl"), None);
    assert_eq!(client.presence("m1").await.expect("read presence"), None);
    assert_eq!(
        store.lease_ttl(424_242).await.expect("read ttl"),
        None,
        "an unknown lease has no TTL"
    );
}

async fn events_of_many_writers_should_share_the_windows_lease(store: Arc<dyn Store>) {
    use deployctl::store::{event_lease_id, EventRecorder};
    let client = Client::new(store.clone());
    let object = deployctl::api::ObjectReference {
        kind: "Instance".into(),
        namespace: Some("default".into()),
        name: "web.m1".into(),
    };
    // No controller has granted this window's lease: the first writer grants it.
    let first = EventRecorder::new(client.clone(), "agent/m1");
    let second = EventRecorder::new(client.clone(), "agent/m2");
    first
        .record(object.clone(), "Normal", "Staged", "one")
        .await;
    second
        .record(object.clone(), "Normal", "Staged", "two")
        .await;
    let (kvs, _) = store
        .list("/deployctl/events/", None)
        .await
        .expect("list events");
    assert_eq!(kvs.len(), 2, "both events are written: {kvs:?}");
    assert_eq!(kvs[0].lease, kvs[1].lease, "the writers share one lease");
    let window = |at: std::time::SystemTime| {
        at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 600
    };
    let now = window(std::time::SystemTime::now());
    assert!(
        [event_lease_id(now), event_lease_id(now - 1)].contains(&kvs[0].lease),
        "the lease is the window's"
    );
    // The controller grants the next window's lease ahead: nobody grants it again.
    first
        .grant_windows()
        .await
        .expect("grant the windows' leases");
    let next = window(std::time::SystemTime::now()) + 1;
    assert!(
        !store
            .grant_lease_id(event_lease_id(next), Duration::from_secs(60))
            .await
            .expect("grant"),
        "the next window's lease exists already"
    );
}

// ---------------------------------------------------------------------------------------
// The typed client

async fn spec_and_status_updates_should_never_clobber_each_other(store: Arc<dyn Store>) {
    let client = Client::new(store.clone());
    let created = client.create(&rollout("api", "1.0")).await.expect("create");
    let uid = created.metadata.uid.clone().expect("create sets a uid");
    let born = created
        .metadata
        .creation_timestamp
        .expect("create sets a timestamp");
    assert_eq!(created.metadata.generation, Some(1));
    assert!(matches!(
        client.create(&rollout("api", "9.9")).await,
        Err(Error::AlreadyExists(_))
    ));

    // Status first, then spec: the spec update keeps the status.
    let with_status: Rollout = client
        .update_status::<Rollout>(Some("default"), "api", |s| s.message = "staging".into())
        .await
        .expect("status update");
    assert_eq!(
        with_status.metadata.generation,
        Some(1),
        "status never bumps generation"
    );
    let v2: Rollout = client
        .update(Some("default"), "api", |r: &mut Rollout| {
            r.spec.version = "2.0".into()
        })
        .await
        .expect("spec update");
    assert_eq!(v2.metadata.generation, Some(2));
    let read: Rollout = client
        .get(Some("default"), "api")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(read.spec.version, "2.0");
    assert_eq!(
        read.status.as_ref().map(|s| s.message.as_str()),
        Some("staging")
    );
    assert_eq!(read.metadata.uid.as_deref(), Some(uid.as_str()));
    assert_eq!(read.metadata.creation_timestamp, Some(born));

    // A status write from a stale read (made before the spec update) still succeeds
    // (status has its own revision) and keeps the new spec.
    let mut stale_status = with_status.clone();
    stale_status.status.as_mut().expect("set above").message = "switching".into();
    client
        .replace_status(&stale_status)
        .await
        .expect("status write");
    let read: Rollout = client
        .get(Some("default"), "api")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        read.spec.version, "2.0",
        "a status write never clobbers spec"
    );
    assert_eq!(
        read.status.as_ref().map(|s| s.message.as_str()),
        Some("switching")
    );
    assert_eq!(read.metadata.generation, Some(2));

    // A stale spec write conflicts instead of overwriting.
    let mut stale_spec = created.clone();
    stale_spec.spec.version = "3.0".into();
    assert!(matches!(
        client.replace(&created, stale_spec).await,
        Err(Error::Conflict(_))
    ));
    // A second stale status write (same status revision as before) conflicts too.
    assert!(matches!(
        client.replace_status(&stale_status).await,
        Err(Error::Conflict(_))
    ));

    // Metadata-only change: generation stays.
    let labelled: Rollout = client
        .update(Some("default"), "api", |r: &mut Rollout| {
            r.metadata.labels.insert("team".into(), "web".into());
        })
        .await
        .expect("label update");
    assert_eq!(labelled.metadata.generation, Some(2));
    assert_eq!(
        labelled.status.as_ref().map(|s| s.message.as_str()),
        Some("switching")
    );
}

async fn client_delete_should_remove_spec_and_status(store: Arc<dyn Store>) {
    let client = Client::new(store.clone());
    client.create(&rollout("api", "1.0")).await.expect("create");
    let _: Rollout = client
        .update_status::<Rollout>(Some("default"), "api", |s| s.message = "ok".into())
        .await
        .expect("status");
    let spec_key = keys::spec_key(Rollout::PLURAL, Some("default"), "api");
    let status_key = keys::status_key(Rollout::PLURAL, Some("default"), "api");
    assert!(store.get(&status_key).await.expect("get").is_some());

    assert!(client
        .delete::<Rollout>(Some("default"), "api", None)
        .await
        .expect("delete"));
    assert_eq!(store.get(&spec_key).await.expect("get"), None);
    assert_eq!(store.get(&status_key).await.expect("get"), None);
    assert!(client
        .get::<Rollout>(Some("default"), "api")
        .await
        .expect("get")
        .is_none());
    assert!(!client
        .delete::<Rollout>(Some("default"), "api", None)
        .await
        .expect("delete"));

    // Recreated: a fresh object, no status left over.
    let again = client
        .create(&rollout("api", "2.0"))
        .await
        .expect("recreate");
    let read: Rollout = client
        .get(Some("default"), "api")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(read.status, None);
    assert_eq!(read.metadata.uid, again.metadata.uid);
}

async fn list_watch_should_emit_restarted_then_merged_applied_and_deleted(store: Arc<dyn Store>) {
    let client = Client::new(store.clone());
    client.create(&rollout("a", "1")).await.expect("create a");
    let _: Rollout = client
        .update_status::<Rollout>(Some("default"), "a", |s| s.message = "a-status".into())
        .await
        .expect("status a");

    let mut watch = client.list_watch::<Rollout>(Scope::All);
    match next_object_event(&mut watch).await {
        ObjectEvent::Restarted(items) => {
            assert_eq!(items.len(), 1);
            assert_eq!(items[0].metadata.name, "a");
            assert_eq!(
                items[0].status.as_ref().map(|s| s.message.as_str()),
                Some("a-status")
            );
        }
        other => panic!("want Restarted first, got {other:?}"),
    }

    client.create(&rollout("b", "1")).await.expect("create b");
    match next_object_event(&mut watch).await {
        ObjectEvent::Applied(b) => {
            assert_eq!(b.metadata.name, "b");
            assert_eq!(b.status, None);
        }
        other => panic!("want Applied(b), got {other:?}"),
    }

    // A status change arrives merged with the spec.
    let _: Rollout = client
        .update_status::<Rollout>(Some("default"), "b", |s| s.message = "b-status".into())
        .await
        .expect("status b");
    match next_object_event(&mut watch).await {
        ObjectEvent::Applied(b) => {
            assert_eq!(b.spec.version, "1");
            assert_eq!(
                b.status.as_ref().map(|s| s.message.as_str()),
                Some("b-status")
            );
        }
        other => panic!("want Applied(b with status), got {other:?}"),
    }

    // A spec change arrives with the status kept.
    let _: Rollout = client
        .update(Some("default"), "a", |r: &mut Rollout| {
            r.spec.version = "2".into()
        })
        .await
        .expect("update a");
    match next_object_event(&mut watch).await {
        ObjectEvent::Applied(a) => {
            assert_eq!(a.spec.version, "2");
            assert_eq!(
                a.status.as_ref().map(|s| s.message.as_str()),
                Some("a-status")
            );
        }
        other => panic!("want Applied(a v2), got {other:?}"),
    }

    client
        .delete::<Rollout>(Some("default"), "a", None)
        .await
        .expect("delete a");
    match next_object_event(&mut watch).await {
        ObjectEvent::Deleted(a) => {
            assert_eq!(a.metadata.name, "a");
            assert_eq!(a.spec.version, "2");
        }
        other => panic!("want Deleted(a), got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// etcd only: what a network store adds

/// A stopped etcd is an `Unavailable` error naming it, within the request timeout, and
/// the same handle works again once etcd is back.
#[tokio::test]
async fn etcd_store_should_report_a_stopped_etcd_and_recover_when_it_returns() {
    let mut server = EtcdServer::start();
    let store = server.connect().await;
    store.put("/t/a", b"1".to_vec()).await.expect("put");
    server.stop();

    let started = Instant::now();
    let err = store.get("/t/a").await.expect_err("etcd is stopped");
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(err, Error::Unavailable { .. }), "got {err:?}");
    assert!(err.to_string().contains(&server.endpoint()), "{err}");
    assert!(err.is_transient());

    server.restart();
    let deadline = Instant::now() + DEADLINE;
    let value = loop {
        match store.get("/t/a").await {
            Ok(v) => break v.expect("data survives a restart"),
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("the same handle must read again after the restart: {e}"),
        }
    };
    assert_eq!(value.value, b"1");
}

/// Refreshes reuse one keep-alive stream per lease; when etcd restarts that stream is
/// dead, and the next refresh must open a new one rather than fail for ever.
#[tokio::test]
async fn etcd_keep_alive_should_survive_an_etcd_restart() {
    let mut server = EtcdServer::start();
    let store = server.connect().await;
    let lease = store
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("grant");
    store.keep_alive(lease).await.expect("first refresh");
    store
        .keep_alive(lease)
        .await
        .expect("refresh on the open stream");
    server.stop();
    server.restart();
    let deadline = Instant::now() + DEADLINE;
    loop {
        match store.keep_alive(lease).await {
            Ok(()) => break,
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("refresh after the restart: {e}"),
        }
    }
    store
        .keep_alive(lease)
        .await
        .expect("and again on the new stream");
    store.revoke_lease(lease).await.expect("revoke");
    assert!(matches!(
        store.keep_alive(lease).await,
        Err(Error::LeaseNotFound(l)) if l == lease
    ));
}

/// `StoreUrl` picks the etcd backend and names the endpoint when nothing answers there.
#[tokio::test]
async fn store_url_should_connect_to_etcd_and_fail_fast_when_it_is_gone() {
    let mut server = EtcdServer::start();
    let url = deployctl::store::StoreUrl::parse(Some(&server.url())).expect("valid url");
    let store = url.connect().await.expect("connect");
    assert_eq!(store.endpoint(), server.url());
    server.stop();
    drop(store);
    let started = Instant::now();
    let err = match url.connect().await {
        Ok(_) => panic!("connected to a stopped etcd"),
        Err(e) => e,
    };
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains(&server.endpoint()), "{err}");
}

/// A request to an etcd that accepts connections but never answers (frozen with SIGSTOP)
/// ends with `Unavailable` instead of hanging.
#[tokio::test]
async fn etcd_store_should_time_out_instead_of_hanging_on_a_frozen_etcd() {
    let server = EtcdServer::start();
    let store = server.connect().await;
    store.put("/t/a", b"1".to_vec()).await.expect("put");
    server.freeze();
    let started = Instant::now();
    let res = store.get("/t/a").await;
    let took = started.elapsed();
    server.thaw();
    assert!(matches!(res, Err(Error::Unavailable { .. })), "got {res:?}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    // And it answers again once thawed.
    assert!(store.get("/t/a").await.expect("get after thaw").is_some());
}

/// Past etcd's `--max-txn-ops` a transaction fails whole, with a message saying which flag
/// to raise (the harness raises it; a default etcd allows 128).
#[tokio::test]
async fn etcd_store_should_name_the_flag_when_a_transaction_has_too_many_ops() {
    let server = EtcdServer::start_with_flags(&["--max-txn-ops=128"]);
    let store = server.connect().await;
    let res = store
        .txn(Txn {
            compares: vec![],
            ops: (0..129).map(|i| put(&format!("/t/{i:03}"), "v")).collect(),
        })
        .await;
    match res {
        Err(Error::Other(m)) => assert!(m.contains("--max-txn-ops"), "{m}"),
        other => panic!("want Err(Other) naming --max-txn-ops, got {other:?}"),
    }
    let (kvs, _) = store.list("/t/", None).await.expect("list");
    assert!(
        kvs.is_empty(),
        "nothing of a refused transaction is written"
    );
}

/// Cut off (a partition, via a proxy) while history is compacted, a watch resumes into
/// `Compacted` and ends: the caller must relist.
#[tokio::test]
async fn etcd_watch_should_say_compacted_when_it_resumes_past_compacted_history() {
    let server = EtcdServer::start();
    let direct = server.connect().await;
    let proxy = common::proxy::Proxy::start(server.endpoint().parse().expect("ip:port")).await;
    let proxied = deployctl::store::etcd::EtcdStore::connect(&[proxy.endpoint()])
        .await
        .expect("connect through the proxy");

    let r1 = direct
        .put("/t/a", b"1".to_vec())
        .await
        .expect("put")
        .revision;
    let mut watch = proxied.watch("/t/", r1).await.expect("watch");
    next_events(&mut watch, 1).await;

    proxy.cut();
    direct.put("/t/a", b"2".to_vec()).await.expect("put");
    let head = direct
        .put("/t/a", b"3".to_vec())
        .await
        .expect("put")
        .revision;
    direct.compact(head).await.expect("compact");
    proxy.restore();

    match tokio::time::timeout(DEADLINE, watch.next()).await {
        Ok(Some(Err(Error::Compacted {
            requested,
            compacted,
        }))) => {
            assert_eq!(
                requested,
                r1 + 1,
                "resumed after the last delivered revision"
            );
            assert_eq!(compacted, head);
        }
        other => panic!("want Err(Compacted) after resuming, got {other:?}"),
    }
    match tokio::time::timeout(DEADLINE, watch.next()).await {
        Ok(None) => {}
        other => panic!("the stream must end after Compacted, got {other:?}"),
    }
}

/// `Client::list_watch` turns that `Compacted` into a relist: `Restarted` with the state
/// after the partition, never an error.
#[tokio::test]
async fn list_watch_should_relist_when_history_it_missed_was_compacted() {
    let server = EtcdServer::start();
    let direct: Arc<dyn Store> = Arc::new(server.connect().await);
    let proxy = common::proxy::Proxy::start(server.endpoint().parse().expect("ip:port")).await;
    let proxied: Arc<dyn Store> = Arc::new(
        deployctl::store::etcd::EtcdStore::connect(&[proxy.endpoint()])
            .await
            .expect("connect through the proxy"),
    );
    let writer = Client::new(direct.clone());
    writer.create(&rollout("a", "1")).await.expect("create a");

    let mut watch = Client::new(proxied).list_watch::<Rollout>(Scope::All);
    match next_object_event(&mut watch).await {
        ObjectEvent::Restarted(items) => assert_eq!(items.len(), 1),
        other => panic!("want Restarted first, got {other:?}"),
    }

    proxy.cut();
    writer.create(&rollout("b", "1")).await.expect("create b");
    writer
        .delete::<Rollout>(Some("default"), "a", None)
        .await
        .expect("delete a");
    let head = direct
        .put("/unrelated", b"x".to_vec())
        .await
        .expect("put")
        .revision;
    direct.compact(head).await.expect("compact");
    proxy.restore();

    match next_object_event(&mut watch).await {
        ObjectEvent::Restarted(items) => {
            let names: Vec<&str> = items.iter().map(|r| r.metadata.name.as_str()).collect();
            assert_eq!(
                names,
                vec!["b"],
                "the relist shows the state after the partition"
            );
        }
        other => panic!("want Restarted after the compaction, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Batches

/// Every Rollout in the store, by name, as (version, resourceVersion).
/// Every Rollout as read now, as `write_batch` takes them.
async fn rollouts_as_read(client: &Client) -> Vec<Arc<Rollout>> {
    client
        .list::<Rollout>(&Scope::All)
        .await
        .expect("list")
        .items
        .into_iter()
        .map(Arc::new)
        .collect()
}

async fn versions(client: &Client) -> std::collections::BTreeMap<String, (String, i64)> {
    client
        .list::<Rollout>(&Scope::All)
        .await
        .expect("list rollouts")
        .items
        .into_iter()
        .map(|r| {
            let rv = r.metadata.revision();
            (r.metadata.name.clone(), (r.spec.version.clone(), rv))
        })
        .collect()
}

/// 500 writes are several transactions (at most 120 ops each), sent concurrently: every
/// one must land, and a stale compare-and-swap anywhere must fail its transaction whole
/// and be reported.
async fn write_batch_should_land_hundreds_of_writes_and_report_a_conflict(store: Arc<dyn Store>) {
    const N: usize = 500;
    let client = Client::new(store);
    let names: Vec<String> = (0..N).map(|i| format!("r{i:03}")).collect();

    let created = client
        .write_batch(
            names
                .iter()
                .map(|n| Write::Create(rollout(n, "1")))
                .collect(),
        )
        .await
        .expect("500 creates");
    assert_eq!(created.len(), N, "every created object is returned");
    let stored = versions(&client).await;
    assert_eq!(stored.len(), N, "every create landed");
    for obj in &created {
        assert_eq!(
            stored[obj.name()].1,
            obj.metadata.revision(),
            "{} is returned with the revision it was written at",
            obj.name()
        );
    }

    let read: Vec<Arc<Rollout>> = rollouts_as_read(&client).await;
    let replace_all = |version: &str| -> Vec<Write<Rollout>> {
        read.iter()
            .map(|current| {
                let mut desired = Rollout::clone(current);
                desired.spec.version = version.to_string();
                Write::Replace {
                    current: Arc::clone(current),
                    desired,
                }
            })
            .collect()
    };
    let replaced = client
        .write_batch(replace_all("2"))
        .await
        .expect("500 replaces");
    assert_eq!(replaced.len(), N);
    let stored = versions(&client).await;
    assert!(
        stored.values().all(|(v, _)| v == "2"),
        "every replace landed"
    );

    // The same replaces again, from the copies read before: every compare is stale.
    let err = client
        .write_batch(replace_all("3"))
        .await
        .expect_err("stale replaces must conflict");
    assert!(matches!(err, Error::Conflict(_)), "got {err}");
    assert_eq!(
        versions(&client).await,
        stored,
        "a failed batch writes nothing"
    );

    // One stale write among fresh ones: its transaction fails whole, the batch reports it.
    let fresh: Vec<Arc<Rollout>> = rollouts_as_read(&client).await;
    let stale = N / 2;
    let writes: Vec<Write<Rollout>> = fresh
        .iter()
        .enumerate()
        .map(|(i, cur)| {
            let current = if i == stale {
                Arc::clone(&read[i])
            } else {
                Arc::clone(cur)
            };
            let mut desired = Rollout::clone(cur);
            desired.spec.version = "4".to_string();
            Write::Replace { current, desired }
        })
        .collect();
    let err = client
        .write_batch(writes)
        .await
        .expect_err("one stale replace must conflict");
    assert!(matches!(err, Error::Conflict(_)), "got {err}");
    let after = versions(&client).await;
    assert_eq!(after[&names[stale]].0, "2", "the stale write did not land");
    assert_eq!(
        after[&names[stale - 1]].0,
        "2",
        "its neighbour in the same transaction did not land either"
    );
    assert_eq!(
        after[&names[stale + 1]].0,
        "2",
        "its neighbour in the same transaction did not land either"
    );

    // Deletes, as a batch too.
    let current: Vec<Arc<Rollout>> = rollouts_as_read(&client).await;
    client
        .write_batch(current.into_iter().map(Write::Delete).collect())
        .await
        .expect("500 deletes");
    assert!(versions(&client).await.is_empty(), "every delete landed");
}

// ---------------------------------------------------------------------------------------
// Task orders and results

async fn task_orders_should_reach_only_their_machines_watch_and_results_read_back(
    store: Arc<dyn Store>,
) {
    use deployctl::api::{MachineRun, MachineRunPhase, TaskOrder};
    use deployctl::store::TaskOrderEvent;
    let client = Client::new(store.clone());
    let order = TaskOrder {
        application: "web".into(),
        command: "systemctl reload nginx".into(),
        timeout_seconds: 30,
    };
    // An order written before the watch starts is listed first.
    client
        .put_task_orders("default", "run-1", &order, &["m1".into()])
        .await
        .expect("order m1");
    let mut m1 = client.watch_task_orders("m1");
    let mut m10 = client.watch_task_orders("m10");
    let put = |task: &str| TaskOrderEvent::Put {
        namespace: "default".into(),
        task: task.into(),
        order: Some(order.clone()),
    };
    let listed = |tasks: &[&str]| TaskOrderEvent::Listed {
        orders: tasks
            .iter()
            .map(|t| ("default".to_string(), t.to_string()))
            .collect(),
    };
    // The list ends with a marker holding every order found (an agent's cue to stop the
    // runs a relist no longer holds); a machine with none gets an empty one.
    assert_eq!(next_order(&mut m1).await, put("run-1"));
    assert_eq!(next_order(&mut m1).await, listed(&["run-1"]));
    assert_eq!(next_order(&mut m10).await, listed(&[]));
    // Ordering again is a no-op; a second Task reaches m1 and m10, each on its own prefix.
    client
        .put_task_orders("default", "run-1", &order, &["m1".into()])
        .await
        .expect("order m1 again");
    client
        .put_task_orders("default", "run-2", &order, &["m1".into(), "m10".into()])
        .await
        .expect("order m1 and m10");
    assert_eq!(
        next_order(&mut m1).await,
        put("run-2"),
        "run-1 was not written twice"
    );
    assert_eq!(
        next_order(&mut m10).await,
        put("run-2"),
        "m10 never sees m1's run-1"
    );

    let run = MachineRun {
        machine: "m1".into(),
        phase: MachineRunPhase::Succeeded,
        exit_code: Some(0),
        output_tail: vec!["reloaded".into()],
        ..Default::default()
    };
    client
        .put_task_result("m1", "default", "run-2", &run)
        .await
        .expect("result of m1");
    let results = client
        .task_results("default", "run-2", &["m1".into(), "m10".into()])
        .await
        .expect("results");
    assert_eq!(results.len(), 1);
    assert_eq!(results["m1"], run);
    assert_eq!(
        client
            .task_result("m1", "default", "run-2")
            .await
            .expect("read"),
        Some(run)
    );

    // Deleting the Task's keys removes the order (the agent's cue to kill) and the result.
    client
        .delete_task_keys("default", "run-2", &["m1".into(), "m10".into()])
        .await
        .expect("delete");
    let gone = TaskOrderEvent::Deleted {
        namespace: "default".into(),
        task: "run-2".into(),
    };
    assert_eq!(next_order(&mut m1).await, gone);
    assert_eq!(next_order(&mut m10).await, gone);

    // A new watch lists again: the deleted order is missing from its marker.
    let mut again = client.watch_task_orders("m1");
    assert_eq!(next_order(&mut again).await, put("run-1"));
    assert_eq!(next_order(&mut again).await, listed(&["run-1"]));
    assert_eq!(
        client
            .task_result("m1", "default", "run-2")
            .await
            .expect("read"),
        None
    );
}

async fn next_order(
    watch: &mut futures::stream::BoxStream<
        'static,
        Result<deployctl::store::TaskOrderEvent, Error>,
    >,
) -> deployctl::store::TaskOrderEvent {
    tokio::time::timeout(DEADLINE, watch.next())
        .await
        .expect("an order event within the deadline")
        .expect("the watch never ends")
        .expect("the watch never fails here")
}
