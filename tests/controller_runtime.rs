//! The controller runtime against real stores: informers and leader election, each test
//! run on a private etcd (needs `etcd` installed: `apt-get install etcd-server`) and on
//! a throwaway embedded store.

use deployctl::api::{Machine, MachineSpec, MachineStatus, Object, Rollout, RolloutSpec};
use deployctl::controller::informer::{ChangeKind, Informer, Reader};
use deployctl::controller::leader::{LeaderElector, Leadership};
use deployctl::store::embedded::EmbeddedStore;
use deployctl::store::{
    Client, Error as StoreError, KeyValue, LeaseId, Op, Result as StoreResult, Scope, Store, Txn,
    TxnResult, WatchStream, Write,
};
use deployctl::testing::{embedded_temp, EtcdServer};
use futures::StreamExt;
use std::any::Any;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long anything that should happen "soon" may take before a test fails.
const SOON: Duration = Duration::from_secs(15);

/// One store for one test: `connect()` opens another client on it (another process's
/// view); the server or temporary dir lives as long as this.
struct TestStore {
    connect: Box<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = Client> + Send>> + Send + Sync>,
    _keep: Box<dyn Any + Send + Sync>,
}

impl TestStore {
    async fn client(&self) -> Client {
        (self.connect)().await
    }
}

async fn etcd() -> TestStore {
    let server = Arc::new(EtcdServer::start());
    let s = server.clone();
    TestStore {
        connect: Box::new(move || {
            let s = s.clone();
            Box::pin(async move {
                let store: Arc<dyn Store> = Arc::new(s.connect().await);
                Client::new(store)
            })
        }),
        _keep: Box::new(server),
    }
}

async fn embedded() -> TestStore {
    let temp = embedded_temp();
    let path = temp.path();
    TestStore {
        connect: Box::new(move || {
            let path = path.clone();
            Box::pin(async move {
                let store = EmbeddedStore::open(&path).unwrap_or_else(|e| {
                    panic!("cannot open embedded store at {}: {e}", path.display())
                });
                Client::new(Arc::new(store) as Arc<dyn Store>)
            })
        }),
        _keep: Box::new(temp),
    }
}

/// Runs one scenario on etcd and on the embedded store, as two tests.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn on_etcd() {
                super::$name(super::etcd().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn on_embedded() {
                super::$name(super::embedded().await).await
            }
        }
    )*};
}

on_both_stores!(
    informer_cache_should_equal_a_fresh_list_after_creates_updates_status_and_deletes,
    informer_should_relist_and_report_what_vanished_after_a_compaction,
    standby_should_take_over_when_the_leaders_lease_is_revoked_and_fence_the_old_leader,
    standby_should_take_over_within_the_ttl_when_the_leader_stops_renewing,
    resign_should_hand_over_at_once,
    leader_should_count_itself_lost_when_its_key_is_deleted_by_hand,
    informer_should_hold_ten_thousand_objects_and_follow_a_thousand_updates,
);

/// Polls `check` until it holds, failing with `what` after `within`.
async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The cache holds exactly what a fresh list returns (same revisions, spec and status).
async fn cache_matches<K: Object>(reader: &Reader<K>, client: &Client, scope: &Scope) -> bool {
    let key = |o: &K| (o.namespace().map(str::to_string), o.name().to_string());
    let mut fresh = client
        .list::<K>(scope)
        .await
        .expect("listing the test store works")
        .items;
    fresh.sort_by_key(key);
    let mut cached: Vec<K> = reader.list().iter().map(|o| (**o).clone()).collect();
    cached.sort_by_key(key);
    fresh == cached
}

/// Every call of an informer's change handler, as `(name, kind)`.
type Seen = Arc<Mutex<Vec<(String, ChangeKind)>>>;

fn seen_count(seen: &Seen, name: &str, kind: ChangeKind) -> usize {
    let seen = seen.lock().expect("test lock not poisoned");
    seen.iter().filter(|(n, k)| n == name && *k == kind).count()
}

fn machine(name: &str) -> Machine {
    Machine::new(name, MachineSpec::default())
}

fn rollout(namespace: &str, name: &str, version: &str) -> Rollout {
    let mut r = Rollout::new(
        name,
        RolloutSpec {
            application: "api".into(),
            version: version.into(),
            ..Default::default()
        },
    );
    r.metadata.namespace = Some(namespace.into());
    r
}

async fn informer_cache_should_equal_a_fresh_list_after_creates_updates_status_and_deletes(
    store: TestStore,
) {
    let client = store.client().await;
    let shutdown = CancellationToken::new();
    client
        .create(&machine("before"))
        .await
        .expect("create machine");
    client
        .create(&rollout("prod", "api", "1.0"))
        .await
        .expect("create rollout");
    client
        .create(&rollout("default", "api", "1.0"))
        .await
        .expect("create rollout");

    let seen: Seen = Default::default();
    let record = |seen: &Seen| {
        let seen = seen.clone();
        move |o: &Machine, kind: ChangeKind| {
            seen.lock()
                .expect("test lock not poisoned")
                .push((o.name().to_string(), kind))
        }
    };
    let machines = Informer::spawn(client.clone(), Scope::All, record(&seen), shutdown.clone());
    let rollouts: Reader<Rollout> = Informer::spawn(
        client.clone(),
        Scope::Namespace("prod".into()),
        |_: &Rollout, _| {},
        shutdown.clone(),
    );
    tokio::time::timeout(SOON, machines.wait_synced())
        .await
        .expect("machine cache syncs in time")
        .expect("informer runs");
    tokio::time::timeout(SOON, rollouts.wait_synced())
        .await
        .expect("rollout cache syncs in time")
        .expect("informer runs");
    assert!(
        machines.get(None, "before").is_some(),
        "the first list fills the cache"
    );
    assert_eq!(seen_count(&seen, "before", ChangeKind::Applied), 1);
    assert_eq!(rollouts.len(), 1, "only the prod namespace is watched");

    // Create, update spec, write status, delete.
    client.create(&machine("m1")).await.expect("create m1");
    client.create(&machine("m2")).await.expect("create m2");
    client
        .update::<Machine>(None, "m1", |m| m.spec.unschedulable = true)
        .await
        .expect("update m1");
    client
        .update_status::<Machine>(None, "m2", |s: &mut MachineStatus| {
            s.hostname = Some("m2.example".into())
        })
        .await
        .expect("status of m2");
    assert!(client
        .delete::<Machine>(None, "before", None)
        .await
        .expect("delete"));
    client
        .update::<Rollout>(Some("prod"), "api", |r| r.spec.version = "2.0".into())
        .await
        .expect("update rollout");

    eventually("the machine cache to equal a fresh list", SOON, || {
        cache_matches(&machines, &client, &Scope::All)
    })
    .await;
    let prod = Scope::Namespace("prod".into());
    eventually("the rollout cache to equal a fresh list", SOON, || {
        cache_matches(&rollouts, &client, &prod)
    })
    .await;
    assert!(machines.get(None, "before").is_none());
    assert!(
        machines
            .get(None, "m1")
            .expect("m1 cached")
            .spec
            .unschedulable
    );
    let m2 = machines.get(None, "m2").expect("m2 cached");
    let hostname = m2.status.as_ref().and_then(|s| s.hostname.as_deref());
    assert_eq!(
        hostname,
        Some("m2.example"),
        "status is merged into the object"
    );
    let api = rollouts.get(Some("prod"), "api").expect("rollout cached");
    assert_eq!(api.spec.version, "2.0");
    assert!(
        rollouts.get(None, "api").is_none(),
        "None means the default namespace"
    );
    assert_eq!(seen_count(&seen, "before", ChangeKind::Deleted), 1);
    assert!(
        seen_count(&seen, "m1", ChangeKind::Applied) >= 2,
        "create and update"
    );
    // (m2's create and status may arrive as one event: spec and status keys are watched
    // apart, and a status seen before its spec waits for it.)
    assert!(seen_count(&seen, "m2", ChangeKind::Applied) >= 1);
    shutdown.cancel();
}

/// A real store with a hand on its watches, as a flaky network would have: it can end
/// every open watch stream (a broken connection) and hold new `watch` calls at a gate.
/// Everything else goes straight to the store, which keeps all the semantics.
struct Interposer {
    store: Arc<dyn Store>,
    /// Held by a test to stop `watch` calls from reaching the store.
    gate: tokio::sync::Mutex<()>,
    /// `watch` calls waiting at the gate.
    waiting: AtomicUsize,
    /// `Compacted` answers the store gave to watches.
    compacted: Arc<AtomicUsize>,
    /// Cancelled (and replaced) to end every watch stream open at the time.
    break_streams: Mutex<CancellationToken>,
}

impl Interposer {
    fn new(store: Arc<dyn Store>) -> Arc<Interposer> {
        Arc::new(Interposer {
            store,
            gate: Default::default(),
            waiting: AtomicUsize::new(0),
            compacted: Default::default(),
            break_streams: Default::default(),
        })
    }

    fn break_watches(&self) {
        let mut token = self.break_streams.lock().expect("test lock not poisoned");
        token.cancel();
        *token = CancellationToken::new();
    }
}

#[async_trait::async_trait]
impl Store for Interposer {
    fn endpoint(&self) -> String {
        self.store.endpoint()
    }
    async fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        self.store.get(key).await
    }
    async fn list(&self, prefix: &str, revision: Option<i64>) -> StoreResult<(Vec<KeyValue>, i64)> {
        self.store.list(prefix, revision).await
    }
    async fn txn(&self, txn: Txn) -> StoreResult<TxnResult> {
        self.store.txn(txn).await
    }
    async fn watch(&self, prefix: &str, from_revision: i64) -> StoreResult<WatchStream> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        drop(self.gate.lock().await);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let stream = match self.store.watch(prefix, from_revision).await {
            Err(e @ StoreError::Compacted { .. }) => {
                self.compacted.fetch_add(1, Ordering::SeqCst);
                return Err(e);
            }
            other => other?,
        };
        let broken = self
            .break_streams
            .lock()
            .expect("test lock not poisoned")
            .clone()
            .cancelled_owned();
        let compacted = self.compacted.clone();
        Ok(stream
            .inspect(move |item| {
                if matches!(item, Err(StoreError::Compacted { .. })) {
                    compacted.fetch_add(1, Ordering::SeqCst);
                }
            })
            .take_until(broken)
            .boxed())
    }
    async fn grant_lease(&self, ttl: Duration) -> StoreResult<LeaseId> {
        self.store.grant_lease(ttl).await
    }
    async fn grant_lease_id(&self, id: LeaseId, ttl: Duration) -> StoreResult<bool> {
        self.store.grant_lease_id(id, ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> StoreResult<()> {
        self.store.keep_alive(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> StoreResult<()> {
        self.store.revoke_lease(lease).await
    }
    async fn lease_ttl(&self, lease: LeaseId) -> StoreResult<Option<deployctl::store::LeaseTtl>> {
        self.store.lease_ttl(lease).await
    }
    async fn compact(&self, revision: i64) -> StoreResult<()> {
        self.store.compact(revision).await
    }
}

async fn informer_should_relist_and_report_what_vanished_after_a_compaction(store: TestStore) {
    let real = store.client().await;
    let interposer = Interposer::new(real.store().clone());
    let client = Client::new(interposer.clone() as Arc<dyn Store>);
    let shutdown = CancellationToken::new();
    client
        .create(&machine("steady"))
        .await
        .expect("create steady");
    client
        .create(&machine("doomed"))
        .await
        .expect("create doomed");
    let seen: Seen = Default::default();
    let reader = {
        let seen = seen.clone();
        Informer::spawn(
            client.clone(),
            Scope::All,
            move |o: &Machine, kind| {
                seen.lock()
                    .expect("test lock not poisoned")
                    .push((o.name().to_string(), kind))
            },
            shutdown.clone(),
        )
    };
    tokio::time::timeout(SOON, reader.wait_synced())
        .await
        .expect("cache syncs in time")
        .expect("informer runs");
    assert_eq!(seen_count(&seen, "steady", ChangeKind::Applied), 1);

    // Break the informer's watch and hold its re-watch after the relist; meanwhile the
    // world changes and compaction removes the history it would resume from.
    let gate = interposer.gate.lock().await;
    interposer.break_watches();
    eventually("the informer to relist and wait to watch", SOON, || async {
        interposer.waiting.load(Ordering::SeqCst) > 0
    })
    .await;
    assert!(client
        .delete::<Machine>(None, "doomed", None)
        .await
        .expect("delete doomed"));
    client
        .create(&machine("newcomer"))
        .await
        .expect("create newcomer");
    let (_, revision) = client
        .store()
        .list("/deployctl/no-such-prefix/", None)
        .await
        .expect("read the current revision");
    client.store().compact(revision).await.expect("compact");
    drop(gate);

    eventually(
        "the cache to equal a fresh list after the compaction",
        SOON,
        || cache_matches(&reader, &client, &Scope::All),
    )
    .await;
    assert!(
        interposer.compacted.load(Ordering::SeqCst) > 0,
        "the store told the informer's watch that its history was compacted"
    );
    assert!(reader.get(None, "doomed").is_none());
    assert!(reader.get(None, "newcomer").is_some());
    assert_eq!(
        seen_count(&seen, "doomed", ChangeKind::Deleted),
        1,
        "told of the vanished"
    );
    // Each relist reports every object again, even unchanged ones.
    assert!(seen_count(&seen, "steady", ChangeKind::Applied) >= 2);
    shutdown.cancel();
}

const TTL: Duration = Duration::from_secs(3);
/// Slack on top of a TTL for the store to notice an expired lease and tell watchers.
const MARGIN: Duration = Duration::from_secs(3);

async fn lead(elector: &LeaderElector) -> Leadership {
    let shutdown = CancellationToken::new();
    tokio::time::timeout(SOON, elector.campaign(&shutdown))
        .await
        .expect("an uncontested campaign wins in time")
        .expect("campaign works")
}

/// Starts a standby campaigning in the background.
fn stand_by(
    elector: LeaderElector,
) -> tokio::task::JoinHandle<deployctl::controller::leader::Result<Leadership>> {
    tokio::spawn(async move { elector.campaign(&CancellationToken::new()).await })
}

async fn standby_should_take_over_when_the_leaders_lease_is_revoked_and_fence_the_old_leader(
    store: TestStore,
) {
    let (ca, cb) = (store.client().await, store.client().await);
    let a = lead(&LeaderElector::new(ca.clone(), "a", TTL)).await;
    let mut b = stand_by(LeaderElector::new(cb.clone(), "b", TTL));
    a.client()
        .create(&machine("by-a"))
        .await
        .expect("the leader's fenced write works");
    let holder = ca.leader().await.expect("read leader").expect("a leader");
    assert_eq!(holder.identity, "a");

    // The lease ends behind a's back, as when it expires in a network partition.
    ca.store()
        .revoke_lease(a.lease())
        .await
        .expect("revoke a's lease");
    let start = Instant::now();
    let b = tokio::time::timeout(TTL + MARGIN, &mut b)
        .await
        .expect("the standby takes over within ttl + margin")
        .expect("campaign task does not panic")
        .expect("campaign works");
    tracing::info!(took = ?start.elapsed(), "standby took over");
    tokio::time::timeout(TTL + MARGIN, a.lost().cancelled())
        .await
        .expect("the old leader learns it lost within its ttl");

    let err = a
        .client()
        .create(&machine("by-old-a"))
        .await
        .expect_err("fenced out");
    assert!(matches!(err, StoreError::NotLeader), "got {err}");
    let err = a
        .client()
        .update::<Machine>(None, "by-a", |m| m.spec.unschedulable = true)
        .await
        .expect_err("fenced out");
    assert!(matches!(err, StoreError::NotLeader), "got {err}");
    assert!(ca
        .get::<Machine>(None, "by-old-a")
        .await
        .expect("get")
        .is_none());
    b.client()
        .create(&machine("by-b"))
        .await
        .expect("the new leader's write works");
    assert_eq!(
        cb.leader().await.expect("read").expect("a leader").identity,
        "b"
    );
    b.resign().await.expect("resign");
    assert!(
        cb.leader().await.expect("read").is_none(),
        "resign frees the key"
    );
}

async fn standby_should_take_over_within_the_ttl_when_the_leader_stops_renewing(store: TestStore) {
    let (ca, cb) = (store.client().await, store.client().await);
    let a = lead(&LeaderElector::new(ca.clone(), "a", TTL)).await;
    let mut b = stand_by(LeaderElector::new(cb.clone(), "b", TTL));
    // Keep-alives hold the key well past one TTL.
    assert!(
        tokio::time::timeout(TTL * 2, &mut b).await.is_err(),
        "the standby must not lead while the leader renews its lease"
    );
    assert!(!a.lost().is_cancelled());

    // The leader dies: no more keep-alives, no resign.
    let fence = a.fence();
    drop(a);
    let start = Instant::now();
    let b = tokio::time::timeout(TTL + MARGIN, &mut b)
        .await
        .expect("the standby takes over within ttl + margin")
        .expect("campaign task does not panic")
        .expect("campaign works");
    assert!(
        start.elapsed() >= TTL / 3,
        "took over after {:?}: before the lease could expire",
        start.elapsed()
    );
    let err = ca
        .fenced(fence)
        .create(&machine("by-old-a"))
        .await
        .expect_err("fenced out");
    assert!(matches!(err, StoreError::NotLeader), "got {err}");
    b.resign().await.expect("resign");
}

async fn resign_should_hand_over_at_once(store: TestStore) {
    // A long TTL: only the delete of the key can explain a quick takeover.
    let ttl = Duration::from_secs(10);
    let (ca, cb) = (store.client().await, store.client().await);
    let a = lead(&LeaderElector::new(ca.clone(), "a", ttl)).await;
    let lost = a.lost();
    let mut b = stand_by(LeaderElector::new(cb.clone(), "b", ttl));
    // The standby finds the key taken and starts watching it.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut b)
            .await
            .is_err(),
        "the standby must not lead while the key is held"
    );
    a.resign().await.expect("resign");
    assert!(
        lost.is_cancelled(),
        "resigning ends the leadership locally too"
    );
    let start = Instant::now();
    let b = tokio::time::timeout(ttl / 2, &mut b)
        .await
        .expect("the standby takes over long before the ttl")
        .expect("campaign task does not panic")
        .expect("campaign works");
    assert!(start.elapsed() < ttl / 2);
    b.resign().await.expect("resign");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_should_count_itself_lost_when_the_store_is_unreachable_for_a_ttl() {
    let mut server = EtcdServer::start();
    let client = Client::new(Arc::new(server.connect().await) as Arc<dyn Store>);
    let a = lead(&LeaderElector::new(client, "a", TTL)).await;
    let lost = a.lost();
    // Renewals keep it leading past one TTL. The kill falls between two renewals (every
    // ttl / 3), not on one.
    assert!(tokio::time::timeout(TTL * 2 + TTL / 6, lost.cancelled())
        .await
        .is_err());
    server.kill();
    let start = Instant::now();
    tokio::time::timeout(TTL + Duration::from_secs(1), lost.cancelled())
        .await
        .expect("no keep-alive for a whole ttl means lost");
    // Never later than the lease could expire in the store: at most one ttl after the
    // last successful renewal, which was before the kill (`start` is taken after it).
    // The slack is the timer's wake-up on a loaded machine, not a margin of the rule.
    assert!(
        start.elapsed() <= TTL + Duration::from_millis(200),
        "lost only after {:?}",
        start.elapsed()
    );
    drop(a);
}

/// An etcd that restarts renews every lease, the lost leader's too: with its key held by
/// a lease nobody refreshes, every controller stood by for a whole TTL after etcd
/// answered again. The TTL is long here, so that only a revoke can free the key soon.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_lost_while_etcd_is_down_should_free_the_key_once_etcd_answers() {
    let ttl = Duration::from_secs(8);
    let mut server = EtcdServer::start();
    let ca = Client::new(Arc::new(server.connect().await) as Arc<dyn Store>);
    let a = lead(&LeaderElector::new(ca.clone(), "a", ttl)).await;
    let lost = a.lost();
    server.kill();
    tokio::time::timeout(ttl + Duration::from_secs(2), lost.cancelled())
        .await
        .expect("no keep-alive for a whole ttl means lost");
    server.restart();
    let answered = Instant::now();
    let cb = Client::new(Arc::new(server.connect().await) as Arc<dyn Store>);
    let holder = cb.leader().await.expect("read the leader key");
    if let Some(h) = &holder {
        assert_eq!(h.identity, "a", "only a's lost term can hold the key");
    }
    // A standby with another identity: it cannot recognise a's lease as its own.
    let b = tokio::time::timeout(ttl / 2, stand_by(LeaderElector::new(cb.clone(), "b", ttl)))
        .await
        .expect("a's lease is revoked, not left to expire a ttl after etcd restarted")
        .expect("campaign task does not panic")
        .expect("campaign works");
    eprintln!("b leads {:?} after etcd answered", answered.elapsed());
    drop(a);
    b.resign().await.expect("resign");
}

/// The same, seen by the old leader itself: campaigning again, it finds its own lost
/// term on the key and ends it instead of standing by behind itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_campaign_should_end_its_own_lost_term_instead_of_standing_by() {
    let ttl = Duration::from_secs(30);
    let server = EtcdServer::start();
    let client = Client::new(Arc::new(server.connect().await) as Arc<dyn Store>);
    // A term of "a" whose keep-alive is gone (as after a crash and restart with the same
    // identity): dropping stops renewing without revoking, so the key stays held by a
    // live lease of 30 s.
    let old = lead(&LeaderElector::new(client.clone(), "a", ttl)).await;
    let old_lease = old.lease();
    drop(old);
    let again = tokio::time::timeout(ttl / 3, async {
        LeaderElector::new(client.clone(), "a", ttl)
            .campaign(&CancellationToken::new())
            .await
    })
    .await
    .expect("the old term is ended at once, not waited out")
    .expect("campaign works");
    assert_ne!(again.lease(), old_lease);
    again.resign().await.expect("resign");
}

async fn leader_should_count_itself_lost_when_its_key_is_deleted_by_hand(store: TestStore) {
    let client = store.client().await;
    let a = lead(&LeaderElector::new(client.clone(), "a", TTL)).await;
    // As `etcdctl del` would: the lease lives on, but the fence no longer holds.
    let deleted = client
        .store()
        .txn(Txn {
            compares: vec![],
            ops: vec![Op::Delete {
                key: deployctl::store::keys::leader_key(),
            }],
        })
        .await
        .expect("delete the leader key");
    assert!(deleted.succeeded);
    // Noticed at the next keep-alive, every ttl / 3 (a second more: a hang guard).
    tokio::time::timeout(TTL + Duration::from_secs(1), a.lost().cancelled())
        .await
        .expect("the leader notices within one keep-alive period");
    let err = a
        .client()
        .create(&machine("late"))
        .await
        .expect_err("fenced out");
    assert!(matches!(err, StoreError::NotLeader), "got {err}");
    // The key is free again: a new campaign wins at once.
    let b = lead(&LeaderElector::new(client.clone(), "b", TTL)).await;
    b.resign().await.expect("resign");
}

async fn informer_should_hold_ten_thousand_objects_and_follow_a_thousand_updates(store: TestStore) {
    let client = store.client().await;
    let shutdown = CancellationToken::new();
    let creates = (0..10_000)
        .map(|i| Write::Create(machine(&format!("m{i:05}"))))
        .collect();
    client
        .write_batch::<Machine>(creates)
        .await
        .expect("create 10,000 machines");
    let reader: Reader<Machine> =
        Informer::spawn(client.clone(), Scope::All, |_, _| {}, shutdown.clone());
    let start = Instant::now();
    tokio::time::timeout(SOON, reader.wait_synced())
        .await
        .expect("10,000 objects sync in time")
        .expect("informer runs");
    assert_eq!(reader.len(), 10_000);
    let synced_in = start.elapsed();

    let updates = reader
        .filter(|m| m.name() < "m01000")
        .into_iter()
        .map(|current| {
            let mut desired = (*current).clone();
            desired.spec.unschedulable = true;
            Write::Replace { current, desired }
        })
        .collect::<Vec<_>>();
    assert_eq!(updates.len(), 1_000);
    let start = Instant::now();
    client
        .write_batch(updates)
        .await
        .expect("update 1,000 machines");
    eventually("the cache to see 1,000 updates", SOON, || async {
        reader.filter(|m| m.spec.unschedulable).len() == 1_000
    })
    .await;
    eprintln!(
        "synced 10,000 in {synced_in:?}; followed 1,000 updates in {:?}",
        start.elapsed()
    );
    assert!(cache_matches(&reader, &client, &Scope::All).await);
    shutdown.cancel();
}
