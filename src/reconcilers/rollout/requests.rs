//! Requests: `rollout promote|abort|retry` (annotation tokens, acted on once) and `undo`
//! (an annotation naming the generation it applies to).

use super::{Decision, EventNote, View, PAUSE_FAILURE, REASON_ABORTED};
use crate::api::{ANNOTATION_ABORT, ANNOTATION_PROMOTE, ANNOTATION_RETRY, ANNOTATION_UNDO};
use std::sync::Arc;

impl Decision<'_> {
    /// Owns `handledAbort` and `handledRetry`; an abort sets `aborted`, a retry clears it
    /// and the failure pause. A promote and an undo are read here and acted on by the
    /// steps phase.
    pub(super) fn requests(&mut self) {
        let promote = self.unhandled(ANNOTATION_PROMOTE, &self.st.handled_promote);
        let abort = self.unhandled(ANNOTATION_ABORT, &self.st.handled_abort);
        let retry = self.unhandled(ANNOTATION_RETRY, &self.st.handled_retry);
        self.promote = promote;
        self.undo = self
            .rollout
            .metadata
            .annotations
            .get(ANNOTATION_UNDO)
            .and_then(|g| g.parse::<i64>().ok())
            == Some(self.generation());
        if let Some(tok) = abort {
            self.abort(tok);
        }
        if let Some(tok) = retry {
            self.retry(tok);
        }
    }

    /// The request token under `key`, unless it is the one already handled.
    fn unhandled(&self, key: &str, handled: &Option<String>) -> Option<String> {
        self.rollout
            .metadata
            .annotations
            .get(key)
            .filter(|tok| Some(*tok) != handled.as_ref())
            .cloned()
    }

    /// Back to the stable version, unless already aborted or the target is the stable one.
    fn abort(&mut self, tok: String) {
        let st = &mut self.st;
        st.handled_abort = Some(tok);
        if !st.aborted && self.stable.as_deref() != Some(self.target) {
            st.aborted = true;
            st.abort_reason = Some(REASON_ABORTED.into());
            self.events.push(EventNote::warning(
                "RolloutAborted",
                format!(
                    "aborted by request: switching back to {}",
                    self.stable.as_deref().unwrap_or("nothing")
                ),
            ));
        }
    }

    /// Try the target again: no abort, no failure pause, and a new attempt on every desired
    /// machine that failed it.
    fn retry(&mut self, tok: String) {
        let st = &mut self.st;
        st.handled_retry = Some(tok);
        st.aborted = false;
        st.abort_reason = None;
        st.pause_conditions.retain(|p| p.reason != PAUSE_FAILURE);
        st.failed_machines.clear();
        st.last_progress_time = Some(self.now);
        self.failures_reset = true;
        self.events.push(EventNote::normal(
            "RolloutRetried",
            format!("retrying version {}", self.target),
        ));
        for &i in &self.desired {
            let inst = &mut self.instances[i];
            if (View { inst }).failed(self.target) {
                let inst = Arc::make_mut(inst);
                inst.spec.attempt += 1;
                // The new attempt makes the stored failure stale (the generation moves on
                // when this spec is written); forget it in this decision too.
                if let Some(s) = inst.status.as_mut() {
                    s.failure = None;
                }
            }
        }
    }
}
