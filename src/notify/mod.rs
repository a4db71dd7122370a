//! Delivers Rollout events to each Notifier's sink, from the leading controller.
//!
//! Notifications are derived from something durable: the Events the Rollout reconciler
//! writes (in the same transaction as the status they explain), ordered by their store
//! revision. Each Notifier's status records the revision of the last Event it delivered
//! (`lastDeliveredRevision`), written with compare-and-swap and fenced like every
//! controller write, after the sink accepted it. A controller that dies between the two
//! leaves the cursor behind, and the next leader sends that Event again: at least once,
//! never lost while the Event lives (Events expire after about an hour).
//!
//! Each Notifier has its own task: a slow or dead sink delays only its own
//! notifications, never a reconcile nor another Notifier. A task handles one Event at a
//! time, oldest first, retrying with backoff; nothing is queued in memory beyond one
//! listing of its namespace's Events.

pub mod message;
pub mod send;

use crate::api::{Event, Notifier, NotifyEvent, Object, Rollout};
use crate::store::{Client, ObjectEvent, Scope};
use futures::StreamExt;
use message::Notification;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often each Notifier looks at its Events without being woken: covers a missed
/// wake-up (a watch that restarted) at a bounded cost.
const RESYNC: Duration = Duration::from_secs(10);
/// The first wait before a failed delivery is tried again; it doubles per failure.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
const RETRY_MAX: Duration = Duration::from_secs(5 * 60);
/// Most Events one pass considers: bounds the work (and skips written) per pass.
const MAX_PASS_EVENTS: usize = 100;
/// Longest `status.lastError` kept.
const MAX_ERROR_BYTES: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Store(#[from] crate::store::Error),
    #[error("delivery of {event} about rollout {rollout} failed: {source}")]
    Delivery {
        event: &'static str,
        rollout: String,
        source: send::Error,
    },
}

/// The Rollout Events a Notifier has not handled yet, oldest first: after its cursor,
/// not older than the Notifier itself, and of a reason that maps to a notification.
/// At most [`MAX_PASS_EVENTS`].
pub fn pending(notifier: &Notifier, events: Vec<Event>) -> Vec<(i64, NotifyEvent, Event)> {
    let cursor = notifier
        .status
        .as_ref()
        .map_or(0, |s| s.last_delivered_revision);
    let created = notifier.metadata.creation_timestamp;
    let mut out: Vec<(i64, NotifyEvent, Event)> = events
        .into_iter()
        .filter(|e| e.spec.involved_object.kind == Rollout::KIND)
        .filter_map(|e| {
            let rev = e
                .metadata
                .resource_version
                .as_deref()?
                .parse::<i64>()
                .ok()?;
            let kind = NotifyEvent::from_reason(&e.spec.reason)?;
            let time = e.spec.time.or(e.metadata.creation_timestamp);
            let after_creation = match (created, time) {
                (Some(c), Some(t)) => t >= c,
                _ => true,
            };
            (rev > cursor && after_creation).then_some((rev, kind, e))
        })
        .collect();
    out.sort_by_key(|(rev, _, _)| *rev);
    out.truncate(MAX_PASS_EVENTS);
    out
}

/// Whether `notifier` sends `kind` about a Rollout with `labels` (`None`: the Rollout
/// is gone, and only a Notifier covering every Rollout still sends it).
pub fn selects(
    notifier: &Notifier,
    kind: NotifyEvent,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let s = &notifier.spec;
    let wanted = s.events.is_empty() || s.events.contains(&kind);
    let covered = match labels {
        Some(l) => s.selector.matches(l),
        None => s.selector.is_empty(),
    };
    wanted && covered
}

/// What one pass did.
#[derive(Debug, PartialEq, Eq)]
enum Pass {
    /// Nothing pending: wait for a wake-up.
    Idle,
    /// Delivered or skipped something: look again at once.
    Progress,
    /// The Notifier is gone: its task ends.
    Gone,
}

/// One task per Notifier, keyed by namespace and name, with the generation it runs.
type Tasks = HashMap<(String, String), (Option<i64>, tokio::task::JoinHandle<()>)>;

/// Runs every Notifier's deliveries until `stop` (leadership lost or shutdown).
/// `client` is the leader's fenced client.
pub async fn run(client: Client, stop: CancellationToken) {
    let (wake_tx, wake_rx) = watch::channel(0u64);
    tokio::spawn(watch_events(client.clone(), wake_tx, stop.clone()));
    let http = send::http_client();
    let mut tasks: Tasks = HashMap::new();
    let mut notifiers = client.list_watch::<Notifier>(Scope::All);
    let mut retry = Duration::from_millis(200);
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break,
            n = notifiers.next() => n,
        };
        let start = |n: &Notifier, tasks: &mut Tasks| {
            let key = (
                n.namespace().unwrap_or_default().to_string(),
                n.name().to_string(),
            );
            let generation = n.metadata.generation;
            if let Some((g, task)) = tasks.get(&key) {
                if *g == generation && !task.is_finished() {
                    return;
                }
                task.abort();
            }
            let task = tokio::spawn(deliver_loop(
                client.clone(),
                http.clone(),
                key.clone(),
                wake_rx.clone(),
                stop.clone(),
            ));
            tasks.insert(key, (generation, task));
        };
        match next {
            Some(Ok(ObjectEvent::Applied(n))) => start(&n, &mut tasks),
            Some(Ok(ObjectEvent::Deleted(n))) => {
                let key = (
                    n.namespace().unwrap_or_default().to_string(),
                    n.name().to_string(),
                );
                if let Some((_, task)) = tasks.remove(&key) {
                    task.abort();
                }
            }
            Some(Ok(ObjectEvent::Restarted(all))) => {
                retry = Duration::from_millis(200);
                let keep: std::collections::HashSet<(String, String)> = all
                    .iter()
                    .map(|n| {
                        (
                            n.namespace().unwrap_or_default().to_string(),
                            n.name().to_string(),
                        )
                    })
                    .collect();
                tasks.retain(|k, (_, task)| {
                    let kept = keep.contains(k);
                    if !kept {
                        task.abort();
                    }
                    kept
                });
                for n in &all {
                    start(n, &mut tasks);
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "notifier watch failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(Duration::from_secs(30));
            }
            None => break,
        }
    }
    for (_, (_, task)) in tasks {
        task.abort();
    }
}

/// Wakes every Notifier's task when a Rollout Event that maps to a notification is
/// written.
async fn watch_events(client: Client, wake: watch::Sender<u64>, stop: CancellationToken) {
    let mut events = client.list_watch::<Event>(Scope::All);
    let mut retry = Duration::from_millis(200);
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            n = events.next() => n,
        };
        let relevant = |e: &Event| {
            e.spec.involved_object.kind == Rollout::KIND
                && NotifyEvent::from_reason(&e.spec.reason).is_some()
        };
        match next {
            Some(Ok(ObjectEvent::Applied(e))) if relevant(&e) => {
                wake.send_modify(|n| *n = n.wrapping_add(1));
            }
            Some(Ok(ObjectEvent::Restarted(_))) => {
                retry = Duration::from_millis(200);
                wake.send_modify(|n| *n = n.wrapping_add(1));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::warn!(error = %e, "event watch for notifiers failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(Duration::from_secs(30));
            }
            None => return,
        }
    }
}

/// One Notifier's task: passes until it is gone, waiting for a wake-up when idle and
/// backing off after a failure.
async fn deliver_loop(
    client: Client,
    http: reqwest::Client,
    key: (String, String),
    mut wake: watch::Receiver<u64>,
    stop: CancellationToken,
) {
    let (ns, name) = key;
    let mut backoff = RETRY_FIRST;
    loop {
        wake.borrow_and_update();
        let wait = match pass(&client, &http, &ns, &name).await {
            Ok(Pass::Progress) => {
                backoff = RETRY_FIRST;
                continue;
            }
            Ok(Pass::Gone) => return,
            Ok(Pass::Idle) => {
                backoff = RETRY_FIRST;
                None
            }
            Err(e) => {
                tracing::warn!(namespace = %ns, notifier = %name, error = %e, retry_in = ?backoff, "notification not delivered");
                let w = backoff;
                backoff = (backoff * 2).min(RETRY_MAX);
                Some(w)
            }
        };
        match wait {
            Some(w) => tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(w) => {}
            },
            None => tokio::select! {
                _ = stop.cancelled() => return,
                _ = wake.changed() => {}
                _ = tokio::time::sleep(RESYNC) => {}
            },
        }
    }
}

/// Reads the Notifier and its namespace's Events; delivers the oldest one it selects
/// (moving its cursor over the unselected ones before it), or moves the cursor over
/// unselected ones only.
async fn pass(
    client: &Client,
    http: &reqwest::Client,
    ns: &str,
    name: &str,
) -> Result<Pass, Error> {
    let Some(notifier) = client.get::<Notifier>(Some(ns), name).await? else {
        return Ok(Pass::Gone);
    };
    let events = client
        .list::<Event>(&Scope::Namespace(ns.to_string()))
        .await?
        .items;
    let mut skipped = None;
    let mut rollouts: HashMap<String, Option<Rollout>> = HashMap::new();
    for (rev, kind, event) in pending(&notifier, events) {
        let ro_name = event.spec.involved_object.name.clone();
        if !rollouts.contains_key(&ro_name) {
            let ro = client.get::<Rollout>(Some(ns), &ro_name).await?;
            rollouts.insert(ro_name.clone(), ro);
        }
        let rollout = rollouts.get(&ro_name).and_then(|r| r.as_ref());
        if !selects(&notifier, kind, rollout.map(|r| &r.metadata.labels)) {
            skipped = Some(rev);
            continue;
        }
        let n = Notification::new(kind, &event, rollout);
        let timeout = notifier
            .spec
            .timeout_seconds
            .map_or(send::DEFAULT_TIMEOUT, |s| Duration::from_secs(s.into()));
        let sent = match send::request(&notifier, &n, chrono::Utc::now().timestamp()) {
            Ok(req) => send::post(http, req, timeout).await,
            Err(e) => Err(e),
        };
        return match sent {
            Ok(()) => {
                record_delivery(client, ns, name, rev, &n).await?;
                tracing::info!(namespace = %ns, notifier = %name, event = n.event, rollout = %n.rollout, revision = rev, "notification delivered");
                Ok(Pass::Progress)
            }
            Err(source) => {
                let e = Error::Delivery {
                    event: n.event,
                    rollout: n.rollout.clone(),
                    source,
                };
                record_failure(client, ns, name, skipped, &e).await?;
                Err(e)
            }
        };
    }
    match skipped {
        Some(rev) => {
            move_cursor(client, ns, name, rev).await?;
            Ok(Pass::Progress)
        }
        None => Ok(Pass::Idle),
    }
}

async fn record_delivery(
    client: &Client,
    ns: &str,
    name: &str,
    rev: i64,
    n: &Notification,
) -> Result<(), Error> {
    client
        .update_status::<Notifier>(Some(ns), name, |st| {
            if rev > st.last_delivered_revision {
                st.last_delivered_revision = rev;
                st.deliveries += 1;
                st.last_delivered = Some(crate::api::Delivered {
                    event: n.event.to_string(),
                    rollout: n.rollout.clone(),
                    id: n.id.clone(),
                    time: Some(chrono::Utc::now()),
                });
                st.last_error = None;
                st.last_error_time = None;
            }
        })
        .await?;
    Ok(())
}

async fn record_failure(
    client: &Client,
    ns: &str,
    name: &str,
    skipped: Option<i64>,
    e: &Error,
) -> Result<(), Error> {
    let mut text = e.to_string();
    if text.len() > MAX_ERROR_BYTES {
        let mut end = MAX_ERROR_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    client
        .update_status::<Notifier>(Some(ns), name, |st| {
            if let Some(rev) = skipped {
                st.last_delivered_revision = st.last_delivered_revision.max(rev);
            }
            st.failed_attempts += 1;
            st.last_error = Some(text.clone());
            st.last_error_time = Some(chrono::Utc::now());
        })
        .await?;
    Ok(())
}

async fn move_cursor(client: &Client, ns: &str, name: &str, rev: i64) -> Result<(), Error> {
    client
        .update_status::<Notifier>(Some(ns), name, |st| {
            st.last_delivered_revision = st.last_delivered_revision.max(rev);
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{EventSpec, NotifierSpec, NotifierStatus, ObjectReference};

    fn event(rev: i64, kind: &str, reason: &str) -> Event {
        let mut e = Event::new(
            &format!("api.{rev}"),
            EventSpec {
                involved_object: ObjectReference {
                    kind: kind.into(),
                    namespace: Some("default".into()),
                    name: "api".into(),
                },
                type_: "Normal".into(),
                reason: reason.into(),
                message: String::new(),
                source: "controller".into(),
                time: Some("2026-01-01T00:00:10Z".parse().expect("a valid time")),
            },
        );
        e.metadata.resource_version = Some(rev.to_string());
        e
    }

    fn notifier(spec: serde_json::Value, cursor: i64) -> Notifier {
        let spec: NotifierSpec = serde_json::from_value(spec).expect("a valid spec");
        let mut n = Notifier::new("n", spec);
        n.metadata.creation_timestamp = Some("2026-01-01T00:00:00Z".parse().expect("a time"));
        n.status = Some(NotifierStatus {
            last_delivered_revision: cursor,
            ..Default::default()
        });
        n
    }

    #[test]
    fn pending_should_keep_unhandled_rollout_notifications_oldest_first() {
        let n = notifier(serde_json::json!({"webhook": {"url": "http://x"}}), 5);
        let mut old = event(9, "Rollout", "RolloutStarted");
        old.spec.time = Some("2025-12-31T23:59:59Z".parse().expect("a time"));
        let got: Vec<(i64, NotifyEvent)> = pending(
            &n,
            vec![
                event(12, "Rollout", "RolloutCompleted"),
                event(4, "Rollout", "RolloutStarted"),
                event(5, "Rollout", "RolloutPaused"),
                event(7, "Instance", "StageFailed"),
                event(8, "Rollout", "RolloutRetried"),
                old,
                event(10, "Rollout", "ProgressDeadlineExceeded"),
            ],
        )
        .into_iter()
        .map(|(r, k, _)| (r, k))
        .collect();
        assert_eq!(
            got,
            vec![(10, NotifyEvent::Degraded), (12, NotifyEvent::Completed)]
        );
    }

    #[test]
    fn selects_should_honour_events_and_the_label_selector() {
        let labels: BTreeMap<String, String> = [("team".to_string(), "web".to_string())].into();
        let all = notifier(serde_json::json!({"slack": {"url": "http://x"}}), 0);
        assert!(selects(&all, NotifyEvent::Promoted, Some(&labels)));
        assert!(selects(&all, NotifyEvent::Promoted, None));
        let some = notifier(
            serde_json::json!({"slack": {"url": "http://x"},
                               "selector": {"matchLabels": {"team": "web"}},
                               "events": ["StepPaused", "Degraded"]}),
            0,
        );
        assert!(selects(&some, NotifyEvent::Degraded, Some(&labels)));
        assert!(!selects(&some, NotifyEvent::Completed, Some(&labels)));
        assert!(!selects(
            &some,
            NotifyEvent::Degraded,
            Some(&BTreeMap::new())
        ));
        assert!(!selects(&some, NotifyEvent::Degraded, None));
    }
}
