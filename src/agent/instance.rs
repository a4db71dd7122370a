//! The per-instance state machine: compares one Instance spec with the disk, converges
//! one step at a time (stage, switch, verify, restart, clean) and reports the status.
//!
//! Level-triggered and restart-safe: [`next_action`] is a plain function of the spec, the
//! disk and what this process remembers; the async shell ([`run`]) carries out one action,
//! re-reads the disk and asks again until nothing is left to do.

use super::artifact::{self, ArtifactError, Retry};
use super::health;
use super::hooks::{self, DeployVars, HookEnv, HookError};
use super::release::Layout;
use super::service::{ServiceSpec, Supervisor};
use super::unpack::{self, UnpackError};
use crate::api::{
    validation::check_version, Instance, InstanceFailure, InstancePhase, InstanceSpec,
    InstanceStatus, Object, ObjectReference, VersionRef,
};
use crate::store::{Client, Error as StoreError, EventRecorder};
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What every instance task shares.
pub struct Context {
    pub client: Client,
    pub machine: String,
    /// The agent's deploy root: default paths and `logs/` live under it.
    pub root: PathBuf,
    pub retry: Retry,
    /// Events about instances (`agent/<machine>`), bound to an expiring lease.
    pub events: EventRecorder,
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
    pub memory: &'a Memory,
}

/// The next step for one instance. Stage first, then switch, then restart, then clean.
pub fn next_action(o: &Observed) -> Action {
    let g = o.generation;
    let m = o.memory;
    for v in &o.spec.staged {
        if !o.staged.contains(&v.version) && !m.failed(OpKind::Stage, &v.version, g) {
            return Action::Stage(v.clone());
        }
    }
    if let Some(want) = o.spec.current.as_deref() {
        let blocked = m.failed(OpKind::Switch, want, g);
        if o.current != Some(want) {
            if !blocked {
                return if o.staged.iter().any(|s| s == want) {
                    Action::Switch(want.to_string())
                } else {
                    Action::RefuseSwitch(want.to_string())
                };
            }
        } else if !blocked {
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
    let clean: Vec<String> = o
        .to_clean
        .iter()
        .filter(|v| !m.failed(OpKind::Clean, v, g))
        .cloned()
        .collect();
    if !clean.is_empty() {
        return Action::Clean(clean);
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
    /// The latest object from the watch; its `status_version` is the CAS base for writes.
    obj: Instance,
    memory: Memory,
    /// The status this task wants reported.
    status: InstanceStatus,
    /// The status last written successfully (None: not yet, or the write failed).
    written: Option<InstanceStatus>,
    service: Option<Supervisor>,
}

/// Runs one instance until it is deleted (the channel yields `None` or closes) or
/// `shutdown` fires; a newer spec replaces an older one not yet acted on (latest wins).
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
        let retry_write = task.written.as_ref() != Some(&task.status);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            // A status write failed (store unreachable): try again later.
            _ = tokio::time::sleep(Duration::from_secs(5)), if retry_write => {}
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
    if let Some(s) = task.service.take() {
        s.stop().await;
    }
}

impl Task {
    fn new(ctx: Arc<Context>, obj: Instance) -> Task {
        let status = obj.status().cloned().unwrap_or_default();
        let generation = obj.meta().generation.unwrap_or(0);
        let mut memory = Memory::default();
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
        Task {
            ctx,
            written: obj.status().cloned(),
            obj,
            memory,
            status,
            service: None,
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
        let path = match &self.spec().path {
            Some(p) => PathBuf::from(p),
            None => self
                .ctx
                .root
                .join(self.namespace())
                .join(&self.spec().application),
        };
        Layout::new(path)
    }

    /// A newer object from the watch.
    fn observe(&mut self, obj: Instance) {
        let ours = self.obj.meta().status_version;
        let generation_changed = obj.meta().generation != self.obj.meta().generation;
        self.obj = obj;
        // Our own last write may be newer than what the watch has delivered so far.
        let sv = &mut self.obj.meta_mut().status_version;
        *sv = (*sv).max(ours);
        if generation_changed {
            // A failure for a version no longer wanted is history.
            let wanted = |v: &str| {
                self.obj.spec().current.as_deref() == Some(v)
                    || self.obj.spec().staged.iter().any(|s| s.version == v)
            };
            if self
                .status
                .failure
                .as_ref()
                .is_some_and(|f| !wanted(&f.version))
            {
                self.status.failure = None;
            }
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

    /// (Re)starts the service for `version`, or starts it if it is not running.
    async fn restart_service(&mut self, version: &str) {
        let Some(spec) = self.service_spec(version) else {
            if let Some(s) = self.service.take() {
                s.stop().await;
            }
            return;
        };
        match &self.service {
            Some(s) => s.restart(spec).await,
            None => self.service = Some(Supervisor::start(spec)),
        }
    }

    /// Steps until idle, reporting after each.
    async fn converge(&mut self, starting: bool) {
        let layout = self.layout();
        if starting {
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
        for _ in 0..64 {
            let staged = layout.staged_versions();
            let current = layout.current_version();
            let mut keep: Vec<String> = self
                .spec()
                .staged
                .iter()
                .map(|v| v.version.clone())
                .collect();
            keep.extend(self.spec().current.clone());
            let to_clean = layout.releases_to_clean(&keep, self.spec().keep_releases.max(1));
            let action = next_action(&Observed {
                spec: self.spec(),
                generation: self.generation(),
                staged: &staged,
                current: current.as_deref(),
                restarted_at: self.status.restarted_at,
                to_clean: &to_clean,
                memory: &self.memory,
            });
            tracing::debug!(instance = %self.obj.meta().key(), ?action, "next action");
            match action {
                Action::Idle => break,
                Action::Stage(v) => self.do_stage(&v).await,
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
                Action::Switch(v) => self.do_switch(&v).await,
                Action::Verify(v) => self.do_verify(&v).await,
                Action::CheckVersion(v) => self.do_check_version(&v).await,
                Action::Restart(at) => self.do_restart(at).await,
                Action::Clean(list) => self.do_clean(&list).await,
            }
            self.report(None).await;
        }
        self.report(None).await;
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
        if kind != OpKind::Stage && kind != OpKind::Clean {
            self.status.healthy = false;
            self.status.available = false;
            self.status.ready_since = None;
        }
        self.report(Some(InstancePhase::Failed)).await;
        self.event("Warning", event_reason, &e.message).await;
    }

    async fn do_stage(&mut self, v: &VersionRef) {
        self.report(Some(InstancePhase::Staging)).await;
        match self.stage(v).await {
            Ok(tail) => {
                self.status.last_hook_output = tail;
                if self
                    .status
                    .failure
                    .as_ref()
                    .is_some_and(|f| f.version == v.version && f.operation == "Stage")
                {
                    self.status.failure = None;
                }
                tracing::info!(instance = %self.obj.meta().key(), version = %v.version, "staged");
                self.event("Normal", "Staged", &format!("staged version {}", v.version))
                    .await;
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
        let fetched = artifact::fetch(&url, expected.as_deref(), &layout.tmp(), self.ctx.retry)
            .await
            .map_err(OpError::artifact)?;
        let file_name = unpack::plain_file_name(art.file_name.as_deref(), &url);
        let format = art.format;
        let releases = layout.releases();
        let ver = version.clone();
        let dir = tokio::task::spawn_blocking(move || {
            let res = unpack::unpack(fetched.path(), format, &file_name, &releases, &ver);
            drop(fetched);
            res
        })
        .await
        .map_err(|e| OpError::new("Stage", "UnpackFailed", format!("unpack task failed: {e}")))?
        .map_err(OpError::unpack)?;
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

    async fn do_switch(&mut self, want: &str) {
        let layout = self.layout();
        let previous = layout.current_version();
        self.status.healthy = false;
        self.status.available = false;
        self.status.ready_since = None;
        self.report(Some(InstancePhase::Switching)).await;
        match self.switch(want, previous.as_deref()).await {
            Ok(()) => {
                self.memory.verified = Some(want.to_string());
                self.memory.version_checked = None;
                let msg = match &previous {
                    Some(p) => format!("switched from {p} to {want}"),
                    None => format!("switched to {want}"),
                };
                tracing::info!(instance = %self.obj.meta().key(), "{msg}");
                self.event("Normal", "Switched", &msg).await;
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
        let env = self.env(want, previous);
        let dir = layout.release(want);
        let hooks = self.spec().hooks.clone();
        let tail = hooks::run_hooks(&env, &hooks.before_activate, &dir, "beforeActivate")
            .await
            .map_err(|e| OpError::hook("Switch", e))?;
        self.status.last_hook_output = tail;
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
        self.status.last_hook_output = tail;
        self.restart_service(want).await;
        self.report(Some(InstancePhase::Verifying)).await;
        let since = self.check_health(&env, self.min_ready()).await?;
        let tail = hooks::run_hooks(&env, &hooks.after_activate, &dir, "afterActivate")
            .await
            .map_err(|e| OpError::hook("Switch", e))?;
        self.status.last_hook_output = tail;
        self.set_ready(since);
        Ok(())
    }

    fn min_ready(&self) -> Duration {
        Duration::from_secs(u64::from(self.spec().min_ready_seconds))
    }

    async fn check_health(
        &self,
        env: &HookEnv,
        min_ready: Duration,
    ) -> Result<DateTime<Utc>, OpError> {
        if self.ctx.executor.is_some() {
            // Simulated work: `activate` already stood for the health check.
            return Ok(Utc::now());
        }
        let check = self.spec().health_check.clone();
        let cwd = self.layout().current_link();
        let probe_check = check.clone().unwrap_or_default();
        health::verify(check.as_ref(), min_ready, || {
            health::probe(&probe_check, env, &cwd)
        })
        .await
        .map_err(|e| OpError::new("Health", e.reason(), e.to_string()))
    }

    fn set_ready(&mut self, since: DateTime<Utc>) {
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
            self.report(Some(InstancePhase::Verifying)).await;
        }
        let env = self.env(want, None);
        match self.check_health(&env, min_ready).await {
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
        self.status.failure = Some(InstanceFailure {
            version: want.to_string(),
            operation: "Switch".into(),
            reason: "Drifted".into(),
            message: msg.clone(),
            time: Utc::now(),
        });
        self.status.healthy = false;
        self.status.available = false;
        self.report(Some(InstancePhase::Drifted)).await;
        tracing::warn!(instance = %self.obj.meta().key(), "{msg}; re-converging");
        self.event("Warning", "Drifted", &msg).await;
        // Re-run the switch to the same version: hooks, service, health.
        self.do_switch(want).await;
    }

    async fn do_restart(&mut self, at: DateTime<Utc>) {
        let Some(current) = self.layout().current_version() else {
            return;
        };
        self.status.healthy = false;
        self.status.available = false;
        self.report(Some(InstancePhase::Verifying)).await;
        let env = self.env(&current, None);
        let dir = self.layout().release(&current);
        let activate = self.spec().hooks.activate.clone();
        let result = async {
            let tail = hooks::run_hooks(&env, &activate, &dir, "activate")
                .await
                .map_err(|e| OpError::hook("Switch", e))?;
            self.status.last_hook_output = tail;
            self.restart_service(&current).await;
            self.check_health(&env, self.min_ready()).await
        }
        .await;
        match result {
            Ok(since) => {
                self.set_ready(since);
                self.status.restarted_at = Some(at);
                self.event("Normal", "Restarted", &format!("restarted {current}"))
                    .await;
            }
            Err(e) => {
                self.fail(OpKind::Restart, &current, e, "SwitchFailed")
                    .await
            }
        }
    }

    async fn do_clean(&mut self, list: &[String]) {
        let layout = self.layout();
        for v in list {
            let env = self.env(v, None);
            let dir = layout.release(v);
            if let Err(e) = hooks::run_hooks(&env, &self.spec().hooks.clean, &dir, "clean").await {
                tracing::warn!(instance = %self.obj.meta().key(), version = %v, error = %e, "clean hook failed; keeping the release");
                self.memory.fail(OpKind::Clean, v, self.generation());
                continue;
            }
            let d = dir.clone();
            let res = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&d)).await;
            match res {
                Ok(Ok(())) => {
                    tracing::info!(instance = %self.obj.meta().key(), version = %v, "release cleaned")
                }
                other => {
                    tracing::warn!(dir = %dir.display(), result = ?other, "cannot delete release");
                    self.memory.fail(OpKind::Clean, v, self.generation());
                }
            }
        }
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

    /// Fills in the disk facts and writes the status if it changed.
    async fn report(&mut self, phase: Option<InstancePhase>) {
        let layout = self.layout();
        let current = layout.current_version();
        self.status.phase = phase.unwrap_or_else(|| self.idle_phase(current.as_deref()));
        self.status.observed_generation = self.generation();
        self.status.staged_versions = layout.staged_versions();
        if self.status.current_version != current {
            self.status.current_version = current;
        }
        if self.memory.verified.is_some() && self.memory.verified != self.status.current_version {
            self.memory.verified = None;
        }
        let unchanged = self.written.as_ref().is_some_and(|w| {
            let mut a = w.clone();
            a.updated_at = self.status.updated_at;
            a == self.status
        });
        if unchanged {
            return;
        }
        self.status.updated_at = Some(Utc::now());
        self.write_status().await;
    }

    /// `replace_status` with CAS; on conflict, re-read our own status revision and retry.
    async fn write_status(&mut self) {
        let client = self.ctx.client.clone();
        let mut obj = self.obj.clone();
        *obj.status_mut() = Some(self.status.clone());
        for _ in 0..5 {
            match client.replace_status(&obj).await {
                Ok(done) => {
                    self.obj.meta_mut().status_version = done.meta().status_version;
                    self.written = Some(self.status.clone());
                    return;
                }
                Err(StoreError::Conflict(_)) => {
                    match client.get::<Instance>(obj.namespace(), obj.name()).await {
                        Ok(Some(fresh)) => {
                            obj.meta_mut().status_version = fresh.meta().status_version
                        }
                        Ok(None) => {
                            tracing::info!(instance = %obj.meta().key(), "instance gone; status not written");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(instance = %obj.meta().key(), error = %e, "cannot re-read instance");
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(instance = %obj.meta().key(), error = %e, "cannot write status; will retry");
                    return;
                }
            }
        }
        tracing::warn!(instance = %obj.meta().key(), "status write kept conflicting; will retry");
    }

    /// Records an Event about this instance; best effort (failures are logged).
    async fn event(&self, type_: &str, reason: &str, message: &str) {
        let object = ObjectReference {
            kind: Instance::KIND.to_string(),
            namespace: self.obj.namespace().map(str::to_string),
            name: self.obj.name().to_string(),
        };
        self.ctx.events.record(object, type_, reason, message).await;
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
        self.report(Some(InstancePhase::Verifying)).await;
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

    struct Case {
        staged_spec: Vec<&'static str>,
        current_spec: Option<&'static str>,
        disk_staged: Vec<&'static str>,
        disk_current: Option<&'static str>,
        memory: Memory,
        get_version: bool,
        restart: Option<(i64, Option<i64>)>,
        to_clean: Vec<&'static str>,
    }

    impl Default for Case {
        fn default() -> Self {
            Case {
                staged_spec: vec![],
                current_spec: None,
                disk_staged: vec![],
                disk_current: None,
                memory: Memory::default(),
                get_version: false,
                restart: None,
                to_clean: vec![],
            }
        }
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
    fn next_action_should_restart_once_per_new_restart_at_then_clean() {
        let base = || Case {
            staged_spec: vec!["1"],
            current_spec: Some("1"),
            disk_staged: vec!["1", "0"],
            disk_current: Some("1"),
            memory: mem(&[], Some("1")),
            to_clean: vec!["0"],
            ..Default::default()
        };
        check(
            Case {
                restart: Some((100, Some(50))),
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
    }
}
