//! Retention: how much history a log keeps, and the background sweep that removes the rest.
//!
//! Three limits, each off when zero: events per thread, events in the whole log,
//! and age. The sweep plans removals from each thread's extent (a pure
//! function, [`plan`]) and hands them to the log, which writes them through its
//! committer like any other decision, in small groups, so publishes never wait
//! behind one large delete. A subscriber whose `after_seq` falls before what is
//! left gets `reset` (PROTOCOL §4).

use std::sync::Arc;
use std::time::Duration;

use agentwire_protocol::{ThreadId, Timestamp};
use tokio_util::sync::CancellationToken;

use crate::Log;
use crate::store::ThreadExtent;

/// The retention limits; a zero limit is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Most events kept per thread.
    pub max_events_per_thread: u64,
    /// Most events kept in the whole log; the threads with the oldest events give way first.
    pub max_events: u64,
    /// Events older than this are removed.
    pub max_age: Duration,
}

impl RetentionPolicy {
    /// Whether any limit is set.
    pub fn is_active(&self) -> bool {
        self.max_events_per_thread > 0 || self.max_events > 0 || !self.max_age.is_zero()
    }
}

/// One thread's removal: every event with `seq < keep_from` goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trim {
    pub thread: ThreadId,
    pub keep_from: u64,
}

/// Plans removals from each thread's extent. `aged_out(thread)` answers the last
/// `seq` at or before the age cut-off (only asked when an age limit is set).
pub fn plan(
    policy: &RetentionPolicy,
    extents: &[ThreadExtent],
    mut aged_out: impl FnMut(&ThreadId) -> Option<u64>,
) -> Vec<Trim> {
    // keep_from per thread, starting from what is already retained.
    let mut keep: Vec<u64> = extents.iter().map(|e| e.oldest_seq).collect();
    for (i, e) in extents.iter().enumerate() {
        if e.head_seq < e.oldest_seq {
            continue;
        }
        if policy.max_events_per_thread > 0 && e.head_seq - e.oldest_seq + 1 > policy.max_events_per_thread {
            keep[i] = keep[i].max(e.head_seq - policy.max_events_per_thread + 1);
        }
        if !policy.max_age.is_zero()
            && let Some(last_old) = aged_out(&e.thread)
        {
            keep[i] = keep[i].max(last_old + 1);
        }
    }
    if policy.max_events > 0 {
        let kept = |i: usize, keep: &[u64]| (extents[i].head_seq + 1).saturating_sub(keep[i]);
        let mut total: u64 = (0..extents.len()).map(|i| kept(i, &keep)).sum();
        let mut oldest_first: Vec<usize> = (0..extents.len()).collect();
        oldest_first.sort_by_key(|&i| extents[i].oldest_ts_ms.unwrap_or(i64::MAX));
        for i in oldest_first {
            if total <= policy.max_events {
                break;
            }
            let removable = kept(i, &keep).min(total - policy.max_events);
            keep[i] += removable;
            total -= removable;
        }
    }
    extents
        .iter()
        .zip(keep)
        .filter(|(e, k)| *k > e.oldest_seq)
        .map(|(e, keep_from)| Trim { thread: e.thread.clone(), keep_from })
        .collect()
}

/// Sweeps every `interval` until `shutdown` is cancelled: removes events past
/// `policy` (when it limits anything) and forgets event ids past the
/// de-duplication window.
pub async fn run(log: Arc<dyn Log>, policy: RetentionPolicy, interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if policy.is_active() {
            match log.enforce_retention(&policy, Timestamp::now()).await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "retention removed old events"),
                Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
            }
        }
        match log.forget_event_ids(Timestamp::now()).await {
            Ok(0) => {}
            Ok(runs) => tracing::debug!(runs, "forgot the event ids of runs past the de-duplication window"),
            Err(e) => tracing::warn!(error = %e, "could not forget old event ids"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(name: &str, oldest: u64, head: u64, ts: i64) -> ThreadExtent {
        ThreadExtent {
            thread: ThreadId::parse(name).unwrap(),
            oldest_seq: oldest,
            head_seq: head,
            oldest_ts_ms: Some(ts),
        }
    }

    #[test]
    fn per_thread_count_keeps_the_newest() {
        let policy = RetentionPolicy { max_events_per_thread: 4, ..Default::default() };
        let trims = plan(&policy, &[extent("thread_a", 1, 10, 0), extent("thread_b", 1, 3, 0)], |_| None);
        assert_eq!(trims, vec![Trim { thread: ThreadId::parse("thread_a").unwrap(), keep_from: 7 }]);
    }

    #[test]
    fn the_global_count_takes_from_the_oldest_threads_first() {
        let policy = RetentionPolicy { max_events: 10, ..Default::default() };
        let extents = [extent("thread_new", 1, 8, 500), extent("thread_old", 1, 8, 100)];
        let trims = plan(&policy, &extents, |_| None);
        assert_eq!(trims, vec![Trim { thread: ThreadId::parse("thread_old").unwrap(), keep_from: 7 }]);
    }

    #[test]
    fn age_removes_up_to_the_cut_off_and_nothing_is_planned_twice() {
        let policy = RetentionPolicy { max_age: Duration::from_secs(60), ..Default::default() };
        let trims = plan(&policy, &[extent("thread_a", 3, 9, 0)], |_| Some(5));
        assert_eq!(trims[0].keep_from, 6);
        assert!(plan(&policy, &[extent("thread_a", 6, 9, 0)], |_| Some(5)).is_empty());
        assert!(plan(&RetentionPolicy::default(), &[extent("thread_a", 1, 9, 0)], |_| Some(9)).is_empty());
    }
}
