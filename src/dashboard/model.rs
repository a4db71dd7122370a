//! The dashboard's live model: informers on Rollouts, Machines, Instances and Events (the
//! controller's list-watch machinery), and the tables of rows each page shows, kept up to
//! date by one publisher task.
//!
//! Every change to a table gets the next sequence number. A client holds a cursor (the
//! last number it was sent) and is sent only the rows changed after it and the keys
//! deleted after it ([`Table::since`]): diffs, never the whole fleet on every change.
//! The publisher coalesces what the informers report for [`FLUSH_INTERVAL`], so a burst
//! of 10,000 agents' reports costs one pass per table per flush, not one per report.
//!
//! A rollout's page has a table of its own (the Rollout, and its machines grouped by
//! version and state), kept only while some client shows it.

use super::rows;
use crate::api::{Event, Instance, Machine, Rollout};
use crate::controller::informer::{ChangeKind, Informer, Reader};
use crate::store::keys::ObjectKey;
use crate::store::{Client, Scope};
use chrono::Utc;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// The shortest time between two recomputations of rows: at most 10 flushes a second,
/// however many agents report.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Events kept (the newest); older ones leave the Events page.
pub const MAX_EVENTS: usize = 2_000;
/// Deletions remembered per table; a client further behind gets the table afresh.
const MAX_TOMBSTONES: usize = 20_000;

/// What a page's table holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    Rollouts,
    Machines,
    Events,
    /// One rollout's page: `rollout` (its detail) and `group/<version>/<state>` rows.
    Rollout {
        namespace: String,
        name: String,
    },
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    json: Arc<str>,
}

/// Rows by key, each stamped with the sequence number of its last change.
#[derive(Debug, Default)]
pub struct Table {
    rows: BTreeMap<String, Entry>,
    tombstones: VecDeque<(u64, String)>,
    /// Cursors at or before this cannot be diffed (tombstones were dropped): resend all.
    horizon: u64,
}

/// What a client is sent to catch up with a table.
#[derive(Debug, Default, PartialEq)]
pub struct Diff {
    /// The client must drop what it has first (its cursor is too old, or it has none).
    pub reset: bool,
    pub upsert: Vec<(String, Arc<str>)>,
    pub delete: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        !self.reset && self.upsert.is_empty() && self.delete.is_empty()
    }
}

impl Table {
    /// Sets a row; a row whose JSON did not change keeps its sequence number (and is
    /// not sent again). Returns whether it changed.
    pub fn upsert(&mut self, seq: u64, key: &str, value: &Value) -> bool {
        let json: Arc<str> = value.to_string().into();
        match self.rows.get_mut(key) {
            Some(e) if e.json == json => false,
            Some(e) => {
                *e = Entry { seq, json };
                true
            }
            None => {
                self.rows.insert(key.to_string(), Entry { seq, json });
                true
            }
        }
    }

    pub fn remove(&mut self, seq: u64, key: &str) -> bool {
        if self.rows.remove(key).is_none() {
            return false;
        }
        self.tombstones.push_back((seq, key.to_string()));
        while self.tombstones.len() > MAX_TOMBSTONES {
            if let Some((s, _)) = self.tombstones.pop_front() {
                self.horizon = s;
            }
        }
        true
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.rows.keys()
    }

    /// What a client whose cursor is `cursor` (`None`: it has nothing) must be sent.
    pub fn since(&self, cursor: Option<u64>) -> Diff {
        match cursor {
            Some(c) if c >= self.horizon => Diff {
                reset: false,
                upsert: self
                    .rows
                    .iter()
                    .filter(|(_, e)| e.seq > c)
                    .map(|(k, e)| (k.clone(), e.json.clone()))
                    .collect(),
                delete: self
                    .tombstones
                    .iter()
                    .filter(|(s, k)| *s > c && !self.rows.contains_key(k))
                    .map(|(_, k)| k.clone())
                    .collect(),
            },
            _ => Diff {
                reset: true,
                upsert: self
                    .rows
                    .iter()
                    .map(|(k, e)| (k.clone(), e.json.clone()))
                    .collect(),
                delete: Vec::new(),
            },
        }
    }
}

/// What the informers reported since the last flush.
#[derive(Default)]
struct Dirty {
    rollouts: HashSet<ObjectKey>,
    machines: HashSet<String>,
    events: HashSet<ObjectKey>,
    /// `(namespace, application)` of changed Instances.
    apps: HashSet<(Option<String>, String)>,
}

struct DetailTable {
    table: Table,
    /// Clients showing the page.
    viewers: usize,
    /// Its rows must be recomputed at the next flush.
    stale: bool,
}

struct Tables {
    seq: u64,
    /// Rows were computed after every informer had listed: until then a client is sent
    /// nothing, rather than an empty fleet.
    ready: bool,
    rollouts: Table,
    machines: Table,
    events: Table,
    /// Event rows are keyed `<store revision>|<namespace>/<name>` so that the oldest go
    /// first;
    /// this maps an Event to its row key.
    event_keys: HashMap<ObjectKey, String>,
    /// The reverse of `event_keys`.
    event_rows: HashMap<String, ObjectKey>,
    details: HashMap<(String, String), DetailTable>,
}

/// The informers' readers and the tables; shared by the publisher and every connection.
pub struct Model {
    pub rollouts: Reader<Rollout>,
    pub machines: Reader<Machine>,
    pub instances: Reader<Instance>,
    pub events: Reader<Event>,
    tables: Mutex<Tables>,
    dirty: Mutex<Dirty>,
    wake: Notify,
    /// The sequence number of the last flush; clients wait on it.
    published: watch::Sender<u64>,
}

impl Model {
    /// Starts the four informers and the publisher; they run until `shutdown`.
    pub fn start(client: Client, shutdown: CancellationToken) -> Arc<Model> {
        let model = Arc::new_cyclic(|weak: &std::sync::Weak<Model>| {
            let w = weak.clone();
            let rollouts = Informer::<Rollout>::spawn(
                client.clone(),
                Scope::All,
                move |r: &Rollout, _| {
                    if let Some(m) = w.upgrade() {
                        m.mark(|d| {
                            d.rollouts
                                .insert(crate::controller::informer::object_key(r));
                        });
                    }
                },
                shutdown.clone(),
            );
            let w = weak.clone();
            let machines = Informer::<Machine>::spawn(
                client.clone(),
                Scope::All,
                move |m: &Machine, _| {
                    if let Some(model) = w.upgrade() {
                        model.mark(|d| {
                            d.machines.insert(m.metadata.name.clone());
                        });
                    }
                },
                shutdown.clone(),
            );
            let w = weak.clone();
            let instances = Informer::<Instance>::spawn(
                client.clone(),
                Scope::All,
                move |i: &Instance, _| {
                    if let Some(m) = w.upgrade() {
                        m.mark(|d| {
                            // Its machine's row lists the applications on it.
                            d.machines.insert(i.spec.machine.clone());
                            d.apps
                                .insert((i.metadata.namespace.clone(), i.spec.application.clone()));
                        });
                    }
                },
                shutdown.clone(),
            );
            let w = weak.clone();
            let events = Informer::<Event>::spawn(
                client.clone(),
                Scope::All,
                move |e: &Event, _kind: ChangeKind| {
                    if let Some(m) = w.upgrade() {
                        m.mark(|d| {
                            d.events.insert(crate::controller::informer::object_key(e));
                        });
                    }
                },
                shutdown.clone(),
            );
            Model {
                rollouts,
                machines,
                instances,
                events,
                tables: Mutex::new(Tables {
                    seq: 0,
                    ready: false,
                    rollouts: Table::default(),
                    machines: Table::default(),
                    events: Table::default(),
                    event_keys: HashMap::new(),
                    event_rows: HashMap::new(),
                    details: HashMap::new(),
                }),
                dirty: Mutex::new(Dirty::default()),
                wake: Notify::new(),
                published: watch::channel(0).0,
            }
        });
        tokio::spawn(publish(model.clone(), shutdown));
        // A flush once every informer has listed, even an empty store's.
        let m = model.clone();
        tokio::spawn(async move {
            let synced = futures::future::try_join4(
                m.rollouts.wait_synced(),
                m.machines.wait_synced(),
                m.instances.wait_synced(),
                m.events.wait_synced(),
            )
            .await;
            if synced.is_ok() {
                m.wake.notify_one();
            }
        });
        model
    }

    fn mark(&self, f: impl FnOnce(&mut Dirty)) {
        f(&mut self.dirty.lock().unwrap_or_else(PoisonError::into_inner));
        self.wake.notify_one();
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True once every informer has listed.
    pub fn synced(&self) -> bool {
        self.rollouts.is_synced()
            && self.machines.is_synced()
            && self.instances.is_synced()
            && self.events.is_synced()
    }

    /// A receiver that changes at every flush.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// Starts keeping `topic`'s table if it is a rollout's page; the guard stops it.
    pub fn view(self: &Arc<Self>, topic: &Topic) -> ViewGuard {
        if let Topic::Rollout { namespace, name } = topic {
            let key = (namespace.clone(), name.clone());
            let mut t = self.tables();
            let d = t.details.entry(key.clone()).or_insert_with(|| DetailTable {
                table: Table::default(),
                viewers: 0,
                stale: true,
            });
            d.viewers += 1;
            drop(t);
            self.wake.notify_one();
            return ViewGuard {
                model: Some(self.clone()),
                key: Some(key),
            };
        }
        ViewGuard {
            model: None,
            key: None,
        }
    }

    /// What a client at `cursor` must be sent of `topic`, and the cursor after it.
    /// `None` while a rollout page's table has not been computed yet.
    pub fn diff(&self, topic: &Topic, cursor: Option<u64>) -> Option<(Diff, u64)> {
        let t = self.tables();
        if !t.ready {
            return None;
        }
        let table = match topic {
            Topic::Rollouts => &t.rollouts,
            Topic::Machines => &t.machines,
            Topic::Events => &t.events,
            Topic::Rollout { namespace, name } => {
                let d = t.details.get(&(namespace.clone(), name.clone()))?;
                if d.stale && d.table.is_empty() {
                    return None;
                }
                &d.table
            }
        };
        Some((table.since(cursor), t.seq))
    }

    /// Recomputes the rows of whatever changed since the last flush. Returns whether a
    /// row changed.
    fn flush(&self) -> bool {
        let synced = self.synced();
        let dirty = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(PoisonError::into_inner));
        let now = Utc::now();
        let mut guard = self.tables();
        let t = &mut *guard;
        let seq = t.seq + 1;
        let mut changed = false;
        for key in &dirty.rollouts {
            let ns = key.namespace.clone().unwrap_or_default();
            let row_key = format!("{ns}/{}", key.name);
            match self.rollouts.get_key(key) {
                Some(r) => {
                    changed |= t
                        .rollouts
                        .upsert(seq, &row_key, &rows::rollout_row(&r, now))
                }
                None => changed |= t.rollouts.remove(seq, &row_key),
            }
            if let Some(d) = t.details.get_mut(&(ns, key.name.clone())) {
                d.stale = true;
            }
        }
        if !dirty.machines.is_empty() {
            // The Instances on each changed machine, in one pass over them all.
            let mut on: HashMap<&str, Vec<Arc<Instance>>> = dirty
                .machines
                .iter()
                .map(|m| (m.as_str(), Vec::new()))
                .collect();
            for i in self.instances.list() {
                if let Some(v) = on.get_mut(i.spec.machine.as_str()) {
                    v.push(i);
                }
            }
            for name in &dirty.machines {
                match self.machines.get(None, name) {
                    Some(m) => {
                        let mut instances = on.remove(name.as_str()).unwrap_or_default();
                        instances.sort_by(|a, b| {
                            (&a.metadata.namespace, &a.spec.application)
                                .cmp(&(&b.metadata.namespace, &b.spec.application))
                        });
                        let row = rows::machine_row(&m, &instances, now);
                        changed |= t.machines.upsert(seq, name, &row);
                    }
                    None => changed |= t.machines.remove(seq, name),
                }
            }
        }
        changed |= self.flush_events(t, seq, &dirty.events);
        for ((ns, name), d) in t.details.iter_mut() {
            let app_changed = || {
                self.rollouts.get(Some(ns), name).is_some_and(|r| {
                    dirty
                        .apps
                        .contains(&(r.metadata.namespace.clone(), r.spec.application.clone()))
                })
            };
            if d.viewers == 0 || !(d.stale || !dirty.machines.is_empty() || app_changed()) {
                continue;
            }
            d.stale = false;
            changed |= self.flush_detail(&mut d.table, seq, ns, name, now);
        }
        t.details.retain(|_, d| d.viewers > 0);
        if synced && !t.ready {
            t.ready = true;
            changed = true;
        }
        if changed {
            t.seq = seq;
        }
        changed
    }

    fn flush_events(&self, t: &mut Tables, seq: u64, dirty: &HashSet<ObjectKey>) -> bool {
        let mut changed = false;
        for key in dirty {
            if let Some(old) = t.event_keys.remove(key) {
                t.event_rows.remove(&old);
                changed |= t.events.remove(seq, &old);
            }
            if let Some(e) = self.events.get_key(key) {
                // Ordered (and the oldest dropped) by the store's revision of the write,
                // not by the time the Event claims: an agent may write Events, and one
                // dated 9999 must not push every real one off the page.
                let revision: i64 = e
                    .metadata
                    .resource_version
                    .as_deref()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let row_key = format!(
                    "{revision:020}|{}/{}",
                    key.namespace.as_deref().unwrap_or_default(),
                    key.name
                );
                changed |= t.events.upsert(seq, &row_key, &rows::event_row(&e));
                t.event_rows.insert(row_key.clone(), key.clone());
                t.event_keys.insert(key.clone(), row_key);
            }
        }
        while t.events.len() > MAX_EVENTS {
            let Some(oldest) = t.events.keys().next().cloned() else {
                break;
            };
            t.events.remove(seq, &oldest);
            if let Some(k) = t.event_rows.remove(&oldest) {
                t.event_keys.remove(&k);
            }
            changed = true;
        }
        changed
    }

    /// A rollout page's rows: `rollout`, and one per grid group.
    fn flush_detail(
        &self,
        table: &mut Table,
        seq: u64,
        ns: &str,
        name: &str,
        now: chrono::DateTime<Utc>,
    ) -> bool {
        let mut changed = false;
        let Some(r) = self.rollouts.get(Some(ns), name) else {
            let keys: Vec<String> = table.keys().cloned().collect();
            for k in keys {
                changed |= table.remove(seq, &k);
            }
            // An empty table with a `missing` row: the page says so.
            changed |= table.upsert(seq, "missing", &Value::Bool(true));
            return changed;
        };
        changed |= table.remove(seq, "missing");
        changed |= table.upsert(seq, "rollout", &rows::rollout_detail(&r, now));
        let app_instances = self.instances.filter(|i| {
            i.spec.application == r.spec.application && i.metadata.namespace == r.metadata.namespace
        });
        let machines = |m: &str| self.machines.get(None, m);
        let groups = rows::grid(&r, app_instances.iter().map(|i| &**i), &machines, now);
        let gone: Vec<String> = table
            .keys()
            .filter(|k| k.starts_with("group/") && !groups.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            changed |= table.remove(seq, &k);
        }
        for (k, v) in &groups {
            changed |= table.upsert(seq, k, v);
        }
        changed
    }
}

/// Keeps a rollout page's table while it lives.
pub struct ViewGuard {
    model: Option<Arc<Model>>,
    key: Option<(String, String)>,
}

impl Drop for ViewGuard {
    fn drop(&mut self) {
        if let (Some(m), Some(k)) = (&self.model, &self.key) {
            if let Some(d) = m.tables().details.get_mut(k) {
                d.viewers = d.viewers.saturating_sub(1);
            }
        }
    }
}

/// The publisher: recomputes rows after a change and wakes the clients, at most once
/// per [`FLUSH_INTERVAL`]: a change after a quiet spell is flushed at once, one in a
/// burst waits for the interval's end, with the rest of the burst.
async fn publish(model: Arc<Model>, shutdown: CancellationToken) {
    let mut last = tokio::time::Instant::now() - FLUSH_INTERVAL;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = model.wake.notified() => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(last + FLUSH_INTERVAL) => {}
        }
        last = tokio::time::Instant::now();
        if model.flush() {
            let seq = model.tables().seq;
            model.published.send_replace(seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_table_should_send_a_client_only_what_changed_after_its_cursor() {
        let mut t = Table::default();
        assert!(t.upsert(1, "a", &json!({"v": 1})));
        assert!(t.upsert(1, "b", &json!({"v": 1})));
        let first = t.since(None);
        assert!(first.reset);
        assert_eq!(first.upsert.len(), 2);

        assert!(
            !t.upsert(2, "a", &json!({"v": 1})),
            "an unchanged row is no change"
        );
        assert!(t.upsert(2, "b", &json!({"v": 2})));
        assert!(t.remove(2, "a"));
        let d = t.since(Some(1));
        assert!(!d.reset);
        assert_eq!(
            d.upsert
                .iter()
                .map(|(k, v)| (k.as_str(), &**v))
                .collect::<Vec<_>>(),
            [("b", r#"{"v":2}"#)]
        );
        assert_eq!(d.delete, ["a"]);
        assert!(
            t.since(Some(2)).is_empty(),
            "nothing after the newest change"
        );
    }

    #[test]
    fn a_table_should_reset_a_client_whose_deletions_it_no_longer_remembers() {
        let mut t = Table::default();
        for i in 0..(MAX_TOMBSTONES as u64 + 10) {
            let key = format!("k{i}");
            t.upsert(i + 1, &key, &json!(i));
            t.remove(i + 1, &key);
        }
        assert!(
            t.since(Some(1)).reset,
            "a cursor past the horizon starts afresh"
        );
        assert!(!t.since(Some(MAX_TOMBSTONES as u64 + 5)).reset);
    }

    #[test]
    fn a_row_deleted_then_added_again_should_be_sent_as_an_upsert_only() {
        let mut t = Table::default();
        t.upsert(1, "a", &json!(1));
        t.remove(2, "a");
        t.upsert(3, "a", &json!(2));
        let d = t.since(Some(1));
        assert!(d.delete.is_empty());
        assert_eq!(d.upsert.len(), 1);
    }
}
