//! Rollout: stage → gate → switch (in slots, through canary steps) → verify → complete,
//! with the failure policy, abort, retry, undo and restart.
//!
//! [`plan`] is the whole decision: from the Rollout and its Instances (as cached) to the
//! Instance specs it wants and the Rollout status. It never reads a store.

use super::EventNote;
use crate::api::{
    find_condition, set_condition, ConditionStatus, Instance, Rollout, RolloutPhase, RolloutSpec,
    RolloutStatus, VersionRef,
};
// The decision tests (`tests.rs`) take these with `use super::*`.
#[cfg(test)]
use crate::api::{
    FailureAction, ANNOTATION_ABORT, ANNOTATION_PROMOTE, ANNOTATION_RETRY, ANNOTATION_UNDO,
};
#[cfg(test)]
use chrono::Duration as ChronoDuration;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;

mod complete;
mod failure_policy;
mod observe;
mod requests;
mod revision;
mod stage;
mod steps;
mod switch;

/// Pause reasons the controller sets (a user's pause is `spec.paused`).
pub const PAUSE_STEP: &str = "CanaryPauseStep";
pub const PAUSE_FAILURE: &str = "FailurePolicy";
/// Why a Rollout went back to its stable version.
pub const REASON_ABORTED: &str = "RolloutAborted";
pub const REASON_ROLLED_BACK: &str = "RolledBack";
/// At most this many failed machines are listed in the status.
pub const MAX_FAILED_MACHINES: usize = 10;

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

/// The stable version with its digest, as Instances carry it.
/// A set of machine names. FxHash: the controller builds and probes one of 10,000 names
/// per decision, and SipHash was a seventh of that decision (`bench-reconcile`).
pub type MachineSet<'a> = rustc_hash::FxHashSet<&'a str>;

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
    /// The stable version as read: what an abort or a rollback goes back to.
    stable: Option<&'a str>,
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
    /// How many desired machines may run the target at this step.
    cap: u32,
    /// Every desired machine runs the target, past every step and restart, not going back.
    complete: bool,
    /// Gone back, and every desired machine runs the stable version again.
    rolled_back: bool,
    /// Waiting on machines with no progress for `progressDeadlineSeconds`.
    deadline_exceeded: bool,
}

impl<'a> Decision<'a> {
    fn new(input: RolloutInput<'a>) -> Self {
        let RolloutInput {
            rollout,
            instances,
            desired_machines,
            now,
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
                .and_then(|s| s.stable_version.as_deref()),
            promote: None,
            undo: false,
            desired,
            slots: 0,
            min_staged: 0,
            stage_in_flight: 0,
            failure_paused: false,
            step: 0,
            step_paused: false,
            cap: 0,
            complete: false,
            rolled_back: false,
            deadline_exceeded: false,
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

/// The whole Rollout decision, as its phases over one [`Decision`].
pub fn plan(input: RolloutInput<'_>) -> RolloutPlan {
    let mut d = Decision::new(input);
    d.new_revision();
    d.requests();
    d.observe();
    d.failure_policy();
    d.steps();
    d.stage();
    d.switch();
    d.complete();
    let Decision {
        rollout,
        instances,
        now,
        mut st,
        mut events,
        requeue,
        desired,
        slots,
        min_staged,
        failure_paused,
        step,
        step_paused,
        complete: d_complete,
        rolled_back: d_rolled_back,
        deadline_exceeded: d_deadline_exceeded,
        ..
    } = d;
    let spec = &rollout.spec;
    let target = spec.version.clone();
    let stable = st.stable_version.clone();
    let desired_idx = desired;
    let n = st.desired;
    let strategy = &spec.strategy;
    let max_unavailable = slots;
    let (staged, updated, available, failed) = (st.staged, st.updated, st.available, st.failed);
    let count = |f: &dyn Fn(&View) -> bool, insts: &Vec<Arc<Instance>>| {
        desired_idx
            .iter()
            .filter(|&&i| f(&View { inst: &insts[i] }))
            .count() as u32
    };

    let steps = &strategy.steps;

    let user_paused = spec.paused;

    let gate_open = staged >= min_staged;
    let unavailable = st.unavailable;
    let complete = d_complete;
    let rolled_back = d_rolled_back;
    let deadline_exceeded = d_deadline_exceeded;
    let deadline = Duration::from_secs(u64::from(strategy.progress_deadline_seconds));

    // Phase, message and conditions.
    let first_failure = st
        .failed_machines
        .first()
        .map(|f| format!("{}: {}", f.machine, f.message))
        .unwrap_or_default();
    let (phase, message) = if st.aborted && !rolled_back {
        (
            RolloutPhase::RollingBack,
            format!(
                "rolling back to {}: {updated} machine(s) still on {target}",
                stable.as_deref().unwrap_or_default()
            ),
        )
    } else if st.aborted {
        (
            RolloutPhase::Degraded,
            format!(
                "version {target} was rolled back; every machine runs {}{}",
                stable.as_deref().unwrap_or_default(),
                if first_failure.is_empty() {
                    String::new()
                } else {
                    format!(" ({first_failure})")
                }
            ),
        )
    } else if failure_paused {
        (
            RolloutPhase::Degraded,
            format!("{failed} machine(s) failed version {target}: {first_failure}"),
        )
    } else if complete {
        (
            RolloutPhase::Complete,
            format!("{n} machine(s) run version {target}"),
        )
    } else if user_paused {
        (
            RolloutPhase::Paused,
            "paused by user: `deployctl rollout resume` continues".to_string(),
        )
    } else if step_paused {
        let until = st
            .pause_conditions
            .iter()
            .find(|p| p.reason == PAUSE_STEP)
            .and_then(|p| p.until);
        (
            RolloutPhase::Paused,
            match until {
                Some(u) => format!(
                    "paused at step {}/{} until {}",
                    step + 1,
                    steps.len(),
                    u.format("%H:%M:%S")
                ),
                None => format!(
                    "paused at step {}/{}: `deployctl rollout promote` continues",
                    step + 1,
                    steps.len()
                ),
            },
        )
    } else if deadline_exceeded {
        (
            RolloutPhase::Degraded,
            format!(
                "no progress for {}s (progressDeadlineSeconds)",
                deadline.as_secs()
            ),
        )
    } else if !gate_open {
        (
            RolloutPhase::Progressing,
            format!("waiting for staged {staged}/{min_staged} (minStaged) before any switch"),
        )
    } else if unavailable >= max_unavailable {
        (
            RolloutPhase::Progressing,
            format!("switching: slots {unavailable}/{max_unavailable} busy, {available}/{n} available on {target}"),
        )
    } else {
        (
            RolloutPhase::Progressing,
            format!("switching: {available}/{n} available on {target}"),
        )
    };
    if phase != st.phase && phase == RolloutPhase::Degraded && deadline_exceeded {
        events.push(EventNote::warning(
            "ProgressDeadlineExceeded",
            message.clone(),
        ));
    }
    st.phase = phase;
    st.message = message.clone();

    let c = &mut st.conditions;
    use ConditionStatus::{False, True};
    let staged_msg = format!("{staged}/{n} machine(s) staged {target}; {min_staged} needed");
    set_condition(
        c,
        "Staged",
        if gate_open { True } else { False },
        if gate_open {
            "MinStagedReached"
        } else {
            "WaitingForStage"
        },
        &staged_msg,
        now,
    );
    let (prog, prog_reason) = if deadline_exceeded {
        (False, "ProgressDeadlineExceeded")
    } else if st.aborted {
        (
            False,
            st.abort_reason.as_deref().unwrap_or(REASON_ROLLED_BACK),
        )
    } else if complete {
        (True, "NewVersionAvailable")
    } else {
        (True, "RolloutProgressing")
    };
    set_condition(c, "Progressing", prog, prog_reason, &message, now);
    let min_available = n.saturating_sub(max_unavailable);
    let serving = count(&|v| !v.unavailable() && v.current().is_some(), &instances);
    set_condition(
        c,
        "Available",
        if serving >= min_available {
            True
        } else {
            False
        },
        if serving >= min_available {
            "MinimumAvailable"
        } else {
            "BelowMinimumAvailable"
        },
        &format!("{serving}/{n} machine(s) serving; at least {min_available} wanted"),
        now,
    );
    let (paused, pause_reason) = if user_paused {
        (True, "UserPaused")
    } else if failure_paused {
        (True, PAUSE_FAILURE)
    } else if step_paused {
        (True, PAUSE_STEP)
    } else {
        (False, "NotPaused")
    };
    set_condition(
        c,
        "Paused",
        paused,
        pause_reason,
        if paused == True { &message } else { "" },
        now,
    );
    let (degraded, degraded_reason, degraded_msg) = if st.aborted {
        (
            True,
            st.abort_reason.as_deref().unwrap_or(REASON_ROLLED_BACK),
            message.clone(),
        )
    } else if failure_paused {
        (True, "FailureLimitExceeded", message.clone())
    } else if deadline_exceeded {
        (True, "ProgressDeadlineExceeded", message.clone())
    } else {
        (False, "NotDegraded", String::new())
    };
    set_condition(c, "Degraded", degraded, degraded_reason, &degraded_msg, now);
    set_condition(
        c,
        "Complete",
        if complete { True } else { False },
        if complete {
            "RolloutCompleted"
        } else {
            "RolloutNotComplete"
        },
        if complete { &message } else { "" },
        now,
    );
    debug_assert!(find_condition(&st.conditions, "Complete").is_some());

    RolloutPlan {
        instances,
        status: st,
        requeue_after: requeue,
        events,
    }
}

#[cfg(test)]
mod tests;
