//! Keeps an in-memory cache of one kind, fed by a list-then-watch of the store.
//!
//! One writer, the [`Informer`] task consuming [`Client::list_watch`], and any number of
//! cheap read-only [`Reader`] handles. **The cache may be stale**: it lags the store by
//! the time an event takes to arrive, and while the store is unreachable it keeps the
//! last state it saw. Reconcilers read it to decide, and write with a compare-and-swap
//! on the `resourceVersion` they read, so a stale read costs a conflict, never a lost
//! write.
//!
//! The informer calls a handler for every change (typically: enqueue the object's key,
//! or its owner's). After a relist it calls it for every object listed, and for every
//! object that vanished meanwhile as [`ChangeKind::Deleted`].

use crate::api::Object;
use crate::store::keys::ObjectKey;
use crate::store::{Client, ObjectEvent, Scope};
use futures::StreamExt;
use rustc_hash::FxHashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The informer was shut down before its first list arrived.
    #[error("the {kind} informer stopped before its cache was synced")]
    Stopped { kind: &'static str },
}

/// First wait before re-creating a failed list-watch.
const RETRY_BASE: Duration = Duration::from_millis(200);
/// Longest wait between attempts when the store stays unreachable.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What happened to an object, as told to the change handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// Created, or its spec or status changed, or seen again in a relist.
    Applied,
    /// Deleted (also: missing from a relist). The object is its last known state.
    Deleted,
}

/// The state shared by the writer and its readers.
struct Shared<K> {
    objects: RwLock<FxHashMap<ObjectKey, Arc<K>>>,
    /// Becomes true once the first list has been applied.
    synced: watch::Receiver<bool>,
}

/// A read-only view of an informer's cache. Cheap to clone. May be stale (see the module
/// docs): never use it to decide a write without a compare-and-swap.
pub struct Reader<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for Reader<K> {
    fn clone(&self) -> Self {
        Reader {
            shared: self.shared.clone(),
        }
    }
}

impl<K: Object> Reader<K> {
    /// One object by namespace and name (the namespace is ignored for cluster-scoped
    /// kinds, and `default` when omitted for namespaced ones).
    pub fn get(&self, namespace: Option<&str>, name: &str) -> Option<Arc<K>> {
        let key = ObjectKey {
            namespace: K::NAMESPACED.then(|| {
                namespace
                    .unwrap_or(crate::api::DEFAULT_NAMESPACE)
                    .to_string()
            }),
            name: name.to_string(),
        };
        self.read().get(&key).cloned()
    }

    /// One object by its key (as queued by [`object_key`]).
    pub fn get_key(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.read().get(key).cloned()
    }

    /// Every cached object, in no particular order. Costs one `Arc` clone per object.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.read().values().cloned().collect()
    }

    /// Cached objects for which `keep` is true. Cheaper than `list` when few match.
    pub fn filter(&self, mut keep: impl FnMut(&K) -> bool) -> Vec<Arc<K>> {
        self.read().values().filter(|o| keep(o)).cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// True once the first list has been applied.
    pub fn is_synced(&self) -> bool {
        *self.shared.synced.borrow()
    }

    /// Waits until the first list has been applied. Workers should start only after
    /// this, or they would take a half-filled cache for the truth.
    pub async fn wait_synced(&self) -> Result<()> {
        let mut synced = self.shared.synced.clone();
        let result = synced.wait_for(|s| *s).await.map(|_| ());
        result.map_err(|_| Error::Stopped { kind: K::KIND })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, FxHashMap<ObjectKey, Arc<K>>> {
        // The writer never panics while holding the lock (it only inserts and removes).
        self.shared
            .objects
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The one writer of a cache: applies list-watch events and tells the handler.
pub struct Writer<K> {
    shared: Arc<Shared<K>>,
    synced: watch::Sender<bool>,
}

impl<K: Object> Default for Writer<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Object> Writer<K> {
    /// An empty, not yet synced cache.
    pub fn new() -> Self {
        let (synced, synced_rx) = watch::channel(false);
        Writer {
            shared: Arc::new(Shared {
                objects: RwLock::new(FxHashMap::default()),
                synced: synced_rx,
            }),
            synced,
        }
    }

    /// A read-only handle on the cache.
    pub fn reader(&self) -> Reader<K> {
        Reader {
            shared: self.shared.clone(),
        }
    }

    /// Applies one event to the cache, then tells `on_change` (so that a reconcile it
    /// triggers already reads the new state). A `Restarted` replaces the whole cache:
    /// every object that vanished is reported `Deleted`, every listed one `Applied`,
    /// and the cache counts as synced from then on.
    pub fn apply(&self, event: ObjectEvent<K>, on_change: &impl Fn(&K, ChangeKind)) {
        match event {
            ObjectEvent::Applied(obj) => {
                let obj = Arc::new(obj);
                self.write().insert(object_key(&*obj), obj.clone());
                on_change(&obj, ChangeKind::Applied);
            }
            ObjectEvent::Deleted(obj) => {
                self.write().remove(&object_key(&obj));
                on_change(&obj, ChangeKind::Deleted);
            }
            ObjectEvent::Restarted(objs) => {
                let fresh: FxHashMap<ObjectKey, Arc<K>> = objs
                    .into_iter()
                    .map(|o| (object_key(&o), Arc::new(o)))
                    .collect();
                let applied: Vec<Arc<K>> = fresh.values().cloned().collect();
                let deleted: Vec<Arc<K>> = {
                    let mut cache = self.write();
                    let gone = cache
                        .iter()
                        .filter(|(key, _)| !fresh.contains_key(*key))
                        .map(|(_, obj)| obj.clone())
                        .collect();
                    *cache = fresh;
                    gone
                };
                for obj in &deleted {
                    on_change(obj, ChangeKind::Deleted);
                }
                for obj in &applied {
                    on_change(obj, ChangeKind::Applied);
                }
                self.synced.send_replace(true);
            }
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, FxHashMap<ObjectKey, Arc<K>>> {
        // See `Reader::read`: the lock cannot be poisoned by a half-done update.
        self.shared
            .objects
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Feeds a [`Writer`] from [`Client::list_watch`], re-creating the stream when it fails.
pub struct Informer<K> {
    client: Client,
    scope: Scope,
    writer: Writer<K>,
}

impl<K: Object> Informer<K> {
    pub fn new(client: Client, scope: Scope) -> Self {
        Informer {
            client,
            scope,
            writer: Writer::new(),
        }
    }

    /// A read-only handle on the cache.
    pub fn reader(&self) -> Reader<K> {
        self.writer.reader()
    }

    /// Starts the informer as a task and returns its reader. `on_change` runs on the
    /// informer's task after the cache is updated: keep it quick (enqueue keys).
    pub fn spawn(
        client: Client,
        scope: Scope,
        on_change: impl Fn(&K, ChangeKind) + Send + Sync + 'static,
        shutdown: CancellationToken,
    ) -> Reader<K> {
        let informer = Informer::new(client, scope);
        let reader = informer.reader();
        tokio::spawn(informer.run(on_change, shutdown));
        reader
    }

    /// Feeds the cache until `shutdown` is cancelled. Never gives up: when the store
    /// fails, it logs, waits (200 ms doubling to 30 s) and lists again.
    pub async fn run(
        self,
        on_change: impl Fn(&K, ChangeKind) + Send + Sync + 'static,
        shutdown: CancellationToken,
    ) {
        let mut retry = RETRY_BASE;
        loop {
            let mut events = self.client.list_watch::<K>(self.scope.clone());
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    next = events.next() => next,
                };
                match next {
                    Some(Ok(event)) => {
                        self.writer.apply(event, &on_change);
                        retry = RETRY_BASE;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(kind = K::KIND, error = %e, retry_in = ?retry,
                            "list-watch failed; the cache may be stale until it recovers");
                        break;
                    }
                    None => {
                        tracing::warn!(kind = K::KIND, retry_in = ?retry, "list-watch ended");
                        break;
                    }
                }
            }
            drop(events);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(retry) => {}
            }
            retry = (retry * 2).min(RETRY_MAX);
        }
    }
}

/// The key of an object in the cache and in work queues.
pub fn object_key<K: Object>(obj: &K) -> ObjectKey {
    ObjectKey {
        namespace: obj.namespace().map(str::to_string),
        name: obj.name().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Machine, MachineSpec, Rollout, RolloutSpec};
    use std::sync::Mutex;

    fn machine(name: &str, revision: i64) -> Machine {
        let mut m = Machine::new(name, MachineSpec::default());
        m.metadata.resource_version = Some(revision.to_string());
        m
    }

    /// Applies `event` and returns the handler calls it made, sorted.
    fn apply(writer: &Writer<Machine>, event: ObjectEvent<Machine>) -> Vec<(String, ChangeKind)> {
        let calls = Mutex::new(Vec::new());
        writer.apply(event, &|m: &Machine, kind| {
            calls
                .lock()
                .expect("test lock not poisoned")
                .push((m.name().to_string(), kind))
        });
        let mut calls = calls.into_inner().expect("test lock not poisoned");
        calls.sort_by(|a, b| a.0.cmp(&b.0));
        calls
    }

    fn names(reader: &Reader<Machine>) -> Vec<String> {
        let mut names: Vec<_> = reader.list().iter().map(|m| m.name().to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn restart_should_replace_the_cache_and_report_what_vanished_as_deleted() {
        let writer = Writer::new();
        let reader = writer.reader();
        assert!(!reader.is_synced());
        apply(
            &writer,
            ObjectEvent::Restarted(vec![machine("a", 1), machine("b", 2)]),
        );
        assert!(reader.is_synced());
        assert_eq!(names(&reader), ["a", "b"]);

        let calls = apply(
            &writer,
            ObjectEvent::Restarted(vec![machine("b", 2), machine("c", 3)]),
        );
        use ChangeKind::*;
        let want = [("a", Deleted), ("b", Applied), ("c", Applied)];
        let want: Vec<_> = want.iter().map(|(n, k)| (n.to_string(), *k)).collect();
        assert_eq!(calls, want);
        assert_eq!(names(&reader), ["b", "c"]);
        assert!(reader.get(None, "a").is_none());
    }

    #[test]
    fn applied_and_deleted_should_update_the_cache_before_the_handler_runs() {
        let writer = Writer::new();
        let reader = writer.reader();
        apply(&writer, ObjectEvent::Restarted(vec![]));
        let seen_in_handler = Mutex::new(None);
        writer.apply(ObjectEvent::Applied(machine("a", 5)), &|m: &Machine, _| {
            *seen_in_handler.lock().expect("test lock not poisoned") =
                reader.get(None, m.name()).map(|c| c.meta().revision());
        });
        assert_eq!(
            *seen_in_handler.lock().expect("test lock not poisoned"),
            Some(5)
        );
        apply(&writer, ObjectEvent::Applied(machine("a", 6)));
        assert_eq!(reader.get(None, "a").expect("cached").meta().revision(), 6);
        assert_eq!(reader.len(), 1);
        let calls = apply(&writer, ObjectEvent::Deleted(machine("a", 6)));
        assert_eq!(calls, [("a".to_string(), ChangeKind::Deleted)]);
        assert!(reader.is_empty());
    }

    #[test]
    fn readers_should_share_objects_without_copying_them() {
        let writer = Writer::new();
        let reader = writer.reader();
        apply(&writer, ObjectEvent::Restarted(vec![machine("a", 1)]));
        let (one, two) = (reader.get(None, "a"), reader.clone().get(None, "a"));
        let (one, two) = (one.expect("cached"), two.expect("cached"));
        assert!(Arc::ptr_eq(&one, &two));
        assert!(Arc::ptr_eq(&one, &reader.list()[0]));
    }

    #[test]
    fn get_should_default_the_namespace_of_namespaced_kinds_only() {
        let writer = Writer::new();
        let reader = writer.reader();
        let mut prod = Rollout::new("api", RolloutSpec::default());
        prod.metadata.namespace = Some("prod".into());
        let dflt = Rollout::new("api", RolloutSpec::default());
        writer.apply(
            ObjectEvent::Restarted(vec![prod, dflt]),
            &|_: &Rollout, _| {},
        );
        let ns = |r: Option<Arc<Rollout>>| r.and_then(|r| r.namespace().map(str::to_string));
        assert_eq!(ns(reader.get(Some("prod"), "api")).as_deref(), Some("prod"));
        assert_eq!(ns(reader.get(None, "api")).as_deref(), Some("default"));
        assert!(reader.get(Some("dev"), "api").is_none());
        let prod_only = reader.filter(|r| r.namespace() == Some("prod"));
        assert_eq!(prod_only.len(), 1);
    }

    #[tokio::test]
    async fn wait_synced_should_fail_when_the_writer_goes_away_first() {
        let writer: Writer<Machine> = Writer::new();
        let reader = writer.reader();
        drop(writer);
        let err = reader.wait_synced().await.expect_err("never synced");
        assert_eq!(
            err.to_string(),
            "the Machine informer stopped before its cache was synced"
        );
    }

    #[tokio::test]
    async fn wait_synced_should_return_once_the_first_list_is_applied() {
        let writer: Writer<Machine> = Writer::new();
        let reader = writer.reader();
        let waiter = tokio::spawn({
            let reader = reader.clone();
            async move { reader.wait_synced().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        apply(&writer, ObjectEvent::Restarted(vec![]));
        waiter.await.expect("no panic").expect("synced");
    }
}
