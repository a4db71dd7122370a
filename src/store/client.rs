//! Typed objects over a [`Store`]: spec and status under separate keys, every write a
//! compare-and-swap on the revision it read.

use super::keys::{self, ObjectKey};
use super::{Compare, Error, EventType, KeyValue, Op, Result, Store, Txn, TxnResult, WatchEvent};
use crate::api::Object;
use chrono::Utc;
use futures::{stream::BoxStream, StreamExt};
use std::collections::HashMap;
use std::sync::Arc;

/// How many times `update`/`update_status` re-read and retry after a conflict.
const CONFLICT_RETRIES: usize = 16;

/// A typed handle on a store. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    store: Arc<dyn Store>,
    /// Added to every write: the leading controller's fence (its leader key must still be
    /// the one it created). A write that fails it returns [`Error::NotLeader`].
    fence: Option<Compare>,
}

/// Which objects a list or watch covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace.
    All,
    /// One namespace (ignored for cluster-scoped kinds).
    Namespace(String),
    /// The Instances of one machine: the only keys an agent reads.
    Machine(String),
}

/// Objects and the revision they were read at.
#[derive(Clone, Debug)]
pub struct ListResult<K> {
    pub items: Vec<K>,
    pub revision: i64,
}

/// A change to one object, merged from its spec and status keys.
#[derive(Clone, Debug, PartialEq)]
pub enum ObjectEvent<K> {
    /// Created, or its spec or status changed. Carries the whole object.
    Applied(K),
    /// Deleted; carries the last known state.
    Deleted(K),
    /// A (re)list: the complete set, replacing whatever the reader had.
    Restarted(Vec<K>),
}

pub type ObjectWatch<K> = BoxStream<'static, Result<ObjectEvent<K>>>;

/// Who holds the leader key (the leading controller), as read from the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderRecord {
    /// The holder's identity (the key's value).
    pub identity: String,
    /// Tells one term of leadership from the next: the fence compares it.
    pub create_revision: i64,
    /// Watch from the revision after this one to see the key deleted.
    pub mod_revision: i64,
    pub lease: super::LeaseId,
}

impl Client {
    pub fn new(store: Arc<dyn Store>) -> Client {
        Client { store, fence: None }
    }

    /// A client whose every write also requires `fence` to hold.
    pub fn fenced(&self, fence: Compare) -> Client {
        Client {
            store: self.store.clone(),
            fence: Some(fence),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Runs a transaction with the fence added; maps a failure to `NotLeader` when the
    /// fence is what failed, to `Conflict(what)` otherwise.
    pub async fn commit(&self, mut txn: Txn, what: &str) -> Result<TxnResult> {
        if let Some(f) = &self.fence {
            txn.compares.push(f.clone());
        }
        let res = self.store.txn(txn).await?;
        if res.succeeded {
            return Ok(res);
        }
        if let Some(f) = &self.fence {
            let holds = match (&f.target, self.store.get(&f.key).await?) {
                (super::CompareTarget::CreateRevision(r), Some(kv)) => kv.create_revision == *r,
                (super::CompareTarget::Value(v), Some(kv)) => &kv.value == v,
                _ => false,
            };
            if !holds {
                return Err(Error::NotLeader);
            }
        }
        Err(Error::Conflict(what.to_string()))
    }

    pub async fn get<K: Object>(&self, namespace: Option<&str>, name: &str) -> Result<Option<K>> {
        let ns = ns_for::<K>(namespace);
        let spec_key = keys::spec_key(K::PLURAL, ns.as_deref(), name);
        let Some(kv) = self.store.get(&spec_key).await? else {
            return Ok(None);
        };
        let mut obj: K = decode_spec(&kv)?;
        let status_key = keys::status_key(K::PLURAL, ns.as_deref(), name);
        if let Some(skv) = self.store.get(&status_key).await? {
            attach_status(&mut obj, &skv)?;
        }
        Ok(Some(obj))
    }

    pub async fn list<K: Object>(&self, scope: &Scope) -> Result<ListResult<K>> {
        let (spec_prefix, status_prefix) = prefixes::<K>(scope);
        let (spec_kvs, revision) = self.store.list(&spec_prefix, None).await?;
        let (status_kvs, _) = self.store.list(&status_prefix, Some(revision)).await?;
        let mut statuses: HashMap<ObjectKey, &KeyValue> = HashMap::new();
        for kv in &status_kvs {
            if let Some(k) = keys::parse_key(K::PLURAL, &kv.key) {
                statuses.insert(k, kv);
            }
        }
        let mut items = Vec::with_capacity(spec_kvs.len());
        for kv in &spec_kvs {
            let mut obj: K = decode_spec(kv)?;
            if !in_scope(&obj, scope) {
                continue;
            }
            if let Some(skv) = keys::parse_key(K::PLURAL, &kv.key).and_then(|k| statuses.get(&k)) {
                attach_status(&mut obj, skv)?;
            }
            items.push(obj);
        }
        Ok(ListResult { items, revision })
    }

    /// Creates `obj`: sets uid, generation 1 and creationTimestamp; fails with
    /// `AlreadyExists` if it exists. Status is not written.
    pub async fn create<K: Object>(&self, obj: &K) -> Result<K> {
        let mut txn = Txn::default();
        let created = encode_create(obj, &mut txn)?;
        let what = describe::<K>(obj);
        match self.commit(txn, &what).await {
            Ok(res) => Ok(with_revision(created, res.revision)),
            Err(Error::Conflict(_)) => Err(Error::AlreadyExists(what)),
            Err(e) => Err(e),
        }
    }

    /// Like [`create`](Self::create), and writes `obj.status` in the same transaction, so
    /// that nobody sees the object without it (an agent registering its Machine).
    pub async fn create_with_status<K: Object>(&self, obj: &K) -> Result<K> {
        let mut txn = Txn::default();
        let mut created = encode_create(obj, &mut txn)?;
        let status = obj.status().cloned().unwrap_or_default();
        let status_key = keys::status_key(K::PLURAL, created.namespace(), created.name());
        // The create clears a status left behind; this put replaces that delete (etcd
        // refuses a put and a delete of one key in one transaction).
        txn.ops
            .retain(|op| !matches!(op, Op::Delete { key } if *key == status_key));
        txn.ops.push(Op::Put {
            key: status_key,
            value: serde_json::to_vec(&status)
                .map_err(|e| Error::Other(format!("cannot encode status: {e}")))?,
            lease: 0,
        });
        *created.status_mut() = Some(status);
        let what = describe::<K>(obj);
        match self.commit(txn, &what).await {
            Ok(res) => {
                let mut created = with_revision(created, res.revision);
                created.meta_mut().status_version = res.revision;
                Ok(created)
            }
            Err(Error::Conflict(_)) => Err(Error::AlreadyExists(what)),
            Err(e) => Err(e),
        }
    }

    /// Replaces metadata and spec of `current` (as read) with those of `desired`.
    /// Compare-and-swap on `current`'s resourceVersion; generation goes up only when the
    /// spec changed; uid and creationTimestamp are kept; status is untouched.
    pub async fn replace<K: Object>(&self, current: &K, desired: K) -> Result<K> {
        let mut txn = Txn::default();
        let what = describe::<K>(current);
        let Some(new) = encode_replace(current, desired, &mut txn)? else {
            return Ok(current.clone());
        };
        let res = self.commit(txn, &what).await?;
        Ok(with_revision(new, res.revision))
    }

    /// Writes only `obj.status`, compare-and-swap on the status revision it was read at.
    pub async fn replace_status<K: Object>(&self, obj: &K) -> Result<K> {
        let mut txn = Txn::default();
        encode_status(obj, &mut txn)?;
        let res = self
            .commit(txn, &format!("status of {}", describe::<K>(obj)))
            .await?;
        let mut out = obj.clone();
        out.meta_mut().status_version = res.revision;
        Ok(out)
    }

    /// Read-modify-write of metadata and spec, retried from fresh state on conflict.
    /// Returns `NotFound` when the object does not exist.
    pub async fn update<K: Object>(
        &self,
        namespace: Option<&str>,
        name: &str,
        mut change: impl FnMut(&mut K),
    ) -> Result<K> {
        for _ in 0..CONFLICT_RETRIES {
            let current: K = self
                .get(namespace, name)
                .await?
                .ok_or_else(|| Error::NotFound(format!("{} {name}", K::SINGULAR)))?;
            let mut desired = current.clone();
            change(&mut desired);
            match self.replace(&current, desired).await {
                Err(Error::Conflict(_)) => continue,
                other => return other,
            }
        }
        Err(Error::Conflict(format!("{} {name}", K::SINGULAR)))
    }

    /// Read-modify-write of status, retried from fresh state on conflict.
    pub async fn update_status<K: Object>(
        &self,
        namespace: Option<&str>,
        name: &str,
        mut change: impl FnMut(&mut K::Status),
    ) -> Result<K> {
        for _ in 0..CONFLICT_RETRIES {
            let mut obj: K = self
                .get(namespace, name)
                .await?
                .ok_or_else(|| Error::NotFound(format!("{} {name}", K::SINGULAR)))?;
            let before = obj.status().cloned();
            let status = obj.status_mut().get_or_insert_with(Default::default);
            change(status);
            if before.as_ref() == obj.status() {
                return Ok(obj);
            }
            match self.replace_status(&obj).await {
                Err(Error::Conflict(_)) => continue,
                other => return other,
            }
        }
        Err(Error::Conflict(format!("status of {} {name}", K::SINGULAR)))
    }

    /// Deletes the object (spec and status). `Ok(false)` when it did not exist.
    /// With `revision`, deletes only if the spec is still at that resourceVersion.
    pub async fn delete<K: Object>(
        &self,
        namespace: Option<&str>,
        name: &str,
        revision: Option<i64>,
    ) -> Result<bool> {
        let ns = ns_for::<K>(namespace);
        let spec_key = keys::spec_key(K::PLURAL, ns.as_deref(), name);
        let mut txn = Txn::default();
        match revision {
            Some(rev) => txn.compares.push(Compare::mod_revision(&spec_key, rev)),
            None => txn.compares.push(Compare::exists(&spec_key)),
        }
        encode_delete::<K>(ns.as_deref(), name, &mut txn);
        match self.commit(txn, &format!("{} {name}", K::SINGULAR)).await {
            Ok(_) => Ok(true),
            Err(Error::Conflict(what)) => match revision {
                Some(_) => Err(Error::Conflict(what)),
                None => Ok(false),
            },
            Err(e) => Err(e),
        }
    }

    /// Tries to become the leading controller: creates the leader key with `identity`,
    /// bound to `lease`, if nobody holds it. Returns the fence for [`Client::fenced`]
    /// (the key's create revision must stay the one written here), or `None` when the
    /// key is held by someone (see [`Client::leader`]).
    pub async fn try_acquire_leader(
        &self,
        identity: &str,
        lease: super::LeaseId,
    ) -> Result<Option<Compare>> {
        let key = keys::leader_key();
        let res = self
            .store
            .txn(Txn {
                compares: vec![Compare::absent(&key)],
                ops: vec![Op::Put {
                    key: key.clone(),
                    value: identity.as_bytes().to_vec(),
                    lease,
                }],
            })
            .await?;
        // A successful put happened at `res.revision`, which is the key's create revision.
        Ok(res
            .succeeded
            .then(|| Compare::create_revision(key, res.revision)))
    }

    /// The current holder of the leader key, if any.
    pub async fn leader(&self) -> Result<Option<LeaderRecord>> {
        Ok(self
            .store
            .get(&keys::leader_key())
            .await?
            .map(|kv| LeaderRecord {
                identity: String::from_utf8_lossy(&kv.value).into_owned(),
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                lease: kv.lease,
            }))
    }

    /// Changes to the leader key with revision ≥ `from_revision`.
    pub async fn watch_leader(&self, from_revision: i64) -> Result<super::WatchStream> {
        let key = keys::leader_key();
        let stream = self.store.watch(&key, from_revision).await?;
        // The watch is on a prefix: keep only the leader key itself.
        Ok(stream
            .map(move |batch| {
                batch.map(|evs| evs.into_iter().filter(|e| e.kv.key == key).collect())
            })
            .boxed())
    }

    /// Lists, then watches from the next revision: first `Restarted(all)`, then changes.
    /// On compaction it relists and emits `Restarted` again; a broken connection is
    /// resumed by the store's watch. The stream ends only when dropped.
    pub fn list_watch<K: Object>(&self, scope: Scope) -> ObjectWatch<K> {
        let client = self.clone();
        let stream = async_stream(client, scope, true);
        Box::pin(stream)
    }

    /// Like [`Client::list_watch`], but after the list it watches spec keys only: for the
    /// sole writer of these objects' status (an agent and its own Instances), which would
    /// otherwise hear each of its status writes echoed back (at 10,000 agents, one watch
    /// event per agent write, for nothing). Objects carry their status as last listed.
    pub fn list_watch_specs<K: Object>(&self, scope: Scope) -> ObjectWatch<K> {
        let client = self.clone();
        let stream = async_stream(client, scope, false);
        Box::pin(stream)
    }
}

/// A change to one machine's log requests, as its agent sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogRequestEvent {
    /// A request, existing when the watch (re)listed or written since. Its answer chunks
    /// go on the same `lease`, so that they end with the request.
    Put {
        id: String,
        value: Vec<u8>,
        lease: super::LeaseId,
    },
    /// The request is gone: its lease ended (the requester stopped) or it was answered.
    Deleted { id: String },
}

/// Log requests and answers (`deployctl logs`): the CLI writes a request under the
/// machine's own prefix, bound to a short lease of its own; the agent answers with chunks
/// on that lease. No key outlives the requester, and the agent never opens a port.
impl Client {
    /// Writes request `id` to `machine`, bound to `lease`. Returns the revision it was
    /// written at: its answers come after it.
    pub async fn put_log_request(
        &self,
        machine: &str,
        id: &str,
        value: Vec<u8>,
        lease: super::LeaseId,
    ) -> Result<i64> {
        let key = keys::log_request_key(machine, id);
        let txn = Txn {
            compares: vec![Compare::absent(&key)],
            ops: vec![Op::Put { key, value, lease }],
        };
        let res = self
            .commit(txn, &format!("log request {id} to machine {machine}"))
            .await?;
        Ok(res.revision)
    }

    /// True while `machine`'s agent holds its presence key (the machine is Ready).
    pub async fn machine_present(&self, machine: &str) -> Result<bool> {
        Ok(self
            .store
            .get(&keys::machine_lease_key(machine))
            .await?
            .is_some())
    }

    /// Writes answer chunk `seq` of request `id` on `lease` and, in the same transaction,
    /// deletes chunk `forget` (a follower keeps a few chunks, not all) and, when `last`,
    /// the request itself (answered: a relist must not answer it again).
    #[allow(clippy::too_many_arguments)] // each is one part of the key or the write
    pub async fn put_log_answer(
        &self,
        machine: &str,
        id: &str,
        seq: u64,
        value: Vec<u8>,
        lease: super::LeaseId,
        forget: Option<u64>,
        last: bool,
    ) -> Result<()> {
        let mut ops = vec![Op::Put {
            key: keys::log_answer_key(machine, id, seq),
            value,
            lease,
        }];
        if let Some(old) = forget {
            ops.push(Op::Delete {
                key: keys::log_answer_key(machine, id, old),
            });
        }
        if last {
            ops.push(Op::Delete {
                key: keys::log_request_key(machine, id),
            });
        }
        self.commit(
            Txn {
                compares: vec![],
                ops,
            },
            &format!("log answer {id} of machine {machine}"),
        )
        .await?;
        Ok(())
    }

    /// The log requests to `machine`: those that exist first, then changes. Relists after
    /// a compaction or a broken watch (a request seen twice is the reader's to skip).
    pub fn watch_log_requests(&self, machine: &str) -> BoxStream<'static, Result<LogRequestEvent>> {
        let store = self.store.clone();
        let machine = machine.to_string();
        let prefix = keys::log_requests_prefix(&machine);
        let event = move |kind: EventType, kv: KeyValue| {
            let id = keys::parse_log_request_key(&machine, &kv.key)?.to_string();
            Some(match kind {
                EventType::Put => LogRequestEvent::Put {
                    id,
                    value: kv.value,
                    lease: kv.lease,
                },
                EventType::Delete => LogRequestEvent::Deleted { id },
            })
        };
        futures::stream::unfold(None, move |watch: Option<super::WatchStream>| {
            let store = store.clone();
            let prefix = prefix.clone();
            let event = event.clone();
            async move {
                let Some(mut watch) = watch else {
                    let (kvs, rev) = match store.list(&prefix, None).await {
                        Ok(x) => x,
                        Err(e) => return Some((vec![Err(e)], None)),
                    };
                    let found = kvs
                        .into_iter()
                        .filter_map(|kv| event(EventType::Put, kv).map(Ok))
                        .collect();
                    return match store.watch(&prefix, rev + 1).await {
                        Ok(w) => Some((found, Some(w))),
                        Err(e) => Some((vec![Err(e)], None)),
                    };
                };
                match watch.next().await {
                    None | Some(Err(Error::Compacted { .. })) => Some((vec![], None)),
                    Some(Err(e)) => Some((vec![Err(e)], None)),
                    Some(Ok(events)) => Some((
                        events
                            .into_iter()
                            .filter_map(|ev| event(ev.kind, ev.kv).map(Ok))
                            .collect(),
                        Some(watch),
                    )),
                }
            }
        })
        .flat_map(futures::stream::iter)
        .boxed()
    }

    /// The answer chunks to request `id`, written from revision `from` on, in the order
    /// written (deletes are skipped).
    pub async fn watch_log_answers(
        &self,
        machine: &str,
        id: &str,
        from: i64,
    ) -> Result<BoxStream<'static, Result<Vec<u8>>>> {
        let watch = self
            .store
            .watch(&keys::log_answers_prefix(machine, id), from)
            .await?;
        Ok(watch
            .map(|batch| {
                batch.map(|events| {
                    events
                        .into_iter()
                        .filter(|ev| ev.kind == EventType::Put)
                        .map(|ev| Ok(ev.kv.value))
                        .collect::<Vec<_>>()
                })
            })
            .flat_map(|batch| match batch {
                Ok(values) => futures::stream::iter(values),
                Err(e) => futures::stream::iter(vec![Err(e)]),
            })
            .boxed())
    }
}

/// The state machine behind [`Client::list_watch`], as a stream.
fn async_stream<K: Object>(
    client: Client,
    scope: Scope,
    watch_status: bool,
) -> impl futures::Stream<Item = Result<ObjectEvent<K>>> + Send {
    struct State<K> {
        client: Client,
        scope: Scope,
        /// Latest spec (decoded, without status) and status bytes per object.
        objects: HashMap<ObjectKey, K>,
        statuses: HashMap<ObjectKey, KeyValue>,
        watch: Option<super::WatchStream>,
        pending: std::collections::VecDeque<ObjectEvent<K>>,
    }

    let state = State {
        client,
        scope,
        objects: HashMap::new(),
        statuses: HashMap::new(),
        watch: None,
        pending: Default::default(),
    };

    futures::stream::unfold(state, move |mut st| async move {
        loop {
            if let Some(ev) = st.pending.pop_front() {
                return Some((Ok(ev), st));
            }
            let Some(watch) = st.watch.as_mut() else {
                // (Re)list, then watch both prefixes from the next revision.
                let listed = match st.client.list::<K>(&st.scope).await {
                    Ok(l) => l,
                    Err(e) => return Some((Err(e), st)),
                };
                let (spec_prefix, status_prefix) = prefixes::<K>(&st.scope);
                let from = listed.revision + 1;
                let watches = async {
                    let a = st.client.store.watch(&spec_prefix, from).await?;
                    if !watch_status {
                        return Ok::<_, Error>(a);
                    }
                    let b = st.client.store.watch(&status_prefix, from).await?;
                    Ok(futures::stream::select(a, b).boxed())
                };
                match watches.await {
                    Ok(w) => st.watch = Some(w),
                    Err(e) => return Some((Err(e), st)),
                }
                st.objects.clear();
                st.statuses.clear();
                for obj in &listed.items {
                    let key = object_key(obj);
                    let mut bare = obj.clone();
                    *bare.status_mut() = None;
                    st.objects.insert(key, bare);
                }
                // Statuses are re-attached from the listed objects; keep their bytes
                // implicitly by re-encoding is not needed: store merged copies instead.
                for obj in &listed.items {
                    if obj.status().is_some() {
                        let key = object_key(obj);
                        let value = serde_json::to_vec(obj.status().expect("checked above"))
                            .expect("status serializes");
                        st.statuses.insert(
                            key,
                            KeyValue {
                                key: String::new(),
                                value,
                                create_revision: 0,
                                mod_revision: obj.meta().status_version,
                                lease: 0,
                            },
                        );
                    }
                }
                return Some((Ok(ObjectEvent::Restarted(listed.items)), st));
            };
            match watch.next().await {
                None => {
                    st.watch = None;
                    continue;
                }
                Some(Err(Error::Compacted { .. })) => {
                    st.watch = None;
                    continue;
                }
                Some(Err(e)) => {
                    st.watch = None;
                    return Some((Err(e), st));
                }
                Some(Ok(events)) => {
                    for ev in events {
                        if let Some(out) =
                            apply_event(&mut st.objects, &mut st.statuses, &st.scope, ev)
                        {
                            st.pending.push_back(out);
                        }
                    }
                }
            }
        }
    })
}

fn apply_event<K: Object>(
    objects: &mut HashMap<ObjectKey, K>,
    statuses: &mut HashMap<ObjectKey, KeyValue>,
    scope: &Scope,
    ev: WatchEvent,
) -> Option<ObjectEvent<K>> {
    let key = keys::parse_key(K::PLURAL, &ev.kv.key)?;
    let merged = |obj: &K, statuses: &HashMap<ObjectKey, KeyValue>| {
        let mut out = obj.clone();
        if let Some(skv) = statuses.get(&key) {
            if attach_status(&mut out, skv).is_err() {
                tracing::warn!(key = %ev.kv.key, "ignoring undecodable status");
            }
        }
        out
    };
    if keys::is_status_key(&ev.kv.key) {
        match ev.kind {
            EventType::Put => {
                statuses.insert(key.clone(), ev.kv.clone());
            }
            EventType::Delete => {
                // A status key is deleted only with its spec, whose Delete reports the
                // object. The two prefixes are watched apart, so this may arrive first:
                // announcing a status-less object about to vanish would be wrong, and the
                // Deleted event should still carry the last status.
                if !objects.contains_key(&key) {
                    statuses.remove(&key);
                }
                return None;
            }
        }
        let obj = objects.get(&key)?;
        return Some(ObjectEvent::Applied(merged(obj, statuses)));
    }
    match ev.kind {
        EventType::Put => {
            let obj: K = match decode_spec(&ev.kv) {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(key = %ev.kv.key, error = %e, "ignoring undecodable object");
                    return None;
                }
            };
            if !in_scope(&obj, scope) {
                return None;
            }
            objects.insert(key.clone(), obj);
            let obj = objects.get(&key).expect("just inserted");
            Some(ObjectEvent::Applied(merged(obj, statuses)))
        }
        EventType::Delete => {
            let obj = objects.remove(&key)?;
            let out = merged(&obj, statuses);
            statuses.remove(&key);
            Some(ObjectEvent::Deleted(out))
        }
    }
}

/// The namespace to use for `K`: `None` for cluster-scoped kinds, `default` when omitted.
fn ns_for<K: Object>(namespace: Option<&str>) -> Option<String> {
    K::NAMESPACED.then(|| {
        namespace
            .unwrap_or(crate::api::DEFAULT_NAMESPACE)
            .to_string()
    })
}

fn object_key<K: Object>(obj: &K) -> ObjectKey {
    ObjectKey {
        namespace: obj.namespace().map(str::to_string),
        name: obj.name().to_string(),
    }
}

fn prefixes<K: Object>(scope: &Scope) -> (String, String) {
    match scope {
        Scope::Machine(m) => (
            keys::machine_instances_prefix(m),
            keys::machine_instance_status_prefix(m),
        ),
        Scope::Namespace(ns) if K::NAMESPACED => (
            keys::spec_prefix(K::PLURAL, Some(ns)),
            keys::status_prefix(K::PLURAL, Some(ns)),
        ),
        _ => (
            keys::spec_prefix(K::PLURAL, None),
            keys::status_prefix(K::PLURAL, None),
        ),
    }
}

fn in_scope<K: Object>(obj: &K, scope: &Scope) -> bool {
    match scope {
        Scope::Namespace(ns) if K::NAMESPACED => obj.namespace() == Some(ns.as_str()),
        _ => true,
    }
}

fn describe<K: Object>(obj: &K) -> String {
    format!("{}.{}/{}", K::SINGULAR, crate::api::GROUP, obj.name())
}

fn with_revision<K: Object>(mut obj: K, revision: i64) -> K {
    obj.meta_mut().resource_version = Some(revision.to_string());
    obj
}

pub(super) fn decode_spec<K: Object>(kv: &KeyValue) -> Result<K> {
    let mut obj: K = serde_json::from_slice(&kv.value).map_err(|e| Error::Corrupt {
        key: kv.key.clone(),
        message: e.to_string(),
    })?;
    obj.meta_mut().resource_version = Some(kv.mod_revision.to_string());
    Ok(obj)
}

fn attach_status<K: Object>(obj: &mut K, kv: &KeyValue) -> Result<()> {
    let status: K::Status = serde_json::from_slice(&kv.value).map_err(|e| Error::Corrupt {
        key: kv.key.clone(),
        message: e.to_string(),
    })?;
    *obj.status_mut() = Some(status);
    obj.meta_mut().status_version = kv.mod_revision;
    Ok(())
}

/// The bytes stored under the spec key: the object without status and resourceVersion.
pub(super) fn encode_spec_value<K: Object>(obj: &K) -> Result<Vec<u8>> {
    let mut bare = obj.clone();
    *bare.status_mut() = None;
    bare.meta_mut().resource_version = None;
    serde_json::to_vec(&bare).map_err(|e| Error::Other(format!("cannot encode object: {e}")))
}

/// Adds the compares and ops that create `obj` to `txn`; returns the object as created.
pub fn encode_create<K: Object>(obj: &K, txn: &mut Txn) -> Result<K> {
    let mut new = obj.clone();
    let meta = new.meta_mut();
    if K::NAMESPACED && meta.namespace.is_none() {
        meta.namespace = Some(crate::api::DEFAULT_NAMESPACE.to_string());
    }
    if !K::NAMESPACED {
        meta.namespace = None;
    }
    meta.uid = Some(uuid::Uuid::new_v4().to_string());
    meta.generation = Some(1);
    meta.creation_timestamp = Some(Utc::now());
    meta.resource_version = None;
    meta.status_version = 0;
    *new.status_mut() = None;
    let ns = new.namespace().map(str::to_string);
    let spec_key = keys::spec_key(K::PLURAL, ns.as_deref(), new.name());
    txn.compares.push(Compare::absent(&spec_key));
    txn.ops.push(Op::Put {
        key: spec_key,
        value: encode_spec_value(&new)?,
        lease: 0,
    });
    // A status left behind by an interrupted delete must not leak into the new object.
    txn.ops.push(Op::Delete {
        key: keys::status_key(K::PLURAL, ns.as_deref(), new.name()),
    });
    Ok(new)
}

/// Adds a compare-and-swap replace of `current` by `desired` to `txn`; `None` when
/// nothing would change.
pub fn encode_replace<K: Object>(current: &K, mut desired: K, txn: &mut Txn) -> Result<Option<K>> {
    {
        let cur = current.meta();
        let meta = desired.meta_mut();
        meta.uid = cur.uid.clone();
        meta.creation_timestamp = cur.creation_timestamp;
        meta.namespace = cur.namespace.clone();
        meta.name = cur.name.clone();
        meta.resource_version = cur.resource_version.clone();
        meta.status_version = cur.status_version;
        meta.generation = cur.generation;
    }
    *desired.status_mut() = current.status().cloned();
    if &desired == current {
        return Ok(None);
    }
    if desired.spec() != current.spec() {
        desired.meta_mut().generation = Some(current.meta().generation.unwrap_or(0) + 1);
    }
    let ns = current.namespace().map(str::to_string);
    let spec_key = keys::spec_key(K::PLURAL, ns.as_deref(), current.name());
    txn.compares
        .push(Compare::mod_revision(&spec_key, current.meta().revision()));
    txn.ops.push(Op::Put {
        key: spec_key,
        value: encode_spec_value(&desired)?,
        lease: 0,
    });
    Ok(Some(desired))
}

/// Adds a compare-and-swap write of `obj`'s status to `txn` (the object must exist).
pub fn encode_status<K: Object>(obj: &K, txn: &mut Txn) -> Result<()> {
    let ns = obj.namespace().map(str::to_string);
    let spec_key = keys::spec_key(K::PLURAL, ns.as_deref(), obj.name());
    let status_key = keys::status_key(K::PLURAL, ns.as_deref(), obj.name());
    let status = obj.status().cloned().unwrap_or_default();
    txn.compares.push(Compare::exists(spec_key));
    txn.compares.push(Compare::mod_revision(
        &status_key,
        obj.meta().status_version,
    ));
    txn.ops.push(Op::Put {
        key: status_key,
        value: serde_json::to_vec(&status)
            .map_err(|e| Error::Other(format!("cannot encode status: {e}")))?,
        lease: 0,
    });
    Ok(())
}

/// Adds the deletes of an object's spec and status keys to `txn`.
pub fn encode_delete<K: Object>(namespace: Option<&str>, name: &str, txn: &mut Txn) {
    txn.ops.push(Op::Delete {
        key: keys::spec_key(K::PLURAL, namespace, name),
    });
    txn.ops.push(Op::Delete {
        key: keys::status_key(K::PLURAL, namespace, name),
    });
}
