//! A [`Store`] wrapper that times every group commit, to see where append latency
//! goes, and can make the log keep ended runs in memory (the behaviour before
//! eviction) for a same-run comparison.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentwire_log::store::{Batch, Hooked, Store, StoreError, WriteHook};
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

/// Times every write and can claim the store forgets runs (see [`WriteHook::forgets`]).
#[derive(Default)]
pub struct Timing {
    pub commits: Arc<CommitLog>,
    /// Claim not to keep runs (nor threads), so the log holds them all in memory.
    pub forget_runs: bool,
}

impl WriteHook for Timing {
    fn write(&self, inner: &dyn Store, batches: &[&Batch]) -> Result<(), StoreError> {
        let began = Instant::now();
        let result = inner.write(batches);
        let events = batches.iter().map(|b| b.events.len()).sum();
        self.commits.samples.lock().push((began.elapsed(), events));
        result
    }

    fn forgets(&self) -> bool {
        self.forget_runs
    }
}

/// A store whose writes are timed.
pub type Timed = Hooked<Timing>;

/// `inner`, timed.
pub fn timed(inner: impl Store, timing: Timing) -> Timed {
    Hooked { inner: Box::new(inner), hook: timing }
}
