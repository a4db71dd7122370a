//! New revision: a new target version opens a revision, its steps from the start, its
//! failures forgotten; a Rollout with no stable version adopts what the fleet runs.

use super::{Decision, EventNote};
use crate::api::{Instance, Revision};

/// The result of a revision the fleet already ran when the Rollout first saw it.
pub const RESULT_ADOPTED: &str = "Adopted";

impl Decision<'_> {
    /// Owns `history` (a new entry, the last one superseded, an older entry of the same
    /// version merged into it, trimmed to the limit), `targetVersion`,
    /// `observedGeneration`, the adopted `stableVersion`, and resets what a new version
    /// starts afresh.
    pub(super) fn new_revision(&mut self) {
        self.adopt_fleet();
        if self.st.target_version.as_deref() != Some(self.target) {
            self.supersede_last_revision();
            let next = self.open_revision();
            self.start_afresh();
            self.events.push(EventNote::normal(
                "RolloutStarted",
                format!("rolling out version {} (revision {next})", self.target),
            ));
        }
        self.st.observed_generation = self.generation();
    }

    /// With no stable version (a new Rollout, or one re-created over a running fleet),
    /// when every desired machine reports the same current version other than the
    /// target, that version is the stable one, `Adopted` in the history: the target then
    /// runs its canary steps and can roll back to it. (A fleet already on the target needs
    /// nothing: the complete phase makes it stable.)
    fn adopt_fleet(&mut self) {
        if self.stable.is_some() {
            return;
        }
        let Some((version, sha)) = self.fleet_version() else {
            return;
        };
        if version == self.target {
            return;
        }
        self.record_adopted(&version, sha.clone());
        self.events.push(EventNote::normal(
            "RolloutAdopted",
            format!(
                "every machine ({}) already runs version {version}: it is the stable version",
                self.desired.len()
            ),
        ));
        self.st.stable_version = Some(version.clone());
        self.st.stable_sha256 = sha.clone();
        self.stable = Some(version);
        self.stable_sha = sha;
    }

    /// The version every desired machine (at least one) reports as current, not being
    /// moved elsewhere, with the digest its Instances carry for it.
    fn fleet_version(&self) -> Option<(String, Option<String>)> {
        let mut found: Option<&str> = None;
        for &i in &self.desired {
            let inst: &Instance = &self.instances[i];
            let current = inst.status.as_ref()?.current_version.as_deref()?;
            let moving = inst.spec.current.as_deref().is_some_and(|w| w != current);
            if moving || found.is_some_and(|f| f != current) {
                return None;
            }
            found = Some(current);
        }
        let version = found?;
        let sha = self.desired.iter().find_map(|&i| {
            self.instances[i]
                .spec
                .staged
                .iter()
                .find(|r| r.version == version)
                .and_then(|r| r.sha256.clone())
        });
        Some((version.to_string(), sha))
    }

    /// The adopted version's revision: before the target's when that one is already open
    /// (the Rollout waited for machines), else the newest.
    fn record_adopted(&mut self, version: &str, sha256: Option<String>) {
        let history = &mut self.st.history;
        let open_target = history
            .last()
            .is_some_and(|r| r.result.is_empty() && r.version == self.target);
        let at = if open_target {
            history.len() - 1
        } else {
            history.len()
        };
        let revision = history.get(at).map_or_else(
            || history.last().map_or(1, |r| r.revision + 1),
            |open| open.revision,
        );
        if let Some(open) = history.get_mut(at) {
            open.revision += 1;
        }
        history.insert(
            at,
            Revision {
                revision,
                version: version.to_string(),
                sha256,
                started_at: self.now,
                completed_at: Some(self.now),
                result: RESULT_ADOPTED.into(),
            },
        );
    }

    /// The revision still running, if any, ends as `Superseded`.
    fn supersede_last_revision(&mut self) {
        if let Some(last) = self.st.history.last_mut() {
            if last.result.is_empty() {
                last.result = "Superseded".into();
                last.completed_at = Some(self.now);
            }
        }
    }

    /// Appends the target's revision, keeps at most `revisionHistoryLimit` (at least one),
    /// and returns its number.
    ///
    /// A version already in the history (same digest) leaves its old place: as Argo
    /// Rollouts and Kubernetes Deployments renumber the ReplicaSet a rollback reuses, a
    /// version appears once, under its newest number, so an `undo` never shows two
    /// revisions of one version.
    fn open_revision(&mut self) -> u32 {
        let next = self
            .st
            .history
            .iter()
            .map(|r| r.revision)
            .max()
            .unwrap_or(0)
            + 1;
        let sha = &self.spec.sha256;
        self.st
            .history
            .retain(|r| !(r.version == self.target && &r.sha256 == sha));
        self.st.history.push(Revision {
            revision: next,
            version: self.target.to_string(),
            sha256: self.spec.sha256.clone(),
            started_at: self.now,
            completed_at: None,
            result: String::new(),
        });
        let limit = self.spec.revision_history_limit.max(1) as usize;
        if self.st.history.len() > limit {
            let extra = self.st.history.len() - limit;
            self.st.history.drain(..extra);
        }
        next
    }

    /// Steps from the first, no pause, no abort, no failures, progress from now.
    fn start_afresh(&mut self) {
        let st = &mut self.st;
        st.target_version = Some(self.target.to_string());
        st.current_step_index = (!self.spec.strategy.steps.is_empty()).then_some(0);
        st.pause_conditions.clear();
        st.aborted = false;
        st.abort_reason = None;
        st.failed_machines.clear();
        st.last_progress_time = Some(self.now);
        self.failures_reset = true;
    }
}
