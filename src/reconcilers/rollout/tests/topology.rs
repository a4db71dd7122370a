//! Waves, switch order and dependsOn against the simulated fleet.

use super::*;
use crate::api::{set_condition, Dependency, SwitchOrder, Waves};
use crate::reconcilers::rollout::waves::MAX_WAVES;

/// A fleet of `zones.len()` machines, machine `i` labelled `zone=zones[i]` (none for
/// `""`), with `v1` complete and the given waves.
fn zoned(zones: &[&str], max_unavailable: u32, waves: Waves) -> Fleet {
    let mut fleet = Fleet::new(zones.len(), strategy(IntOrPercent::Int(max_unavailable)));
    for (i, z) in zones.iter().enumerate() {
        let mut labels = std::collections::BTreeMap::new();
        if !z.is_empty() {
            labels.insert("zone".to_string(), z.to_string());
        }
        fleet.labels.insert(format!("m{i:02}"), labels);
    }
    complete_v1(&mut fleet);
    // Only the switches of the rollouts under test.
    fleet.switches.clear();
    fleet.rollout.spec.strategy.waves = Some(waves);
    fleet
}

fn by_zone(order: &[&str]) -> Waves {
    Waves {
        label_key: "zone".into(),
        order: order.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// The zone of machine `m` in a fleet built by [`zoned`].
fn zone_of<'a>(fleet: &'a Fleet, m: &str) -> &'a str {
    fleet.labels[m].get("zone").map_or("", String::as_str)
}

/// The zones in the order the fleet's machines switched to `v`, one entry per switch.
fn switch_zones(fleet: &Fleet, v: &str) -> Vec<String> {
    fleet
        .switches
        .iter()
        .filter(|(_, sv)| sv == v)
        .map(|(m, _)| zone_of(fleet, m).to_string())
        .collect()
}

/// True when every `a` comes before every `b` in `seq`.
fn all_before(seq: &[String], a: &str, b: &str) -> bool {
    let last_a = seq.iter().rposition(|z| z == a);
    let first_b = seq.iter().position(|z| z == b);
    match (last_a, first_b) {
        (Some(la), Some(fb)) => la < fb,
        _ => false,
    }
}

#[test]
fn waves_should_switch_one_zone_at_a_time_in_the_given_order_then_the_rest_sorted() {
    let zones = ["c", "c", "a", "a", "b", "b", "d"];
    let mut fleet = zoned(&zones, 3, by_zone(&["b", "a"]));
    fleet.set_version("2.0");
    fleet.run(100);
    assert_eq!(fleet.status().phase, RolloutPhase::Complete);
    let seq = switch_zones(&fleet, "2.0");
    assert_eq!(seq.len(), zones.len(), "{seq:?}");
    assert!(all_before(&seq, "b", "a"), "{seq:?}");
    assert!(all_before(&seq, "a", "c"), "{seq:?}");
    assert!(all_before(&seq, "c", "d"), "{seq:?}");
    let values: Vec<&str> = fleet
        .status()
        .waves
        .iter()
        .map(|w| w.value.as_str())
        .collect();
    assert_eq!(values, ["b", "a", "c", "d"]);
    assert!(fleet.status().waves.iter().all(|w| w.phase == "Done"));
}

#[test]
fn machines_without_the_label_should_form_the_last_wave() {
    let mut fleet = zoned(&["", "b", "a"], 1, by_zone(&[]));
    fleet.set_version("2.0");
    fleet.run(100);
    assert_eq!(fleet.status().phase, RolloutPhase::Complete);
    assert_eq!(switch_zones(&fleet, "2.0"), ["a", "b", ""]);
}

#[test]
fn a_wave_should_bake_before_the_next_one_starts_and_wake_the_decision_at_its_end() {
    let mut waves = by_zone(&["a", "b"]);
    waves.bake = Some("10m".into());
    let mut fleet = zoned(&["a", "a", "b", "b"], 2, waves);
    fleet.set_version("2.0");
    fleet.run(100);
    assert_eq!(
        switch_zones(&fleet, "2.0"),
        ["a", "a"],
        "only zone a switched"
    );
    let st = fleet.status().clone();
    assert_eq!(st.waves[0].phase, "Baking");
    assert_eq!(st.waves[1].phase, "Waiting");
    assert!(st.message.contains("baking 10m left"), "{}", st.message);
    assert_eq!(st.phase, RolloutPhase::Progressing);
    let wake = fleet
        .decide()
        .requeue_after
        .expect("a bake wakes the decision");
    assert!(wake <= Duration::from_secs(600), "{wake:?}");

    // Four minutes in: still baking, and the message says what is left.
    fleet.now += ChronoDuration::minutes(4);
    fleet.run(100);
    assert_eq!(switch_zones(&fleet, "2.0").len(), 2);
    assert!(fleet.status().message.contains("baking 6m left"));
    assert_ne!(fleet.status().phase, RolloutPhase::Degraded);

    // Past the bake (and past the progress deadline since the last switch): zone b goes.
    fleet.now += ChronoDuration::minutes(11);
    fleet.run(100);
    assert_eq!(
        fleet.status().phase,
        RolloutPhase::Complete,
        "{}",
        fleet.status().message
    );
    assert_eq!(switch_zones(&fleet, "2.0"), ["a", "a", "b", "b"]);
}

#[test]
fn max_unavailable_per_wave_should_bound_each_wave_below_the_fleet_slots() {
    let mut waves = by_zone(&["a", "b"]);
    waves.max_unavailable_per_wave = Some(1);
    let mut fleet = zoned(&["a", "a", "a", "b", "b", "b"], 6, waves);
    fleet.set_version("2.0");
    let mut most_in_a = 0;
    for _ in 0..100 {
        fleet.decide();
        let in_a = fleet
            .instances
            .iter()
            .filter(|i| zone_of(&fleet, &i.spec.machine) == "a")
            .filter(|i| {
                let v = View { inst: i };
                v.inst.spec.current.as_deref() == Some("2.0") && v.unavailable()
            })
            .count();
        most_in_a = most_in_a.max(in_a);
        fleet.agents();
    }
    fleet.run(100);
    assert_eq!(fleet.status().phase, RolloutPhase::Complete);
    assert_eq!(most_in_a, 1, "one machine of zone a at a time");
    assert!(all_before(&switch_zones(&fleet, "2.0"), "a", "b"));
}

#[test]
fn a_failure_in_wave_two_should_roll_back_every_touched_wave_newest_first() {
    let mut fleet = zoned(
        &["a", "a", "b", "b", "c", "c"],
        1,
        by_zone(&["a", "b", "c"]),
    );
    fleet.rollout.spec.failure_policy = FailurePolicy {
        max_failures: 0,
        action: FailureAction::Rollback,
    };
    fleet.fail_switch.insert("m03".into(), "2.0".into());
    fleet.set_version("2.0");
    fleet.run(100);
    let st = fleet.status();
    assert!(st.aborted, "{}", st.message);
    assert_eq!(fleet.on("1.0"), 6, "every machine back on 1.0");
    let forward = switch_zones(&fleet, "2.0");
    assert!(
        !forward.contains(&"c".to_string()),
        "zone c never touched: {forward:?}"
    );
    let back = switch_zones(&fleet, "1.0");
    assert!(all_before(&back, "b", "a"), "newest wave first: {back:?}");
    assert!(!back.contains(&"c".to_string()), "{back:?}");
}

#[test]
fn require_label_should_leave_unlabelled_machines_unswitched_and_say_so() {
    let mut waves = by_zone(&[]);
    waves.require_label = true;
    let mut fleet = zoned(&["a", "", "b"], 1, waves);
    fleet.set_version("2.0");
    fleet.run(100);
    assert_eq!(switch_zones(&fleet, "2.0"), ["a", "b"]);
    let st = fleet.status();
    assert_ne!(st.phase, RolloutPhase::Complete);
    assert_eq!(
        st.waves.last().map(|w| (w.phase.as_str(), w.machines)),
        Some(("Refused", 1))
    );
    assert!(st.message.contains("lack label zone"), "{}", st.message);
}

#[test]
fn canary_steps_should_take_their_machines_from_the_first_wave() {
    let mut fleet = zoned(&["b", "b", "a", "a"], 1, by_zone(&["a", "b"]));
    fleet.rollout.spec.strategy.steps = vec![machines_step(1), pause_step()];
    fleet.set_version("2.0");
    fleet.run(100);
    assert_eq!(fleet.status().phase, RolloutPhase::Paused);
    assert_eq!(switch_zones(&fleet, "2.0"), ["a"]);
}

/// `v1` complete on four machines, `m03` then down (its service unhealthy), `v2`
/// staged everywhere, and one decision under a one-machine canary step.
fn first_switch_with_one_down(order: SwitchOrder) -> Vec<String> {
    let mut fleet = Fleet::new(4, strategy(IntOrPercent::Int(2)));
    complete_v1(&mut fleet);
    fleet.rollout.spec.strategy.order = order;
    fleet.rollout.spec.strategy.steps = vec![machines_step(1), pause_step()];
    fleet.set_version("2.0");
    fleet.decide();
    fleet.agents();
    let st = fleet.instances[3].status.as_mut().expect("reported");
    st.available = false;
    st.healthy = false;
    fleet.decide();
    fleet
        .instances
        .iter()
        .filter(|i| i.spec.current.as_deref() == Some("2.0"))
        .map(|i| i.spec.machine.clone())
        .collect()
}

#[test]
fn unavailable_first_should_switch_a_machine_already_down_before_a_healthy_one() {
    assert_eq!(
        first_switch_with_one_down(SwitchOrder::UnavailableFirst),
        ["m03"]
    );
    assert_eq!(first_switch_with_one_down(SwitchOrder::Listed), ["m00"]);
}

#[test]
fn machines_already_down_should_count_against_max_unavailable() {
    let mut fleet = Fleet::new(4, strategy(IntOrPercent::Int(2)));
    complete_v1(&mut fleet);
    fleet.rollout.spec.strategy.order = SwitchOrder::UnavailableFirst;
    fleet.set_version("2.0");
    fleet.decide();
    fleet.agents();
    for i in [2, 3] {
        let st = fleet.instances[i].status.as_mut().expect("reported");
        st.available = false;
        st.healthy = false;
    }
    fleet.decide();
    let switching: Vec<_> = fleet
        .instances
        .iter()
        .filter(|i| i.spec.current.as_deref() == Some("2.0"))
        .map(|i| i.spec.machine.as_str())
        .collect();
    assert_eq!(switching, ["m02", "m03"], "two down fill both slots");
}

/// A Rollout `name` at `version`, reconciled with this status.
fn dependency(name: &str, version: &str, phase: RolloutPhase, available: u32) -> Rollout {
    let mut ro = rollout(version, Strategy::default());
    ro.metadata.name = name.into();
    let mut st = RolloutStatus {
        observed_generation: 1,
        phase,
        target_version: Some(version.into()),
        desired: 10,
        available,
        aborted: phase == RolloutPhase::Degraded,
        message: "machine failed".into(),
        ..Default::default()
    };
    let complete = if phase == RolloutPhase::Complete {
        ConditionStatus::True
    } else {
        ConditionStatus::False
    };
    set_condition(&mut st.conditions, "Complete", complete, "", "", Utc::now());
    ro.status = Some(st);
    ro
}

fn depending_on(db: Option<Rollout>) -> Fleet {
    let mut fleet = Fleet::new(3, strategy(IntOrPercent::Int(1)));
    complete_v1(&mut fleet);
    fleet.rollout.spec.depends_on = vec![Dependency {
        rollout: "db".into(),
        namespace: None,
    }];
    fleet.dependencies.found = vec![("db".into(), db.map(Arc::new))];
    fleet.set_version("2.0");
    fleet
}

fn dependencies_condition(fleet: &Fleet) -> (ConditionStatus, String, String) {
    let c = find_condition(&fleet.status().conditions, CONDITION_DEPENDENCIES)
        .expect("set with dependsOn");
    (c.status, c.reason.clone(), c.message.clone())
}

#[test]
fn depends_on_should_stage_but_not_switch_until_the_dependency_is_complete() {
    let mut fleet = depending_on(Some(dependency("db", "5", RolloutPhase::Progressing, 3)));
    fleet.run(100);
    assert_eq!(fleet.on("2.0"), 0, "nothing switched");
    assert_eq!(fleet.status().staged, 3, "staging went on");
    assert_eq!(
        fleet.status().message,
        "Waiting: dependsOn db (Progressing 3/10)"
    );
    assert_eq!(fleet.status().phase, RolloutPhase::Progressing);
    assert_eq!(dependencies_condition(&fleet).1, "WaitingForDependency");

    // Complete on an older version is not complete on its target.
    let mut stale = dependency("db", "4", RolloutPhase::Complete, 10);
    stale.spec.version = "5".into();
    fleet.dependencies.found[0].1 = Some(Arc::new(stale));
    fleet.run(100);
    assert_eq!(fleet.on("2.0"), 0);

    fleet.dependencies.found[0].1 =
        Some(Arc::new(dependency("db", "5", RolloutPhase::Complete, 10)));
    fleet.run(100);
    assert_eq!(fleet.status().phase, RolloutPhase::Complete);
    assert_eq!(fleet.on("2.0"), 3);
    assert_eq!(dependencies_condition(&fleet).0, ConditionStatus::True);
}

#[test]
fn a_degraded_dependency_should_pause_the_rollout_with_its_reason() {
    let mut fleet = depending_on(Some(dependency("db", "5", RolloutPhase::Degraded, 2)));
    fleet.run(100);
    assert_eq!(fleet.on("2.0"), 0);
    let st = fleet.status();
    assert_eq!(st.phase, RolloutPhase::Paused);
    assert!(st
        .pause_conditions
        .iter()
        .any(|p| p.reason == PAUSE_DEPENDENCY_DEGRADED));
    let paused = find_condition(&st.conditions, "Paused").expect("always set");
    assert_eq!(paused.reason, PAUSE_DEPENDENCY_DEGRADED);
    assert!(
        st.message.starts_with("dependsOn db (Degraded"),
        "{}",
        st.message
    );

    // Recovered: the pause lifts by itself.
    fleet.dependencies.found[0].1 =
        Some(Arc::new(dependency("db", "5", RolloutPhase::Complete, 10)));
    fleet.run(100);
    assert_eq!(fleet.status().phase, RolloutPhase::Complete);
    assert!(fleet.status().pause_conditions.is_empty());
}

#[test]
fn a_missing_dependency_should_be_a_condition_and_switch_nothing() {
    let mut fleet = depending_on(None);
    let plan = fleet.decide();
    fleet.agents();
    fleet.run(100);
    assert_eq!(fleet.on("2.0"), 0);
    let (status, reason, message) = dependencies_condition(&fleet);
    assert_eq!(status, ConditionStatus::False);
    assert_eq!(reason, "DependencyNotFound");
    assert!(message.contains("db"), "{message}");
    assert_eq!(fleet.status().phase, RolloutPhase::Progressing);
    // No tight loop: the only wake-up is the progress deadline's, which a wait for a
    // dependency does not run down.
    assert!(plan
        .requeue_after
        .is_none_or(|d| d >= Duration::from_secs(60)));
    fleet.now += ChronoDuration::hours(1);
    fleet.run(100);
    assert_ne!(fleet.status().phase, RolloutPhase::Degraded);
}

#[test]
fn a_dependency_cycle_should_be_named_in_a_condition_and_switch_nothing() {
    let mut fleet = depending_on(Some(dependency("db", "5", RolloutPhase::Complete, 10)));
    fleet.dependencies.cycle = Some(vec!["api".into(), "db".into(), "api".into()]);
    fleet.run(100);
    assert_eq!(fleet.on("2.0"), 0);
    let (_, reason, message) = dependencies_condition(&fleet);
    assert_eq!(reason, "DependencyCycle");
    assert_eq!(message, "dependency cycle: api -> db -> api");
}

#[test]
fn find_cycle_should_name_a_cycle_through_the_start_and_end_on_any_graph() {
    let graph: HashMap<&str, Vec<&str>> = [
        ("a", vec!["b"]),
        ("b", vec!["c", "d"]),
        ("c", vec!["a"]),
        ("d", vec!["d"]),
        ("e", vec!["d"]),
    ]
    .into_iter()
    .collect();
    let deps = |_: &str, n: &str| {
        graph.get(n).map(|v| {
            v.iter()
                .map(|d| ("default".to_string(), d.to_string()))
                .collect()
        })
    };
    assert_eq!(
        find_cycle(("default", "a"), deps),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(
        find_cycle(("default", "e"), deps),
        None,
        "a cycle not through e"
    );
    assert_eq!(find_cycle(("default", "x"), deps), None);
}

#[test]
fn a_label_with_more_distinct_values_than_waves_allowed_should_hold_switching_and_say_why() {
    let names: Vec<String> = (0..=MAX_WAVES).map(|i| format!("z{i}")).collect();
    let zones: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut fleet = zoned(&zones, 1001, by_zone(&[]));
    fleet.set_version("2.0");
    fleet.run(5);
    assert!(fleet.switches.is_empty(), "{:?}", &fleet.switches[..3]);
    let st = fleet.status();
    assert!(
        st.waves.is_empty(),
        "one entry per value would be {}",
        MAX_WAVES + 1
    );
    assert!(
        st.message.contains("1001 distinct values")
            && st.message.contains("no machine is switched"),
        "{}",
        st.message
    );
}
