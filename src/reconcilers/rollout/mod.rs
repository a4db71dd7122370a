//! Rollout: stage → gate → switch (in slots, through canary steps) → verify → complete,
//! with the failure policy, abort, retry, undo and restart.
//!
//! [`plan`] is the whole decision: from the Rollout and its Instances (as cached) to the
//! Instance specs it wants and the Rollout status. It never reads a store.
//!
//! It reads as its phases, in order, each a method of `Decision` in the file named for
//! it: `revision` (a new version opens a revision), `requests` (promote, abort, retry,
//! undo), `observe` (the counts), `failure_policy`, `steps` (canary steps), `stage`,
//! `waves` (waves and switch order), `depends` (`dependsOn`), `switch` (in slots, and
//! restarts), `complete` (and the progress deadline), `conditions`
//! (phase, message, conditions). ARCHITECTURE.md lists the status fields each one owns.

use super::EventNote;
use crate::api::{Instance, Rollout, RolloutSpec, RolloutStatus, VersionRef};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
// What the decision tests (`tests.rs`) take with `use super::*` beyond the above.
#[cfg(test)]
use {
    crate::api::{
        find_condition, ConditionStatus, FailureAction, RolloutPhase, ANNOTATION_ABORT,
        ANNOTATION_PROMOTE, ANNOTATION_RETRY, ANNOTATION_UNDO,
    },
    chrono::Duration as ChronoDuration,
};

mod analysis;
mod complete;
mod conditions;
mod depends;
mod failure_policy;
mod observe;
mod requests;
mod revision;
mod stage;
mod steps;
mod switch;
mod waves;

pub use depends::{
    display as depends_display, find_cycle, DependencyInput, CONDITION_DEPENDENCIES,
    PAUSE_DEPENDENCY_DEGRADED,
};
pub use waves::human_seconds;

/// Pause reasons the controller sets (a user's pause is `spec.paused`).
pub const PAUSE_STEP: &str = "CanaryPauseStep";
pub const PAUSE_FAILURE: &str = "FailurePolicy";
/// An analysis step was inconclusive: `rollout promote` continues, `rollout abort` goes back.
pub const PAUSE_ANALYSIS: &str = "AnalysisInconclusive";
/// Why a Rollout went back to its stable version.
pub const REASON_ABORTED: &str = "RolloutAborted";
pub const REASON_ROLLED_BACK: &str = "RolledBack";
/// An analysis step failed: the rollout went back whatever `failurePolicy` says.
pub const REASON_ANALYSIS_FAILED: &str = "AnalysisFailed";
/// Why a Rollout cannot roll out: its Application's selector matches no ready machine.
pub const REASON_NO_MACHINES: &str = "NoMachines";
/// At most this many failed machines are listed in the status (per revision).
pub const MAX_FAILED_MACHINES: usize = 10;
/// At most this many revisions keep their failures (`failureHistory`): the current one
/// and the last ones that failed, each up to 10 machines with their output.
pub const MAX_FAILED_REVISIONS: usize = 3;
/// Lines of hook output kept per failed machine: the agent's tail is 20 lines.
pub const MAX_OUTPUT_LINES: usize = 20;
/// Characters kept per output line, and [`MAX_MESSAGE_CHARS`] per message: a status is
/// rewritten on every change, so what a hook prints must not grow it without bound.
pub const MAX_LINE_CHARS: usize = 200;
pub const MAX_MESSAGE_CHARS: usize = 1024;

/// What the Rollout decision sees.
pub struct RolloutInput<'a> {
    pub rollout: &'a Rollout,
    /// The Application's Instances as the Application plan wants them (existing ones with
    /// their status; new ones without). The plan copies on write (`Arc::make_mut`) only
    /// those whose spec it changes; the others come back as the same `Arc`.
    pub instances: Vec<Arc<Instance>>,
    /// Machines that count: selected, ready and schedulable.
    pub desired_machines: &'a MachineSet<'a>,
    pub now: DateTime<Utc>,
    /// Machine labels (for waves) and the Rollouts this one depends on.
    pub topology: Topology<'a>,
}

/// What waves and `dependsOn` need beyond the Application's Instances.
#[derive(Default)]
pub struct Topology<'a> {
    /// Each machine's labels by name; filled only when the Rollout has waves.
    pub labels: rustc_hash::FxHashMap<&'a str, &'a std::collections::BTreeMap<String, String>>,
    pub dependencies: DependencyInput,
}

/// What the Rollout decision wants.
#[derive(Debug)]
pub struct RolloutPlan {
    /// Every Instance with the spec it should have (write those that differ); one whose
    /// spec the plan left alone is the `Arc` it was given.
    pub instances: Vec<Arc<Instance>>,
    pub status: RolloutStatus,
    /// Wake up again by then (timed pause, progress deadline) even without a change.
    pub requeue_after: Option<Duration>,
    pub events: Vec<EventNote>,
}

/// A set of machine names. FxHash: the controller builds and probes one of 10,000 names
/// per decision, and SipHash was a seventh of that decision (`bench-reconcile`).
pub type MachineSet<'a> = rustc_hash::FxHashSet<&'a str>;

/// The stable version with its digest, as Instances carry it.
pub fn stable_ref(status: &RolloutStatus) -> Option<VersionRef> {
    status.stable_version.as_ref().map(|v| VersionRef {
        version: v.clone(),
        sha256: status.stable_sha256.clone(),
    })
}

/// How one Instance stands with respect to a version.
struct View<'a> {
    inst: &'a Instance,
}

impl View<'_> {
    /// The status answers the current spec.
    fn fresh(&self) -> bool {
        let st = self.inst.status.as_ref();
        st.is_some_and(|s| Some(s.observed_generation) == self.inst.metadata.generation)
    }
    fn current(&self) -> Option<&str> {
        self.inst.status.as_ref()?.current_version.as_deref()
    }
    fn has_staged(&self, v: &str) -> bool {
        self.inst
            .status
            .as_ref()
            .is_some_and(|s| s.staged_versions.iter().any(|x| x == v))
    }
    fn asked_to_stage(&self, v: &str) -> bool {
        self.inst.spec.staged.iter().any(|x| x.version == v)
    }
    /// Runs `v`, switch done (hooks ran, health held for minReadySeconds).
    fn available_on(&self, v: &str) -> bool {
        self.current() == Some(v) && self.inst.status.as_ref().is_some_and(|s| s.available)
    }
    /// Failed an operation on `v`, and that failure answers the current spec.
    fn failed(&self, v: &str) -> bool {
        self.fresh()
            && self
                .inst
                .status
                .as_ref()
                .and_then(|s| s.failure.as_ref())
                .is_some_and(|f| f.version == v)
    }
    /// Not serving normally: switching, verifying, unhealthy or failed. Uses a slot.
    fn unavailable(&self) -> bool {
        let Some(want) = self.inst.spec.current.as_deref() else {
            return false;
        };
        let st = self.inst.status.as_ref();
        let failed = st.and_then(|s| s.failure.as_ref()).is_some() && self.fresh();
        let settled = self.current() == Some(want) && st.is_some_and(|s| s.available && s.healthy);
        let restarting = self.inst.spec.restart_at.is_some()
            && st.is_some_and(|s| s.restarted_at != self.inst.spec.restart_at);
        failed || !settled || restarting
    }
}

/// What the phases of one decision share: the inputs, what earlier phases found, and the
/// status, events and wake-up time being built. Each phase is a method in the file named
/// for it.
struct Decision<'a> {
    rollout: &'a Rollout,
    spec: &'a RolloutSpec,
    /// `spec.version`: the version this decision rolls out.
    target: &'a str,
    instances: Vec<Arc<Instance>>,
    now: DateTime<Utc>,
    /// The status being built, from the one read.
    st: RolloutStatus,
    events: Vec<EventNote>,
    /// The earliest wake-up any phase asked for (see [`Decision::wake`]).
    requeue: Option<Duration>,
    /// The stable version as read (or adopted from the fleet by the new revision phase):
    /// what an abort or a rollback goes back to.
    stable: Option<String>,
    /// The digest that goes with `stable`.
    stable_sha: Option<String>,
    /// This decision forgot the revision's failures (a new version or a retry): the
    /// failure counts start from what the machines report now.
    failures_reset: bool,
    /// A promote not yet handled (its token), read by the requests phase and acted on by
    /// the steps phase, after the failure policy.
    promote: Option<String>,
    /// `rollout undo` made this generation: go straight to every machine.
    undo: bool,
    /// Indices (into `instances`) of the Instances on desired machines, in order.
    desired: Vec<usize>,
    /// How many desired machines may be unavailable at once (`maxUnavailable`).
    slots: u32,
    /// How many desired machines must have staged the target before any switch.
    min_staged: u32,
    /// Machines asked to stage the target that have neither staged nor failed it: they
    /// hold `maxParallelStage` budget.
    stage_in_flight: u32,
    /// The failure policy paused the rollout (a retry or a new version lifts it).
    failure_paused: bool,
    /// The canary step in force (`steps.len()` once past every step).
    step: usize,
    /// Held at a pause step (timed or until a promote).
    step_paused: bool,
    /// An analysis run holds the current step (it is no wait on machines).
    analysis_running: bool,
    /// How many desired machines may run the target at this step.
    cap: u32,
    /// Every desired machine runs the target, past every step and restart, not going back.
    complete: bool,
    /// Gone back, and every desired machine runs the stable version again.
    rolled_back: bool,
    /// Waiting on machines with no progress for `progressDeadlineSeconds`.
    deadline_exceeded: bool,
    topology: Topology<'a>,
    /// Desired Instances in the order the switch phase considers them (waves, then
    /// `strategy.order`; newest wave first when going back).
    switch_order: Vec<usize>,
    /// Each Instance's wave (index into `st.waves`), when the Rollout has waves; `None`
    /// for a machine that no wave takes (no label under `requireLabel`).
    wave_of: Vec<Option<usize>>,
    /// Waves before this index may switch forward (all when there are no waves).
    open_waves: usize,
    /// Unavailable machines per wave, for `maxUnavailablePerWave`.
    wave_busy: Vec<u32>,
    /// The machines' label took more distinct values than [`waves::MAX_WAVES`]: how
    /// many. Nothing switches forward, and the message says why.
    too_many_waves: Option<usize>,
    /// Why switching forward waits for `dependsOn` (reason, message), if it does.
    dependency_hold: Option<(&'static str, String)>,
}

impl<'a> Decision<'a> {
    fn new(input: RolloutInput<'a>) -> Self {
        let RolloutInput {
            rollout,
            instances,
            desired_machines,
            now,
            topology,
        } = input;
        let desired = (0..instances.len())
            .filter(|&i| desired_machines.contains(instances[i].spec.machine.as_str()))
            .collect();
        Decision {
            rollout,
            spec: &rollout.spec,
            target: &rollout.spec.version,
            instances,
            now,
            st: rollout.status.clone().unwrap_or_default(),
            events: Vec::new(),
            requeue: None,
            stable: rollout
                .status
                .as_ref()
                .and_then(|s| s.stable_version.clone()),
            stable_sha: rollout
                .status
                .as_ref()
                .and_then(|s| s.stable_sha256.clone()),
            failures_reset: false,
            promote: None,
            undo: false,
            desired,
            slots: 0,
            min_staged: 0,
            stage_in_flight: 0,
            failure_paused: false,
            step: 0,
            step_paused: false,
            analysis_running: false,
            cap: 0,
            complete: false,
            rolled_back: false,
            deadline_exceeded: false,
            topology,
            switch_order: Vec::new(),
            wave_of: Vec::new(),
            open_waves: usize::MAX,
            wave_busy: Vec::new(),
            too_many_waves: None,
            dependency_hold: None,
        }
    }

    /// The Rollout's generation (1 before the store gives it one).
    fn generation(&self) -> i64 {
        self.rollout.metadata.generation.unwrap_or(1)
    }

    /// How many desired machines `f` holds for.
    fn count(&self, f: impl Fn(&View) -> bool) -> u32 {
        self.desired
            .iter()
            .filter(|&&i| {
                f(&View {
                    inst: &self.instances[i],
                })
            })
            .count() as u32
    }

    /// A user's pause or the failure policy's: nothing new is staged or switched.
    fn frozen(&self) -> bool {
        self.spec.paused || self.failure_paused
    }

    /// Enough machines staged the target for switching to start (`minStaged`).
    fn gate_open(&self) -> bool {
        self.st.staged >= self.min_staged
    }

    /// No ready machine matches the selector: nothing to roll out to.
    fn no_machines(&self) -> bool {
        self.desired.is_empty()
    }

    /// The stable version, if any.
    fn stable(&self) -> Option<&str> {
        self.stable.as_deref()
    }

    /// Every desired machine (at least one) runs the target, available.
    fn all_on_target(&self) -> bool {
        !self.desired.is_empty()
            && self.desired.iter().all(|&i| {
                (View {
                    inst: &self.instances[i],
                })
                .available_on(self.target)
            })
    }

    /// Wake up again within `d` (the earliest such request wins).
    fn wake(&mut self, d: Duration) {
        self.requeue = Some(self.requeue.map_or(d, |r| r.min(d)));
    }
}

/// The whole Rollout decision, as its phases over one `Decision`. Each phase reads
/// what the phases before it decided; the order is the decision.
pub fn plan(input: RolloutInput<'_>) -> RolloutPlan {
    let mut d = Decision::new(input);
    d.new_revision();
    d.requests();
    d.observe();
    d.failure_policy();
    d.steps();
    d.stage();
    d.waves();
    d.depends();
    d.switch();
    d.complete();
    d.conditions();
    RolloutPlan {
        instances: d.instances,
        status: d.st,
        requeue_after: d.requeue,
        events: d.events,
    }
}

#[cfg(test)]
mod tests;
