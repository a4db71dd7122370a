//! What the reconcilers read and write through: the informer caches, machine presence,
//! the fenced client, and the work queue their changes feed.

use super::informer::{ChangeKind, Reader};
use super::queue::WorkQueue;
use super::runtime::Action;
use crate::api::{
    Application, Instance, Machine, Object, ObjectReference, Rollout, Task, DEFAULT_NAMESPACE,
};
use crate::reconcilers::{application, machine, rollout, MachineView};
use crate::store::{self, Client, EventRecorder, Write};
use rustc_hash::FxHashMap;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

/// A queued unit of work. Keys, never objects: a reconcile reads the current cache.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Machine(String),
    Application { namespace: String, name: String },
    Rollout { namespace: String, name: String },
    Task { namespace: String, name: String },
}

/// Objects this controller wrote, kept until its informer has seen them, so that a
/// reconcile right after a write does not decide from the older cached copy (and lose a
/// compare-and-swap against itself).
pub struct Written<K> {
    /// By namespace (`""` for cluster-scoped kinds), then name: looked up with borrowed
    /// strings, so the 10,000 lookups of one Rollout reconcile allocate nothing.
    map: Mutex<FxHashMap<String, FxHashMap<String, K>>>,
}

impl<K: Object> Default for Written<K> {
    fn default() -> Self {
        Written {
            map: Mutex::new(FxHashMap::default()),
        }
    }
}

impl<K: Object> Written<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, FxHashMap<String, FxHashMap<String, K>>> {
        self.map
            .lock()
            .expect("written lock is never poisoned: no panics inside")
    }

    pub fn record(&self, obj: K) {
        self.lock()
            .entry(obj.namespace().unwrap_or("").to_string())
            .or_default()
            .insert(obj.name().to_string(), obj);
    }

    /// The newer of the cached object and what we wrote: spec and metadata by
    /// resourceVersion, status by its own revision.
    pub fn fresher(&self, cached: Arc<K>) -> Arc<K> {
        Self::fresher_in(&mut self.lock(), cached)
    }

    /// [`Written::fresher`] of each, under one lock.
    pub fn fresher_all(&self, cached: Vec<Arc<K>>) -> Vec<Arc<K>> {
        let mut map = self.lock();
        if map.is_empty() {
            return cached;
        }
        cached
            .into_iter()
            .map(|c| Self::fresher_in(&mut map, c))
            .collect()
    }

    fn fresher_in(map: &mut FxHashMap<String, FxHashMap<String, K>>, cached: Arc<K>) -> Arc<K> {
        let ns = cached.namespace().unwrap_or("");
        let Some(names) = map.get_mut(ns) else {
            return cached;
        };
        let Some(ours) = names.get(cached.name()) else {
            return cached;
        };
        let spec_newer = ours.meta().revision() > cached.meta().revision();
        let status_newer = ours.meta().status_version > cached.meta().status_version;
        if !spec_newer && !status_newer {
            names.remove(cached.name());
            if names.is_empty() {
                map.remove(ns);
            }
            return cached;
        }
        let mut merged = if spec_newer {
            ours.clone()
        } else {
            K::clone(&cached)
        };
        let (status, version) = if status_newer {
            (ours.status().cloned(), ours.meta().status_version)
        } else {
            (cached.status().cloned(), cached.meta().status_version)
        };
        *merged.status_mut() = status;
        merged.meta_mut().status_version = version;
        Arc::new(merged)
    }
}

/// Everything a reconcile needs. Shared by all workers.
pub struct Context {
    /// Fenced on the leader key: a write after leadership is lost fails with NotLeader.
    pub client: Client,
    /// The leader key's create revision that `client`'s fence holds to; logged with every
    /// accepted write so that `hack/chaos` can check no write outlived its term.
    pub term: i64,
    pub machines: Reader<Machine>,
    pub applications: Reader<Application>,
    pub rollouts: Reader<Rollout>,
    pub instances: Reader<Instance>,
    pub tasks: Reader<Task>,
    /// Machines whose agent holds its lease.
    pub presence: Arc<RwLock<BTreeSet<String>>>,
    pub queue: WorkQueue<Key>,
    pub events: EventRecorder,
    pub written_instances: Written<Instance>,
    pub written_rollouts: Written<Rollout>,
    /// When each Rollout's last reconcile ended and how long it took: a Rollout over
    /// 10,000 Instances costs tens of milliseconds per reconcile, and every agent report
    /// queues it again, so back-to-back reconciles rest as long as the last one took.
    pub rollout_pacing: Pacing,
}

/// Keeps a hot key's decisions to at most half of a worker's time: a reconcile that
/// starts right after the previous one (of the same key) ended first waits as long as
/// that one spent deciding (store round trips not counted), so that the changes arriving
/// meanwhile are decided in one pass. A key that was idle longer than that runs at once.
#[derive(Default)]
pub struct Pacing {
    /// Per key: when its last reconcile ended, and how long that one spent deciding.
    last: Mutex<HashMap<(String, String), (std::time::Instant, std::time::Duration)>>,
}

impl Pacing {
    /// How long a reconcile of `key` starting now should wait.
    fn wait(&self, key: &(String, String)) -> std::time::Duration {
        let last = self
            .last
            .lock()
            .expect("pacing lock is never poisoned: no panics inside");
        match last.get(key) {
            Some((ended, took)) => took.saturating_sub(ended.elapsed()),
            None => std::time::Duration::ZERO,
        }
    }

    /// A reconcile of `key` ended now, having spent `cost` deciding.
    fn record(&self, key: (String, String), cost: std::time::Duration) {
        self.last
            .lock()
            .expect("pacing lock is never poisoned: no panics inside")
            .insert(key, (std::time::Instant::now(), cost));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Store(#[from] store::Error),
}

fn ns_name<K: Object>(obj: &K) -> (String, String) {
    (
        obj.namespace().unwrap_or(DEFAULT_NAMESPACE).to_string(),
        obj.name().to_string(),
    )
}

fn reference<K: Object>(obj: &K) -> ObjectReference {
    ObjectReference {
        kind: K::KIND.to_string(),
        namespace: obj.namespace().map(str::to_string),
        name: obj.name().to_string(),
    }
}

/// What a decision sees of the Machines: each with its agent's presence.
pub fn machine_views(machines: &[Arc<Machine>], presence: &BTreeSet<String>) -> Vec<MachineView> {
    machines
        .iter()
        .map(|m| MachineView {
            machine: Arc::clone(m),
            ready: presence.contains(m.name()),
        })
        .collect()
}

/// Everything one Rollout reconcile decides between reading the caches and writing: the
/// Instance writes (only those whose spec or labels change, plus creates and deletes) and
/// the Rollout plan (status, events, requeue). Pure: no store, no locks.
pub fn decide_rollout(
    ro: &Rollout,
    app: &Application,
    machines: &[Arc<Machine>],
    presence: &BTreeSet<String>,
    existing: &[Arc<Instance>],
    dependencies: rollout::DependencyInput,
    now: chrono::DateTime<chrono::Utc>,
) -> (Vec<Write<Instance>>, rollout::RolloutPlan) {
    // Only the selected machines matter to the plans below (the others get no Instance,
    // and are not desired): select once, look up presence only for those.
    let views: Vec<MachineView> = machines
        .iter()
        .filter(|m| app.spec.selector.matches(&m.metadata.labels))
        .map(|m| MachineView {
            machine: Arc::clone(m),
            ready: presence.contains(m.name()),
        })
        .collect();
    let stable = rollout::stable_ref(ro.status.as_ref().unwrap_or(&Default::default()));
    let membership = application::plan_instances(
        app,
        &views,
        existing,
        stable.as_ref(),
        ro.spec.strategy.min_ready_seconds,
    );
    let desired: rollout::MachineSet = views
        .iter()
        .filter(|m| m.schedulable_and_ready())
        .map(|m| m.name())
        .collect();
    let mut decision = rollout::plan(rollout::RolloutInput {
        rollout: ro,
        instances: membership.keep,
        desired_machines: &desired,
        now,
        topology: rollout::Topology {
            // Only waves read labels: a map of 10,000 machines costs nothing otherwise.
            labels: if ro.spec.strategy.waves.is_some() {
                views
                    .iter()
                    .map(|m| (m.name(), &m.machine.metadata.labels))
                    .collect()
            } else {
                FxHashMap::default()
            },
            dependencies,
        },
    });
    // A new Instance's name could (in theory) be taken by an existing one on another
    // machine: that one is what its write compares against.
    let by_name: Option<FxHashMap<&str, &Arc<Instance>>> = membership
        .read
        .iter()
        .any(Option::is_none)
        .then(|| existing.iter().map(|i| (i.name(), i)).collect());
    let mut writes = Vec::new();
    let decided = std::mem::take(&mut decision.instances);
    for (inst, read) in decided.into_iter().zip(membership.read) {
        let cur = match read {
            // Untouched by the plans: the very object read.
            Some(cur) if Arc::ptr_eq(&cur, &inst) => continue,
            Some(cur) => Some(cur),
            None => by_name
                .as_ref()
                .and_then(|m| m.get(inst.name()))
                .map(|c| Arc::clone(c)),
        };
        match cur {
            Some(cur) if cur.spec == inst.spec && cur.metadata.labels == inst.metadata.labels => {}
            Some(cur) => writes.push(Write::Replace {
                current: cur,
                desired: Arc::unwrap_or_clone(inst),
            }),
            None => writes.push(Write::Create(Arc::unwrap_or_clone(inst))),
        }
    }
    writes.extend(membership.delete.into_iter().map(Write::Delete));
    (writes, decision)
}

impl Context {
    /// Logs an accepted write at debug level (target `deployctl::fenced`), with the term
    /// it was fenced on and the store revision it landed at.
    fn accepted(&self, what: &str, revision: i64) {
        tracing::debug!(target: "deployctl::fenced", term = self.term, revision, what,
            "fenced write accepted");
    }

    /// Enqueues every Rollout, Application and unfinished Task: machines and presence
    /// affect them all.
    pub fn enqueue_all(&self) {
        for t in self
            .tasks
            .filter(|t| !t.status.as_ref().is_some_and(|s| s.phase.is_finished()))
        {
            let (namespace, name) = ns_name(t.as_ref());
            self.queue.add(Key::Task { namespace, name });
        }
        for ro in self.rollouts.list() {
            let (namespace, name) = ns_name(ro.as_ref());
            self.queue.add(Key::Rollout { namespace, name });
        }
        for app in self.applications.list() {
            let (namespace, name) = ns_name(app.as_ref());
            self.queue.add(Key::Application { namespace, name });
        }
    }

    /// Enqueues the Rollouts that drive `namespace/app`.
    pub fn enqueue_rollouts_of(&self, namespace: &str, app: &str) {
        for ro in self
            .rollouts
            .filter(|r| r.spec.application == app && r.namespace() == Some(namespace))
        {
            self.queue.add(Key::Rollout {
                namespace: namespace.to_string(),
                name: ro.name().to_string(),
            });
        }
    }

    pub fn on_machine(&self, m: &Machine, _kind: ChangeKind) {
        self.queue.add(Key::Machine(m.name().to_string()));
        self.enqueue_all();
    }

    pub fn on_application(&self, app: &Application, _kind: ChangeKind) {
        let (namespace, name) = ns_name(app);
        self.enqueue_rollouts_of(&namespace, &name);
        self.queue.add(Key::Application { namespace, name });
    }

    pub fn on_rollout(&self, ro: &Rollout, _kind: ChangeKind) {
        let (namespace, name) = ns_name(ro);
        self.enqueue_dependents_of(&namespace, &name);
        self.queue.add(Key::Application {
            namespace: namespace.clone(),
            name: ro.spec.application.clone(),
        });
        self.queue.add(Key::Rollout { namespace, name });
    }

    /// Enqueues the Rollouts whose `dependsOn` names `namespace/name`: its status
    /// decides whether they may switch.
    pub fn enqueue_dependents_of(&self, namespace: &str, name: &str) {
        for dependent in self.rollouts.filter(|r| {
            let home = r.namespace().unwrap_or(DEFAULT_NAMESPACE);
            r.spec
                .depends_on
                .iter()
                .any(|d| d.rollout == name && d.namespace.as_deref().unwrap_or(home) == namespace)
        }) {
            let (namespace, name) = ns_name(dependent.as_ref());
            self.queue.add(Key::Rollout { namespace, name });
        }
    }

    /// What `dependsOn` names, as cached: each dependency (or none found) and a cycle
    /// through `ro`, if the cached Rollouts make one.
    fn dependencies_of(&self, ro: &Rollout) -> rollout::DependencyInput {
        if ro.spec.depends_on.is_empty() {
            return rollout::DependencyInput::default();
        }
        let (home, name) = ns_name(ro);
        let found = ro
            .spec
            .depends_on
            .iter()
            .map(|d| {
                let ns = d.namespace.clone().unwrap_or_else(|| home.clone());
                let dep = self
                    .rollouts
                    .get(Some(&ns), &d.rollout)
                    .map(|r| self.written_rollouts.fresher(r));
                let shown = rollout::depends_display(&(ns, d.rollout.clone()), &home);
                (shown, dep)
            })
            .collect();
        let cycle = rollout::find_cycle((&home, &name), |ns, n| {
            let r = self.rollouts.get(Some(ns), n)?;
            Some(dependency_keys(&r))
        });
        rollout::DependencyInput { found, cycle }
    }

    pub fn on_instance(&self, inst: &Instance, _kind: ChangeKind) {
        let namespace = inst.namespace().unwrap_or(DEFAULT_NAMESPACE);
        self.enqueue_rollouts_of(namespace, &inst.spec.application);
    }

    pub(super) fn machine_views(&self) -> Vec<MachineView> {
        let presence = self
            .presence
            .read()
            .expect("presence lock is never poisoned");
        machine_views(&self.machines.list(), &presence)
    }

    /// The Rollout that drives an Application: the oldest, if several name it.
    fn rollout_for(&self, namespace: &str, app: &str) -> Option<Arc<Rollout>> {
        let mut all = self
            .rollouts
            .filter(|r| r.spec.application == app && r.namespace() == Some(namespace));
        all.sort_by(|a, b| {
            (a.metadata.creation_timestamp, a.name())
                .cmp(&(b.metadata.creation_timestamp, b.name()))
        });
        all.into_iter()
            .next()
            .map(|r| self.written_rollouts.fresher(r))
    }

    pub async fn reconcile(&self, key: Key) -> Result<Action, Error> {
        match key {
            Key::Machine(name) => self.reconcile_machine(&name).await,
            Key::Application { namespace, name } => {
                self.reconcile_application(&namespace, &name).await
            }
            Key::Rollout { namespace, name } => {
                let key = (namespace, name);
                let wait = self.rollout_pacing.wait(&key);
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                let mut cost = std::time::Duration::ZERO;
                let result = self.reconcile_rollout(&key.0, &key.1, &mut cost).await;
                self.rollout_pacing.record(key, cost);
                result
            }
            Key::Task { namespace, name } => self.reconcile_task(&namespace, &name).await,
        }
    }

    async fn reconcile_machine(&self, name: &str) -> Result<Action, Error> {
        let Some(m) = self.machines.get(None, name) else {
            return Ok(Action::await_change());
        };
        let alive = self
            .presence
            .read()
            .expect("presence lock is never poisoned")
            .contains(name);
        let plan = machine::plan(&m, alive, chrono::Utc::now());
        if let Some(status) = plan.status {
            let was_ready = machine::is_ready(&m);
            let mut new = Machine::clone(&m);
            new.status = Some(status);
            let written = self.client.replace_status(&new).await?;
            self.accepted("machine status", written.metadata.status_version);
            if was_ready != alive {
                let (reason, msg) = if alive {
                    ("MachineReady", "the agent's lease is alive")
                } else {
                    ("MachineNotReady", "the agent's lease expired")
                };
                let type_ = if alive { "Normal" } else { "Warning" };
                self.events
                    .record(reference(&new), type_, reason, msg)
                    .await;
            }
        }
        // A registering agent whose lease never shows up is lost once the grace ends.
        Ok(plan
            .recheck_after
            .map_or_else(Action::await_change, Action::requeue))
    }

    async fn reconcile_application(&self, namespace: &str, name: &str) -> Result<Action, Error> {
        let Some(app) = self.applications.get(Some(namespace), name) else {
            return Ok(Action::await_change());
        };
        let stable = self
            .rollout_for(namespace, name)
            .and_then(|r| r.status.as_ref().and_then(|s| s.stable_version.clone()));
        if let Some(status) =
            application::plan_status(&app, &self.machine_views(), stable.as_deref())
        {
            let mut new = Application::clone(&app);
            new.status = Some(status);
            let written = self.client.replace_status(&new).await?;
            self.accepted("application status", written.metadata.status_version);
        }
        Ok(Action::await_change())
    }

    /// `cost` receives the time spent deciding (for [`Pacing`]).
    async fn reconcile_rollout(
        &self,
        namespace: &str,
        name: &str,
        cost: &mut std::time::Duration,
    ) -> Result<Action, Error> {
        let started = std::time::Instant::now();
        let Some(cached) = self.rollouts.get(Some(namespace), name) else {
            crate::observe::metrics().forget_rollout(namespace, name);
            return Ok(Action::await_change());
        };
        let ro = self.written_rollouts.fresher(cached);
        let now = chrono::Utc::now();
        let app_name = ro.spec.application.clone();

        // Preconditions a retry cannot fix go on the object, not into a retry loop.
        let app = self.applications.get(Some(namespace), &app_name);
        let driver = self.rollout_for(namespace, &app_name);
        let problem = match (&app, &driver) {
            (None, _) => Some((
                "ApplicationNotFound",
                format!("application {namespace}/{app_name} does not exist"),
            )),
            (Some(_), Some(d)) if d.name() != ro.name() => Some((
                "ApplicationTaken",
                format!("application {app_name} is driven by rollout {}", d.name()),
            )),
            _ => None,
        };
        if let Some((reason, message)) = problem {
            let mut st = ro.status.clone().unwrap_or_default();
            st.observed_generation = ro.metadata.generation.unwrap_or(0);
            st.message = message.clone();
            // A missing Application may only be missing from the cache (applied by the
            // same `apply -f DIR` a moment ago); its arrival requeues this Rollout. Wait
            // (Pending) rather than fail, so `rollout status` does not give up on it.
            let (phase, condition) = if reason == "ApplicationNotFound" {
                (crate::api::RolloutPhase::Pending, "Progressing")
            } else {
                (crate::api::RolloutPhase::Degraded, "Degraded")
            };
            st.phase = phase;
            let status = if phase == crate::api::RolloutPhase::Pending {
                crate::api::ConditionStatus::False
            } else {
                crate::api::ConditionStatus::True
            };
            crate::api::set_condition(&mut st.conditions, condition, status, reason, &message, now);
            if ro.status.as_ref() != Some(&st) {
                let mut new = Rollout::clone(&ro);
                new.status = Some(st.clone());
                let written = self.client.replace_status(&new).await?;
                self.accepted("rollout status", written.metadata.status_version);
                self.written_rollouts.record(written);
            }
            record_rollout_metrics(namespace, name, ro.status.as_ref(), &st);
            return Ok(Action::await_change());
        }
        let app = app.expect("checked above: a missing application returned early");

        let machines = self.machines.list();
        let dependencies = self.dependencies_of(&ro);
        let existing: Vec<Arc<Instance>> =
            self.written_instances
                .fresher_all(self.instances.filter(|i| {
                    i.spec.application == app_name && i.namespace() == Some(namespace)
                }));
        let (writes, decision) = {
            let presence = self
                .presence
                .read()
                .expect("presence lock is never poisoned");
            decide_rollout(
                &ro,
                &app,
                &machines,
                &presence,
                &existing,
                dependencies,
                now,
            )
        };
        *cost = started.elapsed();

        // Instances first (batched), then the Rollout status that describes them.
        if !writes.is_empty() {
            let count = writes.len();
            let writing = std::time::Instant::now();
            let written = self.client.write_batch(writes).await?;
            tracing::debug!(rollout = name, count, decide = ?*cost, write = ?writing.elapsed(),
                "wrote instances");
            for inst in written {
                self.accepted("instance", inst.metadata.revision());
                self.written_instances.record(inst);
            }
        }
        if ro.status.as_ref() != Some(&decision.status) {
            let mut new = Rollout::clone(&ro);
            new.status = Some(decision.status.clone());
            let written = self.client.replace_status(&new).await?;
            self.accepted("rollout status", written.metadata.status_version);
            self.written_rollouts.record(written);
        }
        record_rollout_metrics(namespace, name, ro.status.as_ref(), &decision.status);
        for note in &decision.events {
            self.events
                .record(
                    reference(ro.as_ref()),
                    note.type_,
                    note.reason,
                    &note.message,
                )
                .await;
        }
        Ok(match decision.requeue_after {
            Some(d) => Action::requeue(d),
            None => Action::await_change(),
        })
    }
}

/// A Rollout's `dependsOn` as (namespace, name).
pub fn dependency_keys(ro: &Rollout) -> Vec<(String, String)> {
    let home = ro.namespace().unwrap_or(DEFAULT_NAMESPACE);
    ro.spec
        .depends_on
        .iter()
        .map(|d| {
            (
                d.namespace.clone().unwrap_or_else(|| home.to_string()),
                d.rollout.clone(),
            )
        })
        .collect()
}

/// The kind of a key, for `deployctl_reconcile_*{kind}`.
pub fn key_kind(key: &Key) -> &'static str {
    match key {
        Key::Machine(_) => "Machine",
        Key::Application { .. } => "Application",
        Key::Rollout { .. } => "Rollout",
        Key::Task { .. } => "Task",
    }
}

/// Exports a Rollout's status as it now is in the store (`after`): its phase, version
/// and machine counts, and the duration of each revision that `after` finished and
/// `before` had not (so a revision is observed once, by the leader that wrote its end).
fn record_rollout_metrics(
    namespace: &str,
    name: &str,
    before: Option<&crate::api::RolloutStatus>,
    after: &crate::api::RolloutStatus,
) {
    let m = crate::observe::metrics();
    let version = after
        .target_version
        .as_deref()
        .or(after.stable_version.as_deref())
        .unwrap_or("");
    m.set_rollout(
        namespace,
        name,
        &after.phase.to_string(),
        version,
        crate::observe::MachineCounts {
            desired: after.desired,
            staged: after.staged,
            updated: after.updated,
            available: after.available,
            failed: after.failed,
        },
    );
    for rev in &after.history {
        // An adopted revision was found running, not rolled out.
        let (Some(done), false) = (
            rev.completed_at,
            rev.result.is_empty() || rev.result == "Adopted",
        ) else {
            continue;
        };
        let finished_before = before.is_some_and(|b| {
            b.history.iter().any(|r| {
                r.revision == rev.revision && r.version == rev.version && r.completed_at.is_some()
            })
        });
        if !finished_before {
            let took = (done - rev.started_at).to_std().unwrap_or_default();
            m.rollout_finished(&rev.result, took);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Revision, RolloutStatus};
    use crate::observe::{metrics, Role};

    /// The `_count` of `deployctl_rollout_duration_seconds{result}` on `/metrics`.
    fn finished(result: &str) -> u64 {
        let text = metrics().encode(Role::Controller);
        let series = format!("deployctl_rollout_duration_seconds_count{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |v| v.parse().expect("a count is an integer"))
    }

    #[test]
    fn a_finished_revision_should_be_observed_once_when_its_end_is_written() {
        // A result no real revision has, so that other tests' rollouts do not count.
        let result = "UnitFinishedOnce";
        let started = chrono::Utc::now() - chrono::Duration::seconds(90);
        let revision = |completed: bool| Revision {
            revision: 2,
            version: "2.0".into(),
            sha256: None,
            started_at: started,
            completed_at: completed.then(|| started + chrono::Duration::seconds(60)),
            result: if completed {
                result.into()
            } else {
                String::new()
            },
        };
        let status = |completed: bool| RolloutStatus {
            history: vec![revision(completed)],
            ..RolloutStatus::default()
        };
        let before = finished(result);
        record_rollout_metrics("unit-ctx", "api", Some(&status(false)), &status(true));
        assert_eq!(
            finished(result),
            before + 1,
            "the write that ended it counts it"
        );
        record_rollout_metrics("unit-ctx", "api", Some(&status(true)), &status(true));
        record_rollout_metrics("unit-ctx", "api", Some(&status(false)), &status(false));
        assert_eq!(
            finished(result),
            before + 1,
            "a status already ended, or not ended, does not"
        );
        metrics().forget_rollout("unit-ctx", "api");
    }

    #[test]
    fn an_adopted_revision_should_not_count_as_a_finished_rollout() {
        let now = chrono::Utc::now();
        let adopted = RolloutStatus {
            history: vec![Revision {
                revision: 1,
                version: "1.0".into(),
                sha256: None,
                started_at: now,
                completed_at: Some(now),
                result: "Adopted".into(),
            }],
            ..RolloutStatus::default()
        };
        let before = finished("Adopted");
        record_rollout_metrics("unit-adopt", "api", None, &adopted);
        assert_eq!(finished("Adopted"), before);
        metrics().forget_rollout("unit-adopt", "api");
    }
}
