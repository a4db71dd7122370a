//! The Task decision driven through whole runs, with agents simulated as result maps.

use super::*;
use crate::api::{
    selector::LabelSelector, ApplicationSpec, IntOrPercent, Machine, MachineSpec, Object, TaskSpec,
};
use std::sync::Arc;

fn machines(names: &[(&str, &str, bool)]) -> Vec<MachineView> {
    names
        .iter()
        .map(|(name, role, ready)| {
            let mut m = Machine::new(name, MachineSpec::default());
            m.metadata.labels.insert("role".into(), role.to_string());
            MachineView {
                machine: Arc::new(m),
                ready: *ready,
            }
        })
        .collect()
}

fn app() -> Application {
    let spec = ApplicationSpec {
        selector: LabelSelector::parse("role in (web,canary)").expect("a valid selector"),
        ..Default::default()
    };
    Application::new("web", spec)
}

fn task(edit: impl FnOnce(&mut TaskSpec)) -> Task {
    let mut spec = TaskSpec {
        application: "web".into(),
        command: "systemctl reload nginx".into(),
        ..Default::default()
    };
    edit(&mut spec);
    Task::new("run-1", spec)
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
        .expect("a fixed valid time")
        .with_timezone(&Utc)
}

fn four() -> Vec<MachineView> {
    machines(&[
        ("m1", "web", true),
        ("m2", "web", true),
        ("m3", "web", true),
        ("m4", "web", true),
        ("db", "db", true),
    ])
}

fn finished(machine: &str, code: i32) -> MachineRun {
    MachineRun {
        machine: machine.into(),
        phase: if code == 0 {
            MachineRunPhase::Succeeded
        } else {
            MachineRunPhase::Failed
        },
        exit_code: Some(code),
        start_time: Some(now()),
        finish_time: Some(now() + Duration::milliseconds(1200)),
        ..Default::default()
    }
}

/// Runs the decision to the end, every ordered machine finishing with `exit(machine)`
/// one reconcile after its order. Returns the orders of each reconcile and the last status.
fn drive(
    t: &mut Task,
    fleet: &[MachineView],
    exit: impl Fn(&str) -> i32,
) -> (Vec<Vec<String>>, TaskStatus) {
    let mut results = BTreeMap::new();
    let mut rounds = Vec::new();
    for _ in 0..20 {
        let plan = plan_task(t, Some(&app()), fleet, &results, now());
        for m in &plan.orders {
            results.insert(m.clone(), finished(m, exit(m)));
        }
        rounds.push(plan.orders.clone());
        t.status = Some(plan.status.clone());
        if plan.status.phase.is_finished() {
            return (rounds, plan.status);
        }
    }
    panic!("the task did not finish in 20 reconciles: {:?}", t.status);
}

#[test]
fn a_task_should_run_once_on_every_ready_machine_of_its_application_at_most_max_parallel_at_once() {
    for (max, want_rounds) in [
        (IntOrPercent::Int(1), vec![1, 1, 1, 1]),
        (IntOrPercent::Int(2), vec![2, 2]),
        (IntOrPercent::Int(10), vec![4]),
        (IntOrPercent::Percent("50%".into()), vec![2, 2]),
        // 10% of 4 rounds down to 0: at least one machine runs.
        (IntOrPercent::Percent("10%".into()), vec![1, 1, 1, 1]),
    ] {
        let mut t = task(|s| s.max_parallel = max.clone());
        let (rounds, st) = drive(&mut t, &four(), |_| 0);
        let sizes: Vec<usize> = rounds.iter().map(Vec::len).filter(|n| *n > 0).collect();
        assert_eq!(sizes, want_rounds, "maxParallel {max}");
        let mut ran: Vec<String> = rounds.concat();
        ran.sort();
        assert_eq!(ran, ["m1", "m2", "m3", "m4"], "maxParallel {max}");
        assert_eq!(st.phase, TaskPhase::Succeeded);
    }
}

#[test]
fn a_failure_should_stop_the_machines_not_yet_started_and_name_the_failing_one() {
    let mut t = task(|_| {});
    let (rounds, st) = drive(&mut t, &four(), |m| if m == "m2" { 3 } else { 0 });
    assert_eq!(rounds.concat(), ["m1", "m2"]);
    assert_eq!(st.phase, TaskPhase::Failed);
    let phases: Vec<(&str, MachineRunPhase)> = st
        .machines
        .iter()
        .map(|r| (r.machine.as_str(), r.phase))
        .collect();
    assert_eq!(
        phases,
        [
            ("m1", MachineRunPhase::Succeeded),
            ("m2", MachineRunPhase::Failed),
            ("m3", MachineRunPhase::Skipped),
            ("m4", MachineRunPhase::Skipped),
        ]
    );
    let failed: Vec<&str> = st.failed().map(|r| r.machine.as_str()).collect();
    assert_eq!(failed, ["m2"]);
    assert_eq!(run_summary(&st.machines[1]), "exit 3 (1.2s)");
}

#[test]
fn without_stop_on_failure_every_machine_should_still_run() {
    let mut t = task(|s| s.stop_on_failure = false);
    let (rounds, st) = drive(&mut t, &four(), |m| if m == "m2" { 1 } else { 0 });
    assert_eq!(rounds.concat().len(), 4);
    assert_eq!(st.phase, TaskPhase::Failed);
}

#[test]
fn one_selector_and_machine_names_should_narrow_the_machines_chosen() {
    let mut fleet = four();
    fleet.extend(machines(&[("c1", "canary", true), ("m5", "web", false)]));
    for (edit, want) in [
        (
            Box::new(|s: &mut TaskSpec| s.one = true) as Box<dyn Fn(&mut TaskSpec)>,
            vec!["c1"],
        ),
        (
            Box::new(|s: &mut TaskSpec| {
                s.selector = LabelSelector::parse("role=web").expect("a valid selector")
            }),
            vec!["m1", "m2", "m3", "m4"],
        ),
        (
            Box::new(|s: &mut TaskSpec| s.machines = vec!["m3".into(), "c1".into()]),
            vec!["c1", "m3"],
        ),
        // Every ready machine of the Application, never the not-ready m5 nor db.
        (
            Box::new(|_: &mut TaskSpec| {}),
            vec!["c1", "m1", "m2", "m3", "m4"],
        ),
    ] {
        let mut t = task(|s| edit(s));
        let (_, st) = drive(&mut t, &fleet, |_| 0);
        let chosen: Vec<&str> = st.machines.iter().map(|r| r.machine.as_str()).collect();
        assert_eq!(chosen, want);
    }
}

#[test]
fn a_task_that_cannot_choose_machines_should_fail_with_the_reason_and_order_nothing() {
    let fleet = machines(&[
        ("m1", "web", true),
        ("m5", "web", false),
        ("db", "db", true),
    ]);
    for (t, app_present, want) in [
        (
            task(|s| s.machines = vec!["m5".into()]),
            true,
            "machines not ready or not running application \"web\": m5",
        ),
        (
            task(|s| s.machines = vec!["db".into()]),
            true,
            "machines not ready or not running application \"web\": db",
        ),
        (
            task(|s| s.selector = LabelSelector::parse("role=none").expect("valid")),
            true,
            "no ready machine of application \"web\" matches",
        ),
        (task(|_| {}), false, "application \"web\" not found"),
        (
            task(|s| s.command = String::new()),
            true,
            "invalid task: spec.command: must not be empty",
        ),
    ] {
        let a = app();
        let plan = plan_task(
            &t,
            app_present.then_some(&a),
            &fleet,
            &BTreeMap::new(),
            now(),
        );
        assert!(plan.orders.is_empty(), "{want}");
        assert_eq!(plan.status.phase, TaskPhase::Failed, "{want}");
        assert_eq!(plan.status.message.as_deref(), Some(want));
    }
}

#[test]
fn a_machine_that_goes_not_ready_mid_command_should_be_reported_and_not_retried() {
    let mut fleet = four();
    let mut t = task(|s| s.max_parallel = IntOrPercent::Int(4));
    let plan = plan_task(&t, Some(&app()), &fleet, &BTreeMap::new(), now());
    assert_eq!(plan.orders.len(), 4);
    t.status = Some(plan.status);
    fleet[1].ready = false;
    let results: BTreeMap<String, MachineRun> = ["m1", "m3", "m4"]
        .iter()
        .map(|m| (m.to_string(), finished(m, 0)))
        .collect();
    let plan = plan_task(&t, Some(&app()), &fleet, &results, now());
    assert!(plan.orders.is_empty(), "not retried");
    assert_eq!(plan.status.phase, TaskPhase::Failed);
    assert_eq!(plan.status.machines[1].phase, MachineRunPhase::NotReady);
    // An agent's Interrupted result is final as well.
    let mut t = task(|_| {});
    t.status = Some(plan_task(&t, Some(&app()), &four(), &BTreeMap::new(), now()).status);
    let interrupted = MachineRun {
        machine: "m1".into(),
        phase: MachineRunPhase::Interrupted,
        message: Some("the agent restarted while the command ran".into()),
        ..Default::default()
    };
    let results = BTreeMap::from([("m1".to_string(), interrupted)]);
    let plan = plan_task(&t, Some(&app()), &four(), &results, now());
    assert_eq!(plan.status.machines[0].phase, MachineRunPhase::Interrupted);
    assert!(
        plan.orders.is_empty(),
        "stop-on-failure: nothing else starts"
    );
    assert_eq!(plan.status.phase, TaskPhase::Failed);
}

#[test]
fn a_finished_task_should_be_deleted_once_its_ttl_has_passed() {
    let mut t = task(|s| s.ttl_seconds_after_finished = 60);
    let (_, st) = drive(&mut t, &four(), |_| 0);
    let at = |secs| now() + Duration::seconds(secs);
    assert!(!plan_task(&t, Some(&app()), &four(), &BTreeMap::new(), at(59)).delete);
    let plan = plan_task(&t, Some(&app()), &four(), &BTreeMap::new(), at(60));
    assert!(plan.delete);
    assert!(plan.orders.is_empty());
    assert_eq!(plan.status, st, "a finished task's status never changes");
}
