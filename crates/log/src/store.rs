//! What a log keeps, and the [`Store`] trait that keeps it.
//!
//! The log's rules (registry, numbering, de-duplication, lifecycle, feed order)
//! live once, in [`crate::StoredLog`]; a store only makes records durable and
//! reads them back. Everything a store is asked to write arrives as a [`Batch`],
//! in the order the log decided things, and a store writes a group of batches
//! in one transaction: that is the group commit.

use std::collections::HashMap;
use std::sync::Arc;

use agentwire_protocol::{RunId, RunLifecycle, ThreadId, UserId};
use serde::{Deserialize, Serialize};

use crate::{PageBudget, StoredEvent};

/// A store that could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the data directory.
    #[error("the data directory {0} is in use by another agentwire process")]
    Locked(String),
    /// The data on disk cannot be read back as agentwire data.
    #[error("the data in {path} is unreadable or corrupt: {detail}")]
    Corrupt { path: String, detail: String },
    /// The disk or the engine failed.
    #[error("storage failed: {0}")]
    Io(String),
}

/// A thread as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadRecord {
    pub owner: UserId,
    /// The oldest `seq` still retained (1 until retention removes events).
    pub oldest_seq: u64,
    /// Created by a publisher (`POST /v1/runs`): only such threads take events
    /// of unregistered runs by the id pattern, so a thread a user made by hand
    /// can never capture events meant for someone else.
    #[serde(default)]
    pub by_publisher: bool,
}

/// A run as stored: enough to go on after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub thread_id: ThreadId,
    pub agent_name: Option<String>,
    pub lifecycle: RunLifecycle,
    pub cancel_requested: bool,
    /// Milliseconds since the epoch of the run's creation or last event: the idle clock.
    pub last_activity_ms: i64,
    /// Executed by the in-process engine of the node that owns this store.
    #[serde(default)]
    pub in_process: bool,
    /// The `seq` of the run's last event (`None`: none yet, or a record written
    /// before this was kept). Once retention has removed every event of an
    /// ended run, the run goes too: its record and its event ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
}

impl RunRecord {
    /// When the watchdog next looks at this running run: while it waits on an
    /// input request, that request's timeout (it is not idle then); otherwise
    /// the end of its idle time.
    pub fn due_ms(&self, idle_ms: i64) -> i64 {
        self.lifecycle.inputs().next_expiry().unwrap_or_else(|| self.last_activity_ms.saturating_add(idle_ms))
    }
}

/// One decision of the log, to be made durable.
#[derive(Debug, Default)]
pub struct Batch {
    /// Threads created or changed.
    pub threads: Vec<(ThreadId, ThreadRecord)>,
    /// Runs created or changed.
    pub runs: Vec<(RunId, RunRecord)>,
    /// Events appended, in `seq` order per thread.
    pub events: Vec<Arc<StoredEvent>>,
    /// `(run, event_id) → seq` for de-duplication.
    pub event_ids: Vec<(RunId, String, u64)>,
    /// Remove the events of a thread with `seq` below this (retention), and
    /// the ended runs whose last event was below it.
    pub trims: Vec<(ThreadId, u64)>,
    /// Ended runs whose `event_id`s are forgotten (the de-duplication window
    /// passed), as [`Store::runs_ended_before`] named them: (end time in ms, run).
    pub forget: Vec<(i64, RunId)>,
    /// Threads deleted, with everything of theirs: events, runs, event ids.
    /// Applied after the rest of the batch.
    pub deletes: Vec<ThreadId>,
}

impl Batch {
    /// Whether there is nothing to write (a barrier that only orders).
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
            && self.runs.is_empty()
            && self.events.is_empty()
            && self.event_ids.is_empty()
            && self.trims.is_empty()
            && self.forget.is_empty()
            && self.deletes.is_empty()
    }
}

/// A thread as loaded at start-up.
#[derive(Debug, Clone)]
pub struct LoadedThread {
    pub id: ThreadId,
    pub record: ThreadRecord,
    /// The last stored `seq` (0: none).
    pub head_seq: u64,
}

/// A run that was still running when the store was last written.
#[derive(Debug, Clone)]
pub struct LoadedRun {
    pub id: RunId,
    pub record: RunRecord,
    pub event_ids: HashMap<String, u64>,
}

/// What a log needs to rebuild its working state at start-up: the runs still
/// running and their threads (on a store that keeps threads; every thread on
/// one that does not). Everything else stays in the store and is read on demand.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub threads: Vec<LoadedThread>,
    pub running: Vec<LoadedRun>,
}

/// Durable keeping of a log's records. Methods block; the log calls `write`
/// from its committer thread and the lookups from the runtime's blocking
/// threads (`spawn_blocking`), never from its async workers, except in the rare
/// case where a run was evicted between that lookup and the thread's lock.
pub trait Store: Send + Sync + 'static {
    /// Makes `batches` durable, all or nothing, in one transaction.
    fn write(&self, batches: &[&Batch]) -> Result<(), StoreError>;

    /// Stored events of `thread` with `seq > after_seq`, as many as `budget` admits.
    fn read(&self, thread: &ThreadId, after_seq: u64, budget: PageBudget) -> Result<Vec<Arc<StoredEvent>>, StoreError>;

    /// The working state to start from.
    fn load(&self) -> Result<Snapshot, StoreError>;

    /// Whether [`Store::thread`] answers what was written. When it does, the
    /// log evicts threads that have no run in its working state and reads them
    /// back on demand, and [`Store::load`] need only answer the running runs' threads.
    fn keeps_threads(&self) -> bool {
        false
    }

    /// A thread as stored, for threads not in the log's working state.
    fn thread(&self, _thread: &ThreadId) -> Result<Option<LoadedThread>, StoreError> {
        Ok(None)
    }

    /// A run's record, for runs not in the log's working state.
    fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError>;

    /// Whether what [`Store::run`] and [`Store::event_seq`] answer is what was
    /// written. When it is, the log evicts ended runs and their event ids from
    /// its working state once they are durable, and reads them back on demand;
    /// a store that only keeps events (the memory store) keeps them in the log.
    fn keeps_runs(&self) -> bool {
        false
    }

    /// Gets ready to write again after a failed [`Store::write`] (a full disk,
    /// say): `Ok` once a write reaches the disk. What is stored is what the
    /// last successful write left, and [`Store::load`] must answer all of it,
    /// since the log reloads its working state from there; a store that cannot
    /// (one that does not keep runs) does not recover, and is restarted.
    fn recover(&self) -> Result<(), StoreError> {
        Err(StoreError::Io("this store does not recover from a failed write; restart the server".into()))
    }

    /// The `seq` stored for `event_id` in `run`.
    fn event_seq(&self, run: &RunId, event_id: &str) -> Result<Option<u64>, StoreError>;

    /// Up to `limit` ended runs, oldest end first, that ended before `before_ms`
    /// and whose `event_id`s are still kept. Only as costly as what it answers.
    fn runs_ended_before(&self, _before_ms: i64, _limit: usize) -> Result<Vec<(i64, RunId)>, StoreError> {
        Ok(Vec::new())
    }

    /// Up to `limit` threads whose oldest stored event was appended at or before
    /// `at_or_before_ms`, oldest first (for retention). Only as costly as what
    /// it answers: a store keeps its threads ordered by their oldest event.
    fn oldest_threads(&self, at_or_before_ms: i64, limit: usize) -> Result<Vec<ThreadExtent>, StoreError>;

    /// How many events are stored in all (for retention's global limit), kept
    /// as a count, not counted.
    fn event_count(&self) -> Result<u64, StoreError>;

    /// The `seq` of the last event of `thread` appended at or before `ts_ms` (for retention by age).
    fn last_seq_at_or_before(&self, thread: &ThreadId, ts_ms: i64) -> Result<Option<u64>, StoreError>;
}

/// What a store wrapper changes: how batches are written (a test's injected
/// fault, a benchmark's timing), and perhaps whether runs and threads are kept.
/// Wrapped in [`Hooked`], everything else goes to the store underneath, so a
/// wrapper cannot forget a method the trait gains.
pub trait WriteHook: Send + Sync + 'static {
    /// Writes `batches` through `inner`, or refuses them.
    fn write(&self, inner: &dyn Store, batches: &[&Batch]) -> Result<(), StoreError>;

    /// Claims the store keeps neither runs nor threads, so the log holds them
    /// all in memory (how it behaved before eviction, for comparisons).
    fn forgets(&self) -> bool {
        false
    }
}

/// A store with a [`WriteHook`] around its writes.
pub struct Hooked<H> {
    pub inner: Box<dyn Store>,
    pub hook: H,
}

impl<H: WriteHook> Store for Hooked<H> {
    fn write(&self, batches: &[&Batch]) -> Result<(), StoreError> {
        self.hook.write(&*self.inner, batches)
    }
    fn read(&self, thread: &ThreadId, after_seq: u64, budget: PageBudget) -> Result<Vec<Arc<StoredEvent>>, StoreError> {
        self.inner.read(thread, after_seq, budget)
    }
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.inner.load()
    }
    fn keeps_threads(&self) -> bool {
        !self.hook.forgets() && self.inner.keeps_threads()
    }
    fn thread(&self, thread: &ThreadId) -> Result<Option<LoadedThread>, StoreError> {
        self.inner.thread(thread)
    }
    fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        self.inner.run(run_id)
    }
    fn keeps_runs(&self) -> bool {
        !self.hook.forgets() && self.inner.keeps_runs()
    }
    fn recover(&self) -> Result<(), StoreError> {
        self.inner.recover()
    }
    fn event_seq(&self, run: &RunId, event_id: &str) -> Result<Option<u64>, StoreError> {
        self.inner.event_seq(run, event_id)
    }
    fn runs_ended_before(&self, before_ms: i64, limit: usize) -> Result<Vec<(i64, RunId)>, StoreError> {
        self.inner.runs_ended_before(before_ms, limit)
    }
    fn oldest_threads(&self, at_or_before_ms: i64, limit: usize) -> Result<Vec<ThreadExtent>, StoreError> {
        self.inner.oldest_threads(at_or_before_ms, limit)
    }
    fn event_count(&self) -> Result<u64, StoreError> {
        self.inner.event_count()
    }
    fn last_seq_at_or_before(&self, thread: &ThreadId, ts_ms: i64) -> Result<Option<u64>, StoreError> {
        self.inner.last_seq_at_or_before(thread, ts_ms)
    }
}

/// A store shared with whoever opened it (a test that reaches past the log to it).
impl<S: Store> Store for Arc<S> {
    fn write(&self, batches: &[&Batch]) -> Result<(), StoreError> {
        (**self).write(batches)
    }
    fn read(&self, thread: &ThreadId, after_seq: u64, budget: PageBudget) -> Result<Vec<Arc<StoredEvent>>, StoreError> {
        (**self).read(thread, after_seq, budget)
    }
    fn load(&self) -> Result<Snapshot, StoreError> {
        (**self).load()
    }
    fn keeps_threads(&self) -> bool {
        (**self).keeps_threads()
    }
    fn thread(&self, thread: &ThreadId) -> Result<Option<LoadedThread>, StoreError> {
        (**self).thread(thread)
    }
    fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        (**self).run(run_id)
    }
    fn keeps_runs(&self) -> bool {
        (**self).keeps_runs()
    }
    fn recover(&self) -> Result<(), StoreError> {
        (**self).recover()
    }
    fn event_seq(&self, run: &RunId, event_id: &str) -> Result<Option<u64>, StoreError> {
        (**self).event_seq(run, event_id)
    }
    fn runs_ended_before(&self, before_ms: i64, limit: usize) -> Result<Vec<(i64, RunId)>, StoreError> {
        (**self).runs_ended_before(before_ms, limit)
    }
    fn oldest_threads(&self, at_or_before_ms: i64, limit: usize) -> Result<Vec<ThreadExtent>, StoreError> {
        (**self).oldest_threads(at_or_before_ms, limit)
    }
    fn event_count(&self) -> Result<u64, StoreError> {
        (**self).event_count()
    }
    fn last_seq_at_or_before(&self, thread: &ThreadId, ts_ms: i64) -> Result<Option<u64>, StoreError> {
        (**self).last_seq_at_or_before(thread, ts_ms)
    }
}

/// Where a thread's retained events start and end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadExtent {
    pub thread: ThreadId,
    pub oldest_seq: u64,
    pub head_seq: u64,
    /// Append time of the oldest retained event, if any.
    pub oldest_ts_ms: Option<i64>,
}
