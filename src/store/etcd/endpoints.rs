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
//!   wins if it answers first. Two attempts of one request run at most: the first, and the
//!   latest, which replaces (cancels) the one before it. With a single member, one.
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
//! back for [`HOLD_FOR`], in case that attempt answers that it wrote ([`Endpoints::call`]'s
//! `done`); not longer, as the other attempt may be one that waits out etcd's timeout.

use super::CONNECT_TIMEOUT;
use etcd_client as ec;
use futures::future::OptionFuture;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// How long a member that failed is tried only after the others.
const DOWN_FOR: Duration = Duration::from_secs(2);
/// How long a lost compare waits for the request's other attempts still running: both
/// answers leave etcd when the write that made the compare lose has been applied.
const HOLD_FOR: Duration = Duration::from_millis(500);
/// First and longest pause before trying again after a member answered that it cannot
/// serve (no leader, an election in progress).
const PAUSE_MIN: Duration = Duration::from_millis(50);
const PAUSE_MAX: Duration = Duration::from_millis(200);

/// When a request's attempts start: the first at once, the next one `first` later if the
/// first has not answered, each later one `growth` times the gap before, but never more
/// than `most` after the one before.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pace {
    first: Duration,
    growth: f64,
    most: Duration,
}

impl Pace {
    /// Writes (transactions, lease requests): a write that a follower forwarded to a leader
    /// that has just died waits out etcd's request timeout (about 7 s), while the followers
    /// notice within 1 to 2 s (etcd's randomized election timeout) and elect a new leader
    /// at once. Attempts at 0, 0.5, 0.8, 1.1, 1.4 s... and then every 0.3 s put one within
    /// 0.3 s of the election, whenever in that second it ends (a schedule growing by a fifth,
    /// 0, 0.5, 1.1, 1.8, 2.7 s, left up to 0.9 s: stalls of 1.3 to 2.2 s, `RELIABILITY.md`).
    /// Each new attempt cancels the one before it but the first, so at most two run.
    pub(super) const WRITE: Pace = Pace {
        first: Duration::from_millis(500),
        growth: 1.0,
        most: Duration::from_millis(300),
    };
    /// Reads: etcd fails a read waiting on a dead leader with "leader changed" once a new
    /// one is elected, so racing matters less than not loading a busy etcd with copies of
    /// big pages. Attempts at 0, 1, 3 and 7 s.
    pub(super) const READ: Pace = Pace {
        first: Duration::from_secs(1),
        growth: 2.0,
        most: Duration::from_secs(4),
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
        // The first attempt runs to its end: a slow answer is still an answer. Each later
        // one replaces (cancels) the one before it, so that two run at most.
        let mut first = None;
        let mut latest = None;
        loop {
            if run.due() && self.room(first.is_some() || latest.is_some()) {
                match run.pick() {
                    Some(i) => {
                        let attempt = Box::pin(self.attempt(i, &op));
                        if first.is_none() {
                            first = Some(attempt);
                        } else {
                            latest = Some(attempt);
                        }
                        run.started();
                    }
                    None => run.next_start = None,
                }
            }
            let running = first.is_some() || latest.is_some();
            if !running {
                if let Some(held) = run.held.take() {
                    return Ok(held);
                }
                if run.next_start.is_none() {
                    return Err(run.unreachable());
                }
            }
            // Without room, the next attempt waits for the running one to end.
            let next = run.next_start.filter(|_| self.room(running));
            let wake = next.map_or(run.deadline, |t| t.min(run.deadline));
            let (from_first, (i, result)) = tokio::select! {
                Some(r) = OptionFuture::from(first.as_mut()), if first.is_some() => (true, r),
                Some(r) = OptionFuture::from(latest.as_mut()), if latest.is_some() => (false, r),
                _ = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= run.deadline {
                        return match run.held.take() {
                            Some(held) => Ok(held),
                            None => Err(run.timed_out(budget)),
                        };
                    }
                    continue;
                }
            };
            if from_first {
                first = None;
            } else {
                latest = None;
            }
            let others = first.is_some() || latest.is_some();
            match result {
                Ok(v) if done(&v) || !others => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Ok(v) => {
                    // Wait a little for the attempt still running; start no more.
                    run.held = Some(v);
                    run.next_start = None;
                    run.deadline = run.deadline.min(Instant::now() + HOLD_FOR);
                }
                Err(e) => {
                    if let Some(e) = run.failed(i, e) {
                        return run.held.take().ok_or(Failure::Answer(e));
                    }
                }
            }
        }
    }

    /// Whether another attempt may start: always with several members (it replaces the
    /// latest), with one only when none runs (another would wait on the same member).
    fn room(&self, running: bool) -> bool {
        self.members.len() > 1 || !running
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
    /// The longest gap after the first.
    most: Duration,
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
            most: pace.most,
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
        self.gap = self.gap.mul_f64(self.growth).min(self.most);
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
                if self.held.is_none() {
                    self.next_start = Some(now);
                }
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

/// The retry policy against scripted attempts, in paused time. The clients point at
/// loopback ports that nobody uses: without a user, connecting one sends nothing, and the
/// scripted attempts never use it.
#[cfg(test)]
mod policy_tests {
    use super::*;
    use futures::future::BoxFuture;
    use futures::FutureExt;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    fn endpoints(n: usize) -> Endpoints {
        let names: Vec<String> = (1..=n).map(|p| format!("127.0.0.1:{p}")).collect();
        let bare: Vec<&str> = names.iter().map(String::as_str).collect();
        let urls: Vec<String> = names.iter().map(|e| format!("http://{e}")).collect();
        Endpoints::new(&bare, &urls, ec::ConnectOptions::new())
    }

    type Answer = Result<usize, ec::Error>;

    /// An op whose `k`th attempt behaves as `script(k)` says; counts attempts.
    fn scripted(
        script: impl Fn(usize) -> BoxFuture<'static, Answer>,
    ) -> (
        Arc<AtomicUsize>,
        impl Fn(ec::Client) -> BoxFuture<'static, Answer>,
    ) {
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        let op = move |_client: ec::Client| script(seen.fetch_add(1, Ordering::SeqCst));
        (count, op)
    }

    fn hang() -> BoxFuture<'static, Answer> {
        futures::future::pending().boxed()
    }

    fn after(delay: Duration, answer: Answer) -> BoxFuture<'static, Answer> {
        async move {
            tokio::time::sleep(delay).await;
            answer
        }
        .boxed()
    }

    fn refused() -> ec::Error {
        ec::Error::IoError(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ))
    }

    const BUDGET: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_request_should_go_on_at_once_to_the_next_member_when_one_refuses() {
        let e = endpoints(3);
        let (count, op) =
            scripted(|k| after(Duration::ZERO, if k == 0 { Err(refused()) } else { Ok(k) }));
        let started = Instant::now();
        let got = e.call(BUDGET, Pace::WRITE, |_| true, op).await;
        assert_eq!(got.ok(), Some(1));
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(count.load(Ordering::SeqCst), 2);
        // The member that answered is where the next request goes first.
        assert_eq!(e.preferred.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_hangs_should_be_raced_by_another_attempt_after_half_a_second() {
        let e = endpoints(3);
        let (_, op) = scripted(|k| {
            if k == 0 {
                hang()
            } else {
                after(Duration::ZERO, Ok(k))
            }
        });
        let started = Instant::now();
        let got = e.call(BUDGET, Pace::WRITE, |_| true, op).await;
        assert_eq!(got.ok(), Some(1));
        assert_eq!(started.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_read_should_still_succeed_with_the_attempt_that_started_first() {
        let e = endpoints(3);
        // Every attempt takes 4 s, as a big page on a loaded machine might.
        let (count, op) = scripted(|k| after(Duration::from_secs(4), Ok(k)));
        let got = e.call(BUDGET, Pace::READ, |_| true, op).await;
        assert_eq!(got.ok(), Some(0), "the first attempt answers first");
        // Raced at 1 s and 3 s, not more.
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_compare_should_wait_for_the_attempt_still_running_that_wrote() {
        let e = endpoints(3);
        // The first attempt lands and answers late; the race's attempt then finds its
        // compare false.
        let (_, op) = scripted(|k| match k {
            0 => after(Duration::from_millis(700), Ok(1)),
            _ => after(Duration::ZERO, Ok(0)),
        });
        let got = e.call(BUDGET, Pace::WRITE, |v| *v == 1, op).await;
        assert_eq!(got.ok(), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_compare_should_not_wait_past_the_hold_for_an_attempt_that_hangs() {
        let e = endpoints(3);
        let (_, op) = scripted(|k| {
            if k == 0 {
                hang()
            } else {
                after(Duration::ZERO, Ok(0))
            }
        });
        let started = Instant::now();
        let got = e.call(BUDGET, Pace::WRITE, |v| *v == 1, op).await;
        assert_eq!(got.ok(), Some(0), "the lost compare is the answer");
        assert_eq!(started.elapsed(), Duration::from_millis(500) + HOLD_FOR);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_should_fail_at_once_naming_every_member_when_none_can_be_reached() {
        let e = endpoints(3);
        let (count, op) = scripted(|_| after(Duration::ZERO, Err(refused())));
        let started = Instant::now();
        match e.call(BUDGET, Pace::READ, |_| true, op).await {
            Err(Failure::Unreachable(each)) => {
                let names: Vec<&str> = each.iter().map(|(n, _)| n.as_str()).collect();
                assert_eq!(names, ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
            }
            Err(Failure::Answer(e)) => panic!("want every member named, got {e}"),
            Err(Failure::TimedOut(..)) => panic!("want every member named, got a timeout"),
            Ok(v) => panic!("nothing answers, got {v}"),
        }
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_that_cannot_serve_should_be_tried_again_after_a_pause() {
        let e = endpoints(3);
        let no_leader =
            || ec::Error::GRpcStatus(tonic::Status::unavailable("etcdserver: no leader"));
        // An election: every member says so for a while, then one answers.
        let (count, op) =
            scripted(move |k| after(Duration::ZERO, if k < 6 { Err(no_leader()) } else { Ok(k) }));
        let got = e.call(BUDGET, Pace::WRITE, |_| true, op).await;
        assert_eq!(got.ok(), Some(6));
        assert_eq!(count.load(Ordering::SeqCst), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_should_run_two_attempts_at_most_the_first_and_the_latest() {
        /// Counts the attempts alive now; the most ever alive.
        struct Alive(Arc<(AtomicUsize, AtomicUsize)>);
        impl Drop for Alive {
            fn drop(&mut self) {
                self.0 .0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let e = endpoints(3);
        let alive = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let seen = alive.clone();
        let (count, op) = scripted(move |_| {
            let now = seen.0.fetch_add(1, Ordering::SeqCst) + 1;
            seen.1.fetch_max(now, Ordering::SeqCst);
            let guard = Alive(seen.clone());
            async move {
                let _guard = guard;
                futures::future::pending::<Answer>().await
            }
            .boxed()
        });
        let got = e.call(BUDGET, Pace::WRITE, |_| true, op).await;
        assert!(matches!(got, Err(Failure::TimedOut(..))));
        assert!(count.load(Ordering::SeqCst) > 5, "raced again and again");
        assert_eq!(alive.1.load(Ordering::SeqCst), 2, "at most two at once");
        assert_eq!(alive.0.load(Ordering::SeqCst), 0, "none left running");
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_member_should_get_one_attempt_at_a_time_until_the_budget() {
        let e = endpoints(1);
        let (count, op) = scripted(|_| hang());
        let started = Instant::now();
        let got = e.call(BUDGET, Pace::WRITE, |_| true, op).await;
        assert!(matches!(got, Err(Failure::TimedOut(..))));
        assert_eq!(started.elapsed(), BUDGET);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
