//! Runs reconciles for the keys of a [`WorkQueue`] on a fixed number of workers.
//!
//! The contract is kube-runtime's: `reconcile(key) -> Result<Action, E>` and
//! `error_policy(&key, &error) -> Action`. A success forgets the key's backoff and
//! honours [`Action::requeue`]; a failure does what the error policy says, by default
//! [`Action::backoff`] (the queue's per-key exponential backoff).
//!
//! Wiring one kind, as `controller::run` does (a sketch):
//!
//! ```ignore
//! let queue = WorkQueue::new();
//! let rollouts = Informer::<Rollout>::spawn(client.clone(), Scope::All,
//!     enqueue_changed(&queue), shutdown.clone());
//! rollouts.wait_synced().await?;          // never decide from a half-filled cache
//! let leadership = LeaderElector::new(client.clone(), identity, ttl).campaign(&shutdown).await?;
//! let writes = leadership.client();        // every write fenced on the leadership
//! let stop = leadership.lost();            // also cancelled when leadership is lost
//! Controller::new(queue, workers)
//!     .run(move |key: ObjectKey| reconcile(key, rollouts.clone(), writes.clone()),
//!          backoff_on_error, stop)
//!     .await;
//! ```

use super::informer::{object_key, ChangeKind};
use super::queue::WorkQueue;
use crate::api::Object;
use crate::store::keys::ObjectKey;
use futures::FutureExt;
use std::fmt::{Debug, Display};
use std::future::Future;
use std::hash::Hash;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Consecutive failures of one key logged at debug level before they are warnings.
const QUIET_FAILURES: u32 = 2;

/// What to do with a key after its reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Action {
    next: Next,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// Nothing until something changes (an informer event adds the key again).
    AwaitChange,
    /// Run again after this long (a deadline, a timed pause, a periodic check).
    After(Duration),
    /// Run again after the key's exponential backoff (for errors).
    Backoff,
}

impl Action {
    /// Reconcile the key again after `after`, even if nothing changes.
    pub fn requeue(after: Duration) -> Action {
        Action {
            next: Next::After(after),
        }
    }

    /// Reconcile the key again only when an informer sees a change.
    pub fn await_change() -> Action {
        Action {
            next: Next::AwaitChange,
        }
    }

    /// Reconcile the key again after its backoff, which doubles with each consecutive
    /// failure. Meant for error policies.
    pub fn backoff() -> Action {
        Action {
            next: Next::Backoff,
        }
    }

    /// The requested delay, if this action is a [`requeue`](Self::requeue).
    pub fn requeue_after(&self) -> Option<Duration> {
        match self.next {
            Next::After(d) => Some(d),
            _ => None,
        }
    }
}

/// The default error policy: retry after the key's exponential backoff.
pub fn backoff_on_error<K, E>(_key: &K, _error: &E) -> Action {
    Action::backoff()
}

/// A change handler for [`Informer::spawn`](super::informer::Informer::spawn) that queues
/// the key of every changed object (deleted ones too: their reconcile cleans up).
pub fn enqueue_changed<K: Object>(
    queue: &WorkQueue<ObjectKey>,
) -> impl Fn(&K, ChangeKind) + Send + Sync + 'static {
    let queue = queue.clone();
    move |obj, _| queue.add(object_key(obj))
}

/// Takes keys from a queue and reconciles them, at most `workers` at once, never one
/// key twice at once.
pub struct Controller<K> {
    queue: WorkQueue<K>,
    workers: usize,
    /// Names a key's kind for `deployctl_reconcile_*`; `None`: not exported.
    kind: Option<fn(&K) -> &'static str>,
}

impl<K> Controller<K>
where
    K: Clone + Eq + Hash + Debug + Send + Sync + 'static,
{
    /// `workers` is at least 1.
    pub fn new(queue: WorkQueue<K>, workers: usize) -> Self {
        Controller {
            queue,
            workers: workers.max(1),
            kind: None,
        }
    }

    /// Exports each reconcile's duration and failure (`deployctl_reconcile_*`) under the
    /// kind `kind` names for its key.
    pub fn export_metrics(mut self, kind: fn(&K) -> &'static str) -> Self {
        self.kind = Some(kind);
        self
    }

    /// Runs until `shutdown` is cancelled (or the queue is shut down), then stops taking
    /// keys and returns once every reconcile in flight has finished.
    ///
    /// A panicking reconcile is logged and treated like an error with
    /// [`Action::backoff`], so that its key is not stuck in flight forever. A panic
    /// anywhere else in a worker (the error policy, the queue) is logged, its key is
    /// released with a backoff, and a worker that dies anyway is replaced: the
    /// controller never runs with fewer workers than it was given.
    pub async fn run<R, Fut, E, P>(self, reconcile: R, error_policy: P, shutdown: CancellationToken)
    where
        R: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
        E: Display + Send + 'static,
        P: Fn(&K, &E) -> Action + Send + Sync + 'static,
    {
        let worker = Worker {
            queue: self.queue.clone(),
            reconcile: Arc::new(reconcile),
            error_policy: Arc::new(error_policy),
            kind: self.kind,
        };
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..self.workers {
            workers.spawn(worker.clone().run().in_current_span());
        }
        let queue = self.queue.clone();
        let stop = async move {
            shutdown.cancelled().await;
            queue.shutdown();
        };
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop, if !self.queue.is_shutting_down() => {}
                joined = workers.join_next() => match joined {
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "reconcile worker died");
                        if !self.queue.is_shutting_down() {
                            workers.spawn(worker.clone().run().in_current_span());
                        }
                    }
                    None => return,
                },
            }
        }
    }
}

/// One worker's loop: take a key, reconcile it, hand it back to the queue.
struct Worker<K, R, P> {
    queue: WorkQueue<K>,
    reconcile: Arc<R>,
    error_policy: Arc<P>,
    kind: Option<fn(&K) -> &'static str>,
}

impl<K, R, P> Clone for Worker<K, R, P> {
    fn clone(&self) -> Self {
        Worker {
            queue: self.queue.clone(),
            reconcile: self.reconcile.clone(),
            error_policy: self.error_policy.clone(),
            kind: self.kind,
        }
    }
}

impl<K, R, Fut, E, P> Worker<K, R, P>
where
    K: Clone + Eq + Hash + Debug + Send + Sync + 'static,
    R: Fn(K) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    E: Display + Send + 'static,
    P: Fn(&K, &E) -> Action + Send + Sync + 'static,
{
    async fn run(self) {
        while let Some(key) = self.queue.next().await {
            // Unwind safety: a reconcile keeps no state across runs that a panic could
            // leave half-changed; the key is retried from fresh state.
            let started = std::time::Instant::now();
            let result = AssertUnwindSafe((self.reconcile)(key.clone()))
                .catch_unwind()
                .await;
            if let Some(kind) = self.kind {
                let failed = !matches!(result, Ok(Ok(_)));
                crate::observe::metrics().reconciled(kind(&key), started.elapsed(), failed);
            }
            // The error policy is the caller's code too: a panic in it (or in the queue)
            // must not leave the key in flight forever.
            let finished =
                std::panic::catch_unwind(AssertUnwindSafe(|| self.finish(key.clone(), result)));
            if finished.is_err() {
                tracing::error!(key = ?key, "handling a reconcile's result panicked; retrying with backoff");
                self.queue.done(&key);
                self.queue.add_rate_limited(key);
            }
        }
    }

    /// Turns a reconcile's result into the key's next run, and releases the key.
    fn finish(&self, key: K, result: std::thread::Result<Result<Action, E>>) {
        let action = match result {
            Ok(Ok(action)) => {
                self.queue.forget(&key);
                action
            }
            Ok(Err(e)) => {
                let action = (self.error_policy)(&key, &e);
                // One failure (typically a compare-and-swap conflict with a cache that
                // has not caught up) is routine; a key that keeps failing is worth a
                // warning.
                if self.queue.failures(&key) >= QUIET_FAILURES {
                    tracing::warn!(key = ?key, error = %e, ?action, "reconcile failed");
                } else {
                    tracing::debug!(key = ?key, error = %e, ?action, "reconcile failed; retrying");
                }
                action
            }
            Err(_) => {
                tracing::error!(key = ?key, "reconcile panicked; retrying with backoff");
                Action::backoff()
            }
        };
        self.queue.done(&key);
        match action.next {
            Next::AwaitChange => {}
            Next::After(d) => self.queue.add_after(key, d),
            Next::Backoff => {
                self.queue.add_rate_limited(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use tokio::time::Instant;

    /// Records when each key ran, and how many reconciles ran at once.
    #[derive(Default)]
    struct Log {
        runs: Mutex<HashMap<&'static str, Vec<Duration>>>,
        running: AtomicUsize,
        max_running: AtomicUsize,
    }

    impl Log {
        fn runs(&self, key: &str) -> Vec<u128> {
            let runs = self.runs.lock().expect("test lock not poisoned");
            runs.get(key)
                .map(|v| v.iter().map(Duration::as_millis).collect())
                .unwrap_or_default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn controller_should_honour_requeue_and_backoff_then_forget_on_success() {
        let queue = WorkQueue::with_backoff(Duration::from_millis(100), Duration::from_secs(10));
        let log = Arc::new(Log::default());
        let start = Instant::now();
        let shutdown = CancellationToken::new();
        let run = {
            let log = log.clone();
            let queue = queue.clone();
            tokio::spawn(Controller::new(queue, 2).run(
                move |key: &'static str| {
                    let log = log.clone();
                    async move {
                        let n = {
                            let mut runs = log.runs.lock().expect("test lock not poisoned");
                            let v = runs.entry(key).or_default();
                            v.push(start.elapsed());
                            v.len()
                        };
                        match (key, n) {
                            // Fails three times, then succeeds and asks for nothing more.
                            ("flaky", 1..=3) => Err("boom"),
                            ("flaky", _) => Ok(Action::await_change()),
                            // Runs every 5 s, three times.
                            ("periodic", 1..=2) => Ok(Action::requeue(Duration::from_secs(5))),
                            _ => Ok(Action::await_change()),
                        }
                    }
                },
                backoff_on_error,
                shutdown.clone(),
            ))
        };
        queue.add("flaky");
        queue.add("periodic");
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(log.runs("flaky"), [0, 100, 300, 700]);
        assert_eq!(queue.failures(&"flaky"), 0, "success forgets the backoff");
        assert_eq!(log.runs("periodic"), [0, 5_000, 10_000]);
        shutdown.cancel();
        run.await.expect("controller does not panic");
    }

    #[tokio::test(start_paused = true)]
    async fn controller_should_never_reconcile_one_key_twice_at_once() {
        let queue = WorkQueue::new();
        let log = Arc::new(Log::default());
        let shutdown = CancellationToken::new();
        let run = {
            let log = log.clone();
            tokio::spawn(Controller::new(queue.clone(), 4).run(
                move |key: &'static str| {
                    let log = log.clone();
                    async move {
                        let now = log.running.fetch_add(1, Ordering::SeqCst) + 1;
                        log.max_running.fetch_max(now, Ordering::SeqCst);
                        log.runs
                            .lock()
                            .expect("test lock not poisoned")
                            .entry(key)
                            .or_default()
                            .push(Duration::ZERO);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        log.running.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, String>(Action::await_change())
                    }
                },
                backoff_on_error,
                shutdown.clone(),
            ))
        };
        queue.add("a");
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Added again while running, three times: runs once more, after the first.
        for _ in 0..3 {
            queue.add("a");
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(log.max_running.load(Ordering::SeqCst), 1);
        assert_eq!(log.runs("a").len(), 2);
        shutdown.cancel();
        run.await.expect("controller does not panic");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_should_let_reconciles_in_flight_finish() {
        let queue = WorkQueue::new();
        let finished = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let run = {
            let (started, finished) = (started.clone(), finished.clone());
            tokio::spawn(Controller::new(queue.clone(), 2).run(
                move |_key: u32| {
                    let (started, finished) = (started.clone(), finished.clone());
                    async move {
                        started.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        finished.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, String>(Action::await_change())
                    }
                },
                backoff_on_error,
                shutdown.clone(),
            ))
        };
        for k in 0..10 {
            queue.add(k);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(started.load(Ordering::SeqCst), 2);
        let t = Instant::now();
        shutdown.cancel();
        run.await.expect("controller does not panic");
        assert_eq!(
            t.elapsed(),
            Duration::from_secs(2),
            "waited for the two in flight"
        );
        assert_eq!(finished.load(Ordering::SeqCst), 2);
        assert_eq!(started.load(Ordering::SeqCst), 2, "took no new key");
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_reconcile_should_be_retried_with_backoff() {
        let queue = WorkQueue::with_backoff(Duration::from_secs(1), Duration::from_secs(1));
        let calls = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let run = {
            let calls = calls.clone();
            tokio::spawn(Controller::new(queue.clone(), 1).run(
                move |_key: u32| {
                    let calls = calls.clone();
                    async move {
                        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                            panic!("first reconcile panics (on purpose, in a test)");
                        }
                        Ok::<_, String>(Action::await_change())
                    }
                },
                backoff_on_error,
                shutdown.clone(),
            ))
        };
        queue.add(1);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(queue.in_flight(), 0);
        shutdown.cancel();
        run.await.expect("controller does not panic");
    }

    /// A panic outside the reconcile (here in the error policy) and a requeue far past
    /// what the clock can hold once killed a worker each: with every worker gone, the
    /// controller stopped reconciling anything.
    #[tokio::test(start_paused = true)]
    async fn a_panicking_error_policy_or_a_huge_requeue_should_never_cost_a_worker() {
        let queue = WorkQueue::with_backoff(Duration::from_secs(1), Duration::from_secs(1));
        let runs = Arc::new(Mutex::new(Vec::new()));
        let shutdown = CancellationToken::new();
        let run = {
            let runs = runs.clone();
            // One worker: if it died, nothing after the first key would ever run.
            tokio::spawn(Controller::new(queue.clone(), 1).run(
                move |key: &'static str| {
                    runs.lock().expect("test lock not poisoned").push(key);
                    async move {
                        match key {
                            "policy-panics" => Err("fails"),
                            "forever" => Ok(Action::requeue(Duration::MAX)),
                            _ => Ok(Action::await_change()),
                        }
                    }
                },
                |key: &&'static str, _e: &&str| -> Action {
                    panic!("error policy panics for {key} (on purpose, in a test)")
                },
                shutdown.clone(),
            ))
        };
        queue.add("policy-panics");
        queue.add("forever");
        queue.add("after");
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let seen = runs.lock().expect("test lock not poisoned").clone();
        // The panicking key ran, was released with a backoff and ran again; the others ran.
        assert_eq!(
            seen,
            ["policy-panics", "forever", "after", "policy-panics"],
            "{seen:?}"
        );
        assert_eq!(queue.in_flight(), 0);
        assert_eq!(
            queue.len(),
            2,
            "both 'forever' and 'policy-panics' are queued again"
        );
        shutdown.cancel();
        run.await.expect("controller does not panic");
    }

    #[tokio::test(start_paused = true)]
    async fn enqueue_changed_should_queue_the_objects_key_once() {
        use crate::api::{Machine, MachineSpec};
        let queue = WorkQueue::new();
        let on_change = enqueue_changed::<Machine>(&queue);
        let m = Machine::new("m1", MachineSpec::default());
        on_change(&m, ChangeKind::Applied);
        on_change(&m, ChangeKind::Deleted);
        assert_eq!(queue.len(), 1);
        let key = queue.next().await.expect("queued");
        assert_eq!((key.namespace, key.name.as_str()), (None, "m1"));
    }
}
