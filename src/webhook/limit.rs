//! A token bucket per source address: each may make `per_minute` requests in a burst,
//! and earns them back evenly over a minute.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Sources remembered at most; past it the ones whose bucket is full again are
/// forgotten (they are indistinguishable from new ones), so memory stays bounded.
const MAX_SOURCES: usize = 10_000;

pub struct RateLimits {
    per_minute: u32,
    /// Tokens left and when they were counted, per source.
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimits {
    pub fn new(per_minute: u32) -> RateLimits {
        RateLimits {
            per_minute: per_minute.max(1),
            buckets: HashMap::new(),
        }
    }

    fn refill(&self, tokens: f64, since: Instant, now: Instant) -> f64 {
        let earned = now.saturating_duration_since(since).as_secs_f64() * self.per_minute as f64
            / Duration::from_secs(60).as_secs_f64();
        (tokens + earned).min(self.per_minute as f64)
    }

    /// Whether `source` has no token left at `now` (takes none).
    pub fn exhausted(&self, source: IpAddr, now: Instant) -> bool {
        self.buckets
            .get(&source)
            .is_some_and(|(t, at)| self.refill(*t, *at, now) < 1.0)
    }

    /// Takes one token for `source` at `now`; false when it has none left.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        if !self.buckets.contains_key(&source) && self.buckets.len() >= MAX_SOURCES {
            let full = self.per_minute as f64;
            let buckets = std::mem::take(&mut self.buckets);
            self.buckets = buckets
                .into_iter()
                .filter(|(_, (t, at))| self.refill(*t, *at, now) < full)
                .collect();
            if self.buckets.len() >= MAX_SOURCES {
                return false;
            }
        }
        let (tokens, at) = self
            .buckets
            .get(&source)
            .copied()
            .unwrap_or((self.per_minute as f64, now));
        let tokens = self.refill(tokens, at, now);
        if tokens < 1.0 {
            self.buckets.insert(source, (tokens, now));
            return false;
        }
        self.buckets.insert(source, (tokens - 1.0, now));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_should_get_its_burst_then_one_request_per_share_of_a_minute() {
        let mut l = RateLimits::new(6);
        let a: IpAddr = "10.0.0.1".parse().expect("an address");
        let b: IpAddr = "10.0.0.2".parse().expect("an address");
        let t0 = Instant::now();
        for i in 0..6 {
            assert!(l.allow(a, t0), "request {i} of the burst");
        }
        assert!(!l.allow(a, t0), "the burst is spent");
        assert!(l.allow(b, t0), "another source has its own bucket");
        assert!(
            !l.allow(a, t0 + Duration::from_secs(9)),
            "a token takes 10s"
        );
        assert!(l.exhausted(a, t0 + Duration::from_secs(9)));
        assert!(!l.exhausted(b, t0), "one taken of six");
        assert!(l.allow(a, t0 + Duration::from_secs(11)));
        assert!(!l.allow(a, t0 + Duration::from_secs(12)));
    }

    #[test]
    fn the_table_should_stay_bounded_and_forget_only_idle_sources() {
        let mut l = RateLimits::new(1);
        let t0 = Instant::now();
        for i in 0..MAX_SOURCES as u32 {
            assert!(l.allow(IpAddr::from(i.to_be_bytes()), t0));
        }
        // Every bucket is empty: a new source is refused rather than growing the table.
        assert!(!l.allow("192.0.2.1".parse().expect("an address"), t0));
        // A minute later they are full again, forgotten, and the new one fits.
        assert!(l.allow(
            "192.0.2.1".parse().expect("an address"),
            t0 + Duration::from_secs(61)
        ));
        assert_eq!(l.buckets.len(), 1);
    }
}
