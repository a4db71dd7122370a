//! The Rollout decision against a simulated fleet: agents that stage and switch in steps,
//! so that in-between states (switching, verifying) are visible to the next decision.

use super::*;
use crate::api::{
    FailurePolicy, InstanceFailure, InstancePhase, InstanceSpec, InstanceStatus, IntOrPercent,
    Object, PauseStep, RolloutSpec, Step, Strategy,
};
use std::collections::{BTreeSet, HashMap, HashSet};

/// A fleet of simulated agents plus the Rollout, driven one decision at a time.
struct Fleet {
    rollout: Rollout,
    instances: Vec<Instance>,
    desired: HashSet<String>,
    now: DateTime<Utc>,
    /// Machines whose switch to this version fails.
    fail_switch: HashMap<String, String>,
    /// Versions whose staging fails everywhere (e.g. a checksum mismatch).
    fail_stage: BTreeSet<String>,
    /// Machines that do not act at all (a stuck install).
    stuck: BTreeSet<String>,
    /// What a failing switch's hooks print (the agent's output tail).
    fail_output: Vec<String>,
    /// Most machines seen unavailable at once.
    max_seen_unavailable: u32,
    /// Every (machine, version) switch the agents performed, in order.
    switches: Vec<(String, String)>,
    events: Vec<EventNote>,
    /// Machine labels, for waves.
    labels: HashMap<String, std::collections::BTreeMap<String, String>>,
    /// What the controller found for `dependsOn`.
    dependencies: DependencyInput,
}

fn rollout(version: &str, strategy: Strategy) -> Rollout {
    let mut ro = Rollout::new(
        "api",
        RolloutSpec {
            application: "api".into(),
            version: version.into(),
            strategy,
            revision_history_limit: 10,
            ..Default::default()
        },
    );
    ro.metadata.generation = Some(1);
    ro
}

impl Fleet {
    fn new(machines: usize, strategy: Strategy) -> Fleet {
        let mut instances = Vec::new();
        let mut desired = HashSet::new();
        for i in 0..machines {
            let m = format!("m{i:02}");
            let mut inst = Instance::new(&format!("api.{m}"), InstanceSpec::default());
            inst.spec.machine = m.clone();
            inst.metadata.generation = Some(1);
            desired.insert(m);
            instances.push(inst);
        }
        Fleet {
            rollout: rollout("1.0", strategy),
            instances,
            desired,
            now: Utc::now(),
            fail_switch: HashMap::new(),
            fail_stage: BTreeSet::new(),
            stuck: BTreeSet::new(),
            fail_output: vec![],
            max_seen_unavailable: 0,
            switches: vec![],
            events: vec![],
            labels: HashMap::new(),
            dependencies: DependencyInput::default(),
        }
    }

    fn status(&self) -> &RolloutStatus {
        self.rollout
            .status
            .as_ref()
            .expect("reconciled at least once")
    }

    /// One controller decision; spec changes bump the Instance generation like the store.
    fn decide(&mut self) -> RolloutPlan {
        let desired: MachineSet = self.desired.iter().map(String::as_str).collect();
        let plan = plan(RolloutInput {
            rollout: &self.rollout,
            instances: self.instances.iter().cloned().map(Arc::new).collect(),
            desired_machines: &desired,
            now: self.now,
            topology: Topology {
                labels: self.labels.iter().map(|(m, l)| (m.as_str(), l)).collect(),
                dependencies: self.dependencies.clone(),
            },
        });
        for (old, new) in self.instances.iter_mut().zip(plan.instances.iter()) {
            if old.spec != new.spec {
                let gen = old.metadata.generation.unwrap_or(0) + 1;
                *old = Instance::clone(new);
                old.metadata.generation = Some(gen);
            }
        }
        self.rollout.status = Some(plan.status.clone());
        self.events.extend(plan.events.iter().cloned());
        let unavailable = plan.status.unavailable;
        self.max_seen_unavailable = self.max_seen_unavailable.max(unavailable);
        plan
    }

    /// Every agent takes one step: stage what is asked, or start a switch, or finish one.
    fn agents(&mut self) {
        for inst in &mut self.instances {
            let m = inst.spec.machine.clone();
            if self.stuck.contains(&m) {
                continue;
            }
            let gen = inst.metadata.generation.unwrap_or(0);
            let mut st = inst.status.clone().unwrap_or_default();
            if st.observed_generation != gen {
                st.failure = None; // a new generation: try again
            }
            st.observed_generation = gen;
            for v in &inst.spec.staged {
                if st.staged_versions.contains(&v.version) {
                    continue;
                }
                if self.fail_stage.contains(&v.version) {
                    st.failure = Some(failure(&v.version, "Stage", "ChecksumMismatch"));
                    st.phase = InstancePhase::Failed;
                } else {
                    st.staged_versions.push(v.version.clone());
                }
            }
            let want = inst.spec.current.clone();
            if st.failure.is_some() {
                // No retry within a generation.
            } else if want.is_some() && want != st.current_version {
                let v = want.clone().expect("checked is_some");
                if !st.staged_versions.contains(&v) {
                    st.failure = Some(failure(&v, "Switch", "NotStaged"));
                } else if self.fail_switch.get(&m) == Some(&v) {
                    st.current_version = Some(v.clone());
                    st.available = false;
                    st.healthy = false;
                    st.failure = Some(failure(&v, "Switch", "HookFailed"));
                    st.last_hook_output = self.fail_output.clone();
                    st.phase = InstancePhase::Failed;
                    self.switches.push((m.clone(), v));
                } else {
                    st.current_version = Some(v.clone());
                    st.available = false; // verifying: finishes next step
                    st.healthy = false;
                    st.phase = InstancePhase::Verifying;
                    // As the agent does: the next hooks' output replaces the last tail.
                    st.last_hook_output = vec![format!("activated {v}")];
                    self.switches.push((m.clone(), v));
                }
            } else if want.is_some() && !st.available {
                st.available = true;
                st.healthy = true;
                st.phase = InstancePhase::Running;
            } else if inst.spec.restart_at.is_some() && st.restarted_at != inst.spec.restart_at {
                st.restarted_at = inst.spec.restart_at;
            }
            inst.status = Some(st);
        }
    }

    /// Decide and act until nothing changes, at most `rounds` times.
    fn run(&mut self, rounds: usize) {
        for _ in 0..rounds {
            let before = (self.instances.clone(), self.rollout.status.clone());
            self.decide();
            self.agents();
            self.decide();
            if (self.instances.clone(), self.rollout.status.clone()) == before {
                return;
            }
        }
    }

    fn set_version(&mut self, v: &str) {
        self.rollout.spec.version = v.into();
        self.bump();
    }

    fn bump(&mut self) {
        let g = self.rollout.metadata.generation.unwrap_or(1) + 1;
        self.rollout.metadata.generation = Some(g);
    }

    fn annotate(&mut self, key: &str, value: &str) {
        self.rollout
            .metadata
            .annotations
            .insert(key.into(), value.into());
    }

    fn currents(&self) -> Vec<Option<String>> {
        self.instances
            .iter()
            .map(|i| i.status.as_ref().and_then(|s| s.current_version.clone()))
            .collect()
    }

    fn on(&self, v: &str) -> usize {
        self.currents()
            .iter()
            .filter(|c| c.as_deref() == Some(v))
            .count()
    }
}

fn failure(version: &str, op: &str, reason: &str) -> InstanceFailure {
    InstanceFailure {
        version: version.into(),
        operation: op.into(),
        reason: reason.into(),
        message: format!("{reason} for {version}"),
        time: Utc::now(),
    }
}

fn strategy(max_unavailable: IntOrPercent) -> Strategy {
    Strategy {
        max_unavailable,
        ..Default::default()
    }
}

fn complete_v1(fleet: &mut Fleet) {
    fleet.run(100);
    assert_eq!(
        fleet.status().phase,
        RolloutPhase::Complete,
        "{:?}",
        fleet.status().message
    );
    assert_eq!(fleet.status().stable_version.as_deref(), Some("1.0"));
}

#[test]
fn rollout_should_complete_and_make_the_version_stable() {
    let mut fleet = Fleet::new(5, strategy(IntOrPercent::Int(2)));
    complete_v1(&mut fleet);
    assert_eq!(fleet.on("1.0"), 5);
    let st = fleet.status();
    assert_eq!(
        (st.desired, st.staged, st.updated, st.available),
        (5, 5, 5, 5)
    );
    assert_eq!(st.history.len(), 1);
    assert_eq!(st.history[0].result, "Complete");
    assert_eq!(
        find_condition(&st.conditions, "Complete").unwrap().status,
        ConditionStatus::True
    );
}

#[test]
fn slots_should_never_let_more_machines_switch_at_once_than_max_unavailable() {
    for (machines, mu, want) in [
        (6, IntOrPercent::Int(2), 2),
        (10, IntOrPercent::Percent("30%".into()), 3),
        (3, IntOrPercent::Percent("10%".into()), 1),
    ] {
        let mut fleet = Fleet::new(machines, strategy(mu.clone()));
        complete_v1(&mut fleet);
        fleet.max_seen_unavailable = 0;
        fleet.set_version("2.0");
        fleet.run(200);
        assert_eq!(fleet.on("2.0"), machines, "{mu}");
        assert_eq!(
            fleet.max_seen_unavailable, want,
            "{machines} machines, maxUnavailable {mu}"
        );
        assert_eq!(
            fleet.switches.iter().filter(|s| s.1 == "2.0").count(),
            machines,
            "each switched once"
        );
    }
}

#[test]
fn gate_should_hold_every_switch_until_min_staged_machines_have_the_version() {
    let mut fleet = Fleet::new(4, strategy(IntOrPercent::Int(4)));
    complete_v1(&mut fleet);
    fleet.stuck.insert("m03".into());
    fleet.set_version("2.0");
    fleet.run(20);
    assert_eq!(
        fleet.on("2.0"),
        0,
        "one machine has not staged: nothing switches"
    );
    let st = fleet.status();
    assert_eq!(st.staged, 3);
    assert_eq!(
        find_condition(&st.conditions, "Staged").unwrap().status,
        ConditionStatus::False
    );
    assert!(
        st.message.contains("waiting for staged 3/4"),
        "{}",
        st.message
    );
    fleet.stuck.clear();
    fleet.run(50);
    assert_eq!(fleet.on("2.0"), 4);
}

#[test]
fn min_staged_as_a_percent_should_let_switching_start_early() {
    let mut s = strategy(IntOrPercent::Int(1));
    s.min_staged = IntOrPercent::Percent("50%".into());
    let mut fleet = Fleet::new(4, s);
    complete_v1(&mut fleet);
    fleet.stuck.insert("m03".into());
    fleet.set_version("2.0");
    fleet.run(50);
    assert_eq!(
        fleet.on("2.0"),
        3,
        "three staged machines switch; the stuck one waits"
    );
}

#[test]
fn max_parallel_stage_should_bound_machines_asked_to_stage_at_once() {
    let mut s = strategy(IntOrPercent::Int(1));
    s.max_parallel_stage = Some(2);
    let mut fleet = Fleet::new(5, s);
    complete_v1(&mut fleet);
    fleet.stuck = ["m00", "m01", "m02", "m03", "m04"].map(String::from).into();
    fleet.set_version("2.0");
    fleet.decide();
    let asked = fleet
        .instances
        .iter()
        .filter(|i| i.spec.staged.iter().any(|v| v.version == "2.0"))
        .count();
    assert_eq!(asked, 2);
    fleet.stuck.clear();
    fleet.run(100);
    assert_eq!(fleet.on("2.0"), 5);
}

#[test]
fn a_new_version_should_keep_the_stable_one_staged_for_rollback() {
    let mut fleet = Fleet::new(2, strategy(IntOrPercent::Int(1)));
    complete_v1(&mut fleet);
    fleet.set_version("2.0");
    fleet.decide();
    for inst in &fleet.instances {
        let v: Vec<_> = inst
            .spec
            .staged
            .iter()
            .map(|v| v.version.as_str())
            .collect();
        assert_eq!(v, ["1.0", "2.0"]);
    }
}

#[test]
fn canary_steps_should_switch_the_weight_then_pause_until_promoted() {
    let mut s = strategy(IntOrPercent::Int(5));
    s.steps = vec![
        Step {
            set_weight: Some(20),
            ..Default::default()
        },
        Step {
            pause: Some(PauseStep { duration: None }),
            ..Default::default()
        },
        Step {
            machines: Some(3),
            ..Default::default()
        },
        Step {
            pause: Some(PauseStep {
                duration: Some("30s".into()),
            }),
            ..Default::default()
        },
    ];
    let mut fleet = Fleet::new(10, s);
    complete_v1(&mut fleet);
    fleet.set_version("2.0");
    fleet.run(50);
    assert_eq!(fleet.on("2.0"), 2, "20% of 10");
    let st = fleet.status();
    assert_eq!(st.phase, RolloutPhase::Paused);
    assert_eq!(st.current_step_index, Some(1));
    assert!(st.message.contains("promote"), "{}", st.message);

    fleet.annotate(ANNOTATION_PROMOTE, "t1");
    fleet.run(50);
    assert_eq!(fleet.on("2.0"), 3, "machines: 3");
    assert_eq!(fleet.status().current_step_index, Some(3));
    assert_eq!(fleet.status().phase, RolloutPhase::Paused, "timed pause");
    let plan = fleet.decide();
    let wait = plan.requeue_after.expect("a timed pause asks to be woken");
    assert!(
        wait <= Duration::from_secs(30) && wait > Duration::from_secs(25),
        "{wait:?}"
    );

    fleet.now += ChronoDuration::seconds(31);
    fleet.run(100);
    assert_eq!(fleet.on("2.0"), 10);
    assert_eq!(fleet.status().phase, RolloutPhase::Complete);
}

/// Durations that validation refuses can still be in the store (written by an older
/// deployctl, or straight to etcd): one past the calendar's end panicked every reconcile,
/// one past chrono's range was read as zero and skipped the pause.
#[test]
fn a_pause_too_long_for_the_calendar_should_wait_for_a_promote_not_panic_or_skip() {
    for duration in ["300000years", "10000000000000000s", "18446744073709551615s"] {
        let mut s = strategy(IntOrPercent::Int(5));
        s.steps = vec![
            Step {
                machines: Some(1),
                ..Default::default()
            },
            Step {
                pause: Some(PauseStep {
                    duration: Some(duration.into()),
                }),
                ..Default::default()
            },
        ];
        let mut fleet = Fleet::new(4, s);
        complete_v1(&mut fleet);
        fleet.set_version("2.0");
        fleet.run(50);
        assert_eq!(fleet.on("2.0"), 1, "{duration}: the canary only");
        assert_eq!(fleet.status().phase, RolloutPhase::Paused, "{duration}");
        assert_eq!(fleet.status().current_step_index, Some(1), "{duration}");
        fleet.now += ChronoDuration::days(365 * 1000);
        fleet.run(50);
        assert_eq!(fleet.on("2.0"), 1, "{duration}: still paused");
        fleet.annotate(ANNOTATION_PROMOTE, "t1");
        fleet.run(50);
        assert_eq!(fleet.on("2.0"), 4, "{duration}");
        assert_eq!(fleet.status().phase, RolloutPhase::Complete, "{duration}");
    }
}

#[test]
fn promote_full_should_skip_every_remaining_step() {
    let mut s = strategy(IntOrPercent::Int(10));
    s.steps = vec![
        Step {
            machines: Some(1),
            ..Default::default()
        },
        Step {
            pause: Some(PauseStep { duration: None }),
            ..Default::default()
        },
        Step {
            machines: Some(2),
            ..Default::default()
        },
        Step {
            pause: Some(PauseStep { duration: None }),
            ..Default::default()
        },
    ];
    let mut fleet = Fleet::new(4, s);
    complete_v1(&mut fleet);
    fleet.set_version("2.0");
    fleet.run(50);
    assert_eq!(fleet.on("2.0"), 1);
    fleet.annotate(ANNOTATION_PROMOTE, "full:x");
    fleet.run(50);
    assert_eq!(fleet.on("2.0"), 4);
    assert_eq!(fleet.status().phase, RolloutPhase::Complete);
}

#[test]
fn user_pause_and_step_pause_should_be_distinct() {
    let mut s = strategy(IntOrPercent::Int(1));
    s.steps = vec![
        Step {
            machines: Some(1),
            ..Default::default()
        },
        Step {
            pause: Some(PauseStep { duration: None }),
            ..Default::default()
        },
    ];
    let mut fleet = Fleet::new(3, s);
    complete_v1(&mut fleet);
    fleet.set_version("2.0");
    fleet.run(50);
    assert_eq!(fleet.status().phase, RolloutPhase::Paused);
    // The user pauses and resumes: the step pause stays.
    fleet.rollout.spec.paused = true;
    fleet.bump();
    fleet.run(5);
    assert_eq!(
        find_condition(&fleet.status().conditions, "Paused")
            .unwrap()
            .reason,
        "UserPaused"
    );
    fleet.rollout.spec.paused = false;
    fleet.bump();
    fleet.run(5);
    assert_eq!(
        fleet.status().phase,
        RolloutPhase::Paused,
        "resume does not promote"
    );
    assert_eq!(fleet.on("2.0"), 1);
    // Promote while the user has paused: the step advances but nothing switches.
    fleet.rollout.spec.paused = true;
    fleet.bump();
    fleet.annotate(ANNOTATION_PROMOTE, "p1");
    fleet.run(5);
    assert_eq!(fleet.on("2.0"), 1, "user pause holds");
    fleet.rollout.spec.paused = false;
    fleet.bump();
    fleet.run(50);
    assert_eq!(fleet.on("2.0"), 3);
}

#[test]
fn failure_policy_pause_should_stop_switching_and_report_degraded() {
    let mut fleet = Fleet::new(4, strategy(IntOrPercent::Int(1)));
    complete_v1(&mut fleet);
    fleet.fail_switch.insert("m01".into(), "2.0".into());
    fleet.set_version("2.0");
    fleet.run(50);
    let st = fleet.status();
    assert_eq!(st.phase, RolloutPhase::Degraded);
    assert_eq!(st.failed, 1);
    assert_eq!(st.failed_machines[0].machine, "m01");
    assert_eq!(
        find_condition(&st.conditions, "Degraded").unwrap().reason,
        "FailureLimitExceeded"
    );
    assert_eq!(
        find_condition(&st.conditions, "Paused").unwrap().reason,
        PAUSE_FAILURE
    );
    assert_eq!(
        fleet.on("2.0"),
        2,
        "m00 switched, m01 failed on it, nothing after"
    );
    assert!(fleet
        .events
        .iter()
        .any(|e| e.reason == "FailureLimitExceeded"));

    // Retry after the cause is fixed: the failed machine tries again and the rollout ends.
    fleet.fail_switch.clear();
    fleet.annotate(ANNOTATION_RETRY, "r1");
    fleet.run(50);
    assert_eq!(
        fleet.status().phase,
        RolloutPhase::Complete,
        "{}",
        fleet.status().message
    );
    assert_eq!(fleet.on("2.0"), 4);
}

#[test]
fn failure_policy_rollback_should_switch_updated_machines_back_under_slots() {
    let mut s = strategy(IntOrPercent::Int(2));
    s.min_staged = IntOrPercent::Int(1);
    let mut fleet = Fleet::new(6, s);
    fleet.rollout.spec.failure_policy = FailurePolicy {
        max_failures: 0,
        action: FailureAction::Rollback,
    };
    complete_v1(&mut fleet);
    fleet.fail_switch.insert("m02".into(), "2.0".into());
    fleet.max_seen_unavailable = 0;
    fleet.set_version("2.0");
    fleet.run(100);
    let st = fleet.status();
    assert_eq!(st.phase, RolloutPhase::Degraded, "{}", st.message);
    assert_eq!(
        find_condition(&st.conditions, "Degraded").unwrap().reason,
        "RolledBack"
    );
    assert_eq!(
        fleet.on("1.0"),
        6,
        "every machine back on the stable version"
    );
    assert_eq!(st.stable_version.as_deref(), Some("1.0"));
    assert_eq!(st.history.last().unwrap().result, "RolledBack");
    assert!(
        fleet.max_seen_unavailable <= 2,
        "rollback used the same slots"
    );
}

#[test]
fn rollback_should_switch_the_failed_machine_back_even_when_it_fills_every_slot() {
    // One slot, and the failed machine holds it: it must still be switched back (it costs
    // no new slot), or the rollback waits forever (found by tests/e2e/rollouts.rs).
    let mut fleet = Fleet::new(3, strategy(IntOrPercent::Int(1)));
    fleet.rollout.spec.failure_policy = FailurePolicy {
        max_failures: 0,
        action: FailureAction::Rollback,
    };
    complete_v1(&mut fleet);
    fleet.fail_switch.insert("m02".into(), "2.0".into());
    fleet.max_seen_unavailable = 0;
    fleet.set_version("2.0");
    fleet.run(100);
    let st = fleet.status();
    assert_eq!(st.phase, RolloutPhase::Degraded, "{}", st.message);
    assert_eq!(
        find_condition(&st.conditions, "Degraded").unwrap().reason,
        "RolledBack"
    );
    assert_eq!(
        fleet.on("1.0"),
        3,
        "every machine back on the stable version"
    );
    assert!(
        fleet.max_seen_unavailable <= 1,
        "rollback used the same slot"
    );
}

#[test]
fn checksum_mismatch_should_switch_nothing_and_degrade_naming_the_failure() {
    let mut fleet = Fleet::new(3, strategy(IntOrPercent::Int(1)));
    complete_v1(&mut fleet);
    fleet.fail_stage.insert("2.0".into());
    fleet.set_version("2.0");
    fleet.run(50);
    let st = fleet.status();
    assert_eq!(fleet.on("2.0"), 0);
    assert_eq!(st.phase, RolloutPhase::Degraded);
    assert_eq!(st.failed, 3);
    assert!(st.message.contains("ChecksumMismatch"), "{}", st.message);
}

#[test]
fn abort_should_go_back_to_stable_and_a_new_version_should_go_on() {
    let mut s = strategy(IntOrPercent::Int(1));
    s.steps = vec![
        Step {
            machines: Some(2),
            ..Default::default()
        },
        Step {
            pause: Some(PauseStep { duration: None }),
            ..Default::default()
        },
    ];
    let mut fleet = Fleet::new(4, s);
    complete_v1(&mut fleet);
    fleet.set_version("2.0");
    fleet.run(50);
    assert_eq!(fleet.on("2.0"), 2);
    fleet.annotate(ANNOTATION_ABORT, "a1");
    fleet.run(50);
    assert_eq!(fleet.on("1.0"), 4);
    let st = fleet.status();
    assert_eq!(st.phase, RolloutPhase::Degraded);
    assert_eq!(
        find_condition(&st.conditions, "Degraded").unwrap().reason,
        REASON_ABORTED
    );
    assert_eq!(st.history.last().unwrap().result, "Aborted");
    fleet.set_version("3.0");
    fleet.run(50);
    assert_eq!(
        fleet.on("3.0"),
        2,
        "a new version starts over at the first step"
    );
}

#[test]
fn undo_should_go_straight_back_skipping_canary_steps() {
    let mut s = strategy(IntOrPercent::Int(4));
    s.steps = vec![
        Step {
            machines: Some(1),
            ..Default::default()
        },
        Step {
            pause: Some(PauseStep { duration: None }),
            ..Default::default()
        },
    ];
    let mut fleet = Fleet::new(4, s);
    complete_v1(&mut fleet);
    fleet.set_version("2.0");
    fleet.annotate(ANNOTATION_PROMOTE, "full:1");
    fleet.run(50);
    assert_eq!(fleet.on("2.0"), 4);
    fleet.set_version("1.0");
    let gen = fleet.rollout.metadata.generation.unwrap().to_string();
    fleet.annotate(ANNOTATION_UNDO, &gen);
    fleet.run(50);
    assert_eq!(fleet.on("1.0"), 4, "no pause at step 1");
    // 1.0 appears once, under its newest number (as Argo Rollouts renumbers the
    // ReplicaSet a rollback reuses): never two revisions of one version.
    let h: Vec<_> = fleet
        .status()
        .history
        .iter()
        .map(|r| (r.revision, r.version.as_str(), r.result.as_str()))
        .collect();
    assert_eq!(h, [(2, "2.0", "Complete"), (3, "1.0", "Complete")]);
}

#[test]
fn progress_deadline_should_degrade_with_its_reason() {
    let mut s = strategy(IntOrPercent::Int(1));
    s.progress_deadline_seconds = 60;
    let mut fleet = Fleet::new(2, s);
    complete_v1(&mut fleet);
    fleet.stuck.insert("m01".into());
    fleet.set_version("2.0");
    fleet.run(20);
    assert_eq!(fleet.status().phase, RolloutPhase::Progressing);
    fleet.now += ChronoDuration::seconds(61);
    fleet.decide();
    let st = fleet.status();
    assert_eq!(st.phase, RolloutPhase::Degraded);
    let c = find_condition(&st.conditions, "Progressing").unwrap();
    assert_eq!(
        (c.status, c.reason.as_str()),
        (ConditionStatus::False, "ProgressDeadlineExceeded")
    );
}

#[test]
fn machines_that_are_not_ready_should_leave_the_desired_count() {
    let mut fleet = Fleet::new(3, strategy(IntOrPercent::Int(1)));
    complete_v1(&mut fleet);
    fleet.desired.remove("m02");
    fleet.stuck.insert("m02".into());
    fleet.set_version("2.0");
    fleet.run(50);
    let st = fleet.status();
    assert_eq!(st.desired, 2);
    assert_eq!(st.phase, RolloutPhase::Complete);
    assert_eq!(fleet.on("2.0"), 2);
}

#[test]
fn restart_should_reactivate_every_machine_under_slots() {
    let mut fleet = Fleet::new(4, strategy(IntOrPercent::Int(2)));
    complete_v1(&mut fleet);
    let at = fleet.now;
    fleet.rollout.spec.restart_at = Some(at);
    fleet.bump();
    fleet.decide();
    let asked = fleet
        .instances
        .iter()
        .filter(|i| i.spec.restart_at == Some(at))
        .count();
    assert_eq!(asked, 2, "two slots");
    assert_ne!(fleet.status().phase, RolloutPhase::Complete);
    fleet.run(50);
    assert!(fleet
        .instances
        .iter()
        .all(|i| i.status.as_ref().unwrap().restarted_at == Some(at)));
    assert_eq!(fleet.status().phase, RolloutPhase::Complete);
}

#[test]
fn history_should_keep_at_most_the_revision_history_limit() {
    let mut fleet = Fleet::new(1, strategy(IntOrPercent::Int(1)));
    fleet.rollout.spec.revision_history_limit = 3;
    complete_v1(&mut fleet);
    for v in ["2", "3", "4", "5"] {
        fleet.set_version(v);
        fleet.run(20);
    }
    let revs: Vec<_> = fleet.status().history.iter().map(|r| r.revision).collect();
    assert_eq!(revs, [3, 4, 5]);
}

#[test]
fn a_selector_matching_no_machine_should_not_complete_and_should_say_so() {
    let mut s = strategy(IntOrPercent::Int(1));
    s.progress_deadline_seconds = 60;
    let mut fleet = Fleet::new(0, s);
    let plan = fleet.decide();
    fleet.decide();
    let st = fleet.status();
    // Machines may still be registering: it waits, saying why, never Complete.
    assert_eq!(st.phase, RolloutPhase::Progressing, "{}", st.message);
    assert!(
        st.message.contains("matches no ready machine"),
        "{}",
        st.message
    );
    assert_eq!(st.stable_version, None, "nothing ran: nothing is stable");
    let available = find_condition(&st.conditions, "Available").unwrap();
    assert_eq!(
        (available.status, available.reason.as_str()),
        (ConditionStatus::False, REASON_NO_MACHINES)
    );
    assert_eq!(
        find_condition(&st.conditions, "Complete").unwrap().status,
        ConditionStatus::False
    );
    let warnings: Vec<_> = fleet
        .events
        .iter()
        .filter(|e| e.reason == REASON_NO_MACHINES)
        .collect();
    assert_eq!(warnings.len(), 1, "one warning, not one per decision");
    assert_eq!(warnings[0].type_, "Warning", "{:?}", warnings[0]);
    assert_eq!(
        plan.requeue_after,
        Some(Duration::from_secs(60)),
        "woken at the progress deadline"
    );

    // Past the deadline: Degraded, naming the cause.
    fleet.now += ChronoDuration::seconds(61);
    fleet.decide();
    let st = fleet.status();
    assert_eq!(st.phase, RolloutPhase::Degraded, "{}", st.message);
    assert!(
        st.message.contains("matches no ready machine"),
        "{}",
        st.message
    );
    let degraded = find_condition(&st.conditions, "Degraded").unwrap();
    assert_eq!(
        (degraded.status, degraded.reason.as_str()),
        (ConditionStatus::True, REASON_NO_MACHINES)
    );

    // A machine turns ready: the rollout goes on and completes there.
    let mut inst = Instance::new("api.m00", InstanceSpec::default());
    inst.spec.machine = "m00".into();
    inst.metadata.generation = Some(1);
    fleet.instances.push(inst);
    fleet.desired.insert("m00".into());
    complete_v1(&mut fleet);
    let available = find_condition(&fleet.status().conditions, "Available").unwrap();
    assert_eq!(available.status, ConditionStatus::True);
}

#[test]
fn a_status_with_no_change_should_be_stable_across_decisions() {
    let mut fleet = Fleet::new(3, strategy(IntOrPercent::Int(1)));
    complete_v1(&mut fleet);
    let before = fleet.status().clone();
    fleet.decide();
    assert_eq!(fleet.status(), &before, "no writes when nothing changed");
    let _ = InstanceStatus::default();
}

#[test]
fn a_decision_with_nothing_to_change_should_hand_back_every_instance_uncopied() {
    let mut fleet = Fleet::new(4, strategy(IntOrPercent::Int(1)));
    complete_v1(&mut fleet);
    fleet.set_version("2.0");
    fleet.run(100);
    assert_eq!(fleet.on("2.0"), 4);
    let given: Vec<Arc<Instance>> = fleet.instances.iter().cloned().map(Arc::new).collect();
    let machines = fleet.desired.clone();
    let desired: MachineSet = machines.iter().map(String::as_str).collect();
    let decided = plan(RolloutInput {
        rollout: &fleet.rollout,
        instances: given.clone(),
        desired_machines: &desired,
        now: fleet.now,
        topology: Topology::default(),
    });
    for (before, after) in given.iter().zip(&decided.instances) {
        assert!(
            Arc::ptr_eq(before, after),
            "{} was copied although its spec did not change",
            before.name()
        );
    }

    // A new version changes every spec: each comes back as its own copy.
    fleet.set_version("3.0");
    let restaged = plan(RolloutInput {
        rollout: &fleet.rollout,
        instances: given.clone(),
        desired_machines: &desired,
        now: fleet.now,
        topology: Topology::default(),
    });
    for (before, after) in given.iter().zip(&restaged.instances) {
        assert!(
            !Arc::ptr_eq(before, after),
            "{} was not restaged",
            before.name()
        );
        assert!(after.spec.staged.iter().any(|v| v.version == "3.0"));
    }
}

fn staged_of(inst: &Instance) -> Vec<&str> {
    inst.spec
        .staged
        .iter()
        .map(|v| v.version.as_str())
        .collect()
}

#[test]
fn completing_should_leave_the_old_version_staged_while_retention_keeps_it_anyway() {
    let mut fleet = Fleet::new(3, strategy(IntOrPercent::Int(1)));
    complete_v1(&mut fleet);
    fleet.set_version("2.0");
    fleet.run(100);
    assert_eq!(fleet.status().phase, RolloutPhase::Complete);
    assert_eq!(fleet.status().stable_version.as_deref(), Some("2.0"));
    let generations: Vec<_> = fleet
        .instances
        .iter()
        .map(|i| i.metadata.generation)
        .collect();
    for inst in &fleet.instances {
        // keepReleases defaults to 3: the agent keeps 1.0 on disk either way, so the
        // spec is not rewritten (a write and a report per machine) just to drop it.
        assert_eq!(staged_of(inst), ["1.0", "2.0"], "{}", inst.name());
    }
    fleet.decide();
    let after: Vec<_> = fleet
        .instances
        .iter()
        .map(|i| i.metadata.generation)
        .collect();
    assert_eq!(after, generations, "a Complete rollout writes no Instance");

    // The next version's stage order drops it in the same write.
    fleet.set_version("3.0");
    fleet.decide();
    for inst in &fleet.instances {
        assert_eq!(staged_of(inst), ["2.0", "3.0"], "{}", inst.name());
    }
}

#[test]
fn completing_should_drop_the_old_version_at_once_when_retention_would_delete_it() {
    let mut fleet = Fleet::new(3, strategy(IntOrPercent::Int(1)));
    for inst in &mut fleet.instances {
        inst.spec.keep_releases = 1;
    }
    complete_v1(&mut fleet);
    fleet.set_version("2.0");
    fleet.run(100);
    assert_eq!(fleet.status().phase, RolloutPhase::Complete);
    for inst in &fleet.instances {
        assert_eq!(staged_of(inst), ["2.0"], "{}", inst.name());
    }
}

#[test]
fn a_version_that_never_staged_should_leave_staged_when_the_rollout_goes_back() {
    let mut fleet = Fleet::new(3, strategy(IntOrPercent::Int(1)));
    complete_v1(&mut fleet);
    fleet.fail_stage.insert("2.0".into());
    fleet.set_version("2.0");
    fleet.run(50);
    assert_eq!(fleet.status().phase, RolloutPhase::Degraded);
    fleet.set_version("1.0");
    fleet.run(50);
    for inst in &fleet.instances {
        // 2.0 is not on any disk: keeping it listed would have agents retry it.
        assert_eq!(staged_of(inst), ["1.0"], "{}", inst.name());
    }
}

/// A `machines: n` step.
fn machines_step(n: u32) -> Step {
    Step {
        machines: Some(n),
        ..Default::default()
    }
}

/// A pause step that waits for a promote.
fn pause_step() -> Step {
    Step {
        pause: Some(PauseStep { duration: None }),
        ..Default::default()
    }
}

/// A `setWeight: w` step.
fn weight_step(w: u32) -> Step {
    Step {
        set_weight: Some(w),
        ..Default::default()
    }
}

/// Canary steps that stop at a pause after the first machine and again after the second.
fn two_pauses() -> Vec<Step> {
    vec![
        machines_step(1),
        pause_step(),
        machines_step(2),
        pause_step(),
    ]
}

/// The Rollout deleted and applied again: the same spec, no status, a new object.
fn recreate(fleet: &mut Fleet, version: &str) {
    let strategy = fleet.rollout.spec.strategy.clone();
    let policy = fleet.rollout.spec.failure_policy.clone();
    fleet.rollout = rollout(version, strategy);
    fleet.rollout.spec.failure_policy = policy;
}

#[test]
fn a_new_rollout_should_adopt_the_version_every_machine_runs_as_stable() {
    let mut s = strategy(IntOrPercent::Int(4));
    s.steps = two_pauses();
    let mut fleet = Fleet::new(4, s);
    complete_v1(&mut fleet);
    recreate(&mut fleet, "2.0");
    fleet.run(50);
    let st = fleet.status();
    assert_eq!(st.stable_version.as_deref(), Some("1.0"), "{}", st.message);
    assert_eq!(
        fleet.on("2.0"),
        1,
        "the canary step runs: one machine, then the pause"
    );
    assert_eq!(st.phase, RolloutPhase::Paused, "{}", st.message);
    let h: Vec<_> = st
        .history
        .iter()
        .map(|r| (r.revision, r.version.as_str(), r.result.as_str()))
        .collect();
    assert_eq!(h, [(1, "1.0", "Adopted"), (2, "2.0", "")]);
    assert!(fleet.events.iter().any(|e| e.reason == "RolloutAdopted"));

    // And it has something to go back to.
    fleet.annotate(ANNOTATION_ABORT, "a1");
    fleet.run(50);
    assert_eq!(fleet.on("1.0"), 4);
    assert_eq!(fleet.status().history.last().unwrap().result, "Aborted");
}

#[test]
fn a_new_rollout_over_a_mixed_fleet_should_adopt_nothing() {
    let mut s = strategy(IntOrPercent::Int(4));
    s.steps = two_pauses();
    let mut fleet = Fleet::new(3, s);
    complete_v1(&mut fleet);
    fleet.instances[2]
        .status
        .as_mut()
        .expect("reported")
        .current_version = Some("0.9".into());
    recreate(&mut fleet, "2.0");
    fleet.decide();
    assert_eq!(fleet.status().stable_version, None);
    assert!(!fleet.events.iter().any(|e| e.reason == "RolloutAdopted"));
}

#[test]
fn going_to_the_stable_version_after_a_rollback_should_switch_straight_back_without_steps() {
    let mut s = strategy(IntOrPercent::Int(1));
    s.steps = two_pauses();
    let mut fleet = Fleet::new(4, s);
    fleet.rollout.spec.failure_policy = FailurePolicy {
        max_failures: 0,
        action: FailureAction::Rollback,
    };
    complete_v1(&mut fleet);
    fleet.set_version("2.0");
    fleet.run(50);
    fleet.annotate(ANNOTATION_PROMOTE, "p1");
    fleet.fail_switch.insert("m01".into(), "2.0".into());
    fleet.run(50);
    assert_eq!(fleet.status().phase, RolloutPhase::Degraded);
    assert_eq!(fleet.on("1.0"), 4, "rolled back");
    let pauses_before = fleet
        .events
        .iter()
        .filter(|e| e.reason == "RolloutPaused")
        .count();

    fleet.set_version("1.0");
    fleet.run(50);
    let st = fleet.status();
    assert_eq!(st.phase, RolloutPhase::Complete, "{}", st.message);
    assert_eq!(st.current_step_index, Some(4), "past every step at once");
    let pauses_after = fleet
        .events
        .iter()
        .filter(|e| e.reason == "RolloutPaused")
        .count();
    assert_eq!(
        pauses_after, pauses_before,
        "no canary pause on the way back"
    );
    let h: Vec<_> = st
        .history
        .iter()
        .map(|r| (r.version.as_str(), r.result.as_str()))
        .collect();
    assert_eq!(h, [("2.0", "RolledBack"), ("1.0", "Complete")]);
}

#[test]
fn going_to_the_stable_version_mid_canary_should_switch_every_machine_back_at_once() {
    let mut s = strategy(IntOrPercent::Int(1));
    s.steps = two_pauses();
    let mut fleet = Fleet::new(4, s);
    complete_v1(&mut fleet);
    fleet.set_version("2.0");
    fleet.run(50);
    assert_eq!(fleet.on("2.0"), 1, "the canary");
    fleet.set_version("1.0");
    fleet.run(50);
    assert_eq!(fleet.on("1.0"), 4);
    assert_eq!(fleet.status().phase, RolloutPhase::Complete);
}

#[test]
fn a_rollback_should_keep_the_failed_revisions_machines_with_their_hook_output() {
    let mut fleet = Fleet::new(3, strategy(IntOrPercent::Int(1)));
    fleet.rollout.spec.failure_policy = FailurePolicy {
        max_failures: 0,
        action: FailureAction::Rollback,
    };
    complete_v1(&mut fleet);
    fleet.fail_switch.insert("m02".into(), "2.0".into());
    fleet.fail_output = vec!["installing".into(), "MARKER-42 on stderr".into()];
    fleet.set_version("2.0");
    fleet.run(100);
    let st = fleet.status();
    assert_eq!(fleet.on("1.0"), 3, "{}", st.message);
    assert_eq!(st.history.last().unwrap().result, "RolledBack");
    assert_eq!(
        st.failed, 1,
        "the revision that failed still counts its failure"
    );
    assert_eq!(
        st.failed_machines
            .iter()
            .map(|f| f.machine.as_str())
            .collect::<Vec<_>>(),
        ["m02"]
    );
    let entry = st.failure_history.last().expect("the revision's failures");
    assert_eq!((entry.revision, entry.version.as_str()), (2, "2.0"));
    assert_eq!(entry.failed, 1);
    let m02 = &entry.machines[0];
    assert_eq!(
        (m02.machine.as_str(), m02.reason.as_str()),
        ("m02", "HookFailed")
    );
    assert_eq!(
        m02.output,
        ["installing", "MARKER-42 on stderr"],
        "the output of the failed hook, not of the rollback's hooks"
    );

    // The next version starts with no failures; the failed revision's stay readable.
    fleet.fail_switch.clear();
    fleet.set_version("3.0");
    fleet.run(100);
    let st = fleet.status();
    assert_eq!(st.phase, RolloutPhase::Complete, "{}", st.message);
    assert_eq!((st.failed, st.failed_machines.len()), (0, 0));
    let kept: Vec<_> = st
        .failure_history
        .iter()
        .map(|e| (e.revision, e.version.as_str()))
        .collect();
    assert_eq!(kept, [(2, "2.0")]);
}

#[test]
fn kept_failures_should_be_bounded_in_machines_lines_and_line_length() {
    let mut s = strategy(IntOrPercent::Int(20));
    s.min_staged = IntOrPercent::Int(1);
    let mut fleet = Fleet::new(15, s);
    fleet.rollout.spec.failure_policy.max_failures = 100;
    complete_v1(&mut fleet);
    for i in 0..15 {
        fleet.fail_switch.insert(format!("m{i:02}"), "2.0".into());
    }
    fleet.fail_output = (0..50)
        .map(|i| format!("{i} {}", "x".repeat(5000)))
        .collect();
    fleet.set_version("2.0");
    fleet.run(50);
    let st = fleet.status();
    assert_eq!(st.failed, 15);
    assert_eq!(st.failed_machines.len(), MAX_FAILED_MACHINES);
    let entry = st.failure_history.last().expect("recorded");
    assert_eq!(entry.failed, 15);
    assert_eq!(entry.machines.len(), MAX_FAILED_MACHINES);
    for m in &entry.machines {
        assert_eq!(m.output.len(), MAX_OUTPUT_LINES);
        assert!(
            m.output[0].starts_with("30 "),
            "the last lines: {}",
            &m.output[0][..8]
        );
        assert!(m.output.iter().all(|l| l.chars().count() <= MAX_LINE_CHARS));
    }
    for v in ["3.0", "4.0", "5.0", "6.0"] {
        for i in 0..15 {
            fleet.fail_switch.insert(format!("m{i:02}"), v.into());
        }
        fleet.set_version(v);
        fleet.run(50);
    }
    assert_eq!(fleet.status().failure_history.len(), MAX_FAILED_REVISIONS);
}

#[test]
fn a_user_pause_of_a_complete_rollout_should_show_as_paused_and_resume_to_complete() {
    let mut fleet = Fleet::new(2, strategy(IntOrPercent::Int(1)));
    complete_v1(&mut fleet);
    fleet.rollout.spec.paused = true;
    fleet.bump();
    fleet.decide();
    let st = fleet.status();
    assert_eq!(st.phase, RolloutPhase::Paused, "{}", st.message);
    assert!(st.message.contains("paused by user"), "{}", st.message);
    assert_eq!(
        find_condition(&st.conditions, "Paused").unwrap().reason,
        "UserPaused"
    );
    assert_eq!(
        find_condition(&st.conditions, "Complete").unwrap().status,
        ConditionStatus::True,
        "every machine still runs the version"
    );
    fleet.rollout.spec.paused = false;
    fleet.bump();
    fleet.decide();
    assert_eq!(fleet.status().phase, RolloutPhase::Complete);
    let completed = fleet
        .events
        .iter()
        .filter(|e| e.reason == "RolloutCompleted")
        .count();
    assert_eq!(completed, 1, "a pause and a resume complete nothing new");
}

mod analysis;
mod topology;
