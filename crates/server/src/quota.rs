//! Quotas: how much one user or one publish key may make the server do per minute.
//!
//! Rate limits (limits.rs) stop floods of requests; quotas stop a steady
//! stream of expensive ones: threads created, runs started, events and bytes
//! appended. Each quota is a token bucket per key that holds a minute's worth
//! and refills continuously, so a client may spend its minute at once and then
//! goes at the quota's pace. Past it: `429 rate_limited` with `Retry-After`, the
//! seconds until the request would fit, and nothing done.
//!
//! A quota counts work done, not attempts: [`Quota::charge`] answers a
//! [`Charge`] that gives its amount back when dropped, unless the handler
//! [`Charge::keep`]s it once the work succeeded. A request refused for another
//! reason (`403`, `409`, `503`) leaves its quotas as they were.
//!
//! Buckets that have refilled are forgotten by [`Quotas::sweep`], so the maps
//! hold only keys active within the last minute or so.

use std::hash::Hash;
use std::time::{Duration, Instant};

use agentwire_protocol::{ErrorCode, UserId};
use dashmap::DashMap;

use crate::config::ServerConfig;
use crate::error::ApiError;

/// A bucket that refills `per_minute` tokens a minute, up to `per_minute`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// One quota: a bucket per key.
pub struct Quota<K: Hash + Eq> {
    /// What the quota counts, for the error message ("threads created").
    what: &'static str,
    per_minute: u64,
    buckets: DashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> Quota<K> {
    /// A quota of `per_minute` (0: none).
    pub fn new(what: &'static str, per_minute: u64) -> Self {
        Self { what, per_minute, buckets: DashMap::new() }
    }

    fn per_sec(&self) -> f64 {
        self.per_minute as f64 / 60.0
    }

    /// Takes `n` for `key` until the returned [`Charge`] is dropped or kept; `429`
    /// with how long to wait, taking nothing, past the quota.
    pub fn charge(&self, key: &K, n: u64) -> Result<Charge<'_, K>, ApiError> {
        let taken = self.take(key, n, Instant::now())?;
        Ok(Charge { quota: self, key: key.clone(), taken, kept: false })
    }

    /// Takes `n` from `key`'s bucket and answers how much was taken, or answers `429`
    /// with how long to wait and takes nothing. A request larger than the whole
    /// quota is refused for a minute, never forever: it may go once the bucket is full.
    fn take(&self, key: &K, n: u64, now: Instant) -> Result<f64, ApiError> {
        if self.per_minute == 0 || n == 0 {
            return Ok(0.0);
        }
        let capacity = self.per_minute as f64;
        let mut bucket = self.buckets.entry(key.clone()).or_insert(Bucket { tokens: capacity, last: now });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_sec()).min(capacity);
        bucket.last = now;
        let wanted = (n as f64).min(capacity);
        if bucket.tokens >= wanted {
            bucket.tokens -= wanted;
            return Ok(wanted);
        }
        let wait = ((wanted - bucket.tokens) / self.per_sec()).ceil().max(1.0) as u64;
        Err(ApiError::new(
            ErrorCode::RateLimited,
            format!("over the quota of {} {} per minute", self.per_minute, self.what),
        )
        .retry_after(wait))
    }

    /// Gives `amount` back to `key`'s bucket (a charge whose work did not happen).
    fn refund(&self, key: &K, amount: f64) {
        if let Some(mut bucket) = self.buckets.get_mut(key) {
            bucket.tokens = (bucket.tokens + amount).min(self.per_minute as f64);
        }
    }

    /// Forgets buckets that have refilled (they are as good as new).
    fn sweep(&self, now: Instant) {
        let full_after = Duration::from_secs(60);
        self.buckets.retain(|_, b| now.saturating_duration_since(b.last) < full_after);
    }

    /// Keys with a bucket.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

/// An amount taken from a quota, given back on drop unless kept.
#[must_use = "a charge is given back when dropped: keep it once the work is done"]
pub struct Charge<'a, K: Hash + Eq + Clone> {
    quota: &'a Quota<K>,
    key: K,
    taken: f64,
    kept: bool,
}

impl<K: Hash + Eq + Clone> Charge<'_, K> {
    /// The work was done: the amount stays taken.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl<K: Hash + Eq + Clone> Drop for Charge<'_, K> {
    fn drop(&mut self) {
        if !self.kept && self.taken > 0.0 {
            self.quota.refund(&self.key, self.taken);
        }
    }
}

/// Every quota of the server (SECURITY.md lists them with their defaults).
pub struct Quotas {
    /// Threads a user creates (`POST /v1/threads`, and a first message to a new thread).
    pub user_threads: Quota<UserId>,
    /// Runs a user starts (messages to the in-process agent, AG-UI runs).
    pub user_runs: Quota<UserId>,
    /// Runs a publish key registers (`POST /v1/runs`).
    pub key_runs: Quota<u64>,
    /// Events a publish key appends.
    pub key_events: Quota<u64>,
    /// Bytes of publish bodies a publish key sends.
    pub key_bytes: Quota<u64>,
}

impl Quotas {
    /// The quotas the settings name.
    pub fn new(config: &ServerConfig) -> Self {
        Self {
            user_threads: Quota::new("threads created", config.quota_user_threads),
            user_runs: Quota::new("runs started", config.quota_user_runs),
            key_runs: Quota::new("runs registered", config.quota_key_runs),
            key_events: Quota::new("events", config.quota_key_events),
            key_bytes: Quota::new("bytes published", config.quota_key_bytes),
        }
    }

    /// Forgets every bucket that has refilled; called once a minute.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.user_threads.sweep(now);
        self.user_runs.sweep(now);
        self.key_runs.sweep(now);
        self.key_events.sweep(now);
        self.key_bytes.sweep(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_at_once_then_the_pace_with_a_retry_after_that_fits() {
        let quota = Quota::new("things", 60);
        let t0 = Instant::now();
        assert!((0..60).all(|_| quota.take(&1u64, 1, t0).is_ok()));
        let refused = quota.take(&1, 1, t0).unwrap_err();
        assert_eq!((refused.code, refused.retry_after), (ErrorCode::RateLimited, Some(1)));
        assert!(quota.take(&2, 1, t0).is_ok(), "another key has its own bucket");
        assert!(quota.take(&1, 1, t0 + Duration::from_millis(1_000)).is_ok());
        // A refusal takes nothing: after 5 s, five fit.
        let t5 = t0 + Duration::from_secs(6);
        assert!((0..5).all(|_| quota.take(&1, 1, t5).is_ok()));
        assert!(quota.take(&1, 1, t5).is_err());
    }

    #[test]
    fn amounts_larger_than_the_quota_wait_for_a_full_bucket() {
        let quota = Quota::new("bytes", 600);
        let t0 = Instant::now();
        assert!(quota.take(&1u64, 10_000, t0).is_ok(), "a full bucket takes any one request");
        let refused = quota.take(&1, 10_000, t0).unwrap_err();
        assert_eq!(refused.retry_after, Some(60));
        assert!(quota.take(&1, 10_000, t0 + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn a_charge_not_kept_is_given_back() {
        let quota = Quota::new("things", 2);
        quota.charge(&1u64, 2).unwrap().keep();
        assert!(quota.charge(&1, 1).is_err());
        let quota = Quota::new("things", 2);
        drop(quota.charge(&1u64, 2).unwrap());
        assert!(quota.charge(&1, 2).is_ok(), "the dropped charge came back");
    }

    #[test]
    fn refilled_buckets_are_forgotten() {
        let quota = Quota::new("things", 10);
        let t0 = Instant::now();
        for key in 0..100u64 {
            quota.take(&key, 1, t0).unwrap();
        }
        quota.sweep(t0 + Duration::from_secs(30));
        assert_eq!(quota.len(), 100);
        quota.sweep(t0 + Duration::from_secs(61));
        assert_eq!(quota.len(), 0);
        assert!(Quota::<u64>::new("off", 0).take(&1, u64::MAX, t0).is_ok(), "0: no quota");
    }
}
