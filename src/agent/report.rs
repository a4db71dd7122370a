//! One instance's status reports and events, written by a background task that coalesces
//! them: one compare-and-swap transaction carries the latest status and every event since
//! the last write.
//!
//! A *progress* status (Staging, Switching, Verifying) is written only once it has been the
//! latest for [`PROGRESS_DELAY`]: a step that ends sooner is reported by its outcome alone.
//! Nothing else depends on seeing it (the controller counts a machine it ordered to switch
//! as unavailable from the order on, and `get rollouts -w` derives "switching to" from the
//! spec), so a fleet of fast steps costs two writes per machine per rollout (staged,
//! switched) instead of seven. Every other status is written at once.

use crate::api::{Instance, InstancePhase, InstanceStatus, Object, ObjectReference};
use crate::store::{encode_status, Client, Error as StoreError, EventRecorder, Txn};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long a progress status waits for the step's outcome before it is written.
pub const PROGRESS_DELAY: Duration = Duration::from_secs(1);
/// Events kept while the store is unreachable; older ones are dropped (and counted).
const MAX_PENDING_EVENTS: usize = 32;
/// Retries after a failed write: a random wait up to a bound that doubles up to the cap.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MIN: Duration = Duration::from_millis(10);
/// etcd 3.4 refuses writes while it is 5,000 entries behind, which 10,000 staged reports
/// do for 2-4 s; with a 5 s cap the last agents were still waiting after etcd had caught
/// up and sat idle. 1.5 s: rollouts at 10,000 machines took 9.1-11.1 s instead of
/// 10.2-15.4 s, with no more etcd CPU (BENCHMARKS.md, "The agents' retry cap: 1.5 s
/// instead of 5 s").
const RETRY_CAP: Duration = Duration::from_millis(1500);
/// Conflicts resolved by re-reading before the write counts as failed.
const CONFLICT_RETRIES: usize = 5;

/// Progress phases: written only when they last.
pub fn is_progress(phase: InstancePhase) -> bool {
    matches!(
        phase,
        InstancePhase::Staging | InstancePhase::Switching | InstancePhase::Verifying
    )
}

/// An event waiting for the next write.
#[derive(Clone, Debug)]
pub struct PendingEvent {
    type_: String,
    reason: String,
    message: String,
    time: DateTime<Utc>,
}

impl PendingEvent {
    pub fn new(type_: &str, reason: &str, message: &str) -> PendingEvent {
        PendingEvent {
            type_: type_.to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
            time: Utc::now(),
        }
    }
}

/// What one report hands over: events in the order they happened, then the status.
struct Note {
    status: Option<InstanceStatus>,
    events: Vec<PendingEvent>,
    /// The status may wait [`PROGRESS_DELAY`] for a later one to go with it.
    hold: bool,
}

/// The sending half, held by the instance task. Dropping it flushes what is pending
/// (progress delay skipped) and ends the writer.
pub struct Reporter {
    tx: mpsc::UnboundedSender<Note>,
    handle: tokio::task::JoinHandle<()>,
}

impl Reporter {
    /// Starts the writer for `obj`, whose `status_version` is the first CAS base.
    pub fn start(client: Client, events: Arc<EventRecorder>, obj: &Instance) -> Reporter {
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer {
            client,
            events,
            object: ObjectReference {
                kind: Instance::KIND.to_string(),
                namespace: obj.namespace().map(str::to_string),
                name: obj.name().to_string(),
            },
            base: bare(obj),
        };
        let handle = tokio::spawn(writer.run(rx));
        Reporter { tx, handle }
    }

    /// Reports `events` and `status` (the latest status wins); they are written in one
    /// transaction, the events possibly with later ones.
    pub fn send(&self, status: Option<InstanceStatus>, events: Vec<PendingEvent>) {
        self.send_note(status, events, false);
    }

    /// As [`Reporter::send`], for a status that nothing waits on (releases being
    /// cleaned): written with the next status if that comes within [`PROGRESS_DELAY`],
    /// on its own after that.
    pub fn send_unhurried(&self, status: InstanceStatus, events: Vec<PendingEvent>) {
        self.send_note(Some(status), events, true);
    }

    fn send_note(&self, status: Option<InstanceStatus>, events: Vec<PendingEvent>, hold: bool) {
        if status.is_none() && events.is_empty() {
            return;
        }
        // Fails only once the writer has ended, which it does only after the sender is gone.
        let _ = self.tx.send(Note {
            status,
            events,
            hold,
        });
    }

    /// Writes what is pending and waits for it, at most `limit`.
    pub async fn flush(self, limit: Duration) {
        let Reporter { tx, handle } = self;
        drop(tx);
        let _ = tokio::time::timeout(limit, handle).await;
    }
}

/// The instance with only what a status write needs (namespace, name, status revision).
fn bare(obj: &Instance) -> Instance {
    let mut b = Instance::new(obj.name(), Default::default());
    b.metadata.namespace = obj.namespace().map(str::to_string);
    b.metadata.status_version = obj.meta().status_version;
    b
}

struct Writer {
    client: Client,
    events: Arc<EventRecorder>,
    object: ObjectReference,
    /// Carries the CAS base (`status_version`) of the next write.
    base: Instance,
}

/// What is waiting to be written.
#[derive(Default)]
struct Pending {
    status: Option<InstanceStatus>,
    /// The latest status came as one that may wait.
    hold: bool,
    events: Vec<PendingEvent>,
    /// When the oldest unwritten note arrived.
    since: Option<Instant>,
    dropped_events: usize,
}

impl Pending {
    fn absorb(&mut self, note: Note) {
        self.since.get_or_insert_with(Instant::now);
        for e in note.events {
            if self.events.len() == MAX_PENDING_EVENTS {
                self.events.remove(0);
                self.dropped_events += 1;
            }
            self.events.push(e);
        }
        if let Some(s) = note.status {
            self.status = Some(s);
            self.hold = note.hold;
        }
    }
    fn is_empty(&self) -> bool {
        self.status.is_none() && self.events.is_empty()
    }
    /// Waits for more before writing: the latest status is a progress one, or one sent
    /// unhurried.
    fn holding(&self) -> Option<Instant> {
        let st = self.status.as_ref()?;
        (self.hold || is_progress(st.phase))
            .then(|| self.since.unwrap_or_else(Instant::now) + PROGRESS_DELAY)
    }
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Note>) {
        let mut pending = Pending::default();
        let mut open = true;
        let mut backoff = RETRY_FIRST;
        loop {
            if pending.is_empty() {
                if !open {
                    return;
                }
                match rx.recv().await {
                    Some(n) => pending.absorb(n),
                    None => return,
                }
            }
            while let Ok(n) = rx.try_recv() {
                pending.absorb(n);
            }
            if let (Some(until), true) = (pending.holding(), open) {
                tokio::select! {
                    n = rx.recv() => match n {
                        Some(n) => { pending.absorb(n); continue; }
                        None => open = false,
                    },
                    _ = tokio::time::sleep_until(until) => {}
                }
            }
            match self.write(&mut pending).await {
                Ok(()) => backoff = RETRY_FIRST,
                Err(e) => {
                    // Full jitter: a fleet whose writes an overloaded etcd refused at once
                    // ("too many requests") must not come back at once.
                    let wait = backoff.mul_f64(rand::random::<f64>()).max(RETRY_MIN);
                    tracing::warn!(instance = %self.describe(), error = %e, retry_in = ?wait,
                        "cannot write status; will retry");
                    let until = Instant::now() + wait;
                    backoff = (backoff * 2).min(RETRY_CAP);
                    // Newer notes replace what failed meanwhile; shutting down gives up.
                    loop {
                        tokio::select! {
                            n = rx.recv(), if open => match n {
                                Some(n) => pending.absorb(n),
                                None => open = false,
                            },
                            _ = tokio::time::sleep_until(until) => break,
                        }
                    }
                    if !open {
                        return;
                    }
                }
            }
        }
    }

    fn describe(&self) -> String {
        self.base.meta().key()
    }

    /// One transaction: the status (CAS on its revision) and the events. On success the
    /// pending notes are gone; on failure they stay for the next try.
    async fn write(&mut self, pending: &mut Pending) -> Result<(), StoreError> {
        if pending.dropped_events > 0 {
            tracing::warn!(instance = %self.describe(), dropped = pending.dropped_events,
                "events dropped while the store was unreachable");
            pending.dropped_events = 0;
        }
        let mut lease_retried = false;
        for _ in 0..CONFLICT_RETRIES {
            let mut txn = Txn::default();
            if let Some(st) = &pending.status {
                self.base.status = Some(st.clone());
                encode_status(&self.base, &mut txn)?;
            }
            for e in &pending.events {
                let op = self
                    .events
                    .op(self.object.clone(), &e.type_, &e.reason, &e.message, e.time)
                    .await?;
                txn.ops.push(op);
            }
            let res = match self.events.check(self.client.store().txn(txn).await) {
                // The window's event lease was missing (no controller granted it yet):
                // the next `op` grants it; write again at once.
                Err(StoreError::LeaseNotFound(_))
                    if !lease_retried && !pending.events.is_empty() =>
                {
                    lease_retried = true;
                    continue;
                }
                res => res?,
            };
            match res {
                res if res.succeeded => {
                    if pending.status.is_some() {
                        self.base.metadata.status_version = res.revision;
                    }
                    *pending = Pending::default();
                    return Ok(());
                }
                _ => {
                    // Our status revision is stale (or the instance is gone): re-read.
                    let fresh = self
                        .client
                        .get::<Instance>(self.base.namespace(), self.base.name())
                        .await?;
                    match fresh {
                        Some(f) => self.base.metadata.status_version = f.meta().status_version,
                        None => {
                            tracing::info!(instance = %self.describe(), "instance gone; status not written");
                            *pending = Pending::default();
                            return Ok(());
                        }
                    }
                }
            }
        }
        Err(StoreError::Conflict(format!(
            "status of instance {}",
            self.describe()
        )))
    }
}
