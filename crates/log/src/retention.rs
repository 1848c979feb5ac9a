//! Retention: how much history a log keeps, and the background sweep that removes the rest.
//!
//! Three limits, each off when zero: events per thread, events in the whole log,
//! and age. A log over a store keeps the first as it appends (a thread past its
//! limit by a sixteenth is trimmed back in the same commit,
//! [`RetentionPolicy::thread_trim`]), so no sweep looks for such threads. The
//! other two are the sweep's: it asks the store for the threads with the
//! oldest events (kept in that order), so a pass costs what it removes, not
//! what exists. Removals are planned by pure functions ([`plan`],
//! [`take_oldest`]) and written through the log's committer like any other
//! decision, in small groups, so publishes never wait behind one large
//! delete. A subscriber whose `after_seq` falls before what is left gets
//! `reset` (PROTOCOL §4).

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

    /// Where a thread holding `oldest..=head` is cut when it has gone past the
    /// per-thread limit by more than a sixteenth of it: the `seq` to keep from,
    /// leaving exactly the limit. The slack makes a thread at its limit cost
    /// one trim per sixteenth of the limit appended, not one per append.
    pub fn thread_trim(&self, oldest: u64, head: u64) -> Option<u64> {
        let cap = self.max_events_per_thread;
        let kept = (head + 1).saturating_sub(oldest);
        (cap > 0 && kept > cap + cap / 16).then(|| head + 1 - cap)
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
        let total: u64 = extents.iter().zip(&keep).map(|(e, k)| (e.head_seq + 1).saturating_sub(*k)).sum();
        let mut oldest_first: Vec<usize> = (0..extents.len()).collect();
        oldest_first.sort_by_key(|&i| extents[i].oldest_ts_ms.unwrap_or(i64::MAX));
        give_way(extents, &mut keep, oldest_first, total.saturating_sub(policy.max_events));
    }
    trims(extents, keep)
}

/// Trims that remove `excess` events from `extents` (oldest first, as
/// [`crate::Store::oldest_threads`] answers them), whole threads first.
pub fn take_oldest(extents: &[ThreadExtent], excess: u64) -> Vec<Trim> {
    let mut keep: Vec<u64> = extents.iter().map(|e| e.oldest_seq).collect();
    give_way(extents, &mut keep, 0..extents.len(), excess);
    trims(extents, keep)
}

/// Moves `keep` forward along `order` until `excess` events are planned away.
fn give_way(extents: &[ThreadExtent], keep: &mut [u64], order: impl IntoIterator<Item = usize>, mut excess: u64) {
    for i in order {
        if excess == 0 {
            break;
        }
        let removable = (extents[i].head_seq + 1).saturating_sub(keep[i]).min(excess);
        keep[i] += removable;
        excess -= removable;
    }
}

fn trims(extents: &[ThreadExtent], keep: Vec<u64>) -> Vec<Trim> {
    extents
        .iter()
        .zip(keep)
        .filter(|(e, k)| *k > e.oldest_seq)
        .map(|(e, keep_from)| Trim { thread: e.thread.clone(), keep_from })
        .collect()
}

/// Sweeps every `interval` until `shutdown` is cancelled: removes events past
/// the log's retention policy and forgets event ids past the de-duplication window.
pub async fn run(log: Arc<dyn Log>, interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        match log.enforce_retention(Timestamp::now()).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "retention removed old events"),
            Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
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
    fn a_thread_past_its_limit_by_a_sixteenth_is_cut_back_to_the_limit() {
        let policy = RetentionPolicy { max_events_per_thread: 32, ..Default::default() };
        assert_eq!(policy.thread_trim(1, 34), None, "within the slack of two");
        assert_eq!(policy.thread_trim(1, 35), Some(4), "35 kept: back to 32");
        let exact = RetentionPolicy { max_events_per_thread: 3, ..Default::default() };
        assert_eq!(exact.thread_trim(5, 8), Some(6), "under 16 there is no slack");
        assert_eq!(RetentionPolicy::default().thread_trim(1, 1_000), None);
    }

    #[test]
    fn taking_the_oldest_empties_whole_threads_before_touching_younger_ones() {
        let extents =
            [extent("thread_old", 1, 4, 100), extent("thread_mid", 3, 8, 200), extent("thread_new", 1, 9, 300)];
        let trims = take_oldest(&extents, 6);
        let id = |n: &str| ThreadId::parse(n).unwrap();
        assert_eq!(
            trims,
            vec![Trim { thread: id("thread_old"), keep_from: 5 }, Trim { thread: id("thread_mid"), keep_from: 5 }]
        );
        assert!(take_oldest(&extents, 0).is_empty());
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
