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
use std::collections::HashMap;
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
    objects: RwLock<HashMap<ObjectKey, Arc<K>>>,
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

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ObjectKey, Arc<K>>> {
        // The writer never panics while holding the lock (it only inserts and removes).
        self.shared
            .objects
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The writer: consumes the list-watch of one kind and keeps the cache.
pub struct Informer<K> {
    client: Client,
    scope: Scope,
    shared: Arc<Shared<K>>,
    synced: watch::Sender<bool>,
}

impl<K: Object> Informer<K> {
    pub fn new(client: Client, scope: Scope) -> Self {
        let (synced, synced_rx) = watch::channel(false);
        Informer {
            client,
            scope,
            shared: Arc::new(Shared {
                objects: RwLock::new(HashMap::new()),
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
                        self.apply(event, &on_change);
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

    /// Applies one event to the cache, then tells the handler.
    fn apply(&self, event: ObjectEvent<K>, on_change: &impl Fn(&K, ChangeKind)) {
        match event {
            ObjectEvent::Applied(obj) => {
                let obj = Arc::new(obj);
                self.write().insert(key_of(&*obj), obj.clone());
                on_change(&obj, ChangeKind::Applied);
            }
            ObjectEvent::Deleted(obj) => {
                self.write().remove(&key_of(&obj));
                on_change(&obj, ChangeKind::Deleted);
            }
            ObjectEvent::Restarted(objs) => {
                let fresh: HashMap<ObjectKey, Arc<K>> = objs
                    .into_iter()
                    .map(|o| (key_of(&o), Arc::new(o)))
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

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<ObjectKey, Arc<K>>> {
        // See `Reader::read`: the lock cannot be poisoned by a half-done update.
        self.shared
            .objects
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn key_of<K: Object>(obj: &K) -> ObjectKey {
    ObjectKey {
        namespace: obj.namespace().map(str::to_string),
        name: obj.name().to_string(),
    }
}
