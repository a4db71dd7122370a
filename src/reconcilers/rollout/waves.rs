//! Waves and switch order: which desired machines may switch now, in which order, and
//! the slots of each wave.

use super::{Decision, View};
use crate::api::{parse_duration, SwitchOrder, WaveStatus};
use chrono::Duration as ChronoDuration;
use std::collections::BTreeSet;

/// Wave phases as `status.waves[].phase` names them.
pub const WAVE_WAITING: &str = "Waiting";
pub const WAVE_SWITCHING: &str = "Switching";
pub const WAVE_BAKING: &str = "Baking";
pub const WAVE_DONE: &str = "Done";
pub const WAVE_REFUSED: &str = "Refused";

impl Decision<'_> {
    /// Owns `status.waves`; decides `switch_order`, `wave_of`, `open_waves` and
    /// `wave_busy` for the switch phase, and the wake-up at a bake's end.
    pub(super) fn waves(&mut self) {
        self.switch_order = self.desired.clone();
        if self.spec.strategy.order == SwitchOrder::UnavailableFirst {
            // A stable sort: machines already down or failing first, each group in order.
            let instances = &self.instances;
            self.switch_order.sort_by_key(|&i| {
                !View {
                    inst: &instances[i],
                }
                .unavailable()
            });
        }
        let Some(waves) = self.spec.strategy.waves.as_ref() else {
            self.st.waves.clear();
            return;
        };
        let values = self.wave_values();
        if values.len() > MAX_WAVES {
            // Bounded: the status keeps one entry per wave, and a label with a value per
            // machine is a mistake, not a plan. Going back is not held.
            self.too_many_waves = Some(values.len());
            self.wave_of = vec![None; self.instances.len()];
            self.open_waves = 0;
            self.st.waves.clear();
            return;
        }
        self.assign_waves(&values);
        self.wave_statuses(&values);
        let (wave_of, aborted) = (&self.wave_of, self.st.aborted);
        // A stable sort keeps `strategy.order` within each wave. Going back: the newest
        // wave first.
        self.switch_order.sort_by_key(|&i| match wave_of[i] {
            Some(k) if aborted => usize::MAX - k,
            Some(k) => k,
            None => usize::MAX,
        });
        if waves.max_unavailable_per_wave.is_some() {
            let mut busy = vec![0u32; values.len()];
            for &i in &self.desired {
                let v = View {
                    inst: &self.instances[i],
                };
                if let (Some(k), true) = (self.wave_of[i], v.unavailable()) {
                    busy[k] += 1;
                }
            }
            self.wave_busy = busy;
        }
    }

    /// The waves' label values in switch order: `order` first (those with machines),
    /// then the other values sorted, then `""` for machines without the label (unless
    /// `requireLabel` refuses them; then `""` still names them, as the last entry).
    fn wave_values(&self) -> Vec<String> {
        let waves = self
            .spec
            .strategy
            .waves
            .as_ref()
            .expect("called only with waves");
        let mut present = BTreeSet::new();
        let mut unlabeled = false;
        for &i in &self.desired {
            match self.label_of(i) {
                Some(v) => {
                    present.insert(v.to_string());
                }
                None => unlabeled = true,
            }
        }
        let mut values: Vec<String> = waves
            .order
            .iter()
            .filter(|v| present.remove(v.as_str()))
            .cloned()
            .collect();
        values.extend(present);
        if unlabeled {
            values.push(String::new());
        }
        values
    }

    /// This Instance's machine's wave label value (`None` without the label; an empty
    /// value counts as none).
    fn label_of(&self, i: usize) -> Option<&str> {
        let key = &self.spec.strategy.waves.as_ref()?.label_key;
        let machine = self.instances[i].spec.machine.as_str();
        self.topology
            .labels
            .get(machine)
            .and_then(|l| l.get(key))
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn assign_waves(&mut self, values: &[String]) {
        let require = self
            .spec
            .strategy
            .waves
            .as_ref()
            .is_some_and(|w| w.require_label);
        let index: std::collections::HashMap<&str, usize> = values
            .iter()
            .enumerate()
            .map(|(k, v)| (v.as_str(), k))
            .collect();
        let mut wave_of = vec![None; self.instances.len()];
        for &i in &self.desired {
            let value = self.label_of(i).unwrap_or("");
            if value.is_empty() && require {
                continue;
            }
            wave_of[i] = index.get(value).copied();
        }
        self.wave_of = wave_of;
    }

    /// Walks the waves in order: done ones (every machine available on the target once,
    /// and their bake over) open the next; the first one not done is switching; the
    /// others wait.
    fn wave_statuses(&mut self, values: &[String]) {
        let waves = self
            .spec
            .strategy
            .waves
            .as_ref()
            .expect("called only with waves");
        let require = waves.require_label;
        let bake = waves
            .bake
            .as_deref()
            .and_then(|b| parse_duration(b).ok())
            .and_then(|d| ChronoDuration::from_std(d).ok())
            .unwrap_or_else(ChronoDuration::zero);
        let target = self.target;
        let previous: std::collections::HashMap<String, WaveStatus> =
            std::mem::take(&mut self.st.waves)
                .into_iter()
                .filter(|w| w.version == target)
                .map(|w| (w.value.clone(), w))
                .collect();
        // Machines and those available on the target, per wave, in one pass; the last
        // slot counts the machines refused for want of the label.
        let mut counts = vec![(0u32, 0u32); values.len() + 1];
        for &i in &self.desired {
            let slot = match self.wave_of[i] {
                Some(k) => k,
                None if require && self.label_of(i).is_none() => values.len(),
                None => continue,
            };
            let v = View {
                inst: &self.instances[i],
            };
            counts[slot].0 += 1;
            counts[slot].1 += u32::from(v.available_on(target));
        }
        let mut out = Vec::with_capacity(values.len());
        let mut open = true;
        self.open_waves = 0;
        let mut wake = None;
        for (k, value) in values.iter().enumerate() {
            let (machines, available) = if value.is_empty() && require {
                counts[values.len()]
            } else {
                counts[k]
            };
            let before = previous.get(value);
            let mut entry = WaveStatus {
                value: value.clone(),
                version: target.to_string(),
                phase: WAVE_WAITING.to_string(),
                machines,
                available,
                done_at: None,
                bake_until: None,
            };
            if value.is_empty() && require {
                entry.phase = WAVE_REFUSED.to_string();
                out.push(entry);
                continue;
            }
            if open {
                self.open_waves = k + 1;
                let done_at = before
                    .and_then(|b| b.done_at)
                    .or_else(|| (available == machines).then_some(self.now));
                entry.done_at = done_at;
                match done_at {
                    None => {
                        entry.phase = WAVE_SWITCHING.to_string();
                        open = false;
                    }
                    Some(at) => {
                        let last = k + 1 == values.len();
                        let until = at.checked_add_signed(bake).filter(|_| !last);
                        entry.bake_until = until.filter(|_| !bake.is_zero());
                        match until.filter(|u| *u > self.now) {
                            Some(u) => {
                                entry.phase = WAVE_BAKING.to_string();
                                wake = Some(u - self.now);
                                open = false;
                            }
                            None => entry.phase = WAVE_DONE.to_string(),
                        }
                    }
                }
            }
            out.push(entry);
        }
        if self.st.aborted {
            self.open_waves = usize::MAX;
        }
        if let Some(d) = wake.and_then(|d| d.to_std().ok()) {
            self.wake(d);
        }
        self.st.waves = out;
    }

    /// Whether the switch phase may move Instance `i` now: going forward, only a machine
    /// of an open wave with a slot free in its wave (a machine already unavailable holds
    /// its slot already).
    pub(super) fn wave_admits(&self, i: usize) -> bool {
        let Some(waves) = self.spec.strategy.waves.as_ref() else {
            return true;
        };
        if self.st.aborted {
            return true;
        }
        let Some(k) = self.wave_of.get(i).copied().flatten() else {
            return false;
        };
        if k >= self.open_waves {
            return false;
        }
        match waves.max_unavailable_per_wave {
            Some(per_wave) => {
                let v = View {
                    inst: &self.instances[i],
                };
                self.wave_busy.get(k).copied().unwrap_or(0) < per_wave.max(1) || v.unavailable()
            }
            None => true,
        }
    }

    /// The switch phase took Instance `i` out: it uses a slot of its wave.
    pub(super) fn wave_took(&mut self, i: usize) {
        if let Some(k) = self.wave_of.get(i).copied().flatten() {
            if let Some(b) = self.wave_busy.get_mut(k) {
                *b += 1;
            }
        }
    }

    /// What the waves wait for, for the status message: a bake's end, or machines
    /// refused for want of the label once nothing else is left.
    pub(super) fn wave_message(&self) -> Option<String> {
        let waves = self.spec.strategy.waves.as_ref()?;
        if self.st.aborted {
            return None;
        }
        if let Some(n) = self.too_many_waves {
            return Some(format!(
                "strategy.waves: label {} has {n} distinct values on the machines, at most {MAX_WAVES}: no machine is switched",
                waves.label_key
            ));
        }
        let total = self.st.waves.len();
        let name = |v: &str| {
            if v.is_empty() {
                "(no label)".to_string()
            } else {
                v.to_string()
            }
        };
        for (k, w) in self.st.waves.iter().enumerate() {
            match w.phase.as_str() {
                WAVE_BAKING => {
                    let left = w
                        .bake_until
                        .map(|u| (u - self.now).num_seconds().max(0))
                        .unwrap_or(0);
                    return Some(format!(
                        "wave {}/{total} ({}={}) done, baking {} left",
                        k + 1,
                        waves.label_key,
                        name(&w.value),
                        human_seconds(left)
                    ));
                }
                WAVE_SWITCHING => {
                    return Some(format!(
                        "switching wave {}/{total} ({}={}): {}/{} available on {}",
                        k + 1,
                        waves.label_key,
                        name(&w.value),
                        w.available,
                        w.machines,
                        self.target
                    ))
                }
                WAVE_REFUSED => {
                    return Some(format!(
                        "{} machine(s) lack label {} (requireLabel): they are not switched",
                        w.machines, waves.label_key
                    ))
                }
                _ => {}
            }
        }
        None
    }
}

/// The most waves a Rollout may have: distinct values of the label on its machines
/// (the status keeps an entry for each).
pub const MAX_WAVES: usize = 1000;

/// `4m`, `1h2m`, `30s`: a bake's time left, rounded down to what a person reads.
pub fn human_seconds(s: i64) -> String {
    match s {
        s if s >= 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
