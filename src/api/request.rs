//! What a user asks of a Rollout: the change `rollout pause|resume|promote|abort|retry|
//! restart|undo` makes to it. The CLI and the dashboard both apply it inside one
//! compare-and-swap update ([`crate::store::Client::update`]), so a request made from
//! either is the same write.

use super::{
    Rollout, RolloutPhase, ANNOTATION_ABORT, ANNOTATION_PROMOTE, ANNOTATION_RETRY, ANNOTATION_UNDO,
};
use chrono::{DateTime, Utc};

/// One request to a Rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Stop starting new stages and switches (`spec.paused`).
    Pause,
    /// Clear a user's pause.
    Resume,
    /// Past the current pause or analysis step; `full`: past every remaining step.
    Promote { full: bool },
    /// Back to the stable version on every updated machine.
    Abort,
    /// Forget failures and try the target again.
    Retry,
    /// Re-run activation on every machine, under the slots.
    Restart,
    /// Back to a past revision's version (the newest with another version when `None`).
    Undo { to_revision: Option<u32> },
}

impl Request {
    /// The verb as the CLI and the dashboard name it (`promote`, `promote-full`, ...).
    pub fn verb(&self) -> &'static str {
        match self {
            Request::Pause => "pause",
            Request::Resume => "resume",
            Request::Promote { full: false } => "promote",
            Request::Promote { full: true } => "promote-full",
            Request::Abort => "abort",
            Request::Retry => "retry",
            Request::Restart => "restart",
            Request::Undo { .. } => "undo",
        }
    }

    /// Why the request would change nothing on `r` as it stands (`Some`: say so instead of
    /// writing). Only a promote of a rollout complete at its version is such a request.
    pub fn nothing_to_do(&self, r: &Rollout) -> Option<String> {
        let Request::Promote { .. } = self else {
            return None;
        };
        let st = r.status.as_ref()?;
        (st.phase == RolloutPhase::Complete
            && Some(st.observed_generation) == r.metadata.generation)
            .then(|| {
                format!(
                    "already complete at {}: nothing to promote",
                    st.stable_version.as_deref().unwrap_or("its version")
                )
            })
    }

    /// Changes `r` as the request asks. `token` makes a one-shot request (promote, abort,
    /// retry) distinct from the last one the controller acted on; `now` is a restart's
    /// time. Returns what was done, in the past tense (`promoted`), or why it cannot be
    /// done, leaving `r` unchanged (so nothing is written).
    pub fn apply(
        &self,
        r: &mut Rollout,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<String, String> {
        Ok(match self {
            Request::Pause => {
                r.spec.paused = true;
                "paused".into()
            }
            Request::Resume => {
                r.spec.paused = false;
                "resumed".into()
            }
            Request::Promote { full } => {
                let analysis_left = analysis_left(r);
                let value = if *full {
                    format!("full:{token}")
                } else {
                    token.to_string()
                };
                annotate(r, ANNOTATION_PROMOTE, &value);
                match (full, analysis_left) {
                    (true, true) => "fully promoted (the remaining analysis is skipped)",
                    (true, false) => "fully promoted",
                    (false, _) => "promoted",
                }
                .into()
            }
            Request::Abort => {
                annotate(r, ANNOTATION_ABORT, token);
                "aborted".into()
            }
            Request::Retry => {
                annotate(r, ANNOTATION_RETRY, token);
                "retried".into()
            }
            Request::Restart => {
                r.spec.restart_at = Some(now);
                "restarted".into()
            }
            Request::Undo { to_revision } => undo(r, *to_revision)?,
        })
    }
}

/// Whether an analysis step remains at or after the current step.
fn analysis_left(r: &Rollout) -> bool {
    let from = r
        .status
        .as_ref()
        .and_then(|s| s.current_step_index)
        .unwrap_or(0) as usize;
    r.spec
        .strategy
        .steps
        .iter()
        .skip(from)
        .any(|s| s.analysis.is_some())
}

fn annotate(r: &mut Rollout, key: &str, value: &str) {
    r.metadata
        .annotations
        .insert(key.to_string(), value.to_string());
}

/// Points `spec.version` at a past revision and marks the generation this write makes
/// as an undo. Leaves `r` unchanged (so nothing is written) when it cannot.
pub fn undo(r: &mut Rollout, to_revision: Option<u32>) -> Result<String, String> {
    let history = r
        .status
        .as_ref()
        .map(|s| s.history.clone())
        .unwrap_or_default();
    let target = match to_revision {
        Some(n) => history.iter().find(|h| h.revision == n).ok_or_else(|| {
            format!(
                "no revision {n} in its history (see `deployctl rollout history {}`)",
                r.metadata.name
            )
        })?,
        None => history
            .iter()
            .rev()
            .find(|h| h.version != r.spec.version)
            .ok_or_else(|| "no earlier revision with another version in its history".to_string())?,
    };
    if target.version == r.spec.version && target.sha256 == r.spec.sha256 {
        return Err(format!(
            "revision {} is version {}, which it already wants",
            target.revision, target.version
        ));
    }
    r.spec.version = target.version.clone();
    r.spec.sha256 = target.sha256.clone();
    let next_generation = r.metadata.generation.unwrap_or(0) + 1;
    annotate(r, ANNOTATION_UNDO, &next_generation.to_string());
    Ok(format!(
        "rolled back to revision {} (version {})",
        target.revision, target.version
    ))
}
