//! dependsOn: this Rollout switches only once every Rollout it depends on is `Complete`
//! on its own target version.

use super::Decision;
use crate::api::{
    find_condition, set_condition, ConditionStatus, PauseCondition, Rollout, RolloutPhase,
};
use std::collections::BTreeSet;
use std::sync::Arc;

/// The pause the controller sets while a dependency is degraded or rolled back.
pub const PAUSE_DEPENDENCY_DEGRADED: &str = "DependencyDegraded";
/// Reasons of the `DependenciesReady` condition.
pub const REASON_DEPENDENCY_NOT_FOUND: &str = "DependencyNotFound";
pub const REASON_DEPENDENCY_CYCLE: &str = "DependencyCycle";
pub const REASON_WAITING: &str = "WaitingForDependency";
/// The condition that says whether `dependsOn` lets this Rollout switch.
pub const CONDITION_DEPENDENCIES: &str = "DependenciesReady";

/// What the controller found for `spec.dependsOn`.
#[derive(Default, Clone, Debug)]
pub struct DependencyInput {
    /// Each dependency by its display name (`db`, or `ns/db` in another namespace), with
    /// the Rollout found for it (`None`: there is none).
    pub found: Vec<(String, Option<Arc<Rollout>>)>,
    /// A cycle of dependencies through this Rollout, named in order (first = last).
    pub cycle: Option<Vec<String>>,
}

/// How one dependency stands.
enum State {
    Complete,
    Degraded(String),
    Waiting(String),
}

fn state_of(name: &str, ro: &Rollout) -> State {
    let Some(st) = ro.status.as_ref() else {
        return State::Waiting(format!("{name} (Pending)"));
    };
    let observed = ro
        .metadata
        .generation
        .is_none_or(|g| g == st.observed_generation)
        && st.target_version.as_deref() == Some(ro.spec.version.as_str());
    let complete = find_condition(&st.conditions, "Complete")
        .is_some_and(|c| c.status == ConditionStatus::True);
    if observed && complete && !st.aborted {
        return State::Complete;
    }
    if observed && (st.aborted || st.phase == RolloutPhase::Degraded) {
        return State::Degraded(format!("{name} ({}: {})", st.phase, st.message));
    }
    if st.phase == RolloutPhase::RollingBack {
        return State::Degraded(format!("{name} (RollingBack)"));
    }
    State::Waiting(format!(
        "{name} ({} {}/{})",
        st.phase, st.available, st.desired
    ))
}

impl Decision<'_> {
    /// Owns the `DependenciesReady` condition and the `DependencyDegraded` pause; decides
    /// `dependency_hold`. Nothing is held once the fleet runs the target, or when going
    /// back.
    pub(super) fn depends(&mut self) {
        let hold = if self.spec.depends_on.is_empty() || self.st.aborted || self.all_on_target() {
            None
        } else {
            self.dependency_state()
        };
        let degraded = hold.as_ref().map(|h| h.0) == Some(PAUSE_DEPENDENCY_DEGRADED);
        let had = self
            .st
            .pause_conditions
            .iter()
            .any(|p| p.reason == PAUSE_DEPENDENCY_DEGRADED);
        if degraded && !had {
            self.st.pause_conditions.push(PauseCondition {
                reason: PAUSE_DEPENDENCY_DEGRADED.to_string(),
                start_time: self.now,
                until: None,
            });
        } else if !degraded && had {
            self.st
                .pause_conditions
                .retain(|p| p.reason != PAUSE_DEPENDENCY_DEGRADED);
        }
        if self.spec.depends_on.is_empty() {
            self.st
                .conditions
                .retain(|c| c.type_ != CONDITION_DEPENDENCIES);
        } else {
            let (status, reason, message) = match &hold {
                Some((reason, message)) => (ConditionStatus::False, *reason, message.as_str()),
                None => (
                    ConditionStatus::True,
                    "DependenciesComplete",
                    "every dependency is Complete",
                ),
            };
            set_condition(
                &mut self.st.conditions,
                CONDITION_DEPENDENCIES,
                status,
                reason,
                message,
                self.now,
            );
        }
        self.dependency_hold = hold;
    }

    /// The first reason to wait, in this order: a cycle, a missing dependency, a
    /// degraded one, one still rolling out.
    fn dependency_state(&self) -> Option<(&'static str, String)> {
        let deps = &self.topology.dependencies;
        if let Some(cycle) = &deps.cycle {
            return Some((
                REASON_DEPENDENCY_CYCLE,
                format!("dependency cycle: {}", cycle.join(" -> ")),
            ));
        }
        let missing: Vec<&str> = deps
            .found
            .iter()
            .filter(|(_, ro)| ro.is_none())
            .map(|(n, _)| n.as_str())
            .collect();
        if !missing.is_empty() {
            return Some((
                REASON_DEPENDENCY_NOT_FOUND,
                format!("dependsOn {}: no such rollout", missing.join(", ")),
            ));
        }
        let (mut degraded, mut waiting) = (Vec::new(), Vec::new());
        for (name, ro) in &deps.found {
            let ro = ro.as_ref().expect("missing ones returned above");
            match state_of(name, ro) {
                State::Complete => {}
                State::Degraded(m) => degraded.push(m),
                State::Waiting(m) => waiting.push(m),
            }
        }
        if !degraded.is_empty() {
            return Some((
                PAUSE_DEPENDENCY_DEGRADED,
                format!("dependsOn {}", degraded.join(", ")),
            ));
        }
        if !waiting.is_empty() {
            return Some((
                REASON_WAITING,
                format!("Waiting: dependsOn {}", waiting.join(", ")),
            ));
        }
        None
    }
}

/// A cycle of `dependsOn` through `start`, if any: the names along it, `start` first and
/// last. `deps_of` gives a Rollout's dependencies (namespace, name), `None` for one not
/// found. Visits each Rollout once, so it ends on any graph.
pub fn find_cycle(
    start: (&str, &str),
    deps_of: impl Fn(&str, &str) -> Option<Vec<(String, String)>>,
) -> Option<Vec<String>> {
    let start = (start.0.to_string(), start.1.to_string());
    let mut seen = BTreeSet::new();
    // Depth-first, with the path to each node kept on the stack.
    let mut stack = vec![(start.clone(), vec![start.clone()])];
    while let Some((node, path)) = stack.pop() {
        for next in deps_of(&node.0, &node.1).unwrap_or_default() {
            if next == start {
                let mut names: Vec<String> = path.iter().map(|n| display(n, &start.0)).collect();
                names.push(display(&start, &start.0));
                return Some(names);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push((next, p));
            }
        }
    }
    None
}

/// `name`, or `namespace/name` outside `home`.
pub fn display(n: &(String, String), home: &str) -> String {
    if n.0 == home {
        n.1.clone()
    } else {
        format!("{}/{}", n.0, n.1)
    }
}
