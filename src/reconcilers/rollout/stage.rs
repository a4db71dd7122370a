//! Stage: which versions every desired Instance keeps staged, and which machines are asked
//! to stage the target (at most `maxParallelStage` at a time).

use super::{Decision, View};
use crate::api::{Instance, VersionRef};
use std::sync::Arc;

impl<'a> Decision<'a> {
    /// Owns the Instances' `spec.staged`.
    pub(super) fn stage(&mut self) {
        let staging = self.staging();
        let target = self.target;
        if self.frozen() || self.st.aborted {
            // Nothing new is asked; a machine keeps the target only if already asked.
            let with_target = !self.st.aborted;
            for &i in &self.desired {
                let asked = (View {
                    inst: &self.instances[i],
                })
                .asked_to_stage(target);
                staging.restage(&mut self.instances[i], asked && with_target);
            }
            return;
        }
        let in_flight = self.stage_in_flight;
        let mut budget = self
            .spec
            .strategy
            .max_parallel_stage
            .map_or(u32::MAX, |m| m.saturating_sub(in_flight));
        for &i in &self.desired {
            let asked = (View {
                inst: &self.instances[i],
            })
            .asked_to_stage(target);
            if asked {
                staging.restage(&mut self.instances[i], true);
                continue;
            }
            if budget == 0 {
                staging.restage(&mut self.instances[i], false);
                continue;
            }
            budget -= 1;
            staging.restage(&mut self.instances[i], true);
        }
    }

    /// What [`Staging::restage`] needs, borrowed from the Rollout (not from the decision,
    /// so that it can rewrite Instances while the decision is borrowed mutably).
    pub(super) fn staging(&self) -> Staging<'a> {
        Staging {
            target: self.target,
            target_sha: self.spec.sha256.as_deref(),
            stable: self.stable.clone(),
            stable_sha: self.stable_sha.clone(),
        }
    }
}

/// The target and the stable version with their digests, as the Rollout gives them (the
/// stable one owned: the decision may adopt it from the fleet).
pub(super) struct Staging<'a> {
    target: &'a str,
    target_sha: Option<&'a str>,
    stable: Option<String>,
    stable_sha: Option<String>,
}

impl<'a> Staging<'a> {
    /// Versions every Instance keeps staged: where it points, the stable, and the target
    /// once asked for. Compares first and copies the Instance (copy on write) only when
    /// `staged` changes: at 10,000 machines almost every call finds it already right.
    ///
    /// An older version already in `staged` (the previous stable, once a rollout is
    /// Complete) stays there while the agent reports it staged and its retention would
    /// keep the release anyway (`staged` no longer than `keepReleases`). Dropping it
    /// would change nothing on disk but would cost a spec write and a status report per
    /// machine, as many writes as the rollout itself. The next rewrite of `staged` (the
    /// next version's stage order) drops it in the same write; with `keepReleases`
    /// shorter than `staged` it is dropped at once, so that the agent deletes it.
    pub(super) fn restage(&self, inst: &mut Arc<Instance>, with_target: bool) {
        let mut versions: [&str; 3] = [""; 3];
        let mut len = 0;
        for v in [
            inst.spec.current.as_deref(),
            self.stable.as_deref(),
            with_target.then_some(self.target),
        ]
        .into_iter()
        .flatten()
        {
            if !versions[..len].contains(&v) {
                versions[len] = v;
                len += 1;
            }
        }
        let versions = &versions[..len];
        let old = &inst.spec.staged;
        let keep_releases = inst.spec.releases_to_keep() as usize;
        let reported = inst
            .status
            .as_ref()
            .map_or(&[][..], |s| &s.staged_versions[..]);
        let covered = old.len() <= keep_releases.max(versions.len())
            && old
                .iter()
                .all(|r| versions.contains(&r.version.as_str()) || reported.contains(&r.version))
            && versions.iter().all(|v| {
                old.iter()
                    .any(|r| r.version == *v && r.sha256.as_deref() == self.sha_for(v, old))
            });
        if covered {
            return;
        }
        let staged: Vec<VersionRef> = versions
            .iter()
            .map(|v| VersionRef {
                version: v.to_string(),
                sha256: self.sha_for(v, old).map(str::to_string),
            })
            .collect();
        Arc::make_mut(inst).spec.staged = staged;
    }

    /// The digest an Instance carries for `v`: the target's and the stable's from the
    /// Rollout, any other as the Instance had it (`old`).
    fn sha_for<'o>(&'o self, v: &str, old: &'o [VersionRef]) -> Option<&'o str> {
        if v == self.target {
            self.target_sha
        } else if Some(v) == self.stable.as_deref() {
            self.stable_sha.as_deref()
        } else {
            old.iter()
                .find(|r| r.version == v)
                .and_then(|r| r.sha256.as_deref())
        }
    }
}
