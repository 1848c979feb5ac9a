//! The in-memory store: events kept in process memory, lost on restart.
//!
//! For tests and throwaway use. The working state (threads, runs, event ids) is
//! already in memory in [`StoredLog`], so this store only keeps the events
//! themselves; "durable" here means "in this process".

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use agentwire_protocol::{RunId, ThreadId};
use parking_lot::RwLock;

use crate::store::{Batch, RunRecord, Snapshot, Store, StoreError, ThreadExtent};
use crate::{FeedSink, LogConfig, PageBudget, StoredEvent, StoredLog};

/// Events per thread; `events[t][i]` has `seq == oldest[t] + i`.
#[derive(Default)]
pub struct MemoryStore {
    inner: RwLock<Kept>,
}

#[derive(Default)]
struct Kept {
    threads: HashMap<ThreadId, VecDeque<Arc<StoredEvent>>>,
    /// Threads by the time of their oldest event, for retention.
    by_age: BTreeSet<(i64, ThreadId)>,
    /// Events in all threads.
    count: u64,
}

impl Kept {
    /// `thread`'s oldest event time and its number of events.
    fn shape(&self, thread: &ThreadId) -> (Option<i64>, usize) {
        self.threads.get(thread).map_or((None, 0), |events| (events.front().map(|e| e.ts().millis()), events.len()))
    }

    /// Changes `thread`'s events with `change`, keeping the count and the age order.
    fn change(&mut self, thread: &ThreadId, change: impl FnOnce(&mut HashMap<ThreadId, VecDeque<Arc<StoredEvent>>>)) {
        let (was_ts, was_len) = self.shape(thread);
        change(&mut self.threads);
        let (now_ts, now_len) = self.shape(thread);
        self.count = (self.count + now_len as u64).saturating_sub(was_len as u64);
        if was_ts != now_ts {
            if let Some(ts) = was_ts {
                self.by_age.remove(&(ts, thread.clone()));
            }
            if let Some(ts) = now_ts {
                self.by_age.insert((ts, thread.clone()));
            }
        }
    }
}

/// The log over memory.
pub type MemoryLog = StoredLog<MemoryStore>;

impl StoredLog<MemoryStore> {
    /// An empty in-memory log that hands committed events to `sink`.
    pub fn new(config: LogConfig, sink: Arc<dyn FeedSink>) -> Result<Self, StoreError> {
        Self::open(MemoryStore::default(), config, sink)
    }
}

impl Store for MemoryStore {
    fn write(&self, batches: &[&Batch]) -> Result<(), StoreError> {
        let mut kept = self.inner.write();
        for batch in batches {
            for event in &batch.events {
                kept.change(event.thread_id(), |threads| {
                    threads.entry(event.thread_id().clone()).or_default().push_back(event.clone());
                });
            }
            for (thread, below) in &batch.trims {
                kept.change(thread, |threads| {
                    if let Some(events) = threads.get_mut(thread) {
                        while events.front().is_some_and(|e| e.seq() < *below) {
                            events.pop_front();
                        }
                    }
                });
            }
            for thread in &batch.deletes {
                kept.change(thread, |threads| {
                    threads.remove(thread);
                });
            }
        }
        Ok(())
    }

    fn read(
        &self,
        thread: &ThreadId,
        after_seq: u64,
        mut budget: PageBudget,
    ) -> Result<Vec<Arc<StoredEvent>>, StoreError> {
        let kept = self.inner.read();
        let Some(events) = kept.threads.get(thread) else { return Ok(Vec::new()) };
        let first = events.front().map_or(1, |e| e.seq());
        let skip = usize::try_from(after_seq.saturating_add(1).saturating_sub(first)).unwrap_or(usize::MAX);
        Ok(events.iter().skip(skip).take_while(|e| budget.admit(e.json.len())).cloned().collect())
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot::default())
    }

    fn run(&self, _run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        // Every run of a memory log stays in the log's working state.
        Ok(None)
    }

    fn event_seq(&self, _run: &RunId, _event_id: &str) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    fn oldest_threads(&self, at_or_before_ms: i64, limit: usize) -> Result<Vec<ThreadExtent>, StoreError> {
        let kept = self.inner.read();
        Ok(kept
            .by_age
            .iter()
            .take_while(|(ts, _)| *ts <= at_or_before_ms)
            .take(limit)
            .filter_map(|(ts, thread)| {
                let events = kept.threads.get(thread)?;
                Some(ThreadExtent {
                    thread: thread.clone(),
                    oldest_seq: events.front()?.seq(),
                    head_seq: events.back()?.seq(),
                    oldest_ts_ms: Some(*ts),
                })
            })
            .collect())
    }

    fn event_count(&self) -> Result<u64, StoreError> {
        Ok(self.inner.read().count)
    }

    fn last_seq_at_or_before(&self, thread: &ThreadId, ts_ms: i64) -> Result<Option<u64>, StoreError> {
        let kept = self.inner.read();
        Ok(kept
            .threads
            .get(thread)
            .and_then(|events| events.iter().take_while(|e| e.ts().millis() <= ts_ms).last().map(|e| e.seq())))
    }
}

// The memory log's rules are tested with every other log's, by the same
// functions: `crates/conformance`.
