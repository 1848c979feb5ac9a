//! A [`Store`] wrapper that times every group commit, to see where append latency
//! goes, and can make the log keep ended runs in memory (the behaviour before
//! eviction) for a same-run comparison.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentwire_log::store::{Batch, LoadedThread, RunRecord, Snapshot, Store, StoreError, ThreadExtent};
use agentwire_log::{PageBudget, StoredEvent};
use agentwire_protocol::{RunId, ThreadId};
use parking_lot::Mutex;

use crate::stats::Percentiles;

/// Commit durations and group sizes recorded by [`Timed`].
#[derive(Default)]
pub struct CommitLog {
    samples: Mutex<Vec<(Duration, usize)>>,
}

impl CommitLog {
    /// Forgets what was recorded.
    pub fn reset(&self) {
        self.samples.lock().clear();
    }

    /// Commits recorded, mean events per commit, and commit-duration percentiles.
    pub fn summary(&self) -> (usize, f64, Percentiles) {
        let samples = self.samples.lock();
        let events: usize = samples.iter().map(|(_, n)| n).sum();
        let mut durations: Vec<Duration> = samples.iter().map(|(d, _)| *d).collect();
        let mean = if samples.is_empty() { 0.0 } else { events as f64 / samples.len() as f64 };
        (samples.len(), mean, Percentiles::of(&mut durations))
    }
}

/// Times `inner.write`.
pub struct Timed<S> {
    pub inner: S,
    pub commits: Arc<CommitLog>,
    /// Claim not to keep runs (nor threads), so the log holds them all in memory.
    pub forget_runs: bool,
}

impl<S> Timed<S> {
    /// Times `inner`, otherwise unchanged.
    pub fn new(inner: S) -> Self {
        Self { inner, commits: Arc::default(), forget_runs: false }
    }
}

impl<S: Store> Store for Timed<S> {
    fn write(&self, batches: &[&Batch]) -> Result<(), StoreError> {
        let began = Instant::now();
        let result = self.inner.write(batches);
        let events = batches.iter().map(|b| b.events.len()).sum();
        self.commits.samples.lock().push((began.elapsed(), events));
        result
    }
    fn read(&self, thread: &ThreadId, after_seq: u64, budget: PageBudget) -> Result<Vec<Arc<StoredEvent>>, StoreError> {
        self.inner.read(thread, after_seq, budget)
    }
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.inner.load()
    }
    fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        self.inner.run(run_id)
    }
    fn keeps_runs(&self) -> bool {
        !self.forget_runs && self.inner.keeps_runs()
    }
    fn keeps_threads(&self) -> bool {
        !self.forget_runs && self.inner.keeps_threads()
    }
    fn thread(&self, thread: &ThreadId) -> Result<Option<LoadedThread>, StoreError> {
        self.inner.thread(thread)
    }
    fn event_seq(&self, run: &RunId, event_id: &str) -> Result<Option<u64>, StoreError> {
        self.inner.event_seq(run, event_id)
    }
    fn runs_ended_before(&self, before_ms: i64, limit: usize) -> Result<Vec<(i64, RunId)>, StoreError> {
        self.inner.runs_ended_before(before_ms, limit)
    }
    fn thread_extents(&self) -> Result<Vec<ThreadExtent>, StoreError> {
        self.inner.thread_extents()
    }
    fn last_seq_at_or_before(&self, thread: &ThreadId, ts_ms: i64) -> Result<Option<u64>, StoreError> {
        self.inner.last_seq_at_or_before(thread, ts_ms)
    }
}
