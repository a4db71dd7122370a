//! Observe: where the desired machines stand on the target, counted once before any spec
//! changes.

use super::{Decision, View};

impl Decision<'_> {
    /// Owns the counts `desired`, `staged`, `updated`, `available`, `failed`, and
    /// `unavailable` as found (the switch phase adds the machines it takes out).
    pub(super) fn observe(&mut self) {
        let n = self.desired.len() as u32;
        let strategy = &self.spec.strategy;
        self.slots = strategy.slots(n);
        self.min_staged = strategy.min_staged_machines(n);
        // One pass over the fleet for every count taken before any spec changes (staging
        // rewrites only `staged`, which `unavailable` does not read): at 10,000 Instances
        // each pass is a walk through memory.
        let (mut staged, mut updated, mut available, mut failed) = (0u32, 0u32, 0u32, 0u32);
        let (mut stage_in_flight, mut unavailable) = (0u32, 0u32);
        for &i in &self.desired {
            let v = View {
                inst: &self.instances[i],
            };
            let has_staged = v.has_staged(self.target);
            let has_failed = v.failed(self.target);
            staged += u32::from(has_staged);
            updated += u32::from(v.current() == Some(self.target));
            available += u32::from(v.available_on(self.target));
            failed += u32::from(has_failed);
            stage_in_flight +=
                u32::from(v.asked_to_stage(self.target) && !has_staged && !has_failed);
            unavailable += u32::from(v.unavailable());
        }
        self.stage_in_flight = stage_in_flight;
        let st = &mut self.st;
        st.desired = n;
        st.staged = staged;
        st.updated = updated;
        st.available = available;
        st.unavailable = unavailable;
        st.failed = failed;
    }
}
