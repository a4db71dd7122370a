//! The faults and their schedule. A seed fixes every fault's kind, target and moment; a
//! moment is "after event X + d ms", since how long processes take varies from run to run.

use crate::fleet::{LEASE_TTL, MACHINES};
use rand::rngs::StdRng;
use rand::Rng;
use std::fmt;
use std::time::Duration;

/// What a fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// SIGKILL the leading controller; start it again (a new identity) after `hold`.
    ControllerKill,
    /// SIGSTOP the leading controller for `hold` (past the lease TTL), then SIGCONT.
    ControllerStop,
    /// SIGKILL an agent; start it again after `hold`.
    AgentKill,
    /// SIGSTOP an agent for `hold` (past the lease TTL), then SIGCONT.
    AgentStop,
    /// SIGKILL etcd; start it again on the same data after `hold`.
    EtcdRestart,
    /// Compact the store to its current revision: every watcher relists.
    Compact,
    /// Cut the namespaced agent off the store for `hold`.
    Partition,
    /// SIGKILL the leading member of the 3-member etcd; start it again after `hold`.
    EtcdLeaderKill,
    /// SIGKILL a following member of the 3-member etcd; start it again after `hold`.
    EtcdFollowerKill,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::ControllerKill => "controller-kill",
            Kind::ControllerStop => "controller-stop",
            Kind::AgentKill => "agent-kill",
            Kind::AgentStop => "agent-stop",
            Kind::EtcdRestart => "etcd-restart",
            Kind::Compact => "compact",
            Kind::Partition => "partition",
            Kind::EtcdLeaderKill => "etcd-leader-kill",
            Kind::EtcdFollowerKill => "etcd-follower-kill",
        }
    }

    /// Whether the fault takes an agent's lease past its TTL (I5 then applies).
    pub fn silences_agent(self) -> bool {
        matches!(self, Kind::AgentKill | Kind::AgentStop | Kind::Partition)
    }

    /// Whether the fault takes one etcd member of three down (I7 then applies).
    pub fn downs_a_member(self) -> bool {
        matches!(self, Kind::EtcdLeaderKill | Kind::EtcdFollowerKill)
    }

    /// How long the fault lasts, drawn: the stops and partitions always outlast the TTL.
    fn draw_hold(self, rng: &mut StdRng) -> Duration {
        let ttl = LEASE_TTL.as_millis() as u64;
        let ms = match self {
            Kind::ControllerStop | Kind::AgentStop => ttl + rng.gen_range(1000..3000),
            Kind::Partition => ttl + rng.gen_range(1000..4000),
            Kind::ControllerKill => rng.gen_range(200..3000),
            Kind::AgentKill => rng.gen_range(200..ttl + 3000),
            Kind::EtcdRestart => rng.gen_range(200..3000),
            Kind::EtcdLeaderKill | Kind::EtcdFollowerKill => rng.gen_range(2000..6000),
            Kind::Compact => 0,
        };
        Duration::from_millis(ms)
    }
}

/// The event a fault's delay counts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    /// The CLI call that started the run returned.
    Action,
    /// The run's first activation started (mid-switch, mid-hook).
    FirstSwitch,
    /// The previous fault of the run was healed.
    PreviousHealed,
}

/// One scheduled fault.
#[derive(Clone, Debug)]
pub struct Fault {
    pub kind: Kind,
    pub anchor: Anchor,
    pub delay: Duration,
    pub hold: Duration,
    /// The agent, for agent faults (the namespaced one for partitions); which follower
    /// (`agent % 2`) for a follower kill.
    pub agent: usize,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let anchor = match self.anchor {
            Anchor::Action => "action",
            Anchor::FirstSwitch => "first-switch",
            Anchor::PreviousHealed => "previous-healed",
        };
        write!(f, "{}", self.kind.name())?;
        if matches!(
            self.kind,
            Kind::AgentKill | Kind::AgentStop | Kind::Partition
        ) {
            write!(f, " m{}", self.agent)?;
        }
        write!(
            f,
            " after {anchor} + {} ms for {} ms",
            self.delay.as_millis(),
            self.hold.as_millis()
        )
    }
}

/// One or two faults for a run, drawn from `kinds`; the second counts from the first's
/// healing, so that they never overlap (each one's effect stays attributable).
pub fn draw(rng: &mut StdRng, kinds: &[Kind], isolated: Option<usize>) -> Vec<Fault> {
    if kinds.is_empty() {
        return Vec::new();
    }
    let count = rng.gen_range(1..=2);
    (0..count)
        .map(|n| {
            let kind = kinds[rng.gen_range(0..kinds.len())];
            let anchor = match (n, rng.gen_range(0..2)) {
                (0, 0) => Anchor::Action,
                (0, _) => Anchor::FirstSwitch,
                _ => Anchor::PreviousHealed,
            };
            let delay = Duration::from_millis(rng.gen_range(0..2000));
            let hold = kind.draw_hold(rng);
            let drawn = rng.gen_range(0..MACHINES);
            let agent = match kind {
                Kind::Partition => isolated.unwrap_or(drawn),
                _ => drawn,
            };
            Fault {
                kind,
                anchor,
                delay,
                hold,
                agent,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn draw_should_give_the_same_schedule_for_the_same_seed() {
        let kinds = [Kind::AgentKill, Kind::ControllerStop, Kind::Partition];
        let show = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..10)
                .flat_map(|_| draw(&mut rng, &kinds, Some(5)))
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(show(7), show(7));
        assert_ne!(show(7), show(8));
        let mut rng = StdRng::seed_from_u64(1);
        for f in (0..50).flat_map(|_| draw(&mut rng, &kinds, Some(5))) {
            if f.kind != Kind::AgentKill {
                assert!(f.hold > LEASE_TTL, "{f} outlasts the lease");
            }
            if f.kind == Kind::Partition {
                assert_eq!(f.agent, 5, "{f} targets the namespaced agent");
            }
        }
    }
}
