//! Machine: its `Ready` condition follows its agent's lease.

use crate::api::{find_condition, set_condition, ConditionStatus, Machine, MachineStatus};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// How long after an agent records its start a Machine without a visible lease is said
/// to be registering rather than lost: the agent puts its presence key before it records
/// its start, so only a lagging presence watch (or an agent that died in between) leaves
/// the two apart, and the lag is far below this.
pub const REGISTER_GRACE: Duration = Duration::from_secs(30);

/// What the controller should do with a Machine: a status to write (`None` when the
/// stored one already says it) and when to look again without a change (`None`: only on
/// a change).
#[derive(Debug, PartialEq)]
pub struct Plan {
    pub status: Option<MachineStatus>,
    pub recheck_after: Option<Duration>,
}

/// The status a Machine should have given whether its agent's lease is alive.
pub fn plan(machine: &Machine, lease_alive: bool, now: DateTime<Utc>) -> Plan {
    let mut status = machine.status.clone().unwrap_or_default();
    let mut recheck_after = None;
    let (st, reason, message) = if lease_alive {
        (
            ConditionStatus::True,
            "AgentLeaseAlive",
            "the agent holds its lease",
        )
    } else if let Some(left) = registering_for(&status, now) {
        recheck_after = Some(left);
        (
            ConditionStatus::False,
            "AgentRegistering",
            "the agent is registering: its lease is not seen yet",
        )
    } else if never_ready(&status) && status.hostname.is_none() {
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
    let changed = set_condition(&mut status.conditions, "Ready", st, reason, message, now);
    Plan {
        status: changed.then_some(status),
        recheck_after,
    }
}

/// True when no agent has held this Machine's lease yet: no `Ready` condition, or one
/// that only ever said the agent was missing or registering.
fn never_ready(status: &MachineStatus) -> bool {
    find_condition(&status.conditions, "Ready")
        .is_none_or(|c| matches!(c.reason.as_str(), "AgentNotRegistered" | "AgentRegistering"))
}

/// How much longer a Machine that was never ready counts as registering: its agent
/// recorded its start (`status.lastHeartbeat`) less than [`REGISTER_GRACE`] ago.
fn registering_for(status: &MachineStatus, now: DateTime<Utc>) -> Option<Duration> {
    if !never_ready(status) {
        return None;
    }
    let since = (now - status.last_heartbeat?)
        .to_std()
        .unwrap_or(Duration::ZERO);
    REGISTER_GRACE.checked_sub(since).filter(|d| !d.is_zero())
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
        let st = plan(&m, true, now).status.expect("first time: a change");
        assert_eq!(st.conditions[0].status, ConditionStatus::True);
        m.status = Some(st);
        assert!(is_ready(&m));
        assert_eq!(plan(&m, true, now).status, None, "no change, no write");
        let st = plan(&m, false, now).status.expect("lease gone: a change");
        assert_eq!(st.conditions[0].reason, "AgentLeaseExpired");
        m.status = Some(st);
        assert!(!is_ready(&m));
    }

    #[test]
    fn machine_declared_ahead_should_say_no_agent_registered() {
        let m = Machine::new("m1", MachineSpec::default());
        let p = plan(&m, false, Utc::now());
        assert_eq!(p.status.unwrap().conditions[0].reason, "AgentNotRegistered");
        assert_eq!(p.recheck_after, None);
    }

    #[test]
    fn a_starting_agent_whose_lease_is_not_seen_yet_should_be_registering_not_expired() {
        let now = Utc::now();
        for declared_ahead in [false, true] {
            let mut m = Machine::new("m1", MachineSpec::default());
            if declared_ahead {
                m.status = plan(&m, false, now - chrono::Duration::hours(1)).status;
            }
            let st = m.status.get_or_insert_with(Default::default);
            st.hostname = Some("host-1".into());
            st.last_heartbeat = Some(now - chrono::Duration::seconds(2));
            let p = plan(&m, false, now);
            let c = &p.status.expect("a change").conditions[0];
            assert_eq!(
                (c.status, c.reason.as_str()),
                (ConditionStatus::False, "AgentRegistering")
            );
            assert_eq!(
                p.recheck_after,
                Some(REGISTER_GRACE - Duration::from_secs(2))
            );
        }
    }

    #[test]
    fn an_agent_that_never_got_its_lease_in_time_should_count_as_expired() {
        let now = Utc::now();
        let mut m = Machine::new("m1", MachineSpec::default());
        let st = m.status.get_or_insert_with(Default::default);
        st.hostname = Some("host-1".into());
        st.last_heartbeat = Some(now - chrono::Duration::seconds(31));
        let p = plan(&m, false, now);
        assert_eq!(p.status.unwrap().conditions[0].reason, "AgentLeaseExpired");
        assert_eq!(p.recheck_after, None);
    }

    #[test]
    fn a_restarted_agent_on_a_machine_that_was_ready_should_stay_expired_until_its_lease() {
        let now = Utc::now();
        let mut m = Machine::new("m1", MachineSpec::default());
        m.status = plan(&m, true, now - chrono::Duration::hours(1)).status;
        m.status = plan(&m, false, now - chrono::Duration::minutes(1)).status;
        let st = m.status.as_mut().expect("planned");
        st.hostname = Some("host-1".into());
        st.last_heartbeat = Some(now);
        let p = plan(&m, false, now);
        assert_eq!(p.status, None, "still AgentLeaseExpired: nothing to write");
        assert_eq!(
            find_condition(&m.status.unwrap().conditions, "Ready")
                .unwrap()
                .reason,
            "AgentLeaseExpired"
        );
    }
}
