//! Which etcd member a request goes to, and when it is tried again on another.
//!
//! The policy, as etcd's own clients do it:
//! - One client per endpoint, connected on first use. With a user, connecting
//!   authenticates, which is a request: a dead member must not fail the others.
//! - A request goes to the preferred endpoint: the last one that answered.
//! - An attempt that cannot reach its member (refused, reset, TLS failure) marks the member
//!   down for [`DOWN_FOR`] and the request goes to the next endpoint at once. A member that
//!   is reachable but cannot serve (etcd's "no leader", "leader changed", a dropped
//!   proposal during an election) is marked down too, and the request tried again on the
//!   next one after a short pause. Members marked down are tried last.
//! - An attempt that has not answered within its deadline (see [`Pace`]: 0.5 s for a write,
//!   1 s for a read, growing each time) is raced by another attempt on the next endpoint: a
//!   member whose leader has just died holds a forwarded write until etcd's own request
//!   timeout (about 7 s), while a new leader is elected within about 2 s. The slow attempt
//!   is not abandoned: a big list page on a loaded machine is slow but sound, and still
//!   wins if it answers first. At most [`MAX_IN_FLIGHT`] attempts of one request run at
//!   once, and one with a single member.
//! - The whole request has one budget (the caller's, 10 s for a request). When every
//!   endpoint has been found unreachable within one request, it fails at once, naming each
//!   endpoint and why, so that a dead store is reported fast.
//!
//! Only requests that may run twice come here: reads, lease requests, compaction, watch
//! openings, and transactions (compare-and-swap guarded, or blind puts and deletes that
//! leave the same state when repeated). An attempt that timed out or lost its connection
//! may still have landed. Repeated, a CAS transaction then reports a conflict for a write
//! that did land; its callers re-read after a conflict anyway and find their write. To make
//! that rarer, a lost compare while another attempt of the same request still runs is held
//! back until that attempt answers ([`Endpoints::call`]'s `done`).

use super::CONNECT_TIMEOUT;
use etcd_client as ec;
use futures::stream::{FuturesUnordered, StreamExt};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// How long a member that failed is tried only after the others.
const DOWN_FOR: Duration = Duration::from_secs(2);
/// Attempts of one request running at once, with more than one member. (With one, a
/// second attempt could only wait on the same member: there is one at a time.)
const MAX_IN_FLIGHT: usize = 5;
/// First and longest pause before trying again after a member answered that it cannot
/// serve (no leader, an election in progress).
const PAUSE_MIN: Duration = Duration::from_millis(50);
const PAUSE_MAX: Duration = Duration::from_millis(200);

/// When a request's attempts start: the first at once, the next one `first` later if the
/// first has not answered, each later one `growth` times the gap before.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pace {
    first: Duration,
    growth: f64,
}

impl Pace {
    /// Writes (transactions, lease requests): a write that a follower forwarded to a leader
    /// that has just died waits out etcd's request timeout (about 7 s), while the followers
    /// elect a new leader within 1 to 2 s. Attempts at 0, 0.5, 1.25, 2.4, 4.1 and 6.6 s put
    /// one soon after every election.
    pub(super) const WRITE: Pace = Pace {
        first: Duration::from_millis(500),
        growth: 1.5,
    };
    /// Reads: etcd fails a read waiting on a dead leader with "leader changed" once a new
    /// one is elected, so racing matters less than not loading a busy etcd with copies of
    /// big pages. Attempts at 0, 1, 3 and 7 s.
    pub(super) const READ: Pace = Pace {
        first: Duration::from_secs(1),
        growth: 2.0,
    };
}

/// The members of one etcd cluster, as the store's requests see them.
pub(super) struct Endpoints {
    members: Vec<Member>,
    /// The member that answered last: where the next request goes first.
    preferred: AtomicUsize,
    /// Connection options for every member (TLS, user, keep-alive).
    options: ec::ConnectOptions,
}

struct Member {
    /// `host:port`, for messages.
    name: String,
    /// `http(s)://host:port`: etcd-client picks TLS from the scheme.
    url: String,
    /// Connected on first use; dropped to log in again when etcd forgot our auth token.
    client: RwLock<Option<ec::Client>>,
    /// One connection (with a user: one login) at a time.
    connecting: tokio::sync::Mutex<()>,
    /// Tried after the others until then.
    down_until: Mutex<Option<Instant>>,
}

/// Why a request failed after its attempts.
pub(super) enum Failure {
    /// etcd answered with an error that another attempt would not change.
    Answer(ec::Error),
    /// No endpoint could be reached: each endpoint with the error of its attempt.
    Unreachable(Vec<(String, ec::Error)>),
    /// The budget ran out; the last error seen, with its endpoint.
    TimedOut(Duration, Option<(String, ec::Error)>),
}

/// What a failed attempt says about its member.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// A request-level answer: the same on every member.
    Final,
    /// The member could not be reached.
    Unreachable,
    /// The member answered but cannot serve now (no leader, election in progress).
    Busy,
    /// etcd forgot our auth token (it restarted): log in again and retry.
    Relogin,
}

impl Endpoints {
    /// `endpoints` are `host:port`; `urls` the same with their scheme.
    pub(super) fn new(endpoints: &[&str], urls: &[String], options: ec::ConnectOptions) -> Self {
        let members = endpoints
            .iter()
            .zip(urls)
            .map(|(name, url)| Member {
                name: name.to_string(),
                url: url.clone(),
                client: RwLock::new(None),
                connecting: tokio::sync::Mutex::new(()),
                down_until: Mutex::new(None),
            })
            .collect();
        Endpoints {
            members,
            preferred: AtomicUsize::new(0),
            options,
        }
    }

    /// Runs `op` on a member's client, failing over and racing slow attempts as the module
    /// says, within `budget`. `done` tells a final answer from one worth waiting past: a
    /// lost compare-and-swap while another attempt of the same request is still running
    /// (that one may be the write that made it lose).
    pub(super) async fn call<T, F, Fut>(
        &self,
        budget: Duration,
        pace: Pace,
        done: impl Fn(&T) -> bool,
        op: F,
    ) -> Result<T, Failure>
    where
        F: Fn(ec::Client) -> Fut,
        Fut: Future<Output = Result<T, ec::Error>>,
    {
        let mut run = Run::new(self, budget, pace);
        let mut pending = FuturesUnordered::new();
        loop {
            if run.due() && pending.len() < run.max_in_flight() {
                match run.pick() {
                    Some(i) => {
                        pending.push(self.attempt(i, &op));
                        run.started();
                    }
                    None => run.next_start = None,
                }
            }
            if pending.is_empty() {
                if let Some(held) = run.held.take() {
                    return Ok(held);
                }
                if run.next_start.is_none() {
                    return Err(run.unreachable());
                }
            }
            let wake = run.next_start.map_or(run.deadline, |t| t.min(run.deadline));
            tokio::select! {
                Some((i, result)) = pending.next(), if !pending.is_empty() => match result {
                    Ok(v) if done(&v) || pending.is_empty() => {
                        self.preferred.store(i, Ordering::Relaxed);
                        return Ok(v);
                    }
                    Ok(v) => {
                        // Wait for the attempts still running; start no more.
                        run.held = Some(v);
                        run.next_start = None;
                    }
                    Err(e) => {
                        if let Some(e) = run.failed(i, e) {
                            return Err(Failure::Answer(e));
                        }
                    }
                },
                _ = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= run.deadline {
                        return match run.held.take() {
                            Some(held) => Ok(held),
                            None => Err(run.timed_out(budget)),
                        };
                    }
                }
            }
        }
    }

    /// One attempt on member `i`: its client (connecting if needed), then `op`.
    async fn attempt<T, F, Fut>(&self, i: usize, op: &F) -> (usize, Result<T, ec::Error>)
    where
        F: Fn(ec::Client) -> Fut,
        Fut: Future<Output = Result<T, ec::Error>>,
    {
        match self.members[i].client(&self.options).await {
            Ok(client) => (i, op(client).await),
            Err(e) => (i, Err(e)),
        }
    }

    fn mark_down(&self, i: usize) {
        *lock(&self.members[i].down_until) = Some(Instant::now() + DOWN_FOR);
    }

    fn is_down(&self, i: usize, now: Instant) -> bool {
        lock(&self.members[i].down_until).is_some_and(|until| until > now)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock()
        .expect("the member state lock is never poisoned: nothing panics while holding it")
}

impl Member {
    /// The member's client, connecting (and with a user, logging in) on first use.
    async fn client(&self, options: &ec::ConnectOptions) -> Result<ec::Client, ec::Error> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let connect = ec::Client::connect([self.url.as_str()], Some(options.clone()));
        let client = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(c) => c?,
            Err(_) => {
                return Err(ec::Error::IoError(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer to connecting within {CONNECT_TIMEOUT:?}"),
                )))
            }
        };
        *self
            .client
            .write()
            .expect("the client lock is never poisoned: nothing panics while holding it") =
            Some(client.clone());
        Ok(client)
    }

    fn cached(&self) -> Option<ec::Client> {
        self.client
            .read()
            .expect("the client lock is never poisoned: nothing panics while holding it")
            .clone()
    }

    /// Forgets the client: the next attempt connects (and logs in) again.
    fn reset(&self) {
        *self
            .client
            .write()
            .expect("the client lock is never poisoned: nothing panics while holding it") = None;
    }
}

/// The state of one request's attempts.
struct Run<'a, T> {
    endpoints: &'a Endpoints,
    deadline: Instant,
    /// When to start another attempt; `None`: start no more.
    next_start: Option<Instant>,
    /// How long the next attempt has before another races it.
    gap: Duration,
    /// The factor from one gap to the next.
    growth: f64,
    /// The pause after a member that cannot serve.
    pause: Duration,
    /// Where to look for the next member to try.
    cursor: usize,
    /// The members found unreachable in this request, with why.
    unreachable: Vec<Option<ec::Error>>,
    /// The last error of a member that could not serve.
    last: Option<(usize, ec::Error)>,
    /// An answer that is not `done`, returned if no other attempt does better.
    held: Option<T>,
    /// Logged in again once already: a second refusal of the new token is final.
    relogged: bool,
}

impl<'a, T> Run<'a, T> {
    fn new(endpoints: &'a Endpoints, budget: Duration, pace: Pace) -> Self {
        let n = endpoints.members.len();
        let now = Instant::now();
        Run {
            endpoints,
            deadline: now + budget,
            next_start: Some(now),
            gap: pace.first,
            growth: pace.growth,
            pause: PAUSE_MIN,
            cursor: endpoints.preferred.load(Ordering::Relaxed) % n.max(1),
            unreachable: (0..n).map(|_| None).collect(),
            last: None,
            held: None,
            relogged: false,
        }
    }

    fn due(&self) -> bool {
        self.next_start.is_some_and(|t| t <= Instant::now())
    }

    /// [`MAX_IN_FLIGHT`], or one with a single member.
    fn max_in_flight(&self) -> usize {
        if self.unreachable.len() > 1 {
            MAX_IN_FLIGHT
        } else {
            1
        }
    }

    /// The next member to try: from the cursor on, the first that is neither unreachable
    /// in this request nor marked down; else the first that is not unreachable.
    fn pick(&mut self) -> Option<usize> {
        let n = self.unreachable.len();
        let now = Instant::now();
        let order = (0..n)
            .map(|k| (self.cursor + k) % n)
            .filter(|i| self.unreachable[*i].is_none());
        let chosen = order
            .clone()
            .find(|i| !self.endpoints.is_down(*i, now))
            .or_else(|| order.clone().next())?;
        self.cursor = (chosen + 1) % n;
        Some(chosen)
    }

    /// An attempt started: the next one races it after the current gap.
    fn started(&mut self) {
        self.next_start = Some(Instant::now() + self.gap);
        self.gap = self.gap.mul_f64(self.growth);
    }

    /// Records a failed attempt on member `i` and decides what comes next. Returns the
    /// error when it is final.
    fn failed(&mut self, i: usize, e: ec::Error) -> Option<ec::Error> {
        let now = Instant::now();
        match verdict(&e) {
            Verdict::Final => return Some(e),
            Verdict::Relogin if self.relogged => return Some(e),
            Verdict::Relogin => {
                self.relogged = true;
                self.endpoints.members[i].reset();
                self.cursor = i;
                self.next_start = Some(now);
            }
            Verdict::Unreachable => {
                tracing::debug!(endpoint = %self.endpoints.members[i].name, error = %e, "etcd member unreachable; trying the next");
                self.endpoints.mark_down(i);
                self.unreachable[i] = Some(e);
                if self.held.is_none() {
                    self.next_start = Some(now);
                }
            }
            Verdict::Busy => {
                tracing::debug!(endpoint = %self.endpoints.members[i].name, error = %e, "etcd member cannot serve; trying the next");
                self.endpoints.mark_down(i);
                self.last = Some((i, e));
                if self.held.is_none() {
                    let after = now + self.pause;
                    self.next_start = Some(self.next_start.map_or(after, |t| t.min(after)));
                    self.pause = (self.pause * 2).min(PAUSE_MAX);
                }
            }
        }
        None
    }

    /// Every member unreachable: each with why.
    fn unreachable(&mut self) -> Failure {
        let names = self.endpoints.members.iter().map(|m| m.name.clone());
        let mut list: Vec<(String, ec::Error)> = names
            .zip(self.unreachable.iter_mut().map(Option::take))
            .filter_map(|(name, e)| Some((name, e?)))
            .collect();
        if list.is_empty() {
            if let Some((i, e)) = self.last.take() {
                list.push((self.endpoints.members[i].name.clone(), e));
            }
        }
        Failure::Unreachable(list)
    }

    fn timed_out(&mut self, budget: Duration) -> Failure {
        let last = self.last.take().or_else(|| {
            let i = self.unreachable.iter().position(Option::is_some)?;
            Some((i, self.unreachable[i].take()?))
        });
        Failure::TimedOut(
            budget,
            last.map(|(i, e)| (self.endpoints.members[i].name.clone(), e)),
        )
    }
}

/// Sorts a failed attempt's error (see [`Verdict`]).
fn verdict(e: &ec::Error) -> Verdict {
    // gRPC status codes (tonic is not re-exported; its `Code` converts to i32).
    const CANCELLED: i32 = 1;
    const UNKNOWN: i32 = 2;
    const DEADLINE_EXCEEDED: i32 = 4;
    const UNAVAILABLE: i32 = 14;
    match e {
        ec::Error::TransportError(_) | ec::Error::IoError(_) => Verdict::Unreachable,
        // The keep-alive stream ended before its first answer.
        ec::Error::WatchError(_) => Verdict::Unreachable,
        ec::Error::LeaseKeepAliveError(m) if m.contains("not found") => Verdict::Final,
        ec::Error::LeaseKeepAliveError(_) => Verdict::Busy,
        ec::Error::GRpcStatus(status) => {
            let msg = status.message();
            if msg.contains("invalid auth token") {
                return Verdict::Relogin;
            }
            // etcd's own errors say "etcdserver: ..."; tonic's are about the connection.
            let from_etcd = msg.starts_with("etcdserver:");
            let lower = msg.to_lowercase();
            match i32::from(status.code()) {
                UNAVAILABLE if from_etcd => Verdict::Busy,
                UNAVAILABLE | CANCELLED => Verdict::Unreachable,
                DEADLINE_EXCEEDED => Verdict::Busy,
                UNKNOWN if lower.contains("proposal dropped") || lower.contains("leader") => {
                    Verdict::Busy
                }
                UNKNOWN
                    if [
                        "transport",
                        "connect",
                        "connection",
                        "broken pipe",
                        "h2 protocol",
                    ]
                    .iter()
                    .any(|w| lower.contains(w)) =>
                {
                    Verdict::Unreachable
                }
                _ => Verdict::Final,
            }
        }
        _ => Verdict::Final,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: i32, msg: &str) -> ec::Error {
        ec::Error::GRpcStatus(tonic::Status::new(tonic::Code::from(code), msg))
    }

    #[test]
    fn verdict_should_retry_elsewhere_only_what_another_member_may_answer() {
        let cases = [
            (status(14, "tcp connect error"), Verdict::Unreachable),
            (status(14, "etcdserver: no leader"), Verdict::Busy),
            (status(14, "etcdserver: leader changed"), Verdict::Busy),
            (status(2, "raft proposal dropped"), Verdict::Busy),
            (status(2, "transport error"), Verdict::Unreachable),
            (
                status(3, "etcdserver: invalid auth token"),
                Verdict::Relogin,
            ),
            (
                status(11, "etcdserver: mvcc: required revision has been compacted"),
                Verdict::Final,
            ),
            (status(7, "etcdserver: permission denied"), Verdict::Final),
            (
                status(5, "etcdserver: requested lease not found"),
                Verdict::Final,
            ),
            (
                status(3, "etcdserver: too many operations in txn request"),
                Verdict::Final,
            ),
            (
                ec::Error::LeaseKeepAliveError("lease not found".into()),
                Verdict::Final,
            ),
        ];
        for (error, want) in cases {
            assert_eq!(verdict(&error), want, "{error}");
        }
    }
}
