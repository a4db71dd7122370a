//! Leader election through a store lease: one controller leads, the others stand by.
//!
//! A candidate grants a lease of `ttl` and creates the leader key bound to it, only if
//! the key is absent. Whoever created it leads until its lease ends; the store then
//! deletes the key, the standbys watching it see the delete and try again. So a standby
//! takes over within `ttl` of the leader dying (sooner on a clean [`Leadership::resign`]).
//!
//! Leading is not enough to write safely: a leader paused longer than its TTL may not
//! know it lost. Every controller write therefore carries the [`Leadership::fence`]
//! (the leader key's create revision must still be ours), and a write after the loss
//! fails with [`crate::store::Error::NotLeader`].

use crate::store::{self, Client, Compare, EventType, LeaseId};
use futures::StreamExt;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("leader election stopped by shutdown")]
    Cancelled,
    #[error("failed to resign leadership: {0}")]
    Resign(#[source] store::Error),
}

/// First wait before retrying after a store error while campaigning.
const RETRY_BASE: Duration = Duration::from_millis(200);
/// Longest wait between attempts when the store stays unreachable.
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Campaigns for the leader key under one identity.
pub struct LeaderElector {
    client: Client,
    identity: String,
    ttl: Duration,
}

/// Held while this process leads. Dropping it stops the keep-alive (the lease then
/// expires after its TTL); [`resign`](Self::resign) hands over at once.
pub struct Leadership {
    client: Client,
    identity: String,
    lease: LeaseId,
    fence: Compare,
    lost: CancellationToken,
    /// Stops the keep-alive task (on resign or drop) without declaring the lease lost.
    stop: CancellationToken,
    keeper: Option<JoinHandle<()>>,
}

enum Attempt {
    Won(Leadership),
    /// Held by someone else: the holder as read.
    Held(store::LeaderRecord),
    /// The key vanished between the failed create and the read: try again now.
    Vanished,
}

impl LeaderElector {
    /// `identity` names this controller in the leader key (e.g. hostname-pid). `ttl` is
    /// how long a dead leader keeps the key; keep-alives go out every `ttl / 3`.
    pub fn new(client: Client, identity: impl Into<String>, ttl: Duration) -> Self {
        LeaderElector {
            client,
            identity: identity.into(),
            ttl: ttl.max(Duration::from_secs(1)),
        }
    }

    /// Waits until this process holds the leader key. Store errors are logged and
    /// retried with backoff; only `shutdown` makes it give up ([`Error::Cancelled`]).
    /// (Cancelled in the middle of an attempt, it may leave a lease behind that holds the
    /// key until its TTL runs out.)
    pub async fn campaign(&self, shutdown: &CancellationToken) -> Result<Leadership> {
        let mut retry = RETRY_BASE;
        loop {
            if shutdown.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return Err(Error::Cancelled),
                a = self.try_once() => a,
            };
            match attempt {
                Ok(Attempt::Won(leadership)) => {
                    tracing::info!(identity = %self.identity, lease = leadership.lease,
                        term = leadership.term(), "became the leader");
                    return Ok(leadership);
                }
                Ok(Attempt::Vanished) => retry = RETRY_BASE,
                Ok(Attempt::Held(holder)) if holder.identity == self.identity => {
                    // Our own earlier term, on a lease we lost touch with (the store was
                    // down for a TTL, then came back with the lease renewed): nobody
                    // leads behind it, so end it now instead of standing by for a TTL.
                    tracing::info!(identity = %self.identity, lease = holder.lease,
                        "the leader key is our own lost term; revoking its lease");
                    match self.client.store().revoke_lease(holder.lease).await {
                        Ok(()) | Err(store::Error::LeaseNotFound(_)) => retry = RETRY_BASE,
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in = ?retry, "cannot revoke our lost lease");
                            tokio::select! {
                                _ = shutdown.cancelled() => return Err(Error::Cancelled),
                                _ = tokio::time::sleep(retry) => {}
                            }
                            retry = (retry * 2).min(RETRY_MAX);
                        }
                    }
                }
                Ok(Attempt::Held(holder)) => {
                    retry = RETRY_BASE;
                    tracing::debug!(leader = %holder.identity, "standing by");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Err(Error::Cancelled),
                        _ = self.wait_deleted(holder.mod_revision + 1) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(identity = %self.identity, error = %e, retry_in = ?retry,
                        "leader election failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Err(Error::Cancelled),
                        _ = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// One try: grant a lease, create the key bound to it if absent.
    async fn try_once(&self) -> store::Result<Attempt> {
        let store = self.client.store();
        // Keep-alive deadlines count from before the grant: the store's own clock for
        // the lease starts later, so we never believe in a lease the store has dropped.
        let granted_at = Instant::now();
        let lease = store.grant_lease(self.ttl).await?;
        let fence = match self.client.try_acquire_leader(&self.identity, lease).await {
            Ok(Some(fence)) => fence,
            other => {
                if let Err(e) = store.revoke_lease(lease).await {
                    tracing::debug!(lease, error = %e, "could not revoke an unused lease");
                }
                other?;
                return Ok(match self.client.leader().await? {
                    Some(holder) => Attempt::Held(holder),
                    None => Attempt::Vanished,
                });
            }
        };
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let keeper = tokio::spawn(keep_alive(
            self.client.clone(),
            lease,
            fence.clone(),
            self.ttl,
            granted_at,
            lost.clone(),
            stop.clone(),
        ));
        Ok(Attempt::Won(Leadership {
            client: self.client.clone(),
            identity: self.identity.clone(),
            lease,
            fence,
            lost,
            stop,
            keeper: Some(keeper),
        }))
    }

    /// Returns when the leader key is deleted after `from_revision`, or after one `ttl`
    /// at most (a re-check in case the watch broke or missed it).
    async fn wait_deleted(&self, from_revision: i64) {
        let deleted = async {
            match self.client.watch_leader(from_revision).await {
                Ok(mut events) => {
                    while let Some(Ok(batch)) = events.next().await {
                        if batch.iter().any(|e| e.kind == EventType::Delete) {
                            return;
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot watch the leader key"),
            }
            // The watch failed: fall back to the periodic re-check below.
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = deleted => {}
            _ = tokio::time::sleep(self.ttl) => {}
        }
    }
}

impl Leadership {
    /// The condition every write of the leader must carry (see [`Client::fenced`]).
    pub fn fence(&self) -> Compare {
        self.fence.clone()
    }

    /// A client whose every write is fenced on this leadership.
    pub fn client(&self) -> Client {
        self.client.fenced(self.fence.clone())
    }

    /// Cancelled when leadership is lost: the lease expired, no keep-alive succeeded for
    /// a whole TTL, or the leader key was deleted or re-created. Stop reconciling then.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The leader key's create revision in this term: what the fence compares, and what
    /// tells this term from every other.
    pub fn term(&self) -> i64 {
        match self.fence.target {
            store::CompareTarget::CreateRevision(revision) => revision,
            _ => 0,
        }
    }

    pub fn lease(&self) -> LeaseId {
        self.lease
    }

    /// Steps down now: stops the keep-alive and revokes the lease, which deletes the
    /// leader key so that a standby takes over at once. Also cancels [`lost`](Self::lost).
    pub async fn resign(mut self) -> Result<()> {
        self.stop.cancel();
        if let Some(keeper) = self.keeper.take() {
            // It returns as soon as `stop` is cancelled; a panic in it is already logged.
            let _ = keeper.await;
        }
        self.lost.cancel();
        match self.client.store().revoke_lease(self.lease).await {
            Ok(()) | Err(store::Error::LeaseNotFound(_)) => Ok(()),
            Err(e) => Err(Error::Resign(e)),
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Keeps the lease alive every `ttl / 3` until `stop`; cancels `lost` (and returns) when
/// the store says the lease is gone, when no keep-alive has succeeded for a whole `ttl`,
/// or when the leader key is no longer the one we created.
async fn keep_alive(
    client: Client,
    lease: LeaseId,
    fence: Compare,
    ttl: Duration,
    mut last_ok: Instant,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let lose = |why: &str| {
        tracing::warn!(lease, reason = why, "lost the leadership");
        lost.cancel();
    };
    // Lost without the store's word: the lease may live on in the store (an etcd that
    // restarts renews every lease), holding the leader key for a whole TTL after it
    // answers again with nobody leading. Revoke it as soon as the store answers.
    let lose_unheard = |why: &str| {
        lose(why);
        tokio::spawn(revoke_when_reachable(client.clone(), lease));
    };
    let period = ttl / 3;
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let deadline = last_ok + ttl;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(deadline) => {
                return lose_unheard("no successful keep-alive for a whole ttl");
            }
            _ = tick.tick() => {}
        }
        let sent = Instant::now();
        let renewed = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout_at(deadline, client.store().keep_alive(lease)) => r,
        };
        match renewed {
            Ok(Ok(())) => last_ok = sent,
            Ok(Err(store::Error::LeaseNotFound(_))) => return lose("the lease expired"),
            Ok(Err(e)) => {
                tracing::warn!(lease, error = %e, "leader keep-alive failed");
                continue;
            }
            // The deadline passed: the select above declares the loss.
            Err(_) => continue,
        }
        // Somebody may have deleted the key by hand: the lease lives on, but the fence
        // no longer holds and every write would fail.
        let holder = tokio::select! {
            _ = stop.cancelled() => return,
            h = client.leader() => h,
        };
        match holder {
            Ok(Some(h)) if Compare::create_revision(&fence.key, h.create_revision) == fence => {}
            Ok(_) => {
                if let Err(e) = client.store().revoke_lease(lease).await {
                    tracing::debug!(lease, error = %e, "could not revoke the lease");
                }
                return lose("the leader key was deleted or replaced");
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the leader key"),
        }
    }
}

/// Revokes `lease` once the store answers: retried with backoff until it succeeds or the
/// store says the lease is gone (it expired meanwhile).
async fn revoke_when_reachable(client: Client, lease: LeaseId) {
    let mut retry = RETRY_BASE;
    loop {
        match client.store().revoke_lease(lease).await {
            Ok(()) => {
                tracing::info!(lease, "revoked the lease of the lost leadership");
                return;
            }
            Err(store::Error::LeaseNotFound(_)) => return,
            Err(e) => {
                tracing::debug!(lease, error = %e, retry_in = ?retry, "cannot revoke the lost lease yet");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(2));
            }
        }
    }
}
