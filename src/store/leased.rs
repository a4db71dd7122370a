//! Keys bound to leases: machine presence (an agent's heartbeat) and expiring Events.

use super::{keys, Client, Error, EventType, LeaseId, LeaseTtl, Op, Result, Txn};
use crate::api::{Event, EventSpec, Object, ObjectReference};
use futures::{stream::BoxStream, StreamExt};
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

/// How long an Event lives, at least.
pub const EVENT_TTL: Duration = Duration::from_secs(3600);
/// Events written in one window of this length share one lease, whoever writes them: the
/// lease of a window expires [`EVENT_TTL`] after the window ends (events live between
/// TTL and TTL + one window).
const EVENT_LEASE_WINDOW: Duration = Duration::from_secs(600);

/// The window (of [`EVENT_LEASE_WINDOW`]) that `at` falls in.
fn event_window(at: std::time::SystemTime) -> u64 {
    let secs = at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    secs / EVENT_LEASE_WINDOW.as_secs()
}

/// The lease of the events of `window`: the same id for every writer, so that a fleet's
/// agents share one lease per window instead of granting one each. At 10,000 machines a
/// grant per agent was 10,000 more etcd entries at the start of every rollout that came
/// more than a window after the last one (BENCHMARKS.md, "One event lease per window for
/// the whole fleet").
pub fn event_lease_id(window: u64) -> LeaseId {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("deployctl/event-lease/{window}").as_bytes());
    let bytes: [u8; 8] = digest[..8].try_into().expect("a sha256 has 32 bytes");
    // Positive and never 0 (etcd's "no lease").
    ((u64::from_be_bytes(bytes) >> 1) as i64).max(1)
}

/// The TTL of `window`'s lease when granted at `now`: until [`EVENT_TTL`] after the
/// window ends.
fn event_lease_ttl(window: u64, now: std::time::SystemTime) -> Duration {
    let end = std::time::UNIX_EPOCH
        + Duration::from_secs((window + 1).saturating_mul(EVENT_LEASE_WINDOW.as_secs()));
    let left = end.duration_since(now).unwrap_or_default();
    EVENT_TTL + left
}

/// A change in which machines have a live agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PresenceEvent {
    /// The complete set after a (re)list.
    Restarted(BTreeSet<String>),
    Up(String),
    Down(String),
}

/// A machine's presence as the store holds it: what its agent wrote when it registered,
/// and what is left of the lease its keep-alives refresh.
#[derive(Clone, Debug, PartialEq)]
pub struct Presence {
    /// When the agent (re)started, from the presence key's value (`None` when the value
    /// does not say).
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `None` when the lease expired between reading the key and reading the lease.
    pub ttl: Option<LeaseTtl>,
}

impl Presence {
    /// How long ago the agent last refreshed its lease: a keep-alive resets the remaining
    /// TTL to the granted one. Whole seconds on etcd, whose TTLs are.
    pub fn since_refresh(&self) -> Option<std::time::Duration> {
        self.ttl.map(|t| t.granted.saturating_sub(t.remaining))
    }
}

impl Client {
    /// The presence of `machine`'s agent, or `None` when it has none (its lease expired,
    /// or no agent registered). Two reads, no write: the agent's keep-alives are the
    /// heartbeat.
    pub async fn presence(&self, machine: &str) -> Result<Option<Presence>> {
        let Some(kv) = self.store().get(&keys::machine_lease_key(machine)).await? else {
            return Ok(None);
        };
        let started_at = serde_json::from_slice::<serde_json::Value>(&kv.value)
            .ok()
            .and_then(|v| v.get("startedAt").cloned())
            .and_then(|v| serde_json::from_value(v).ok());
        let ttl = if kv.lease == 0 {
            None
        } else {
            self.store().lease_ttl(kv.lease).await?
        };
        Ok(Some(Presence { started_at, ttl }))
    }

    /// Puts the machine's presence key, bound to `lease`.
    pub async fn register_presence(
        &self,
        machine: &str,
        lease: LeaseId,
        value: Vec<u8>,
    ) -> Result<()> {
        let txn = Txn {
            compares: vec![],
            ops: vec![Op::Put {
                key: keys::machine_lease_key(machine),
                value,
                lease,
            }],
        };
        self.commit(txn, &format!("presence of machine {machine}"))
            .await?;
        Ok(())
    }

    /// Which machines have a live agent: the full set first, then changes. Relists after
    /// a compaction; the store's watch resumes a broken connection.
    pub fn watch_presence(&self) -> BoxStream<'static, Result<PresenceEvent>> {
        let store = self.store().clone();
        let prefix = keys::machine_leases_prefix();
        let name_of = move |key: &str| key.rsplit('/').next().unwrap_or_default().to_string();
        futures::stream::unfold(None, move |watch: Option<super::WatchStream>| {
            let store = store.clone();
            let prefix = prefix.clone();
            async move {
                let mut watch = match watch {
                    Some(w) => w,
                    None => {
                        let listed = store.list(&prefix, None).await;
                        let (kvs, rev) = match listed {
                            Ok(x) => x,
                            Err(e) => return Some((vec![Err(e)], None)),
                        };
                        let set = kvs.iter().map(|kv| name_of(&kv.key)).collect();
                        return match store.watch(&prefix, rev + 1).await {
                            Ok(w) => Some((vec![Ok(PresenceEvent::Restarted(set))], Some(w))),
                            Err(e) => Some((vec![Err(e)], None)),
                        };
                    }
                };
                match watch.next().await {
                    None | Some(Err(Error::Compacted { .. })) => Some((vec![], None)),
                    Some(Err(e)) => Some((vec![Err(e)], None)),
                    Some(Ok(events)) => {
                        let out = events
                            .into_iter()
                            .map(|ev| {
                                let name = name_of(&ev.kv.key);
                                Ok(match ev.kind {
                                    EventType::Put => PresenceEvent::Up(name),
                                    EventType::Delete => PresenceEvent::Down(name),
                                })
                            })
                            .collect();
                        Some((out, Some(watch)))
                    }
                }
            }
        })
        .flat_map(futures::stream::iter)
        .boxed()
    }
}

/// Writes Events bound to the lease of the current window ([`event_lease_id`]), so they
/// expire after about [`EVENT_TTL`]. The controller grants each window's lease ahead of
/// time ([`EventRecorder::grant_windows`]); a writer that finds it missing grants it and
/// writes again. Best effort: a failure is logged, never returned.
pub struct EventRecorder {
    client: Client,
    /// `controller` or `agent/<machine>`.
    source: String,
    /// A lease a write found missing: the next event grants it first.
    missing: Mutex<Option<LeaseId>>,
}

impl EventRecorder {
    pub fn new(client: Client, source: impl Into<String>) -> Self {
        EventRecorder {
            client,
            source: source.into(),
            missing: Mutex::new(None),
        }
    }

    /// The lease for an event now: the window's, granted first if a write found it
    /// missing.
    async fn lease(&self) -> Result<LeaseId> {
        let now = std::time::SystemTime::now();
        let window = event_window(now);
        let id = event_lease_id(window);
        let missing = *self
            .missing
            .lock()
            .expect("lease lock is never poisoned: no panics inside");
        if missing == Some(id) {
            self.grant_window(window, now).await?;
            *self
                .missing
                .lock()
                .expect("lease lock is never poisoned: no panics inside") = None;
        }
        Ok(id)
    }

    /// Grants the leases of the current and the next window unless they exist, so that
    /// no writer has to when a window starts. The controller calls it every half window.
    pub async fn grant_windows(&self) -> Result<()> {
        let now = std::time::SystemTime::now();
        let window = event_window(now);
        for w in [window, window + 1] {
            self.grant_window(w, now).await?;
        }
        Ok(())
    }

    /// Grants `window`'s lease unless it exists.
    async fn grant_window(&self, window: u64, now: std::time::SystemTime) -> Result<()> {
        self.client
            .store()
            .grant_lease_id(event_lease_id(window), event_lease_ttl(window, now))
            .await
            .map(drop)
    }

    /// How often [`EventRecorder::grant_windows`] runs.
    pub fn grant_period() -> Duration {
        EVENT_LEASE_WINDOW / 2
    }

    /// Records one event about `object`.
    pub async fn record(&self, object: ObjectReference, type_: &str, reason: &str, message: &str) {
        if let Err(e) = self.try_record(object, type_, reason, message).await {
            tracing::warn!(error = %e, reason, "could not record event");
        }
    }

    async fn try_record(
        &self,
        object: ObjectReference,
        type_: &str,
        reason: &str,
        message: &str,
    ) -> Result<()> {
        let time = chrono::Utc::now();
        // A second try when the window's lease was missing: `op` grants it then.
        for _ in 0..2 {
            let op = self
                .op(object.clone(), type_, reason, message, time)
                .await?;
            let res = self
                .client
                .store()
                .txn(Txn {
                    compares: vec![],
                    ops: vec![op],
                })
                .await;
            match self.check(res) {
                Err(Error::LeaseNotFound(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
        Err(Error::Other(format!(
            "the event lease of this window went missing twice while recording {reason}"
        )))
    }

    /// The put that records one event (bound to the window's lease), for a caller that
    /// writes it in its own transaction; pass that transaction's result through
    /// [`EventRecorder::check`], and write again once on `LeaseNotFound`.
    pub async fn op(
        &self,
        object: ObjectReference,
        type_: &str,
        reason: &str,
        message: &str,
        time: chrono::DateTime<chrono::Utc>,
    ) -> Result<Op> {
        let lease = self.lease().await?;
        let namespace = object
            .namespace
            .clone()
            .unwrap_or_else(|| crate::api::DEFAULT_NAMESPACE.to_string());
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let name = format!("{}.{suffix}", object.name);
        let mut ev = Event::new(
            &name,
            EventSpec {
                involved_object: object,
                type_: type_.to_string(),
                reason: reason.to_string(),
                message: message.to_string(),
                source: self.source.clone(),
                time: Some(time),
            },
        );
        ev.metadata.namespace = Some(namespace.clone());
        ev.metadata.uid = Some(uuid::Uuid::new_v4().to_string());
        ev.metadata.generation = Some(1);
        ev.metadata.creation_timestamp = Some(time);
        let key = keys::spec_key(Event::PLURAL, Some(&namespace), &name);
        let value = super::client::encode_spec_value(&ev)?;
        Ok(Op::Put { key, value, lease })
    }

    /// Passes a transaction's result through; when the event lease was missing, notes it,
    /// so that the next event grants it first.
    pub fn check<T>(&self, res: Result<T>) -> Result<T> {
        if let Err(Error::LeaseNotFound(id)) = &res {
            *self
                .missing
                .lock()
                .expect("lease lock is never poisoned: no panics inside") = Some(*id);
        }
        res
    }
}
