//! Switch: which machines move to the target (or back to the stable version), and which
//! restart, never more unavailable at once than the slots allow.

use super::{Decision, View};
use std::sync::Arc;

impl Decision<'_> {
    /// Owns the Instances' `spec.current` and `spec.restartAt`, and `unavailable` (adds the
    /// machines it takes out).
    pub(super) fn switch(&mut self) {
        self.switch_in_slots();
        self.restart_in_slots();
    }

    /// Towards the target past the gate, up to the step's cap; or, when going back, every
    /// machine the target touched back to the stable version.
    fn switch_in_slots(&mut self) {
        let aborted = self.st.aborted;
        let Some(to) = (if aborted {
            self.stable.clone()
        } else {
            Some(self.target.to_string())
        }) else {
            return;
        };
        let to = to.as_str();
        let may_switch = if aborted {
            !self.spec.paused
        } else {
            self.gate_open()
                && !self.frozen()
                && !self.step_paused
                && self.dependency_hold.is_none()
        };
        if !may_switch {
            return;
        }
        let mut allowed = if aborted {
            u32::MAX
        } else {
            self.cap
                .saturating_sub(self.count(|v| v.inst.spec.current.as_deref() == Some(to)))
        };
        let staging = self.staging();
        let order = std::mem::take(&mut self.switch_order);
        for &i in &order {
            if allowed == 0 {
                break;
            }
            if !self.wave_admits(i) {
                continue;
            }
            let v = View {
                inst: &self.instances[i],
            };
            // A machine already unavailable (e.g. the one that failed) holds its slot
            // already: switching it costs none. Without this a rollback whose failed
            // machine fills every slot could never switch that machine back.
            if self.st.unavailable >= self.slots && !v.unavailable() {
                continue;
            }
            if !self.should_switch(&v, to) {
                continue;
            }
            let was_unavailable = v.unavailable();
            let inst = &mut self.instances[i];
            Arc::make_mut(inst).spec.current = Some(to.to_string());
            staging.restage(inst, !aborted);
            allowed = allowed.saturating_sub(1);
            if !was_unavailable {
                self.st.unavailable += 1;
                self.wave_took(i);
            }
        }
        self.switch_order = order;
    }

    /// Whether this machine goes to `to`: going back, only a machine the target touched;
    /// going forward, one that staged `to` and has not failed it.
    fn should_switch(&self, v: &View, to: &str) -> bool {
        let wanted = v.inst.spec.current.as_deref() == Some(to);
        if self.st.aborted {
            !wanted
                && (v.inst.spec.current.as_deref() == Some(self.target)
                    || v.current() == Some(self.target))
        } else {
            !wanted && v.has_staged(to) && !v.failed(to)
        }
    }

    /// `spec.restartAt`: once the fleet runs the target, re-activate every machine under
    /// slots.
    fn restart_in_slots(&mut self) {
        let Some(at) = self.spec.restart_at else {
            return;
        };
        if self.st.aborted || self.frozen() || !self.all_on_target() {
            return;
        }
        for &i in &self.desired {
            if self.st.unavailable >= self.slots {
                break;
            }
            if self.instances[i].spec.restart_at.is_none_or(|r| r < at) {
                Arc::make_mut(&mut self.instances[i]).spec.restart_at = Some(at);
                self.st.unavailable += 1;
            }
        }
    }
}
