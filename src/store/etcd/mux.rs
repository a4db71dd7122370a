//! Every watch of one [`EtcdStore`] shares one etcd watch stream, as Go's clientv3 does.
//!
//! etcd serves each watch stream with three goroutines whose stacks its garbage collector
//! scans on every cycle. With a stream per watch, 10,000 agents sharing a few clients cost
//! etcd 30,000 goroutines, and a profile of a 10,000-machine rollout showed a quarter of
//! etcd's CPU in that scan. One stream per client carries all of the client's watches
//! instead, each under a watch ID that the client picks (etcd 3.4 honours it), and a
//! dispatcher routes every response to its watch by that ID.
//!
//! - A watch is created by a request on the shared stream and is live once its "created"
//!   response arrives; [`Mux::subscribe`] waits for that, so errors (permission denied)
//!   reach the caller.
//! - Dropping a [`Sub`] cancels its watch on the stream.
//! - When the stream breaks (etcd restarted, its member died, connection reset), every
//!   watch on it is told [`Msg::Broken`] and re-subscribes from its own next revision; the
//!   first one to do so opens a new stream, on whichever member answers, and the others
//!   join it.
//! - Each watch has its own unbounded queue, as in clientv3: a watch that is read slowly
//!   never holds up the others on the stream.

use super::{EtcdStore, MAX_DECODE, REQUEST_TIMEOUT};
use crate::store::{Error, Result};
use etcd_client as ec;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The key of the watch that opens each stream. etcd-client opens a stream only together
/// with a first watch, and swallows that watch's "created" response; so the first watch is
/// this one, which nothing writes, and every real watch is created on the open stream where
/// its own response can be read.
const ANCHOR_KEY: &str = "/deployctl/.watch-anchor";

/// The watches of one store and the stream they share.
pub(super) struct Mux {
    current: Mutex<Option<Arc<Shared>>>,
    /// One stream is opened at a time: watches that find none wait for the one being opened.
    opening: tokio::sync::Mutex<()>,
    /// Watch IDs, unique per store (so per stream); 0 asks etcd to pick and is the anchor's.
    next_id: AtomicI64,
}

/// One open etcd watch stream.
struct Shared {
    /// Creates and cancels, sent on the stream in order by the task that owns the stream's
    /// request half. Closed once the last `Shared` handle is gone: the stream then ends.
    ctl: mpsc::UnboundedSender<Ctl>,
    subs: Arc<Mutex<Subs>>,
}

#[derive(Default)]
struct Subs {
    queues: HashMap<i64, mpsc::UnboundedSender<Msg>>,
    /// The stream has ended: nothing more will be routed.
    broken: bool,
}

enum Ctl {
    Create {
        key: Vec<u8>,
        end: Vec<u8>,
        from: i64,
        id: i64,
    },
    Cancel(i64),
}

/// What the dispatcher hands one watch.
pub(super) enum Msg {
    Resp(ec::WatchResponse),
    /// The shared stream ended; why. The watch must subscribe again.
    Broken(String),
}

/// One watch on the shared stream. Dropping it cancels the watch.
pub(super) struct Sub {
    id: i64,
    rx: mpsc::UnboundedReceiver<Msg>,
    shared: Arc<Shared>,
}

impl Sub {
    /// The next response for this watch; `Broken` once the stream has ended.
    pub(super) async fn next(&mut self) -> Msg {
        self.rx
            .recv()
            .await
            .unwrap_or_else(|| Msg::Broken("the watch stream ended".into()))
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        // Still routed to us: tell etcd to stop sending. (A watch that etcd cancelled, or
        // whose stream broke, is no longer in the table.)
        if lock(&self.shared.subs).queues.remove(&self.id).is_some() {
            let _ = self.shared.ctl.send(Ctl::Cancel(self.id));
        }
    }
}

fn lock(subs: &Mutex<Subs>) -> MutexGuard<'_, Subs> {
    subs.lock()
        .expect("the watch table lock is never poisoned: nothing panics while holding it")
}

impl Mux {
    pub(super) fn new() -> Mux {
        Mux {
            current: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            next_id: AtomicI64::new(1),
        }
    }

    /// Watches the keys in `[key, end)` from revision `from`, on the shared stream (opened
    /// if there is none). Returns once etcd has created the watch.
    pub(super) async fn subscribe(
        &self,
        store: &EtcdStore,
        what: &str,
        key: Vec<u8>,
        end: Vec<u8>,
        from: i64,
    ) -> Result<Sub> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = self.shared(store, what).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let unavailable = |message: String| Error::Unavailable {
            endpoint: store.endpoint.clone(),
            message: format!("{what}: {message}"),
        };
        {
            let mut subs = lock(&shared.subs);
            if subs.broken {
                return Err(unavailable("the watch stream broke".into()));
            }
            subs.queues.insert(id, tx);
        }
        let mut sub = Sub { id, rx, shared };
        if sub
            .shared
            .ctl
            .send(Ctl::Create { key, end, from, id })
            .is_err()
        {
            return Err(unavailable("the watch stream is closed".into()));
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, sub.next()).await {
            Err(_) => Err(unavailable(format!(
                "no answer within {REQUEST_TIMEOUT:?} (etcd 3.4 or newer is needed)"
            ))),
            Ok(Msg::Broken(why)) => Err(unavailable(why)),
            Ok(Msg::Resp(r)) if r.created() && !r.canceled() => Ok(sub),
            Ok(Msg::Resp(r)) => {
                let reason = r.cancel_reason().trim_start_matches("etcdserver: ");
                Err(if reason.contains("permission denied") {
                    Error::Other(format!("{what} at {}: {reason}", store.endpoint))
                } else {
                    unavailable(format!("etcd cancelled the watch: {reason}"))
                })
            }
        }
    }

    /// The live shared stream, opened if there is none.
    async fn shared(&self, store: &EtcdStore, what: &str) -> Result<Arc<Shared>> {
        if let Some(s) = self.live() {
            return Ok(s);
        }
        let _one = self.opening.lock().await;
        if let Some(s) = self.live() {
            return Ok(s);
        }
        // On whichever member answers: a stream that broke because its member died is
        // opened again on another.
        let open = |c: ec::Client| async move {
            c.watch_client()
                .max_decoding_message_size(MAX_DECODE)
                .watch(ANCHOR_KEY, None)
                .await
        };
        let (watcher, stream) = store
            .inner
            .endpoints
            .call(REQUEST_TIMEOUT, super::Pace::READ, |_| true, open)
            .await
            .map_err(|f| store.failure(what, f))?;
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let subs = Arc::new(Mutex::new(Subs::default()));
        let stop = CancellationToken::new();
        tokio::spawn(send_requests(watcher, ctl_rx, stop.clone()));
        tokio::spawn(dispatch(stream, subs.clone(), ctl.downgrade(), stop));
        let shared = Arc::new(Shared { ctl, subs });
        *self
            .current
            .lock()
            .expect("the stream slot lock is never poisoned: nothing panics while holding it") =
            Some(shared.clone());
        Ok(shared)
    }

    fn live(&self) -> Option<Arc<Shared>> {
        let current = self
            .current
            .lock()
            .expect("the stream slot lock is never poisoned: nothing panics while holding it");
        current
            .as_ref()
            .filter(|s| !s.ctl.is_closed() && !lock(&s.subs).broken)
            .cloned()
    }

    /// Watches on the shared stream now (for tests).
    #[cfg(test)]
    pub(super) fn watches(&self) -> usize {
        self.live().map_or(0, |s| lock(&s.subs).queues.len())
    }
}

/// Owns the stream's request half: sends creates and cancels in order. Ends when every
/// handle on the stream is gone, or the stream broke; either way it stops the dispatcher,
/// whose dropping the response half closes the RPC.
async fn send_requests(
    mut watcher: ec::Watcher,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
    stop: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            c = ctl.recv() => c,
            _ = stop.cancelled() => None,
        };
        let sent = match next {
            None => break,
            Some(Ctl::Create { key, end, from, id }) => {
                let opts = ec::WatchOptions::new()
                    .with_range(end)
                    .with_start_revision(from)
                    .with_watch_id(id);
                watcher.watch(key, Some(opts)).await
            }
            Some(Ctl::Cancel(id)) => watcher.cancel_by_id(id).await,
        };
        if sent.is_err() {
            break;
        }
    }
    stop.cancel();
}

/// Routes each response to its watch by ID. When the stream ends, tells every watch.
async fn dispatch(
    mut stream: ec::WatchStream,
    subs: Arc<Mutex<Subs>>,
    ctl: mpsc::WeakUnboundedSender<Ctl>,
    stop: CancellationToken,
) {
    let why = loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = stop.cancelled() => break "the watch stream was closed".to_string(),
        };
        let resp = match msg {
            Ok(Some(r)) => r,
            Ok(None) => break "the watch stream ended".to_string(),
            Err(e) => break format!("the watch stream broke: {e}"),
        };
        let id = resp.watch_id();
        // A cancelled watch (compacted, refused, or cancelled by us) gets nothing more.
        let ended = resp.canceled();
        let queue = {
            let mut s = lock(&subs);
            if ended {
                s.queues.remove(&id)
            } else {
                s.queues.get(&id).cloned()
            }
        };
        match queue {
            Some(q) => {
                let _ = q.send(Msg::Resp(resp));
            }
            // Events for a watch that is gone (its cancel is on its way, or was lost with an
            // earlier stream): cancel it. The anchor (0) only ever says "created".
            None if !ended && id != 0 => {
                if let Some(ctl) = ctl.upgrade() {
                    let _ = ctl.send(Ctl::Cancel(id));
                }
            }
            None => {}
        }
    };
    stop.cancel();
    let queues = {
        let mut s = lock(&subs);
        s.broken = true;
        std::mem::take(&mut s.queues)
    };
    for q in queues.values() {
        let _ = q.send(Msg::Broken(why.clone()));
    }
}
