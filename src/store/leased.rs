//! Keys bound to leases: machine presence (an agent's heartbeat) and expiring Events.

use super::{keys, Client, Error, EventType, LeaseId, Op, Result, Txn};
use crate::api::{Event, EventSpec, Object, ObjectReference};
use futures::{stream::BoxStream, StreamExt};
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an Event lives.
pub const EVENT_TTL: Duration = Duration::from_secs(3600);
/// A new event lease is granted this often, so events live between TTL and TTL + this.
const EVENT_LEASE_REUSE: Duration = Duration::from_secs(600);

/// A change in which machines have a live agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PresenceEvent {
    /// The complete set after a (re)list.
    Restarted(BTreeSet<String>),
    Up(String),
    Down(String),
}

impl Client {
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

/// Writes Events bound to a shared lease, so they expire after about [`EVENT_TTL`].
/// Best effort: a failure is logged, never returned.
pub struct EventRecorder {
    client: Client,
    /// `controller` or `agent/<machine>`.
    source: String,
    /// The lease new events are bound to, and when it was granted.
    lease: Mutex<Option<(LeaseId, Instant)>>,
}

impl EventRecorder {
    pub fn new(client: Client, source: impl Into<String>) -> Self {
        EventRecorder {
            client,
            source: source.into(),
            lease: Mutex::new(None),
        }
    }

    async fn lease(&self) -> Result<LeaseId> {
        let cached = *self
            .lease
            .lock()
            .expect("lease lock is never poisoned: no panics inside");
        if let Some((id, at)) = cached {
            if at.elapsed() < EVENT_LEASE_REUSE {
                return Ok(id);
            }
        }
        let id = self
            .client
            .store()
            .grant_lease(EVENT_TTL + EVENT_LEASE_REUSE)
            .await?;
        *self
            .lease
            .lock()
            .expect("lease lock is never poisoned: no panics inside") = Some((id, Instant::now()));
        Ok(id)
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
        let op = self
            .op(object, type_, reason, message, chrono::Utc::now())
            .await?;
        let res = self
            .client
            .store()
            .txn(Txn {
                compares: vec![],
                ops: vec![op],
            })
            .await;
        self.check(res).map(|_| ())
    }

    /// The put that records one event (bound to the shared lease, granted if needed), for
    /// a caller that writes it in its own transaction; pass that transaction's result
    /// through [`EventRecorder::check`].
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

    /// Passes a transaction's result through; when the event lease has expired, forgets
    /// it so that the next event is granted a new one.
    pub fn check<T>(&self, res: Result<T>) -> Result<T> {
        if let Err(Error::LeaseNotFound(_)) = &res {
            *self
                .lease
                .lock()
                .expect("lease lock is never poisoned: no panics inside") = None;
        }
        res
    }
}
