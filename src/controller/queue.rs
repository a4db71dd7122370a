//! Delays and deduplicates keys: a work queue that never runs one key twice at once.
//!
//! The queue holds keys, never objects: a reconcile reads the current state from the
//! cache when its key comes up (level-triggered). Rules, as in client-go's and
//! kube-runtime's queues:
//!
//! - a key queued twice runs once, and the earliest requested time wins;
//! - a key taken by [`WorkQueue::next`] is *in flight* until [`WorkQueue::done`]; it is
//!   never handed to a second worker meanwhile. Added while in flight, it is queued
//!   again right after `done` (never dropped);
//! - [`WorkQueue::add_rate_limited`] delays a key by a per-key exponential backoff,
//!   whose failure count is kept until [`WorkQueue::forget`].
//!
//! Every operation is O(log n) in the number of keys (one `Mutex`, a `HashMap` of
//! deadlines with a lazily cleaned `BinaryHeap`, a `VecDeque` of ready keys).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// First delay of [`WorkQueue::add_rate_limited`].
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest delay of [`WorkQueue::add_rate_limited`].
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Longest delay [`WorkQueue::add_after`] keeps: a longer one runs the key after this
/// long instead. Reconciles are level-triggered, so an early run only decides again; an
/// unbounded one (a pause of `300000years` read from the store) would overflow the clock.
pub const MAX_DELAY: Duration = Duration::from_secs(24 * 60 * 60);

/// A queue of keys to reconcile. Cheap to clone: clones share one queue.
pub struct WorkQueue<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        WorkQueue {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<K> {
    state: Mutex<State<K>>,
    /// Wakes workers waiting in `next` when a key becomes ready, an earlier deadline is
    /// set, a key is done, or the queue shuts down.
    changed: Notify,
    backoff_base: Duration,
    backoff_max: Duration,
    /// Set by [`WorkQueue::export_metrics`]: this is the controller's queue, whose depth,
    /// adds and retries the process exports (tests' queues stay out of them).
    metered: AtomicBool,
}

struct State<K> {
    /// Keys ready to run, in the order they became ready. Each at most once.
    ready: VecDeque<K>,
    /// Keys that must run (again) as soon as possible: those in `ready`, and those in
    /// flight that were added again and go back to `ready` on `done`.
    dirty: HashSet<K>,
    /// Keys handed out by `next` and not yet `done`.
    in_flight: HashSet<K>,
    /// The one deadline of each delayed key (the earliest requested).
    deadlines: HashMap<K, Instant>,
    /// Deadlines in time order. An entry whose deadline no longer matches `deadlines`
    /// is stale (the key was moved earlier or became ready) and is skipped.
    heap: BinaryHeap<Delayed<K>>,
    /// Tie-breaker keeping equal deadlines in insertion order.
    seq: u64,
    /// Consecutive failures per key, for the backoff; cleared by `forget`.
    failures: HashMap<K, u32>,
    shutting_down: bool,
}

struct Delayed<K> {
    at: Instant,
    seq: u64,
    key: K,
}

impl<K> PartialEq for Delayed<K> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<K> Eq for Delayed<K> {}
impl<K> PartialOrd for Delayed<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<K> Ord for Delayed<K> {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest deadline first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl<K: Clone + Eq + Hash + Send> Default for WorkQueue<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Clone + Eq + Hash + Send> WorkQueue<K> {
    /// A queue whose backoff goes from 100 ms, doubling, to 60 s.
    pub fn new() -> Self {
        Self::with_backoff(DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX)
    }

    /// A queue whose backoff starts at `base` and doubles up to `max`.
    pub fn with_backoff(base: Duration, max: Duration) -> Self {
        WorkQueue {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    ready: VecDeque::new(),
                    dirty: HashSet::new(),
                    in_flight: HashSet::new(),
                    deadlines: HashMap::new(),
                    heap: BinaryHeap::new(),
                    seq: 0,
                    failures: HashMap::new(),
                    shutting_down: false,
                }),
                changed: Notify::new(),
                backoff_base: base,
                backoff_max: max.max(base),
                metered: AtomicBool::new(false),
            }),
        }
    }

    /// Makes this queue the one whose depth, adds and retries the process exports
    /// (`deployctl_workqueue_*`).
    pub fn export_metrics(&self) {
        self.inner.metered.store(true, AtomicOrdering::Relaxed);
        let st = self.lock();
        self.observe(&st, false, false);
    }

    /// Records the depth after a change, and an add (`added`) or a retry (`retry`).
    fn observe(&self, st: &State<K>, added: bool, retry: bool) {
        if self.inner.metered.load(AtomicOrdering::Relaxed) {
            crate::observe::metrics().queue_changed(
                st.ready.len() + st.deadlines.len(),
                added && !st.shutting_down,
                retry && !st.shutting_down,
            );
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<K>> {
        // No code panics while holding the lock, and the state stays consistent between
        // statements anyway; a poisoned lock is still usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `key` to run as soon as a worker is free.
    pub fn add(&self, key: K) {
        let mut st = self.lock();
        let ready = st.make_ready(key);
        self.observe(&st, true, false);
        if ready {
            drop(st);
            self.inner.changed.notify_waiters();
        }
    }

    /// Queues `key` to run after `delay` (at most [`MAX_DELAY`]). If it is already queued
    /// to run sooner, this does nothing; if queued to run later, it now runs after `delay`.
    pub fn add_after(&self, key: K, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let now = Instant::now();
        let at = now
            .checked_add(delay.min(MAX_DELAY))
            .unwrap_or(now + MAX_DELAY);
        let mut st = self.lock();
        self.observe(&st, true, false);
        if st.shutting_down || st.dirty.contains(&key) {
            return;
        }
        if st.deadlines.get(&key).is_some_and(|&cur| cur <= at) {
            return;
        }
        st.deadlines.insert(key.clone(), at);
        let seq = st.next_seq();
        st.heap.push(Delayed { at, seq, key });
        st.compact_heap();
        self.observe(&st, false, false);
        drop(st);
        // A worker may be sleeping until a later deadline.
        self.inner.changed.notify_waiters();
    }

    /// Queues `key` after its backoff (100 ms, 200 ms, 400 ms, ... up to the maximum)
    /// and counts one more failure for it. Returns the delay used.
    pub fn add_rate_limited(&self, key: K) -> Duration {
        let delay = {
            let mut st = self.lock();
            let failures = st.failures.entry(key.clone()).or_insert(0);
            let exp = (*failures).min(30);
            *failures = failures.saturating_add(1);
            let delay = self
                .inner
                .backoff_base
                .saturating_mul(1u32 << exp)
                .min(self.inner.backoff_max);
            self.observe(&st, false, true);
            delay
        };
        self.add_after(key, delay);
        delay
    }

    /// Resets the backoff of `key` (after a successful reconcile).
    pub fn forget(&self, key: &K) {
        self.lock().failures.remove(key);
    }

    /// Consecutive failures counted for `key` since the last `forget`.
    pub fn failures(&self, key: &K) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// Waits for the next key to run and marks it in flight; the caller must call
    /// [`done`](Self::done) with it when finished.
    ///
    /// After [`shutdown`](Self::shutdown) it hands out no more keys: it returns `None`
    /// once no key is in flight any more, so a worker that gets `None` knows that every
    /// reconcile has finished.
    pub async fn next(&self) -> Option<K> {
        loop {
            // Register for wake-ups before looking, so none is missed in between.
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wake_at = {
                let mut st = self.lock();
                if st.shutting_down {
                    if st.in_flight.is_empty() {
                        return None;
                    }
                    None
                } else {
                    st.promote_due(Instant::now());
                    if let Some(key) = st.ready.pop_front() {
                        st.dirty.remove(&key);
                        st.in_flight.insert(key.clone());
                        self.observe(&st, false, false);
                        return Some(key);
                    }
                    st.heap.peek().map(|d| d.at)
                }
            };
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        _ = changed => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// Marks `key` as finished. If it was added while in flight, it is queued again.
    pub fn done(&self, key: &K) {
        let mut st = self.lock();
        if !st.in_flight.remove(key) {
            return;
        }
        if st.dirty.contains(key) && !st.shutting_down {
            st.ready.push_back(key.clone());
            self.observe(&st, false, false);
        }
        drop(st);
        // Wakes a worker for the requeued key, or `next` callers waiting for the
        // last in-flight key during shutdown.
        self.inner.changed.notify_waiters();
    }

    /// Stops handing out keys. Keys in flight may still call `done`; `next` returns
    /// `None` once none is left. Adds after this are ignored.
    pub fn shutdown(&self) {
        let mut st = self.lock();
        st.shutting_down = true;
        st.ready.clear();
        st.dirty.clear();
        st.deadlines.clear();
        st.heap.clear();
        self.observe(&st, false, false);
        drop(st);
        self.inner.changed.notify_waiters();
    }

    pub fn is_shutting_down(&self) -> bool {
        self.lock().shutting_down
    }

    /// Keys waiting: ready now or delayed (not counting those in flight).
    pub fn len(&self) -> usize {
        let st = self.lock();
        st.ready.len() + st.deadlines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys handed out by `next` and not yet `done`.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight.len()
    }
}

impl<K: Clone + Eq + Hash> State<K> {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Makes `key` due now. Returns true when a worker may have something new to take.
    fn make_ready(&mut self, key: K) -> bool {
        if self.shutting_down || self.dirty.contains(&key) {
            return false;
        }
        // Any pending deadline is superseded (its heap entry becomes stale).
        self.deadlines.remove(&key);
        self.dirty.insert(key.clone());
        if self.in_flight.contains(&key) {
            // Requeued by `done`.
            return false;
        }
        self.ready.push_back(key);
        true
    }

    /// Moves every key whose deadline has passed to `ready`.
    fn promote_due(&mut self, now: Instant) {
        while self.heap.peek().is_some_and(|d| d.at <= now) {
            let d = self.heap.pop().expect("peeked just above");
            if self.deadlines.get(&d.key) == Some(&d.at) {
                self.make_ready(d.key);
            }
        }
    }

    /// Drops stale heap entries when they outnumber live ones, so that a key moved
    /// earlier many times cannot grow the heap without bound. Amortized O(log n).
    fn compact_heap(&mut self) {
        if self.heap.len() <= 64 || self.heap.len() <= 2 * self.deadlines.len() {
            return;
        }
        let deadlines = &self.deadlines;
        self.heap
            .retain(|d| deadlines.get(&d.key).is_some_and(|&at| at == d.at));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

    /// `next` if a key is ready right now (after letting timers fire), else `None`.
    async fn try_next(q: &WorkQueue<&'static str>) -> Option<&'static str> {
        tokio::select! {
            biased;
            k = q.next() => k,
            _ = tokio::task::yield_now() => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn queue_should_run_a_key_queued_twice_once() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(q.next().await, Some("b"));
        assert_eq!(try_next(&q).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn queue_should_never_run_one_key_twice_at_once() {
        let q = WorkQueue::new();
        q.add("a");
        assert_eq!(q.next().await, Some("a"));
        q.add("a");
        // "a" is in flight: a second worker must not get it.
        assert_eq!(try_next(&q).await, None);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(try_next(&q).await, None);
        assert_eq!(q.in_flight(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn queue_should_requeue_a_key_added_while_in_flight_after_done() {
        let q = WorkQueue::new();
        q.add("a");
        assert_eq!(q.next().await, Some("a"));
        q.add("a");
        q.add("a");
        q.done(&"a");
        assert_eq!(try_next(&q).await, Some("a"));
        q.done(&"a");
        // Added twice while in flight, it runs once more, not twice.
        assert_eq!(try_next(&q).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn queue_should_wake_a_waiting_worker_when_the_key_in_flight_is_requeued() {
        let q = WorkQueue::new();
        q.add("a");
        assert_eq!(q.next().await, Some("a"));
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.next().await });
        tokio::task::yield_now().await;
        q.add("a");
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "a in flight must not be handed out");
        q.done(&"a");
        assert_eq!(waiter.await.expect("task does not panic"), Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn add_after_should_keep_the_earliest_deadline() {
        let q = WorkQueue::new();
        q.add_after("a", Duration::from_secs(10));
        q.add_after("a", Duration::from_secs(3));
        q.add_after("a", Duration::from_secs(20));
        assert_eq!(q.len(), 1);
        tokio::time::advance(Duration::from_millis(2_999)).await;
        assert_eq!(try_next(&q).await, None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(try_next(&q).await, Some("a"));
        q.done(&"a");
        // The later requests were merged into the earliest one.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(try_next(&q).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn add_after_should_cap_a_huge_delay_instead_of_overflowing_the_clock() {
        let q = WorkQueue::new();
        q.add_after("a", Duration::MAX);
        q.add_after("b", Duration::from_secs(u64::MAX / 2));
        assert_eq!(q.len(), 2);
        tokio::time::advance(MAX_DELAY - Duration::from_millis(1)).await;
        assert_eq!(try_next(&q).await, None);
        tokio::time::advance(Duration::from_millis(1)).await;
        let mut ran = vec![try_next(&q).await, try_next(&q).await];
        ran.sort();
        assert_eq!(ran, vec![Some("a"), Some("b")]);
    }

    #[tokio::test(start_paused = true)]
    async fn add_should_make_a_delayed_key_run_now() {
        let q = WorkQueue::new();
        q.add_after("a", Duration::from_secs(60));
        q.add("a");
        assert_eq!(try_next(&q).await, Some("a"));
        q.done(&"a");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(try_next(&q).await, None, "the delayed run was superseded");
    }

    #[tokio::test(start_paused = true)]
    async fn next_should_wake_when_a_deadline_passes() {
        let q = WorkQueue::new();
        q.add_after("a", Duration::from_secs(5));
        let start = Instant::now();
        // Time is paused: the runtime auto-advances to the deadline while all wait.
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_should_double_up_to_the_max_and_forget_should_reset_it() {
        let q = WorkQueue::with_backoff(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = (0..6)
            .map(|_| {
                let d = q.add_rate_limited("a");
                // Take it out so that the next add is not merged with this one.
                q.lock().deadlines.clear();
                d.as_millis()
            })
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(q.failures(&"a"), 6);
        q.forget(&"a");
        assert_eq!(q.failures(&"a"), 0);
        assert_eq!(q.add_rate_limited("a"), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limited_key_should_run_after_its_backoff() {
        let q = WorkQueue::new();
        q.add_rate_limited("a");
        q.add_rate_limited("b");
        q.add_rate_limited("b");
        // b: 100 ms, then 200 ms (merged: the earliest, 100 ms, wins).
        assert_eq!(q.failures(&"b"), 2);
        tokio::time::advance(Duration::from_millis(99)).await;
        assert_eq!(try_next(&q).await, None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(try_next(&q).await, Some("a"));
        assert_eq!(try_next(&q).await, Some("b"));
        q.done(&"b");
        q.add_rate_limited("b");
        tokio::time::advance(Duration::from_millis(399)).await;
        assert_eq!(try_next(&q).await, None, "third failure waits 400 ms");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(try_next(&q).await, Some("b"));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_should_return_none_only_after_keys_in_flight_are_done() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("b");
        assert_eq!(q.next().await, Some("a"));
        q.shutdown();
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.next().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "a is still in flight");
        q.add("c");
        q.done(&"a");
        // Neither the queued b nor the late c is handed out.
        assert_eq!(waiter.await.expect("task does not panic"), None);
        assert_eq!(q.next().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn queue_should_stay_fast_with_ten_thousand_keys() {
        let q: WorkQueue<u32> = WorkQueue::new();
        for i in 0..10_000 {
            q.add_after(i, Duration::from_millis(u64::from(i % 100) + 1));
            q.add_after(i, Duration::from_millis(u64::from(i % 50) + 1));
            q.add(i + 10_000);
        }
        assert_eq!(q.len(), 20_000);
        assert!(
            q.lock().heap.len() <= 2 * 10_000 + 64,
            "stale entries compacted"
        );
        tokio::time::advance(Duration::from_millis(200)).await;
        let taken = AtomicUsize::new(0);
        let mut seen = HashSet::new();
        while let Some(k) = tokio::select! {
            biased;
            k = q.next() => k,
            _ = tokio::task::yield_now() => None,
        } {
            assert!(seen.insert(k), "key {k} handed out twice");
            q.done(&k);
            taken.fetch_add(1, AtomicOrdering::Relaxed);
        }
        assert_eq!(taken.load(AtomicOrdering::Relaxed), 20_000);
    }
}
