//! Machine: its `Ready` condition follows its agent's lease.

use crate::api::{find_condition, set_condition, ConditionStatus, Machine, MachineStatus};
use chrono::{DateTime, Utc};

/// The status a Machine should have given whether its agent's lease is alive, or `None`
/// when the stored status already says so.
pub fn plan(machine: &Machine, lease_alive: bool, now: DateTime<Utc>) -> Option<MachineStatus> {
    let mut status = machine.status.clone().unwrap_or_default();
    let (st, reason, message) = if lease_alive {
        (
            ConditionStatus::True,
            "AgentLeaseAlive",
            "the agent holds its lease",
        )
    } else if find_condition(&status.conditions, "Ready").is_none() && status.hostname.is_none() {
        (
            ConditionStatus::False,
            "AgentNotRegistered",
            "no agent has registered under this name yet",
        )
    } else {
        (
            ConditionStatus::False,
            "AgentLeaseExpired",
            "the agent's lease expired: it stopped or lost the store",
        )
    };
    set_condition(&mut status.conditions, "Ready", st, reason, message, now).then_some(status)
}

/// True when the Machine's stored status says it is ready.
pub fn is_ready(machine: &Machine) -> bool {
    machine
        .status
        .as_ref()
        .and_then(|s| find_condition(&s.conditions, "Ready"))
        .is_some_and(|c| c.status == ConditionStatus::True)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{MachineSpec, Object};

    #[test]
    fn machine_should_turn_ready_with_its_lease_and_not_ready_without() {
        let now = Utc::now();
        let mut m = Machine::new("m1", MachineSpec::default());
        let st = plan(&m, true, now).expect("first time: a change");
        assert_eq!(st.conditions[0].status, ConditionStatus::True);
        m.status = Some(st);
        assert!(is_ready(&m));
        assert_eq!(plan(&m, true, now), None, "no change, no write");
        let st = plan(&m, false, now).expect("lease gone: a change");
        assert_eq!(st.conditions[0].reason, "AgentLeaseExpired");
        m.status = Some(st);
        assert!(!is_ready(&m));
    }

    #[test]
    fn machine_declared_ahead_should_say_no_agent_registered() {
        let m = Machine::new("m1", MachineSpec::default());
        let st = plan(&m, false, Utc::now()).unwrap();
        assert_eq!(st.conditions[0].reason, "AgentNotRegistered");
    }
}
