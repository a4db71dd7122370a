//! The per-instance state machine: compares one Instance spec with the disk, converges
//! one step at a time (stage, switch, verify, restart, clean) and reports the status.
//!
//! Level-triggered and restart-safe: [`next_action`] is a plain function of the spec, the
//! disk and what this process remembers; the async shell ([`run`]) carries out one action,
//! re-reads the disk and asks again until nothing is left to do.
//!
//! A switch is restart-safe: `<path>/.switching` (version and generation) is written
//! before `beforeActivate` and removed only once the switch is done (`activate` ran, the
//! health check held for `minReadySeconds`, `afterActivate` ran). An agent that finds the
//! marker runs the switch again from `beforeActivate`, so switch hooks must be idempotent.
//! A finished switch leaves no marker and is never re-run.
//!
//! Between steps, while `current` is verified, the health check keeps running every
//! `periodSeconds` ([`health::Monitor`]): `healthy` turns false after `failureThreshold`
//! failures and true after `successThreshold` passes (the phase stays Running). A service
//! whose spec changed (or that was added) without a switch is restarted from `current`.

use super::artifact::{self, ArtifactError, Retry};
use super::health;
use super::hooks::{self, DeployVars, HookEnv, HookError};
use super::release::{Disk, Layout};
use super::report::{PendingEvent, Reporter};
use super::service::{ServiceSpec, ServiceState, Supervisor, MIN_SERVICE_UPTIME};
use super::unpack::{self, UnpackError};
use crate::api::{
    validation::check_version, HealthCheck, Instance, InstanceFailure, InstancePhase, InstanceSpec,
    InstanceStatus, Object, VersionRef,
};
use crate::store::{Client, EventRecorder};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What every instance task shares.
pub struct Context {
    pub client: Client,
    pub machine: String,
    /// The agent's deploy root: default paths and `logs/` live under it.
    pub root: PathBuf,
    pub retry: Retry,
    /// Events about instances (`agent/<machine>`), bound to an expiring lease; written
    /// with the status reports ([`super::report`]).
    pub events: Arc<EventRecorder>,
    /// Replaces fetch/unpack/hooks/health with simulated work (benchmarks); `None`: the
    /// real executor.
    pub executor: Option<Arc<dyn super::executor::Executor>>,
}

/// Kinds of work whose failure is remembered so that it is not retried for the same
/// spec generation (no hot loop on a broken artifact or hook).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Stage,
    /// Switch, its health check, and the current-version gate.
    Switch,
    Restart,
    Clean,
}

/// What this process remembers about one instance beyond the disk and the status.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    /// Failed operations: kind, version, and the spec generation they failed under.
    pub failed: Vec<(OpKind, String, i64)>,
    /// The current version whose health this process has verified.
    pub verified: Option<String>,
    /// The current version `getVersion` agreed with.
    pub version_checked: Option<String>,
    /// The version (and generation) already re-converged once after drift.
    pub drift_fixed: Option<(String, i64)>,
    /// Releases being cleaned in the background right now: neither switched to nor
    /// staged again until their cleaning is over.
    pub cleaning: BTreeSet<String>,
}

impl Memory {
    pub fn failed(&self, kind: OpKind, version: &str, generation: i64) -> bool {
        self.failed
            .iter()
            .any(|(k, v, g)| *k == kind && v == version && *g == generation)
    }
    fn fail(&mut self, kind: OpKind, version: &str, generation: i64) {
        if !self.failed(kind, version, generation) {
            self.failed.push((kind, version.to_string(), generation));
        }
    }
}

/// One step towards the spec.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Stage(VersionRef),
    /// `spec.current` is not staged: refuse (the current-version gate).
    RefuseSwitch(String),
    Switch(String),
    /// `current` already is the wanted version (e.g. after an agent restart): check health.
    Verify(String),
    /// Run `getVersion` and compare with `current`.
    CheckVersion(String),
    Restart(DateTime<Utc>),
    Clean(Vec<String>),
    Idle,
}

/// What [`next_action`] decides from.
pub struct Observed<'a> {
    pub spec: &'a InstanceSpec,
    pub generation: i64,
    /// Staged versions on disk.
    pub staged: &'a [String],
    /// Where `current` points on disk.
    pub current: Option<&'a str>,
    /// The `restartAt` last carried out (from the status).
    pub restarted_at: Option<DateTime<Utc>>,
    /// Releases beyond retention, from the disk.
    pub to_clean: &'a [String],
    /// A switch marker is on disk: a switch began and did not finish.
    pub switching: bool,
    pub memory: &'a Memory,
}

/// The next step for one instance. Stage first, then switch, then restart, then clean.
pub fn next_action(o: &Observed) -> Action {
    let g = o.generation;
    let m = o.memory;
    // Cleaning first (it runs in the background): the releases it drops leave the
    // reported `stagedVersions` at once, so the report of the staging that follows carries
    // both changes in one write.
    let clean: Vec<String> = o
        .to_clean
        .iter()
        .filter(|v| !m.failed(OpKind::Clean, v, g) && !m.cleaning.contains(*v))
        .cloned()
        .collect();
    if !clean.is_empty() {
        return Action::Clean(clean);
    }
    for v in &o.spec.staged {
        if !o.staged.contains(&v.version)
            && !m.failed(OpKind::Stage, &v.version, g)
            && !m.cleaning.contains(&v.version)
        {
            return Action::Stage(v.clone());
        }
    }
    if let Some(want) = o.spec.current.as_deref() {
        // A version that failed to stage keeps that (more telling) failure: no NotStaged.
        let blocked = m.failed(OpKind::Switch, want, g)
            || m.failed(OpKind::Stage, want, g)
            || m.cleaning.contains(want);
        if o.current != Some(want) {
            if !blocked {
                return if o.staged.iter().any(|s| s == want) {
                    Action::Switch(want.to_string())
                } else {
                    Action::RefuseSwitch(want.to_string())
                };
            }
        } else if !blocked {
            // `current` already points at it, but the switch was interrupted: again.
            if o.switching {
                return Action::Switch(want.to_string());
            }
            if m.verified.as_deref() != Some(want) {
                return Action::Verify(want.to_string());
            }
            if o.spec.get_version.is_some() && m.version_checked.as_deref() != Some(want) {
                return Action::CheckVersion(want.to_string());
            }
            if let Some(at) = o.spec.restart_at {
                if o.restarted_at.is_none_or(|r| at > r) && !m.failed(OpKind::Restart, want, g) {
                    return Action::Restart(at);
                }
            }
        }
    }
    Action::Idle
}

/// A failed operation, as it goes into `status.failure`.
#[derive(Debug)]
struct OpError {
    operation: &'static str,
    reason: String,
    message: String,
    tail: Option<Vec<String>>,
}

impl OpError {
    fn new(operation: &'static str, reason: &str, message: impl Into<String>) -> OpError {
        OpError {
            operation,
            reason: reason.to_string(),
            message: message.into(),
            tail: None,
        }
    }
    fn hook(operation: &'static str, e: HookError) -> OpError {
        OpError {
            operation,
            reason: e.reason().to_string(),
            message: e.to_string(),
            tail: Some(e.tail().to_vec()),
        }
    }
    fn artifact(e: ArtifactError) -> OpError {
        OpError::new("Stage", e.reason(), e.to_string())
    }
    fn unpack(e: UnpackError) -> OpError {
        OpError::new("Stage", e.reason(), e.to_string())
    }
}

/// The state of one instance task.
struct Task {
    ctx: Arc<Context>,
    /// The latest object from the watch.
    obj: Instance,
    memory: Memory,
    /// The status this task wants reported.
    status: InstanceStatus,
    /// The status last handed to the reporter (or read from the store at start).
    sent: Option<InstanceStatus>,
    /// Writes the reports and events, coalesced (it owns the status CAS base).
    reporter: Reporter,
    /// Events recorded since the last report, sent with the next one.
    events: Vec<PendingEvent>,
    service: Option<Supervisor>,
    /// The service's process state, as this task last read it (`None`: no service).
    service_state: Option<watch::Receiver<ServiceState>>,
    /// The service's side of `healthy` while Running: false from an exit until the
    /// process has stayed up [`MIN_SERVICE_UPTIME`] again.
    service_ok: bool,
    /// What of the spec the running service was started from: a change restarts it.
    service_shape: Option<ServiceShape>,
    /// The health check kept running while Running, with the version it watches.
    monitor: Option<(String, health::Monitor)>,
    /// Shared with the background clean jobs.
    cleaning: Arc<Mutex<CleanState>>,
    /// Woken when a clean job ends, so that what waited for it (or retention) goes on.
    clean_done: Arc<tokio::sync::Notify>,
    clean_jobs: Vec<tokio::task::JoinHandle<()>>,
}

/// The parts of an Instance spec that shape its service (not the version: a switch
/// restarts the service itself).
#[derive(Clone, Debug, PartialEq)]
struct ServiceShape {
    service: crate::api::Service,
    env: BTreeMap<String, String>,
    shell: Option<Vec<String>>,
}

/// What a running health monitor probes with: the check, the environment, `current`.
type ProbeContext = (HealthCheck, HookEnv, PathBuf);

/// The next change of health from the monitor; never, when there is none.
async fn monitor_next(
    monitor: &mut Option<(String, health::Monitor)>,
    probe: &Option<ProbeContext>,
) -> bool {
    match (monitor, probe) {
        (Some((_, m)), Some((check, env, cwd))) => {
            m.next_change(|| health::probe(check, env, cwd)).await
        }
        _ => std::future::pending().await,
    }
}

/// The next change of the service's state; never when there is no service (or its
/// supervisor is gone).
async fn service_changed(state: &mut Option<watch::Receiver<ServiceState>>) {
    let gone = match state {
        Some(rx) => rx.changed().await.is_err(),
        None => true,
    };
    if gone {
        std::future::pending::<()>().await;
    }
}

/// The next change of the service's state, or `uptime_due`: when the restarted process
/// will have stayed up long enough to count as healthy again.
async fn service_event(
    state: &mut Option<watch::Receiver<ServiceState>>,
    uptime_due: Option<Instant>,
) {
    match uptime_due {
        Some(at) => tokio::select! {
            () = service_changed(state) => {}
            () = tokio::time::sleep_until(at) => {}
        },
        None => service_changed(state).await,
    }
}

/// What the background clean jobs of one instance are doing.
#[derive(Default)]
struct CleanState {
    running: BTreeSet<String>,
    /// Versions whose cleaning failed, with the generation it was asked under.
    failed: Vec<(String, i64)>,
}

/// Runs one instance until it is deleted (the channel yields `None` or closes) or
/// `shutdown` fires; a newer spec replaces an older one not yet acted on (latest wins).
/// Where an Instance lives on disk: its `path`, or `<root>/<namespace>/<app>`. A
/// relative path is taken under the agent's root, never its working directory.
pub fn layout_of(root: &std::path::Path, namespace: &str, spec: &InstanceSpec) -> Layout {
    Layout::new(match &spec.path {
        Some(p) => root.join(p),
        None => root.join(namespace).join(&spec.application),
    })
}

pub async fn run(
    ctx: Arc<Context>,
    mut specs: watch::Receiver<Option<Instance>>,
    shutdown: CancellationToken,
) {
    let Some(first) = specs.borrow_and_update().clone() else {
        return;
    };
    let mut task = Task::new(ctx, first);
    let mut starting = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = task.converge(starting) => {}
        }
        starting = false;
        task.sync_monitor();
        let probe = task.probe_context();
        let uptime_due = task.service_uptime_due();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            healthy = monitor_next(&mut task.monitor, &probe) => {
                task.health_changed(healthy).await;
            }
            () = service_event(&mut task.service_state, uptime_due) => {
                task.service_changed();
            }
            _ = task.clean_done.notified() => {}
            changed = specs.changed() => {
                if changed.is_err() {
                    break;
                }
                let next = specs.borrow_and_update().clone();
                match next {
                    Some(obj) => task.observe(obj),
                    None => {
                        tracing::info!(
                            instance = %task.obj.meta().key(),
                            path = %task.layout().path.display(),
                            "instance deleted: stopping its service, leaving its files"
                        );
                        break;
                    }
                }
            }
        }
    }
    for job in task.clean_jobs.drain(..) {
        job.abort();
    }
    task.service_state = None;
    if let Some(s) = task.service.take() {
        s.stop().await;
    }
    // What the last steps reported reaches the store unless it is unreachable.
    task.reporter.flush(Duration::from_secs(2)).await;
}

impl Task {
    fn new(ctx: Arc<Context>, obj: Instance) -> Task {
        let mut status = obj.status().cloned().unwrap_or_default();
        let generation = obj.meta().generation.unwrap_or(0);
        let mut memory = Memory::default();
        if status.observed_generation != generation {
            // Written for an older spec (the agent was down when it changed).
            status.failure = None;
        }
        // A failure reported for this very generation by an earlier run is not retried.
        if let Some(f) = &status.failure {
            if status.observed_generation == generation {
                let kind = if f.operation == "Stage" {
                    OpKind::Stage
                } else {
                    OpKind::Switch
                };
                memory.fail(kind, &f.version, generation);
            }
        }
        let reporter = Reporter::start(ctx.client.clone(), ctx.events.clone(), &obj);
        Task {
            ctx,
            sent: obj.status().cloned(),
            reporter,
            events: Vec::new(),
            obj,
            memory,
            status,
            service: None,
            service_state: None,
            service_ok: true,
            service_shape: None,
            monitor: None,
            cleaning: Default::default(),
            clean_done: Default::default(),
            clean_jobs: Vec::new(),
        }
    }

    fn generation(&self) -> i64 {
        self.obj.meta().generation.unwrap_or(0)
    }
    fn spec(&self) -> &InstanceSpec {
        self.obj.spec()
    }
    fn namespace(&self) -> String {
        self.obj
            .namespace()
            .unwrap_or(crate::api::DEFAULT_NAMESPACE)
            .to_string()
    }
    fn layout(&self) -> Layout {
        layout_of(&self.ctx.root, &self.namespace(), self.spec())
    }

    /// A newer object from the watch.
    fn observe(&mut self, obj: Instance) {
        let generation_changed = obj.meta().generation != self.obj.meta().generation;
        self.obj = obj;
        if generation_changed {
            // A failure answers the spec it happened under; a new generation retries
            // (or no longer wants) that operation, and the controller reads a failure
            // next to a fresh observedGeneration as a failure of the new spec.
            self.status.failure = None;
        }
    }

    fn env(&self, version: &str, previous: Option<&str>) -> HookEnv {
        let layout = self.layout();
        let ns = self.namespace();
        HookEnv::new(
            self.spec().shell.as_deref(),
            &self.spec().env,
            &DeployVars {
                app: &self.spec().application,
                namespace: &ns,
                version,
                previous_version: previous,
                release_dir: &layout.release(version),
                path: &layout.path,
                machine: &self.ctx.machine,
            },
        )
        .with_log(super::logs::open(
            &self.ctx.root,
            &ns,
            &self.spec().application,
        ))
    }

    fn service_spec(&self, version: &str) -> Option<ServiceSpec> {
        let svc = self.spec().service.as_ref()?;
        let layout = self.layout();
        Some(ServiceSpec {
            env: self.env(version, None),
            command: svc.command.clone(),
            cwd: layout.current_link(),
            log: self.ctx.root.join("logs").join(format!(
                "{}_{}.log",
                self.namespace(),
                self.spec().application
            )),
            stop_timeout: Duration::from_secs(u64::from(svc.stop_timeout_seconds)),
            name: format!("{}/{}", self.namespace(), self.spec().application),
        })
    }

    fn service_shape(&self) -> Option<ServiceShape> {
        Some(ServiceShape {
            service: self.spec().service.clone()?,
            env: self.spec().env.clone(),
            shell: self.spec().shell.clone(),
        })
    }

    /// (Re)starts the service for `version`, or starts it if it is not running.
    async fn restart_service(&mut self, version: &str) {
        let Some(spec) = self.service_spec(version) else {
            self.service_state = None;
            if let Some(s) = self.service.take() {
                s.stop().await;
            }
            self.service_shape = None;
            return;
        };
        self.service_shape = self.service_shape();
        match &self.service {
            Some(s) => s.restart(spec).await,
            None => {
                let s = Supervisor::start(spec);
                self.service_state = Some(s.state());
                self.service = Some(s);
            }
        }
    }

    /// The service's spec changed (or it was added) with no switch to carry it out:
    /// restart it from `current`. Not while a switch is unfinished (that one restarts it).
    async fn apply_service_changes(&mut self) {
        let layout = self.layout();
        let Some(current) = layout.current_version() else {
            return;
        };
        if layout.switching().is_some() || self.spec().service.is_none() {
            return;
        }
        let wanted = self.service_shape();
        if self.service.is_some() && self.service_shape == wanted {
            return;
        }
        let what = if self.service.is_some() {
            "service spec changed: restarting it"
        } else {
            "service added: starting it"
        };
        tracing::info!(instance = %self.obj.meta().key(), version = %current, "{what}");
        self.restart_service(&current).await;
        self.event("Normal", "ServiceRestarted", what);
    }

    /// Keeps the health monitor in step: running while `current` is verified and the
    /// spec has a check, restarted when the version or the check changes.
    fn sync_monitor(&mut self) {
        let layout = self.layout();
        let current = layout.current_version();
        let watched = match (&self.spec().health_check, current) {
            (Some(check), Some(v))
                if self.memory.verified.as_deref() == Some(v.as_str())
                    && layout.switching().is_none() =>
            {
                Some((check.clone(), v))
            }
            _ => None,
        };
        match watched {
            None => self.monitor = None,
            Some((check, v)) => {
                let same = self
                    .monitor
                    .as_ref()
                    .is_some_and(|(mv, m)| *mv == v && *m.check() == check);
                if !same {
                    self.monitor = Some((v, health::Monitor::new(check, self.status.healthy)));
                }
            }
        }
    }

    fn probe_context(&self) -> Option<ProbeContext> {
        let (version, m) = self.monitor.as_ref()?;
        Some((
            m.check().clone(),
            self.env(version, None),
            self.layout().current_link(),
        ))
    }

    /// The monitor saw the health change while Running: report it (phase stays Running;
    /// the controller counts an unhealthy instance as unavailable).
    async fn health_changed(&mut self, healthy: bool) {
        let version = self.status.current_version.clone().unwrap_or_default();
        if healthy {
            tracing::info!(instance = %self.obj.meta().key(), %version, "health check passes again");
            self.event(
                "Normal",
                "Healthy",
                &format!("{version} passes its health check again"),
            );
        } else {
            let n = self
                .monitor
                .as_ref()
                .map_or(1, |(_, m)| m.check().failure_threshold.max(1));
            let msg = format!("{version} failed its health check {n} time(s) in a row");
            tracing::warn!(instance = %self.obj.meta().key(), "{msg}");
            self.event("Warning", "Unhealthy", &msg);
        }
        self.update_health();
        self.report(None);
    }

    /// `healthy` while Running: the health check's verdict (none: healthy) and the
    /// service's; `readySince` starts when both first agree.
    fn update_health(&mut self) {
        let check_ok = self.monitor.as_ref().is_none_or(|(_, m)| m.healthy());
        let healthy = check_ok && self.service_ok;
        if healthy != self.status.healthy {
            self.status.healthy = healthy;
            self.status.ready_since = healthy.then(Utc::now);
        }
    }

    /// `current` is verified and no switch is under way: the phase is Running and the
    /// live health rules apply.
    fn settled(&self) -> bool {
        let layout = self.layout();
        let current = layout.current_version();
        current.is_some() && self.memory.verified == current && layout.switching().is_none()
    }

    /// While the service is down (for the live health), when its restarted process will
    /// have been up [`MIN_SERVICE_UPTIME`].
    fn service_uptime_due(&self) -> Option<Instant> {
        // Only while Running: in any other phase nothing waits on it, and a due time
        // already past would wake the task at once, again and again.
        if self.service_ok || !self.settled() {
            return None;
        }
        let up = self.service_state.as_ref()?.borrow().up_since?;
        Some(up + MIN_SERVICE_UPTIME)
    }

    /// The service started or exited (or has now stayed up long enough): while Running,
    /// an exit makes the instance unhealthy at once, and it is healthy again once the
    /// process has stayed up [`MIN_SERVICE_UPTIME`]. Its restarts and last exit are
    /// reported in every phase.
    fn service_changed(&mut self) {
        let Some(state) = self
            .service_state
            .as_mut()
            .map(|s| s.borrow_and_update().clone())
        else {
            return;
        };
        if self.settled() {
            let was_ok = self.service_ok;
            match state.up_since {
                None => self.service_ok = false,
                Some(up) if up.elapsed() >= MIN_SERVICE_UPTIME => self.service_ok = true,
                Some(_) => {}
            }
            let version = self.status.current_version.clone().unwrap_or_default();
            let key = self.obj.meta().key();
            if was_ok && !self.service_ok {
                let exit = state
                    .status
                    .last_exit
                    .as_ref()
                    .map_or("exited", |e| e.message.as_str());
                let msg = format!(
                    "{version}: service {exit} (restart {} after backoff); unhealthy until it stays up {} s",
                    state.status.restarts,
                    MIN_SERVICE_UPTIME.as_secs()
                );
                tracing::warn!(instance = %key, "{msg}");
                self.event("Warning", "ServiceExited", &msg);
            } else if !was_ok && self.service_ok {
                let msg = format!(
                    "{version}: service up again for {} s",
                    MIN_SERVICE_UPTIME.as_secs()
                );
                tracing::info!(instance = %key, "{msg}");
                self.event("Normal", "ServiceUp", &msg);
            }
            self.update_health();
        }
        self.report(None);
    }

    /// Steps until idle, reporting after each.
    async fn converge(&mut self, starting: bool) {
        let layout = self.layout();
        if self.spec().service.is_none() {
            self.service_state = None;
            if let Some(s) = self.service.take() {
                tracing::info!(instance = %self.obj.meta().key(), "service removed from spec: stopping it");
                s.stop().await;
            }
            self.service_shape = None;
        }
        if starting {
            if let Some(sw) = layout.switching() {
                tracing::warn!(path = %layout.path.display(), version = %sw.version,
                    generation = sw.generation, "a switch was interrupted; it runs again");
            }
            match layout.remove_unfinished() {
                Ok(removed) if !removed.is_empty() => {
                    tracing::info!(path = %layout.path.display(), ?removed, "removed unfinished releases")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(path = %layout.path.display(), error = %e, "cannot remove unfinished releases")
                }
            }
            if let Some(current) = layout.current_version() {
                if self.spec().service.is_some() {
                    self.restart_service(&current).await;
                }
            }
        }
        // Each action changes the disk or the memory; the cap guards against a bug
        // turning into a hot loop.
        let mut idle = None;
        for _ in 0..64 {
            self.sync_cleaning();
            let disk = layout.read();
            let staged = disk.staged_versions();
            let current = disk.current.clone();
            let mut keep: Vec<String> = self
                .spec()
                .staged
                .iter()
                .map(|v| v.version.clone())
                .collect();
            keep.extend(self.spec().current.clone());
            let to_clean = layout.releases_to_clean(&disk, &keep, self.spec().releases_to_keep());
            let action = next_action(&Observed {
                spec: self.spec(),
                generation: self.generation(),
                staged: &staged,
                current: current.as_deref(),
                restarted_at: self.status.restarted_at,
                to_clean: &to_clean,
                switching: disk.switching.is_some(),
                memory: &self.memory,
            });
            tracing::debug!(instance = %self.obj.meta().key(), ?action, "next action");
            match action {
                Action::Idle => {
                    idle = Some(disk);
                    break;
                }
                Action::Stage(v) => self.do_stage(&v, &disk).await,
                Action::RefuseSwitch(v) => {
                    let msg =
                        format!(
                        "refusing to switch to {v}: it is not staged on this machine (staged: {})",
                        if staged.is_empty() { "none".to_string() } else { staged.join(", ") }
                    );
                    self.fail(
                        OpKind::Switch,
                        &v,
                        OpError::new("Switch", "NotStaged", msg),
                        "SwitchFailed",
                    )
                    .await;
                }
                Action::Switch(v) => self.do_switch(&v, &disk).await,
                Action::Verify(v) => self.do_verify(&v).await,
                Action::CheckVersion(v) => self.do_check_version(&v).await,
                Action::Restart(at) => self.do_restart(at).await,
                Action::Clean(list) => self.start_clean(list),
            }
            self.report(None);
        }
        self.apply_service_changes().await;
        // Idle: nothing changed the releases or `current` since they were read.
        match idle {
            Some(disk) => self.report_on(None, &disk),
            None => self.report(None),
        }
    }

    /// Records a failure in memory and status, with an event.
    async fn fail(&mut self, kind: OpKind, version: &str, e: OpError, event_reason: &str) {
        tracing::warn!(instance = %self.obj.meta().key(), version, reason = %e.reason, "{}", e.message);
        self.memory.fail(kind, version, self.generation());
        if let Some(tail) = e.tail {
            self.status.last_hook_output = tail;
        }
        self.status.failure = Some(InstanceFailure {
            version: version.to_string(),
            operation: e.operation.to_string(),
            reason: e.reason.clone(),
            message: e.message.clone(),
            time: Utc::now(),
        });
        // A refused switch changed nothing on disk: what runs keeps its health.
        if matches!(kind, OpKind::Switch | OpKind::Restart) && e.reason != "NotStaged" {
            self.status.healthy = false;
            self.status.available = false;
            self.status.ready_since = None;
        }
        // A crash loop is named as such (as the kubelet's BackOff is), not as a switch.
        let event_reason = if e.reason == "ServiceCrashLoop" {
            "ServiceCrashLoop"
        } else {
            event_reason
        };
        // The event goes first: a reader that saw the Failed status can find its event.
        self.event("Warning", event_reason, &e.message);
        self.report(Some(InstancePhase::Failed));
    }

    /// Stages `v`; `disk` is what the step was decided on.
    async fn do_stage(&mut self, v: &VersionRef, disk: &Disk) {
        self.report_on(Some(InstancePhase::Staging), disk);
        let started = std::time::Instant::now();
        match self.stage(v).await {
            Ok(tail) => {
                crate::observe::metrics().staged(started.elapsed());
                let install = self.spec().hooks.install.clone();
                self.record_output(&install, tail);
                if self
                    .status
                    .failure
                    .as_ref()
                    .is_some_and(|f| f.version == v.version && f.operation == "Stage")
                {
                    self.status.failure = None;
                }
                tracing::info!(instance = %self.obj.meta().key(), version = %v.version, "staged");
                self.event("Normal", "Staged", &format!("staged version {}", v.version));
            }
            Err(e) => self.fail(OpKind::Stage, &v.version, e, "StageFailed").await,
        }
    }

    /// Fetch, verify, unpack, install, mark. Returns the install hooks' output tail.
    async fn stage(&self, v: &VersionRef) -> Result<Vec<String>, OpError> {
        if let Some(exec) = self.ctx.executor.clone() {
            return self.stage_with(&*exec, v).await;
        }
        let version = &v.version;
        check_version(version).map_err(|e| OpError::new("Stage", "InvalidVersion", e))?;
        let layout = self.layout();
        let art = &self.spec().artifact;
        let url = artifact::expand(&art.url, version);
        let expected = match &art.sha256_url {
            Some(t) => Some(
                artifact::fetch_sha256(&artifact::expand(t, version), self.ctx.retry)
                    .await
                    .map_err(OpError::artifact)?,
            ),
            None => v.sha256.clone(),
        };
        let opts = unpack::UnpackOptions::for_artifact(art);
        let fetched = artifact::fetch(
            &url,
            expected.as_deref(),
            &layout.tmp(),
            opts.max_download_bytes(),
            self.ctx.retry,
        )
        .await
        .map_err(OpError::artifact)?;
        let file_name = unpack::plain_file_name(art.file_name.as_deref(), &url);
        let format = art.format;
        let releases = layout.releases();
        let ver = version.clone();
        let dir = tokio::task::spawn_blocking(move || {
            let res = unpack::unpack(fetched.path(), format, &file_name, &releases, &ver, &opts);
            drop(fetched);
            res
        })
        .await
        .map_err(|e| OpError::new("Stage", "UnpackFailed", format!("unpack task failed: {e}")))?
        .map_err(OpError::unpack)?;
        // An artifact must not mark itself staged before `install` ran.
        let _ = std::fs::remove_file(dir.join(super::release::STAGED_MARKER));
        let current = layout.current_version();
        let env = self.env(version, current.as_deref());
        let tail = hooks::run_hooks(&env, &self.spec().hooks.install, &dir, "install")
            .await
            .map_err(|e| OpError::hook("Stage", e))?;
        layout.mark_staged(version).map_err(|e| {
            OpError::new(
                "Stage",
                "StageFailed",
                format!("cannot mark {} staged: {e}", dir.display()),
            )
        })?;
        Ok(tail)
    }

    /// Switches to `want`; `disk` is what the step was decided on.
    async fn do_switch(&mut self, want: &str, disk: &Disk) {
        let previous = disk.current.clone();
        self.status.healthy = false;
        self.status.available = false;
        self.status.ready_since = None;
        self.report_on(Some(InstancePhase::Switching), disk);
        let switched = self.switch(want, previous.as_deref()).await;
        crate::observe::metrics().switched(switched.is_ok());
        match switched {
            Ok(()) => {
                self.memory.verified = Some(want.to_string());
                self.memory.version_checked = None;
                let msg = match &previous {
                    Some(p) => format!("switched from {p} to {want}"),
                    None => format!("switched to {want}"),
                };
                tracing::info!(instance = %self.obj.meta().key(), "{msg}");
                self.event("Normal", "Switched", &msg);
            }
            Err(e) => self.fail(OpKind::Switch, want, e, "SwitchFailed").await,
        }
    }

    /// beforeActivate, swap `current`, activate, service, health, afterActivate.
    async fn switch(&mut self, want: &str, previous: Option<&str>) -> Result<(), OpError> {
        if let Some(exec) = self.ctx.executor.clone() {
            return self.switch_with(&*exec, want).await;
        }
        let layout = self.layout();
        // A running `deployctl run` command on this Application ends first.
        let _path = super::switch_lock::lock(&layout.path).await;
        let env = self.env(want, previous);
        let dir = layout.release(want);
        let hooks = self.spec().hooks.clone();
        layout
            .mark_switching(want, self.generation())
            .map_err(|e| {
                OpError::new(
                    "Switch",
                    "SwitchFailed",
                    format!("cannot write {}: {e}", layout.switching_marker().display()),
                )
            })?;
        let tail = hooks::run_hooks(&env, &hooks.before_activate, &dir, "beforeActivate")
            .await
            .map_err(|e| OpError::hook("Switch", e))?;
        self.record_output(&hooks.before_activate, tail);
        layout.switch_current(want).map_err(|e| {
            OpError::new(
                "Switch",
                "SwitchFailed",
                format!(
                    "cannot point {} at {want}: {e}",
                    layout.current_link().display()
                ),
            )
        })?;
        let tail = hooks::run_hooks(&env, &hooks.activate, &dir, "activate")
            .await
            .map_err(|e| OpError::hook("Switch", e))?;
        self.record_output(&hooks.activate, tail);
        self.restart_service(want).await;
        self.report(Some(InstancePhase::Verifying));
        let since = self.check_health(&env, self.min_ready(), true).await?;
        let tail = hooks::run_hooks(&env, &hooks.after_activate, &dir, "afterActivate")
            .await
            .map_err(|e| OpError::hook("Switch", e))?;
        self.record_output(&hooks.after_activate, tail);
        layout.clear_switching().map_err(|e| {
            OpError::new(
                "Switch",
                "SwitchFailed",
                format!("cannot remove {}: {e}", layout.switching_marker().display()),
            )
        })?;
        self.set_ready(since);
        Ok(())
    }

    /// Keeps a hook list's output for the status, unless the list was empty (then the
    /// previous hook's output is more useful).
    fn record_output(&mut self, cmds: &[crate::api::Command], tail: Vec<String>) {
        if !cmds.is_empty() {
            self.status.last_hook_output = tail;
        }
    }

    fn min_ready(&self) -> Duration {
        Duration::from_secs(u64::from(self.spec().min_ready_seconds))
    }

    /// Runs the health check after a switch; while it runs, each change of readiness
    /// is reported (phase Verifying, `healthy`, `readySince`).
    async fn check_health(
        &mut self,
        env: &HookEnv,
        min_ready: Duration,
        report_progress: bool,
    ) -> Result<DateTime<Utc>, OpError> {
        if self.ctx.executor.is_some() {
            // Simulated work: `activate` already stood for the health check.
            return Ok(Utc::now());
        }
        let check = self.spec().health_check.clone();
        let cwd = self.layout().current_link();
        let probe_check = check.clone().unwrap_or_default();
        let (tx, mut rx) = watch::channel(None);
        let service = self.service.as_ref().map(Supervisor::state);
        // The service's restarts and exits reach the status while it is verified.
        let mut service_changes = service.clone();
        let verify = health::verify(
            check.as_ref(),
            min_ready,
            service,
            || health::probe(&probe_check, env, &cwd),
            move |r| {
                let _ = tx.send(r);
            },
        );
        tokio::pin!(verify);
        loop {
            tokio::select! {
                res = &mut verify => {
                    return res.map_err(|e| OpError::new("Health", e.reason(), e.to_string()));
                }
                Ok(()) = rx.changed(), if report_progress => {
                    let ready = *rx.borrow_and_update();
                    self.status.healthy = ready.is_some();
                    self.status.ready_since = ready;
                    self.report(Some(InstancePhase::Verifying));
                }
                () = service_changed(&mut service_changes), if report_progress => {
                    self.report(Some(InstancePhase::Verifying));
                }
            }
        }
    }

    fn set_ready(&mut self, since: DateTime<Utc>) {
        // The verification held the service up for MIN_SERVICE_UPTIME.
        self.service_ok = true;
        self.status.healthy = true;
        self.status.available = true;
        self.status.ready_since = Some(since);
        self.status.failure = None;
    }

    /// `current` already is `want`: after an agent restart (or once a switch is done
    /// elsewhere), only the health check runs; no hook is re-run.
    async fn do_verify(&mut self, want: &str) {
        let was_available =
            self.status.available && self.status.current_version.as_deref() == Some(want);
        let min_ready = if was_available {
            Duration::ZERO
        } else {
            self.min_ready()
        };
        if !was_available {
            self.report(Some(InstancePhase::Verifying));
        }
        let env = self.env(want, None);
        match self.check_health(&env, min_ready, !was_available).await {
            Ok(since) => {
                let keep_since = self.status.ready_since.filter(|_| was_available);
                self.set_ready(keep_since.unwrap_or(since));
                self.memory.verified = Some(want.to_string());
            }
            Err(e) => self.fail(OpKind::Switch, want, e, "SwitchFailed").await,
        }
    }

    async fn do_check_version(&mut self, want: &str) {
        let Some(cmd) = self.spec().get_version.clone() else {
            return;
        };
        let env = self.env(want, None);
        let cwd = self.layout().current_link();
        let out = match hooks::capture_stdout(&env, &cmd, &cwd, "getVersion").await {
            Ok(out) => out,
            Err(e) => {
                return self
                    .fail(
                        OpKind::Switch,
                        want,
                        OpError::hook("Switch", e),
                        "SwitchFailed",
                    )
                    .await
            }
        };
        let got = out.trim();
        if got == want {
            self.memory.version_checked = Some(want.to_string());
            if self
                .status
                .failure
                .as_ref()
                .is_some_and(|f| f.reason == "Drifted")
            {
                self.status.failure = None;
            }
            return;
        }
        let msg = format!("getVersion printed {got:?} but current is {want}");
        let g = self.generation();
        if self.memory.drift_fixed.as_ref() == Some(&(want.to_string(), g)) {
            let e = OpError::new(
                "Switch",
                "Drifted",
                format!("{msg}, still after re-converging"),
            );
            return self.fail(OpKind::Switch, want, e, "Drifted").await;
        }
        self.memory.drift_fixed = Some((want.to_string(), g));
        // Not a `failure` (the controller would count one against the rollout): the
        // message goes with getVersion's output, and a repair that fails records its own.
        self.status.last_hook_output = vec![msg.clone()];
        self.status.healthy = false;
        self.status.available = false;
        tracing::warn!(instance = %self.obj.meta().key(), "{msg}; re-converging");
        self.event("Warning", "Drifted", &msg);
        let disk = self.layout().read();
        self.report_on(Some(InstancePhase::Drifted), &disk);
        // Re-run the switch to the same version: hooks, service, health.
        self.do_switch(want, &disk).await;
    }

    async fn do_restart(&mut self, at: DateTime<Utc>) {
        let Some(current) = self.layout().current_version() else {
            return;
        };
        self.status.healthy = false;
        self.status.available = false;
        self.report(Some(InstancePhase::Verifying));
        let env = self.env(&current, None);
        let dir = self.layout().release(&current);
        let activate = self.spec().hooks.activate.clone();
        let result = async {
            let tail = hooks::run_hooks(&env, &activate, &dir, "activate")
                .await
                .map_err(|e| OpError::hook("Switch", e))?;
            self.record_output(&activate, tail);
            self.restart_service(&current).await;
            self.check_health(&env, self.min_ready(), true).await
        }
        .await;
        match result {
            Ok(since) => {
                self.set_ready(since);
                self.status.restarted_at = Some(at);
                self.event("Normal", "Restarted", &format!("restarted {current}"));
            }
            Err(e) => {
                self.fail(OpKind::Restart, &current, e, "SwitchFailed")
                    .await
            }
        }
    }

    /// Copies the clean jobs' state into the memory the decision reads.
    fn sync_cleaning(&mut self) {
        self.clean_jobs.retain(|j| !j.is_finished());
        let mut st = self
            .cleaning
            .lock()
            .expect("clean state lock: no panics inside");
        self.memory.cleaning = st.running.clone();
        for (v, g) in st.failed.drain(..) {
            self.memory.fail(OpKind::Clean, &v, g);
        }
    }

    /// Cleans releases in the background (clean hooks in each, then delete), so that a
    /// slow clean hook never holds up a switch.
    fn start_clean(&mut self, list: Vec<String>) {
        let generation = self.generation();
        let key = self.obj.meta().key();
        let hooks = self.spec().hooks.clean.clone();
        let layout = self.layout();
        let jobs: Vec<(String, HookEnv, PathBuf)> = list
            .iter()
            .map(|v| (v.clone(), self.env(v, None), layout.release(v)))
            .collect();
        {
            let mut st = self
                .cleaning
                .lock()
                .expect("clean state lock: no panics inside");
            st.running.extend(list.iter().cloned());
        }
        self.memory.cleaning.extend(list);
        let state = self.cleaning.clone();
        let done = self.clean_done.clone();
        self.clean_jobs.push(tokio::spawn(async move {
            for (v, env, dir) in jobs {
                let ok = match hooks::run_hooks(&env, &hooks, &dir, "clean").await {
                    Err(e) => {
                        tracing::warn!(instance = %key, version = %v, error = %e, "clean hook failed; keeping the release");
                        false
                    }
                    Ok(_) => {
                        // Renamed away first, so that an interrupted delete never leaves a
                        // half-deleted release that still looks staged.
                        let d = dir.clone();
                        let doomed = dir.with_file_name(format!(".{v}.tmp-del-{:08x}", rand::random::<u32>()));
                        let delete = move || {
                            std::fs::rename(&d, &doomed)?;
                            std::fs::remove_dir_all(&doomed)
                        };
                        match tokio::task::spawn_blocking(delete).await {
                            Ok(Ok(())) => {
                                tracing::info!(instance = %key, version = %v, "release cleaned");
                                true
                            }
                            other => {
                                tracing::warn!(dir = %dir.display(), result = ?other, "cannot delete release");
                                false
                            }
                        }
                    }
                };
                let mut st = state.lock().expect("clean state lock: no panics inside");
                st.running.remove(&v);
                if !ok {
                    st.failed.push((v, generation));
                }
            }
            done.notify_one();
        }));
    }

    /// The phase when nothing is in progress.
    fn idle_phase(&self, current: Option<&str>) -> InstancePhase {
        let g = self.generation();
        let failed_now = self
            .memory
            .failed
            .iter()
            .any(|(k, _, fg)| *fg == g && *k != OpKind::Clean);
        if failed_now && self.status.failure.is_some() {
            InstancePhase::Failed
        } else if current.is_some() && self.memory.verified.as_deref() == current {
            InstancePhase::Running
        } else {
            InstancePhase::Pending
        }
    }

    /// Reads the disk, fills in its facts and reports the status if it changed.
    fn report(&mut self, phase: Option<InstancePhase>) {
        let disk = self.layout().read();
        self.report_on(phase, &disk);
    }

    /// Reports the status if it changed, with the disk facts of `disk` (read since the
    /// last change to the disk).
    fn report_on(&mut self, phase: Option<InstancePhase>, disk: &Disk) {
        let current = disk.current.clone();
        self.status.phase = phase.unwrap_or_else(|| self.idle_phase(current.as_deref()));
        self.status.service = self
            .service
            .as_ref()
            .map(|s| s.state().borrow().status.clone());
        self.status.observed_generation = self.generation();
        // A release being cleaned is staged no more: the agent would not switch to it.
        self.status.staged_versions = disk.staged_versions();
        let cleaning = &self.memory.cleaning;
        self.status
            .staged_versions
            .retain(|v| !cleaning.contains(v));
        if self.status.current_version != current {
            self.status.current_version = current;
        }
        if self.memory.verified.is_some() && self.memory.verified != self.status.current_version {
            self.memory.verified = None;
        }
        // What changed since the last report, apart from its time: nothing, only releases
        // leaving `stagedVersions`, or more.
        let (unchanged, only_dropped_releases) = match &self.sent {
            Some(w) => {
                let mut a = w.clone();
                a.updated_at = self.status.updated_at;
                a.staged_versions.clone_from(&self.status.staged_versions);
                let rest_same = a == self.status;
                let staged_same = w.staged_versions == self.status.staged_versions;
                let staged_dropped = self
                    .status
                    .staged_versions
                    .iter()
                    .all(|v| w.staged_versions.contains(v));
                (rest_same && staged_same, rest_same && staged_dropped)
            }
            None => (false, false),
        };
        let events = std::mem::take(&mut self.events);
        if unchanged {
            self.reporter.send(None, events);
            return;
        }
        // Releases leaving `stagedVersions` and nothing else: nobody waits on that, so it
        // may wait for the report that usually follows (the staged one after a clean).
        self.status.updated_at = Some(Utc::now());
        self.sent = Some(self.status.clone());
        if only_dropped_releases {
            self.reporter.send_unhurried(self.status.clone(), events);
        } else {
            self.reporter.send(Some(self.status.clone()), events);
        }
    }

    /// Records an Event about this instance; the next report writes it, in the same
    /// transaction as the status it goes with.
    fn event(&mut self, type_: &str, reason: &str, message: &str) {
        self.events.push(PendingEvent::new(type_, reason, message));
    }
}

/// The simulated counterparts of `stage` and `switch`: the same disk steps and reports,
/// with the executor's work in place of fetch, hooks and health checks.
impl Task {
    async fn stage_with(
        &self,
        exec: &dyn super::executor::Executor,
        v: &VersionRef,
    ) -> Result<Vec<String>, OpError> {
        let version = &v.version;
        check_version(version).map_err(|e| OpError::new("Stage", "InvalidVersion", e))?;
        let layout = self.layout();
        let dir = layout.release(version);
        std::fs::create_dir_all(&dir).map_err(|e| {
            OpError::new(
                "Stage",
                "UnpackFailed",
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
        let instance = self.obj.meta().key();
        exec.stage(&instance, version, &dir)
            .await
            .map_err(|e| OpError::new("Stage", "StageFailed", e))?;
        layout.mark_staged(version).map_err(|e| {
            OpError::new(
                "Stage",
                "StageFailed",
                format!("cannot mark {} staged: {e}", dir.display()),
            )
        })?;
        Ok(vec![])
    }

    async fn switch_with(
        &mut self,
        exec: &dyn super::executor::Executor,
        want: &str,
    ) -> Result<(), OpError> {
        let layout = self.layout();
        layout.switch_current(want).map_err(|e| {
            OpError::new(
                "Switch",
                "SwitchFailed",
                format!(
                    "cannot point {} at {want}: {e}",
                    layout.current_link().display()
                ),
            )
        })?;
        self.report(Some(InstancePhase::Verifying));
        let instance = self.obj.meta().key();
        exec.activate(&instance, want)
            .await
            .map_err(|e| OpError::new("Switch", "ActivateFailed", e))?;
        self.set_ready(Utc::now());
        Ok(())
    }
}

/// The default deploy path of an instance, for callers that want to look at its disk.
pub fn default_path(root: &Path, namespace: &str, app: &str) -> PathBuf {
    root.join(namespace).join(app)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Command;

    fn vr(v: &str) -> VersionRef {
        VersionRef {
            version: v.into(),
            sha256: None,
        }
    }

    #[derive(Default)]
    struct Case {
        staged_spec: Vec<&'static str>,
        current_spec: Option<&'static str>,
        disk_staged: Vec<&'static str>,
        disk_current: Option<&'static str>,
        memory: Memory,
        get_version: bool,
        restart: Option<(i64, Option<i64>)>,
        to_clean: Vec<&'static str>,
        switching: bool,
    }

    fn check(c: Case, want: Action) {
        let ts = |s: i64| DateTime::from_timestamp(s, 0).expect("valid timestamp");
        let spec = InstanceSpec {
            staged: c.staged_spec.iter().map(|v| vr(v)).collect(),
            current: c.current_spec.map(String::from),
            get_version: c.get_version.then(|| Command {
                command: "cat VERSION".into(),
                timeout_seconds: 5,
            }),
            restart_at: c.restart.map(|(a, _)| ts(a)),
            ..Default::default()
        };
        let staged: Vec<String> = c.disk_staged.iter().map(|s| s.to_string()).collect();
        let to_clean: Vec<String> = c.to_clean.iter().map(|s| s.to_string()).collect();
        let got = next_action(&Observed {
            spec: &spec,
            generation: 7,
            staged: &staged,
            current: c.disk_current,
            restarted_at: c.restart.and_then(|(_, r)| r.map(ts)),
            to_clean: &to_clean,
            switching: c.switching,
            memory: &c.memory,
        });
        assert_eq!(got, want);
    }

    fn mem(failed: &[(OpKind, &str, i64)], verified: Option<&str>) -> Memory {
        Memory {
            failed: failed
                .iter()
                .map(|(k, v, g)| (*k, v.to_string(), *g))
                .collect(),
            verified: verified.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn next_action_should_stage_before_switching() {
        check(
            Case {
                staged_spec: vec!["1", "2"],
                current_spec: Some("2"),
                disk_staged: vec!["1"],
                ..Default::default()
            },
            Action::Stage(vr("2")),
        );
    }

    #[test]
    fn next_action_should_refuse_a_switch_to_an_unstaged_version() {
        check(
            Case {
                staged_spec: vec!["1"],
                current_spec: Some("2"),
                disk_staged: vec!["1"],
                ..Default::default()
            },
            Action::RefuseSwitch("2".into()),
        );
    }

    #[test]
    fn next_action_should_not_refuse_a_switch_whose_version_failed_to_stage() {
        check(
            Case {
                staged_spec: vec!["1", "2"],
                current_spec: Some("2"),
                disk_staged: vec!["1"],
                disk_current: Some("1"),
                memory: mem(&[(OpKind::Stage, "2", 7)], Some("1")),
                ..Default::default()
            },
            Action::Idle,
        );
    }

    #[test]
    fn next_action_should_switch_to_a_staged_version() {
        check(
            Case {
                staged_spec: vec!["1", "2"],
                current_spec: Some("2"),
                disk_staged: vec!["1", "2"],
                disk_current: Some("1"),
                ..Default::default()
            },
            Action::Switch("2".into()),
        );
    }

    #[test]
    fn next_action_should_not_retry_a_failure_of_the_same_generation() {
        check(
            Case {
                staged_spec: vec!["1", "2"],
                current_spec: Some("2"),
                disk_staged: vec!["1"],
                disk_current: Some("1"),
                memory: mem(
                    &[(OpKind::Stage, "2", 7), (OpKind::Switch, "2", 7)],
                    Some("1"),
                ),
                ..Default::default()
            },
            Action::Idle,
        );
        // The same failure under an older generation is retried.
        check(
            Case {
                staged_spec: vec!["2"],
                disk_staged: vec![],
                memory: mem(&[(OpKind::Stage, "2", 6)], None),
                ..Default::default()
            },
            Action::Stage(vr("2")),
        );
    }

    #[test]
    fn next_action_should_only_verify_when_current_already_matches() {
        check(
            Case {
                staged_spec: vec!["1"],
                current_spec: Some("1"),
                disk_staged: vec!["1"],
                disk_current: Some("1"),
                ..Default::default()
            },
            Action::Verify("1".into()),
        );
        check(
            Case {
                staged_spec: vec!["1"],
                current_spec: Some("1"),
                disk_staged: vec!["1"],
                disk_current: Some("1"),
                memory: mem(&[], Some("1")),
                get_version: true,
                ..Default::default()
            },
            Action::CheckVersion("1".into()),
        );
    }

    #[test]
    fn next_action_should_run_an_interrupted_switch_again_unless_it_failed_this_generation() {
        let base = || Case {
            staged_spec: vec!["1", "2"],
            current_spec: Some("2"),
            disk_staged: vec!["1", "2"],
            disk_current: Some("2"),
            switching: true,
            ..Default::default()
        };
        check(base(), Action::Switch("2".into()));
        // Even after this process verified it (the marker outranks the memory).
        check(
            Case {
                memory: mem(&[], Some("2")),
                ..base()
            },
            Action::Switch("2".into()),
        );
        check(
            Case {
                memory: mem(&[(OpKind::Switch, "2", 7)], None),
                ..base()
            },
            Action::Idle,
        );
        // No marker: a finished switch is only verified.
        check(
            Case {
                switching: false,
                ..base()
            },
            Action::Verify("2".into()),
        );
    }

    #[test]
    fn next_action_should_start_the_clean_then_restart_once_per_new_restart_at() {
        let base = || Case {
            staged_spec: vec!["1"],
            current_spec: Some("1"),
            disk_staged: vec!["1", "0"],
            disk_current: Some("1"),
            memory: mem(&[], Some("1")),
            to_clean: vec!["0"],
            ..Default::default()
        };
        // The clean runs in the background: starting it first delays nothing.
        check(
            Case {
                restart: Some((100, Some(50))),
                ..base()
            },
            Action::Clean(vec!["0".into()]),
        );
        let mut cleaning = mem(&[], Some("1"));
        cleaning.cleaning.insert("0".into());
        check(
            Case {
                restart: Some((100, Some(50))),
                memory: cleaning,
                ..base()
            },
            Action::Restart(DateTime::from_timestamp(100, 0).unwrap()),
        );
        check(
            Case {
                restart: Some((100, Some(100))),
                ..base()
            },
            Action::Clean(vec!["0".into()]),
        );
        check(base(), Action::Clean(vec!["0".into()]));
        check(
            Case {
                memory: mem(&[(OpKind::Clean, "0", 7)], Some("1")),
                ..base()
            },
            Action::Idle,
        );
        let mut cleaning = mem(&[], Some("1"));
        cleaning.cleaning.insert("0".into());
        check(
            Case {
                memory: cleaning,
                ..base()
            },
            Action::Idle,
        );
    }

    #[test]
    fn next_action_should_start_cleaning_before_staging() {
        // 3.0 asked for, 1.0 beyond keepReleases: the clean starts first, so that the
        // staged report also says 1.0 is gone.
        check(
            Case {
                staged_spec: vec!["2.0", "3.0"],
                current_spec: Some("2.0"),
                disk_staged: vec!["1.0", "2.0"],
                disk_current: Some("2.0"),
                memory: mem(&[], Some("2.0")),
                to_clean: vec!["1.0"],
                ..Default::default()
            },
            Action::Clean(vec!["1.0".into()]),
        );
    }

    #[test]
    fn next_action_should_wait_for_a_release_being_cleaned_before_using_it() {
        let mut m = mem(&[], Some("1"));
        m.cleaning.insert("0".into());
        // Wanted current again while being deleted: no switch (and no refusal) yet.
        check(
            Case {
                staged_spec: vec!["0"],
                current_spec: Some("0"),
                disk_staged: vec!["0", "1"],
                disk_current: Some("1"),
                memory: m.clone(),
                ..Default::default()
            },
            Action::Idle,
        );
        // Wanted staged while being deleted (and already gone from disk): staged after.
        check(
            Case {
                staged_spec: vec!["0"],
                disk_staged: vec![],
                memory: m,
                ..Default::default()
            },
            Action::Idle,
        );
    }
}
