//! What a notification says: the webhook's documented JSON body, Slack's message and
//! Graphite's event, built from one Rollout Event. Pure: no store, no network.

use crate::api::{Event, NotifyEvent, Rollout};
use chrono::{DateTime, Utc};
use serde::Serialize;

/// Longest event message carried (in bytes, cut at a character boundary): keeps every
/// body small whatever an event says.
pub const MAX_MESSAGE_BYTES: usize = 2048;

/// The webhook sink's body: documented in the README ("Notifications").
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// The uid of the Event it comes from: the same on every redelivery, for receivers
    /// that drop duplicates.
    pub id: String,
    /// `RolloutStarted`, `StepPaused`, `Promoted`, `Completed`, `Degraded`, `Aborted` or
    /// `RolledBack`.
    pub event: &'static str,
    /// The reason of the Event (`RolloutPaused`, `ProgressDeadlineExceeded`, ...).
    pub reason: String,
    pub namespace: String,
    pub rollout: String,
    /// The version being rolled out.
    pub version: Option<String>,
    /// The version it replaces (the newest other version of the Rollout's history).
    pub previous_version: Option<String>,
    /// The Rollout's phase when the notification was built.
    pub phase: Option<String>,
    pub message: String,
    pub counts: Counts,
    /// When the event happened.
    pub time: Option<DateTime<Utc>>,
}

/// The Rollout's machine counts when the notification was built.
#[derive(Serialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub desired: u32,
    pub staged: u32,
    pub updated: u32,
    pub available: u32,
    pub failed: u32,
}

/// `s` cut to at most `max` bytes at a character boundary.
fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

impl Notification {
    /// The notification for `event` (its reason mapped to `kind`), with what `rollout`
    /// (if it still exists) says now.
    pub fn new(kind: NotifyEvent, event: &Event, rollout: Option<&Rollout>) -> Notification {
        let st = rollout.and_then(|r| r.status.as_ref());
        let version = st
            .and_then(|s| s.target_version.clone())
            .or_else(|| rollout.map(|r| r.spec.version.clone()));
        let previous_version = st.and_then(|s| {
            let mut history: Vec<_> = s.history.iter().collect();
            history.sort_by_key(|r| std::cmp::Reverse(r.revision));
            history
                .into_iter()
                .map(|r| r.version.clone())
                .find(|v| Some(v) != version.as_ref())
                .or_else(|| {
                    s.stable_version
                        .clone()
                        .filter(|v| Some(v) != version.as_ref())
                })
        });
        Notification {
            id: event.metadata.uid.clone().unwrap_or_default(),
            event: kind.as_str(),
            reason: event.spec.reason.clone(),
            namespace: event
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| crate::api::DEFAULT_NAMESPACE.to_string()),
            rollout: event.spec.involved_object.name.clone(),
            version,
            previous_version,
            phase: st.map(|s| s.phase.to_string()),
            message: bounded(&event.spec.message, MAX_MESSAGE_BYTES),
            counts: st
                .map(|s| Counts {
                    desired: s.desired,
                    staged: s.staged,
                    updated: s.updated,
                    available: s.available,
                    failed: s.failed,
                })
                .unwrap_or_default(),
            time: event.spec.time.or(event.metadata.creation_timestamp),
        }
    }

    /// One line for people: `default/api StepPaused (version 1.4.2): paused at step 2/4`.
    pub fn line(&self) -> String {
        let version = match (&self.version, &self.previous_version) {
            (Some(v), Some(p)) => format!(" (version {v}, from {p})"),
            (Some(v), None) => format!(" (version {v})"),
            _ => String::new(),
        };
        format!(
            "{}/{} {}{version}: {}",
            self.namespace, self.rollout, self.event, self.message
        )
    }

    /// The webhook body.
    pub fn webhook_body(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a notification always serializes: plain fields")
    }

    /// A Slack incoming-webhook body: the line, with the Rollout in bold.
    pub fn slack_body(&self) -> Vec<u8> {
        let icon = match self.event {
            "Completed" => ":white_check_mark:",
            "Degraded" | "Aborted" | "RolledBack" => ":warning:",
            "StepPaused" => ":double_vertical_bar:",
            _ => ":rocket:",
        };
        serde_json::to_vec(&serde_json::json!({
            "text": format!("{icon} {}", slack_escape(&self.line())),
        }))
        .expect("a JSON value always serializes")
    }

    /// A Graphite event (`POST /events/`): `what` names the deploy, `tags` (a
    /// space-separated string, which every Graphite version reads) let Grafana pick the
    /// annotations, `data` carries the message.
    pub fn graphite_body(&self, extra_tags: &[String]) -> Vec<u8> {
        let mut tags = vec![
            "deployctl".to_string(),
            self.namespace.clone(),
            self.rollout.clone(),
            self.event.to_string(),
        ];
        tags.extend(extra_tags.iter().cloned());
        let what = match &self.version {
            Some(v) => format!("{}/{} {} {v}", self.namespace, self.rollout, self.event),
            None => format!("{}/{} {}", self.namespace, self.rollout, self.event),
        };
        serde_json::to_vec(&serde_json::json!({
            "what": what,
            "tags": tags.join(" "),
            "data": self.line(),
        }))
        .expect("a JSON value always serializes")
    }
}

/// Slack's three control characters in message text (`&`, `<`, `>`), escaped as its
/// documentation asks, so that an event cannot mention a channel or forge a link.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        EventSpec, Object, ObjectReference, Revision, RolloutPhase, RolloutSpec, RolloutStatus,
    };

    fn event(reason: &str, message: &str) -> Event {
        let mut e = Event::new(
            "api.abc",
            EventSpec {
                involved_object: ObjectReference {
                    kind: "Rollout".into(),
                    namespace: Some("shop".into()),
                    name: "api".into(),
                },
                type_: "Normal".into(),
                reason: reason.into(),
                message: message.into(),
                source: "controller".into(),
                time: Some("2026-01-02T03:04:05Z".parse().expect("a valid time")),
            },
        );
        e.metadata.namespace = Some("shop".into());
        e.metadata.uid = Some("uid-1".into());
        e
    }

    fn rollout() -> Rollout {
        let spec: RolloutSpec =
            serde_json::from_value(serde_json::json!({"application": "api", "version": "1.5"}))
                .expect("a valid spec");
        let mut r = Rollout::new("api", spec);
        let rev = |n, v: &str| Revision {
            revision: n,
            version: v.into(),
            sha256: None,
            started_at: Utc::now(),
            completed_at: None,
            result: String::new(),
        };
        r.status = Some(RolloutStatus {
            phase: RolloutPhase::Paused,
            target_version: Some("1.5".into()),
            stable_version: Some("1.4".into()),
            desired: 4,
            staged: 4,
            updated: 1,
            available: 1,
            failed: 0,
            history: vec![rev(1, "1.3"), rev(3, "1.5"), rev(2, "1.4")],
            ..Default::default()
        });
        r
    }

    #[test]
    fn the_webhook_body_should_carry_every_documented_field() {
        let n = Notification::new(
            NotifyEvent::StepPaused,
            &event("RolloutPaused", "paused at step 2/4"),
            Some(&rollout()),
        );
        let body: serde_json::Value =
            serde_json::from_slice(&n.webhook_body()).expect("the body is JSON");
        assert_eq!(
            body,
            serde_json::json!({
                "id": "uid-1", "event": "StepPaused", "reason": "RolloutPaused",
                "namespace": "shop", "rollout": "api", "version": "1.5",
                "previousVersion": "1.4", "phase": "Paused",
                "message": "paused at step 2/4",
                "counts": {"desired": 4, "staged": 4, "updated": 1, "available": 1, "failed": 0},
                "time": "2026-01-02T03:04:05Z"
            })
        );
    }

    #[test]
    fn slack_and_graphite_bodies_should_read_as_dropship_and_slack_expect() {
        let n = Notification::new(
            NotifyEvent::Degraded,
            &event("ProgressDeadlineExceeded", "no progress <!channel> & more"),
            Some(&rollout()),
        );
        let slack: serde_json::Value = serde_json::from_slice(&n.slack_body()).expect("JSON");
        assert_eq!(
            slack["text"],
            ":warning: shop/api Degraded (version 1.5, from 1.4): no progress &lt;!channel&gt; &amp; more"
        );
        let g: serde_json::Value =
            serde_json::from_slice(&n.graphite_body(&["prod".into()])).expect("JSON");
        assert_eq!(g["what"], "shop/api Degraded 1.5");
        assert_eq!(g["tags"], "deployctl shop api Degraded prod");
        assert!(g["data"]
            .as_str()
            .expect("data is text")
            .contains("no progress"));
    }

    #[test]
    fn a_huge_message_should_be_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let n = Notification::new(
            NotifyEvent::Completed,
            &event("RolloutCompleted", &long),
            None,
        );
        assert!(n.message.len() <= MAX_MESSAGE_BYTES + 3);
        assert!(n.message.ends_with("..."));
        assert_eq!(n.version, None);
        assert_eq!(n.counts, Counts::default());
    }
}
