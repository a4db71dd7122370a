//! The rows the dashboard sends: what each page shows of an object, as JSON, computed from
//! the informers' objects. Pure: no store, no clock but the `now` given.
//!
//! Every string from the store goes out as a JSON string and the page puts it into the
//! document as text (`textContent`), never as markup; nothing here escapes HTML.

use crate::api::{
    find_condition, ConditionStatus, Event, Instance, InstancePhase, Machine, Rollout,
};
use crate::cli::output::{rollout_phase, rollout_version, NotCounted};
use crate::cli::view::{describe_step, gate, instance_info, step_text, strategy_name};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Machines listed at most per group page of a rollout's grid.
pub const MAX_GROUP_PAGE: usize = 500;

/// The version a Rollout is going to: the one its status works on, else its spec's.
pub fn target_of(r: &Rollout) -> String {
    r.status
        .as_ref()
        .and_then(|s| s.target_version.clone())
        .unwrap_or_else(|| r.spec.version.clone())
}

/// A row of the Rollouts page: one Rollout.
pub fn rollout_row(r: &Rollout, now: DateTime<Utc>) -> Value {
    let st = r.status.clone().unwrap_or_default();
    let target = target_of(r);
    // The bar: machines on the target (updated, of which failed ones are shown apart),
    // with the target staged but not switched, failed, and the rest (on the stable or
    // another version). Each from the status the controller wrote in one write.
    let failed = st.failed.min(st.desired);
    let updated = st.updated.min(st.desired);
    let staged = st
        .staged
        .saturating_sub(st.updated)
        .min(st.desired - updated);
    let rest = st.desired.saturating_sub(updated + staged + failed);
    json!({
        "namespace": r.metadata.namespace.clone().unwrap_or_default(),
        "name": r.metadata.name,
        "application": r.spec.application,
        "phase": rollout_phase(r),
        "phaseClass": st.phase.to_string(),
        "stable": st.stable_version,
        "target": target,
        "version": rollout_version(r),
        "strategy": strategy_name(r),
        "step": step_text(r),
        "desired": st.desired,
        "bar": {"stable": rest, "updated": updated, "staged": staged, "failed": failed},
        "available": st.available,
        "created": r.metadata.creation_timestamp,
        "gate": gate(r, now),
        "message": st.message,
        "paused": r.spec.paused,
        "labels": r.metadata.labels,
    })
}

/// The whole of one Rollout as its page shows it: the object itself (spec and status),
/// plus the steps with the current one marked and the gate in words.
pub fn rollout_detail(r: &Rollout, now: DateTime<Utc>) -> Value {
    let st = r.status.clone().unwrap_or_default();
    let current = st.current_step_index.map(|i| i as usize);
    let steps: Vec<Value> = r
        .spec
        .strategy
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let state = match current {
                Some(c) if i < c => "done",
                Some(c) if i == c => "current",
                _ => "pending",
            };
            json!({"index": i + 1, "text": describe_step(s), "state": state})
        })
        .collect();
    let pause_until = st.pause_conditions.iter().filter_map(|p| p.until).min();
    json!({
        "row": rollout_row(r, now),
        "object": r,
        "steps": steps,
        "pauseUntil": pause_until,
    })
}

/// Where one machine stands in a rollout's grid. The order is the grid's: trouble first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum GridState {
    Failed,
    NotReady,
    Cordoned,
    Switching,
    Verifying,
    Staging,
    Unavailable,
    Available,
    Pending,
}

impl GridState {
    pub fn as_str(self) -> &'static str {
        match self {
            GridState::Failed => "Failed",
            GridState::NotReady => "NotReady",
            GridState::Cordoned => "Cordoned",
            GridState::Switching => "Switching",
            GridState::Verifying => "Verifying",
            GridState::Staging => "Staging",
            GridState::Unavailable => "Unavailable",
            GridState::Available => "Available",
            GridState::Pending => "Pending",
        }
    }

    pub fn parse(text: &str) -> Option<GridState> {
        [
            GridState::Failed,
            GridState::NotReady,
            GridState::Cordoned,
            GridState::Switching,
            GridState::Verifying,
            GridState::Staging,
            GridState::Unavailable,
            GridState::Available,
            GridState::Pending,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// An Instance's place in the grid: the version it runs (`None`: none yet) and its state.
/// A machine rollouts do not count shows that first, as every view does.
pub fn grid_cell(
    i: &Instance,
    machine: Option<&Machine>,
    now: DateTime<Utc>,
) -> (Option<String>, GridState) {
    let st = i.status.as_ref();
    let version = st.and_then(|s| s.current_version.clone());
    if let Some(n) = machine.and_then(|m| NotCounted::of(m, now)) {
        let state = if n.not_ready.is_some() {
            GridState::NotReady
        } else {
            GridState::Cordoned
        };
        return (version, state);
    }
    let Some(s) = st else {
        return (version, GridState::Pending);
    };
    let state = if s.failure.is_some() || s.phase == InstancePhase::Failed {
        GridState::Failed
    } else if i.spec.current.is_some() && i.spec.current != s.current_version {
        GridState::Switching
    } else if s.phase == InstancePhase::Verifying {
        GridState::Verifying
    } else if s.available {
        GridState::Available
    } else if s.phase == InstancePhase::Staging {
        GridState::Staging
    } else if s.current_version.is_some() {
        GridState::Unavailable
    } else {
        GridState::Pending
    };
    (version, state)
}

/// The key of a grid group's row: `group/<version>/<state>`, `-` for no version.
pub fn group_key(version: Option<&str>, state: GridState) -> String {
    format!("group/{}/{}", version.unwrap_or("-"), state.as_str())
}

/// The Instances of `r`'s Application (in its namespace).
pub fn instances_of<'a>(
    r: &'a Rollout,
    instances: impl IntoIterator<Item = &'a Instance> + 'a,
) -> impl Iterator<Item = &'a Instance> + 'a {
    let ns = r.metadata.namespace.clone();
    instances
        .into_iter()
        .filter(move |i| i.spec.application == r.spec.application && i.metadata.namespace == ns)
}

/// A rollout's machines grouped by the version they run and their state, with counts:
/// one row per group, keyed by [`group_key`], so that 10,000 machines are a handful of
/// rows. The machines of a group are listed on request ([`group_page`]).
pub fn grid<'a>(
    r: &Rollout,
    instances: impl IntoIterator<Item = &'a Instance>,
    machines: &impl Fn(&str) -> Option<std::sync::Arc<Machine>>,
    now: DateTime<Utc>,
) -> BTreeMap<String, Value> {
    let target = target_of(r);
    let stable = r.status.as_ref().and_then(|s| s.stable_version.clone());
    let mut counts: BTreeMap<(Option<String>, GridState), u32> = BTreeMap::new();
    for i in instances {
        let m = machines(&i.spec.machine);
        *counts.entry(grid_cell(i, m.as_deref(), now)).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|((version, state), count)| {
            let role = match version.as_deref() {
                Some(v) if v == target => "target",
                Some(v) if Some(v) == stable.as_deref() => "stable",
                Some(_) => "other",
                None => "none",
            };
            (
                group_key(version.as_deref(), state),
                json!({
                    "version": version,
                    "state": state.as_str(),
                    "role": role,
                    "count": count,
                }),
            )
        })
        .collect()
}

/// One machine of a grid group, as the expanded group lists it.
pub fn grid_machine(i: &Instance, state: GridState, target: &str) -> Value {
    let st = i.status.clone().unwrap_or_default();
    // In the words of the live view's machine lines.
    let (detail, _) = instance_info(i, target);
    json!({
        "machine": i.spec.machine,
        "state": state.as_str(),
        "phase": st.phase.to_string(),
        "version": st.current_version,
        "staged": st.staged_versions,
        "detail": detail,
        "output": st.last_hook_output.iter().rev().take(5).rev().collect::<Vec<_>>(),
        "updated": st.updated_at,
    })
}

/// One page of a grid group's machines, by machine name: `offset` and at most
/// [`MAX_GROUP_PAGE`] of them, with the group's total.
pub fn group_page<'a>(
    instances: impl IntoIterator<Item = &'a Instance>,
    machines: &impl Fn(&str) -> Option<std::sync::Arc<Machine>>,
    target: &str,
    version: Option<&str>,
    state: GridState,
    offset: usize,
    now: DateTime<Utc>,
) -> Value {
    let mut members: Vec<(&Instance, GridState)> = instances
        .into_iter()
        .filter_map(|i| {
            let m = machines(&i.spec.machine);
            let (v, s) = grid_cell(i, m.as_deref(), now);
            (v.as_deref() == version && s == state).then_some((i, s))
        })
        .collect();
    members.sort_by(|a, b| a.0.spec.machine.cmp(&b.0.spec.machine));
    let total = members.len();
    let page: Vec<Value> = members
        .into_iter()
        .skip(offset)
        .take(MAX_GROUP_PAGE)
        .map(|(i, s)| grid_machine(i, s, target))
        .collect();
    json!({"total": total, "offset": offset, "machines": page})
}

/// A row of the Machines page: the Machine and the Instances on it (the applications it
/// runs). The last heartbeat is not here: it is the agent's lease, which no watch
/// reports; the page asks for the rows it shows ([`heartbeat`]).
pub fn machine_row(
    m: &Machine,
    instances: &[std::sync::Arc<Instance>],
    now: DateTime<Utc>,
) -> Value {
    let st = m.status.clone().unwrap_or_default();
    let ready = find_condition(&st.conditions, "Ready");
    let not_counted = NotCounted::of(m, now).map(|n| n.text());
    let apps: Vec<Value> = instances
        .iter()
        .map(|i| {
            let s = i.status.clone().unwrap_or_default();
            json!({
                "namespace": i.metadata.namespace,
                "name": i.spec.application,
                "version": s.current_version,
                "phase": s.phase.to_string(),
            })
        })
        .collect();
    json!({
        "name": m.metadata.name,
        "ready": ready.is_some_and(|c| c.status == ConditionStatus::True),
        "readySince": ready.and_then(|c| c.last_transition_time),
        "notCounted": not_counted,
        "cordoned": m.spec.unschedulable,
        "labels": m.metadata.labels,
        "applications": apps,
        "registered": st.last_heartbeat,
        "agentVersion": st.agent_version,
        "hostname": st.hostname,
    })
}

/// A machine's last heartbeat in words, from its presence lease, as `describe machine`
/// says it.
pub fn heartbeat(
    presence: Option<&crate::store::Presence>,
    m: Option<&Machine>,
    now: DateTime<Utc>,
) -> String {
    let not_counted = m.and_then(|m| NotCounted::of(m, now));
    crate::cli::describe::heartbeat(presence, not_counted.as_ref())
}

/// A row of the Events page.
pub fn event_row(e: &Event) -> Value {
    let o = &e.spec.involved_object;
    json!({
        "name": e.metadata.name,
        "namespace": e.metadata.namespace,
        "type": e.spec.type_,
        "reason": e.spec.reason,
        "message": e.spec.message,
        "source": e.spec.source,
        "object": format!("{}/{}", o.kind.to_lowercase(), o.name),
        "objectNamespace": o.namespace,
        "time": e.spec.time.or(e.metadata.creation_timestamp),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        Condition, InstanceFailure, InstanceSpec, InstanceStatus, MachineSpec, MachineStatus,
        Object, RolloutSpec, RolloutStatus,
    };
    use std::sync::Arc;

    fn rollout(st: RolloutStatus) -> Rollout {
        let mut r = Rollout::new(
            "api",
            RolloutSpec {
                application: "api".into(),
                version: "v2".into(),
                ..Default::default()
            },
        );
        r.metadata.namespace = Some("default".into());
        r.status = Some(st);
        r
    }

    fn instance(machine: &str, want: &str, status: Option<InstanceStatus>) -> Instance {
        let mut i = Instance::new(
            &Instance::name_for("api", machine),
            InstanceSpec {
                machine: machine.into(),
                application: "api".into(),
                current: Some(want.into()),
                ..Default::default()
            },
        );
        i.metadata.namespace = Some("default".into());
        i.status = status;
        i
    }

    fn running(version: &str) -> InstanceStatus {
        InstanceStatus {
            phase: InstancePhase::Running,
            current_version: Some(version.into()),
            healthy: true,
            available: true,
            ..Default::default()
        }
    }

    fn machine(name: &str, ready: bool) -> Arc<Machine> {
        let mut m = Machine::new(name, MachineSpec::default());
        m.status = Some(MachineStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: if ready {
                    ConditionStatus::True
                } else {
                    ConditionStatus::False
                },
                reason: if ready {
                    "AgentHeartbeat"
                } else {
                    "AgentLeaseExpired"
                }
                .into(),
                message: String::new(),
                last_transition_time: None,
            }],
            ..Default::default()
        });
        Arc::new(m)
    }

    #[test]
    fn the_bar_should_split_the_desired_machines_without_counting_one_twice() {
        let r = rollout(RolloutStatus {
            desired: 10,
            updated: 4,
            staged: 7,
            failed: 1,
            target_version: Some("v2".into()),
            stable_version: Some("v1".into()),
            ..Default::default()
        });
        let row = rollout_row(&r, Utc::now());
        assert_eq!(
            row["bar"],
            json!({"stable": 2, "staged": 3, "updated": 4, "failed": 1})
        );
        assert_eq!(row["target"], "v2");
        assert_eq!(row["stable"], "v1");
        // Counts past the desired number (a status mid-change) never overflow the bar.
        let odd = rollout(RolloutStatus {
            desired: 2,
            updated: 5,
            staged: 9,
            failed: 4,
            ..Default::default()
        });
        let bar = &rollout_row(&odd, Utc::now())["bar"];
        let sum: u64 = ["stable", "staged", "updated", "failed"]
            .iter()
            .map(|k| bar[k].as_u64().unwrap())
            .sum();
        assert!(sum <= 4, "{bar}");
    }

    #[test]
    fn a_machine_should_land_in_the_group_of_its_version_and_state_trouble_first() {
        let now = Utc::now();
        let failed = InstanceStatus {
            phase: InstancePhase::Failed,
            current_version: Some("v1".into()),
            failure: Some(InstanceFailure {
                version: "v2".into(),
                operation: "stage".into(),
                reason: "FetchFailed".into(),
                message: "404".into(),
                time: now,
            }),
            ..Default::default()
        };
        let cases = [
            (
                instance("a", "v2", Some(running("v2"))),
                true,
                GridState::Available,
            ),
            (
                instance("b", "v2", Some(running("v1"))),
                true,
                GridState::Switching,
            ),
            (instance("c", "v1", Some(failed)), true, GridState::Failed),
            (
                instance("d", "v2", Some(running("v2"))),
                false,
                GridState::NotReady,
            ),
            (instance("e", "v2", None), true, GridState::Pending),
        ];
        for (i, ready, want) in &cases {
            let m = machine(&i.spec.machine, *ready);
            assert_eq!(grid_cell(i, Some(&m), now).1, *want, "{}", i.spec.machine);
        }
        let machines = |name: &str| Some(machine(name, name != "d"));
        let r = rollout(RolloutStatus {
            target_version: Some("v2".into()),
            stable_version: Some("v1".into()),
            ..Default::default()
        });
        let groups = grid(&r, cases.iter().map(|c| &c.0), &machines, now);
        assert_eq!(
            groups.keys().collect::<Vec<_>>(),
            [
                "group/-/Pending",
                "group/v1/Failed",
                "group/v1/Switching",
                "group/v2/Available",
                "group/v2/NotReady",
            ]
        );
        assert_eq!(groups["group/v2/Available"]["role"], "target");
        assert_eq!(groups["group/v1/Failed"]["role"], "stable");
        assert_eq!(groups["group/-/Pending"]["role"], "none");
    }

    #[test]
    fn a_group_should_be_listed_a_page_at_a_time_by_machine_name() {
        let now = Utc::now();
        let instances: Vec<Instance> = (0..1_200)
            .map(|k| instance(&format!("m{k:04}"), "v2", Some(running("v2"))))
            .collect();
        let machines = |name: &str| Some(machine(name, true));
        let page = |offset| {
            group_page(
                instances.iter(),
                &machines,
                "v2",
                Some("v2"),
                GridState::Available,
                offset,
                now,
            )
        };
        let first = page(0);
        assert_eq!(first["total"], 1_200);
        assert_eq!(first["machines"].as_array().unwrap().len(), MAX_GROUP_PAGE);
        assert_eq!(first["machines"][0]["machine"], "m0000");
        let last = page(1_000);
        assert_eq!(last["machines"].as_array().unwrap().len(), 200);
        assert_eq!(last["machines"][0]["machine"], "m1000");
        let none = group_page(
            instances.iter(),
            &machines,
            "v2",
            None,
            GridState::Available,
            0,
            now,
        );
        assert_eq!(none["total"], 0, "no machine without a version");
    }
}
