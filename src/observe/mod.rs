//! Prometheus metrics of the controller and the agent, and their HTTP endpoints.
//!
//! # Layout
//!
//! - this file: every metric deployctl exports, in one process-wide [`Metrics`], and the
//!   readiness flags `/readyz` answers from.
//! - [`http`]: the `--http-addr` server: `/metrics`, `/healthz`, `/readyz`.
//!
//! The metrics are process-wide, as the Prometheus Go client's default registry is: the
//! work queue, the store decorator, the runtime and the agent's steps record into them
//! without a handle threaded through every call. A daemon runs one controller or one agent
//! per process, so one set is exact there; processes that run several (`deployctl up`,
//! in-process tests) add theirs together and serve none of them.
//!
//! Label values are bounded: kinds, operations, results, hook names, states, Task phases, and the
//! namespace/name/phase/version of Rollouts (one series per Rollout). No metric of the
//! controller carries a machine's name.

pub mod http;

use crate::api::TaskPhase;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;

/// The `Content-Type` of [`Metrics::encode`]'s output (OpenMetrics text, which
/// Prometheus negotiates and scrapes as well as its own text format).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which daemon's metrics to serve: each exports its own and the store's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Controller,
    Agent,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutInfoLabels {
    pub namespace: String,
    pub rollout: String,
    pub phase: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutMachinesLabels {
    pub namespace: String,
    pub rollout: String,
    /// `desired`, `staged`, `updated`, `available` or `failed`.
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpResultLabels {
    pub op: &'static str,
    /// `ok`, `compare_failed` (a transaction whose compares did not hold) or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabel {
    pub hook: &'static str,
}

/// A family of histograms that all share one bucket layout.
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Store calls: 0.5 ms .. about 16 s.
fn store_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Reconciles: 1 ms .. about 33 s.
fn reconcile_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Rollouts, stages and hooks: 0.1 s .. about 1.8 h.
fn long_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 2.0, 17))
}

/// The counts of a Rollout's machines, as its status has them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineCounts {
    pub desired: u32,
    pub staged: u32,
    pub updated: u32,
    pub available: u32,
    pub failed: u32,
}

/// Every metric deployctl exports; one per process ([`metrics`]).
pub struct Metrics {
    controller: Registry,
    agent: Registry,
    rollout_info: Family<RolloutInfoLabels, Gauge>,
    rollout_machines: Family<RolloutMachinesLabels, Gauge>,
    rollout_duration: HistogramFamily<ResultLabel>,
    reconcile_duration: HistogramFamily<KindLabel>,
    reconcile_errors: Family<KindLabel, Counter>,
    workqueue_depth: Gauge,
    workqueue_adds: Counter,
    workqueue_retries: Counter,
    store_requests: Family<OpResultLabels, Counter>,
    store_duration: HistogramFamily<OpLabel>,
    leader: Gauge,
    machines: Family<StateLabel, Gauge>,
    tasks: Family<PhaseLabel, Gauge>,
    agent_stage_duration: Histogram,
    agent_hook_duration: HistogramFamily<HookLabel>,
    agent_switches: Family<ResultLabel, Counter>,
    agent_service_restarts: Counter,
    agent_artifact_bytes: Counter,
    agent_task_commands: Family<ResultLabel, Counter>,
    agent_task_command_duration: Histogram,
    /// The info series each Rollout has now, so that a new phase or version replaces
    /// the old series instead of adding one.
    rollout_series: Mutex<HashMap<(String, String), RolloutInfoLabels>>,
    /// `/readyz` of the controller: leading, with every informer cache synced.
    controller_synced: AtomicBool,
    /// `/readyz` of the agent: its Machine and presence lease are registered.
    agent_registered: AtomicBool,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            controller: Registry::default(),
            agent: Registry::default(),
            rollout_info: Family::default(),
            rollout_machines: Family::default(),
            rollout_duration: Family::new_with_constructor(long_histogram),
            reconcile_duration: Family::new_with_constructor(reconcile_histogram),
            reconcile_errors: Family::default(),
            workqueue_depth: Gauge::default(),
            workqueue_adds: Counter::default(),
            workqueue_retries: Counter::default(),
            store_requests: Family::default(),
            store_duration: Family::new_with_constructor(store_histogram),
            leader: Gauge::default(),
            machines: Family::default(),
            tasks: Family::default(),
            agent_stage_duration: long_histogram(),
            agent_hook_duration: Family::new_with_constructor(long_histogram),
            agent_switches: Family::default(),
            agent_service_restarts: Counter::default(),
            agent_artifact_bytes: Counter::default(),
            agent_task_commands: Family::default(),
            agent_task_command_duration: long_histogram(),
            rollout_series: Mutex::new(HashMap::new()),
            controller_synced: AtomicBool::new(false),
            agent_registered: AtomicBool::new(false),
        };
        m.initialize();
        m.register()
    }

    /// Creates the series whose label values are known ahead at zero, so that they are
    /// on `/metrics` (and `rate()` sees their first increase) before anything happens.
    fn initialize(&self) {
        // `get_or_create` creates the series; its read guard is dropped at once.
        for kind in ["Machine", "Application", "Rollout"] {
            let kind = KindLabel { kind };
            drop(self.reconcile_errors.get_or_create(&kind));
            drop(self.reconcile_duration.get_or_create(&kind));
        }
        for result in ["Complete", "RolledBack", "Aborted"] {
            drop(self.rollout_duration.get_or_create(&ResultLabel {
                result: result.to_string(),
            }));
        }
        for result in ["ok", "failed"] {
            drop(self.agent_switches.get_or_create(&ResultLabel {
                result: result.to_string(),
            }));
        }
        for hook in ["install", "beforeActivate", "activate", "afterActivate"] {
            drop(self.agent_hook_duration.get_or_create(&HookLabel { hook }));
        }
        for result in TASK_COMMAND_RESULTS {
            drop(self.agent_task_commands.get_or_create(&ResultLabel {
                result: result.to_string(),
            }));
        }
    }

    /// Registers each metric with the daemon that exports it (the store's with both).
    /// prometheus-client adds `_total` to counters' names.
    fn register(mut self) -> Metrics {
        let c = &mut self.controller;
        c.register(
            "deployctl_rollout_info",
            "A Rollout's phase and version (target, else stable): 1 per Rollout",
            self.rollout_info.clone(),
        );
        c.register(
            "deployctl_rollout_machines",
            "A Rollout's machines by state, as its status counts them",
            self.rollout_machines.clone(),
        );
        c.register(
            "deployctl_rollout_duration_seconds",
            "From a revision's start to its result (Complete, RolledBack, Aborted, Superseded)",
            self.rollout_duration.clone(),
        );
        c.register(
            "deployctl_reconcile_duration_seconds",
            "Time one reconcile took, by kind",
            self.reconcile_duration.clone(),
        );
        c.register(
            "deployctl_reconcile_errors",
            "Reconciles that failed (an error or a panic), by kind",
            self.reconcile_errors.clone(),
        );
        c.register(
            "deployctl_workqueue_depth",
            "Keys waiting in the work queue (ready or delayed)",
            self.workqueue_depth.clone(),
        );
        c.register(
            "deployctl_workqueue_adds",
            "Keys added to the work queue",
            self.workqueue_adds.clone(),
        );
        c.register(
            "deployctl_workqueue_retries",
            "Keys queued again after a failure, with backoff",
            self.workqueue_retries.clone(),
        );
        c.register(
            "deployctl_leader",
            "1 while this controller leads, 0 otherwise",
            self.leader.clone(),
        );
        c.register(
            "deployctl_machines",
            "Machines by state: ready and not_ready partition them; cordoned counts those \
             marked unschedulable (ready or not)",
            self.machines.clone(),
        );
        c.register(
            "deployctl_tasks",
            "Tasks (deployctl run) by phase: Pending, Running, Succeeded, Failed",
            self.tasks.clone(),
        );
        for r in [&mut self.controller, &mut self.agent] {
            r.register(
                "deployctl_store_requests",
                "Store calls by operation and result",
                self.store_requests.clone(),
            );
            r.register(
                "deployctl_store_request_duration_seconds",
                "Time a store call took, by operation",
                self.store_duration.clone(),
            );
        }
        let a = &mut self.agent;
        a.register(
            "deployctl_agent_stage_duration_seconds",
            "Time to stage a version: fetch, verify, unpack and install hooks",
            self.agent_stage_duration.clone(),
        );
        a.register(
            "deployctl_agent_hook_duration_seconds",
            "Time a list of deploy hooks took, by hook",
            self.agent_hook_duration.clone(),
        );
        a.register(
            "deployctl_agent_switches",
            "Switches to a version, by result (ok, failed)",
            self.agent_switches.clone(),
        );
        a.register(
            "deployctl_agent_service_restarts",
            "Restarts of supervised services after they exited",
            self.agent_service_restarts.clone(),
        );
        a.register(
            "deployctl_agent_artifact_bytes",
            "Artifact bytes downloaded",
            self.agent_artifact_bytes.clone(),
        );
        a.register(
            "deployctl_agent_task_commands",
            "Task commands (deployctl run) on this machine, by result (ok, failed, timeout, \
             interrupted)",
            self.agent_task_commands.clone(),
        );
        a.register(
            "deployctl_agent_task_command_duration_seconds",
            "Time a Task's command ran, from its start (after any switch) to its end",
            self.agent_task_command_duration.clone(),
        );
        self
    }

    /// The metrics `role` serves, in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn encode(&self, role: Role) -> String {
        let registry = match role {
            Role::Controller => &self.controller,
            Role::Agent => &self.agent,
        };
        let mut out = String::new();
        // Writing into a String cannot fail, and every metric encodes.
        prometheus_client::encoding::text::encode(&mut out, registry)
            .expect("encoding metrics into a String never fails");
        out
    }

    // ---- controller ----

    /// Sets a Rollout's info and machine series from its status just written.
    pub fn set_rollout(
        &self,
        namespace: &str,
        rollout: &str,
        phase: &str,
        version: &str,
        counts: MachineCounts,
    ) {
        let info = RolloutInfoLabels {
            namespace: namespace.to_string(),
            rollout: rollout.to_string(),
            phase: phase.to_string(),
            version: version.to_string(),
        };
        let key = (namespace.to_string(), rollout.to_string());
        {
            let mut series = self.lock_series();
            if let Some(old) = series.insert(key, info.clone()) {
                if old != info {
                    self.rollout_info.remove(&old);
                }
            }
        }
        self.rollout_info.get_or_create(&info).set(1);
        for (state, n) in [
            ("desired", counts.desired),
            ("staged", counts.staged),
            ("updated", counts.updated),
            ("available", counts.available),
            ("failed", counts.failed),
        ] {
            self.rollout_machines
                .get_or_create(&RolloutMachinesLabels {
                    namespace: namespace.to_string(),
                    rollout: rollout.to_string(),
                    state,
                })
                .set(i64::from(n));
        }
    }

    /// Removes a deleted Rollout's series.
    pub fn forget_rollout(&self, namespace: &str, rollout: &str) {
        let old = self
            .lock_series()
            .remove(&(namespace.to_string(), rollout.to_string()));
        if let Some(old) = old {
            self.rollout_info.remove(&old);
        }
        for state in ["desired", "staged", "updated", "available", "failed"] {
            self.rollout_machines.remove(&RolloutMachinesLabels {
                namespace: namespace.to_string(),
                rollout: rollout.to_string(),
                state,
            });
        }
    }

    /// Removes every Rollout and machine series: a controller that stops leading no
    /// longer knows them, and the new leader exports them.
    pub fn forget_fleet(&self) {
        self.lock_series().clear();
        self.rollout_info.clear();
        self.rollout_machines.clear();
        self.machines.clear();
        self.tasks.clear();
    }

    fn lock_series(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, String), RolloutInfoLabels>> {
        // Every critical section is a plain map operation; a poisoned map is still whole.
        self.rollout_series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// One revision of a Rollout ended with `result` after `took`.
    pub fn rollout_finished(&self, result: &str, took: Duration) {
        self.rollout_duration
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// One reconcile of `kind` took `took`; `failed` when it returned an error or panicked.
    pub fn reconciled(&self, kind: &'static str, took: Duration, failed: bool) {
        let kind = KindLabel { kind };
        self.reconcile_duration
            .get_or_create(&kind)
            .observe(took.as_secs_f64());
        if failed {
            self.reconcile_errors.get_or_create(&kind).inc();
        }
    }

    /// The work queue's depth now, after `added` keys were added (`retry`: after a failure).
    pub fn queue_changed(&self, depth: usize, added: bool, retry: bool) {
        self.workqueue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        if added {
            self.workqueue_adds.inc();
        }
        if retry {
            self.workqueue_retries.inc();
        }
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The fleet's machines: ready, not ready, and cordoned (of either).
    pub fn set_machines(&self, ready: usize, not_ready: usize, cordoned: usize) {
        for (state, n) in [
            ("ready", ready),
            ("not_ready", not_ready),
            ("cordoned", cordoned),
        ] {
            self.machines
                .get_or_create(&StateLabel { state })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The Tasks, one phase each: every phase is set, to 0 when no Task has it.
    pub fn set_tasks(&self, phases: impl IntoIterator<Item = TaskPhase>) {
        let mut counts: HashMap<&'static str, i64> = TASK_PHASES.iter().map(|p| (*p, 0)).collect();
        for p in phases {
            *counts.entry(task_phase_name(p)).or_default() += 1;
        }
        for (phase, n) in counts {
            self.tasks.get_or_create(&PhaseLabel { phase }).set(n);
        }
    }

    pub fn set_controller_synced(&self, synced: bool) {
        self.controller_synced.store(synced, Ordering::Relaxed);
    }

    /// `/readyz` of the controller: `Err` says why not.
    pub fn controller_ready(&self) -> Result<(), &'static str> {
        if self.leader.get() != 1 {
            return Err("not leading: a standby controller has no caches");
        }
        if !self.controller_synced.load(Ordering::Relaxed) {
            return Err("informer caches not synced yet");
        }
        Ok(())
    }

    // ---- store ----

    /// One store call of `op` took `took`; `result` is `ok`, `compare_failed` or `error`.
    pub fn store_request(&self, op: &'static str, result: &'static str, took: Duration) {
        self.store_requests
            .get_or_create(&OpResultLabels { op, result })
            .inc();
        self.store_duration
            .get_or_create(&OpLabel { op })
            .observe(took.as_secs_f64());
    }

    // ---- agent ----

    pub fn set_agent_registered(&self, registered: bool) {
        self.agent_registered.store(registered, Ordering::Relaxed);
    }

    /// `/readyz` of the agent: `Err` says why not.
    pub fn agent_ready(&self) -> Result<(), &'static str> {
        if self.agent_registered.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("machine not registered yet")
        }
    }

    pub fn staged(&self, took: Duration) {
        self.agent_stage_duration.observe(took.as_secs_f64());
    }

    /// A list of hooks named `hook` (`install`, `activate`, …) ran for `took`.
    pub fn hook_ran(&self, hook: &'static str, took: Duration) {
        self.agent_hook_duration
            .get_or_create(&HookLabel { hook })
            .observe(took.as_secs_f64());
    }

    pub fn switched(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.agent_switches
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn service_restarted(&self) {
        self.agent_service_restarts.inc();
    }

    pub fn artifact_bytes(&self, n: u64) {
        self.agent_artifact_bytes.inc_by(n);
    }

    /// A Task's command ended with `result` (one of [`TASK_COMMAND_RESULTS`]) after
    /// running `took`; `None` when its time is unknown (interrupted by a crash).
    pub fn task_command_ended(&self, result: &'static str, took: Option<Duration>) {
        self.agent_task_commands
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
        if let Some(took) = took {
            self.agent_task_command_duration.observe(took.as_secs_f64());
        }
    }
}

/// The results `deployctl_agent_task_commands` counts.
pub const TASK_COMMAND_RESULTS: [&str; 4] = ["ok", "failed", "timeout", "interrupted"];

/// The phases `deployctl_tasks` counts.
const TASK_PHASES: [&str; 4] = ["Pending", "Running", "Succeeded", "Failed"];

fn task_phase_name(p: TaskPhase) -> &'static str {
    match p {
        TaskPhase::Pending => "Pending",
        TaskPhase::Running => "Running",
        TaskPhase::Succeeded => "Succeeded",
        TaskPhase::Failed => "Failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records one of everything, so that every family has a series (families with
    /// label sets still unknown, like a Rollout's, are not shown before their first).
    fn record_one_of_each() {
        let m = metrics();
        m.set_rollout(
            "unit-prime",
            "api",
            "Complete",
            "1.0.0",
            MachineCounts::default(),
        );
        m.set_machines(1, 0, 0);
        m.set_tasks([TaskPhase::Running]);
        m.store_request("get", "ok", Duration::from_millis(1));
    }

    #[test]
    fn every_metric_the_issue_lists_should_be_exported_by_its_daemon() {
        record_one_of_each();
        let names = |role| {
            let text = metrics().encode(role);
            assert!(text.ends_with("# EOF\n"), "{text}");
            text
        };
        let controller = names(Role::Controller);
        for name in [
            "deployctl_rollout_info",
            "deployctl_rollout_machines",
            "deployctl_rollout_duration_seconds",
            "deployctl_reconcile_duration_seconds",
            "deployctl_reconcile_errors",
            "deployctl_workqueue_depth",
            "deployctl_workqueue_adds",
            "deployctl_workqueue_retries",
            "deployctl_store_requests",
            "deployctl_store_request_duration_seconds",
            "deployctl_leader",
            "deployctl_machines",
            "deployctl_tasks",
        ] {
            assert!(controller.contains(&format!("# TYPE {name} ")), "{name}");
        }
        assert!(!controller.contains("deployctl_agent_"), "{controller}");
        let agent = names(Role::Agent);
        for name in [
            "deployctl_agent_stage_duration_seconds",
            "deployctl_agent_hook_duration_seconds",
            "deployctl_agent_switches",
            "deployctl_agent_service_restarts",
            "deployctl_agent_artifact_bytes",
            "deployctl_agent_task_commands",
            "deployctl_agent_task_command_duration_seconds",
            "deployctl_store_requests",
        ] {
            assert!(agent.contains(&format!("# TYPE {name} ")), "{name}");
        }
        assert!(!agent.contains("deployctl_rollout_"), "{agent}");
    }

    #[test]
    fn the_grafana_dashboard_should_be_json_with_deploy_annotations_on_exported_metrics() {
        let text = include_str!("../../manifests/grafana/deployctl.json");
        let dashboard: serde_json::Value =
            serde_json::from_str(text).expect("manifests/grafana/deployctl.json is JSON");
        record_one_of_each();
        let annotations = dashboard["annotations"]["list"]
            .as_array()
            .expect("the dashboard has annotations");
        assert!(
            annotations.iter().any(|a| a["expr"]
                .as_str()
                .is_some_and(|e| e.contains("deployctl_rollout_info"))),
            "deploys are annotations from deployctl_rollout_info"
        );
        let exported = format!(
            "{}{}",
            metrics().encode(Role::Controller),
            metrics().encode(Role::Agent)
        );
        let mut used = 0;
        for (i, _) in text.match_indices("deployctl_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let family = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                exported.contains(&format!("# TYPE {family} ")),
                "the dashboard uses {name}, which is not exported"
            );
            used += 1;
        }
        assert!(used > 15, "{used}");
    }

    #[test]
    fn a_rollout_that_changes_version_should_keep_one_info_series() {
        let m = metrics();
        let counts = MachineCounts {
            desired: 3,
            updated: 1,
            ..MachineCounts::default()
        };
        m.set_rollout("unit-ns", "api", "Progressing", "1.0.0", counts);
        m.set_rollout("unit-ns", "api", "Complete", "1.0.1", counts);
        let text = m.encode(Role::Controller);
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("deployctl_rollout_info{") && l.contains("unit-ns"))
            .collect();
        assert_eq!(series.len(), 1, "{text}");
        assert!(series[0].contains("phase=\"Complete\""), "{}", series[0]);
        assert!(series[0].contains("version=\"1.0.1\""), "{}", series[0]);
        assert!(text.contains(
            "deployctl_rollout_machines{namespace=\"unit-ns\",rollout=\"api\",state=\"desired\"} 3"
        ));
        m.forget_rollout("unit-ns", "api");
        let text = m.encode(Role::Controller);
        assert!(!text.contains("unit-ns"), "{text}");
    }
}
