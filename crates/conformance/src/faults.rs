//! A [`Backbone`] that refuses a write when told to, as an engine that is
//! down or unreachable would: the write never reaches the engine, and the
//! node gets `Unavailable`. What the model-based test injects into a cluster.
//! It also counts the events nodes read, for tests of what a node reads.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use agentwire_backbone::{
    Backbone, BackboneError, Extent, Follower, Outcome, Position, RunEntry, Running, RunningChange, RunsMark, Tail,
    ThreadMeta, TrimmedRuns,
};
use agentwire_log::StoredEvent;
use agentwire_protocol::{RunId, ThreadId};
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

tokio::task_local! {
    /// Set while a caller's operation runs (see [`Faults::on_behalf_of_caller`]).
    static CALLER: ();
}

/// The switch shared by every node of a deployment.
#[derive(Default)]
pub struct Faults {
    fail_next_write: AtomicBool,
    events_read: AtomicU64,
}

impl Faults {
    /// Runs `operation` as a caller's: only writes made within it meet the
    /// injected failure, not those of the nodes' background work (their
    /// checkpoints and trims), whose timing no model can predict.
    pub async fn on_behalf_of_caller<F: std::future::Future>(operation: F) -> F::Output {
        CALLER.scope((), operation).await
    }

    /// The next write a caller's operation makes on any node (a thread, a
    /// run, an append, a trim) is refused.
    pub fn fail_next_write(&self) {
        self.fail_next_write.store(true, Ordering::Release);
    }

    /// Whether a refusal is still waiting for a write.
    pub fn armed(&self) -> bool {
        self.fail_next_write.load(Ordering::Acquire)
    }

    /// No refusal waits any more.
    pub fn disarm(&self) {
        self.fail_next_write.store(false, Ordering::Release);
    }

    /// Events the nodes have read from the engine so far.
    pub fn events_read(&self) -> u64 {
        self.events_read.load(Ordering::Relaxed)
    }

    fn write(&self) -> Result<(), BackboneError> {
        if CALLER.try_with(|_| ()).is_ok() && self.fail_next_write.swap(false, Ordering::AcqRel) {
            return Err(BackboneError::Unavailable("injected: the engine did not answer".into()));
        }
        Ok(())
    }
}

/// `B`, with writes that fail when [`Faults`] says so.
pub struct Faulty<B> {
    inner: B,
    faults: Arc<Faults>,
}

impl<B> Faulty<B> {
    pub fn new(inner: B, faults: Arc<Faults>) -> Self {
        Self { inner, faults }
    }
}

#[async_trait]
impl<B: Backbone> Backbone for Faulty<B> {
    async fn ping(&self) -> Result<(), BackboneError> {
        self.inner.ping().await
    }

    async fn durability(&self) -> Result<Vec<String>, BackboneError> {
        self.inner.durability().await
    }

    async fn create_thread(&self, thread: &ThreadId, meta: &ThreadMeta) -> Result<bool, BackboneError> {
        self.faults.write()?;
        self.inner.create_thread(thread, meta).await
    }

    async fn thread(&self, thread: &ThreadId) -> Result<Option<ThreadMeta>, BackboneError> {
        self.inner.thread(thread).await
    }

    async fn threads(&self) -> Result<Vec<ThreadId>, BackboneError> {
        self.inner.threads().await
    }

    async fn thread_count(&self) -> Result<u64, BackboneError> {
        self.inner.thread_count().await
    }

    async fn register_run(
        &self,
        run: &RunId,
        entry: &RunEntry,
        running: Option<&Running>,
    ) -> Result<bool, BackboneError> {
        self.faults.write()?;
        self.inner.register_run(run, entry, running).await
    }

    async fn run(&self, run: &str) -> Result<Option<RunEntry>, BackboneError> {
        self.inner.run(run).await
    }

    async fn append(
        &self,
        thread: &ThreadId,
        at: Position,
        events: &[Arc<StoredEvent>],
        change: &RunningChange,
    ) -> Result<Outcome, BackboneError> {
        self.faults.write()?;
        self.inner.append(thread, at, events, change).await
    }

    async fn read(&self, thread: &ThreadId, after: Position, limit: usize) -> Result<Tail, BackboneError> {
        let tail = self.inner.read(thread, after, limit).await?;
        self.faults.events_read.fetch_add(tail.events.len() as u64, Ordering::Relaxed);
        Ok(tail)
    }

    async fn extent(&self, thread: &ThreadId) -> Result<Option<Extent>, BackboneError> {
        self.inner.extent(thread).await
    }

    async fn remove_runs(&self, runs: &[RunId]) -> Result<(), BackboneError> {
        self.inner.remove_runs(runs).await
    }

    async fn trimmed_runs(&self, thread: &ThreadId) -> Result<Option<TrimmedRuns>, BackboneError> {
        self.inner.trimmed_runs(thread).await
    }

    async fn trim(
        &self,
        thread: &ThreadId,
        keep_from: u64,
        kept: &TrimmedRuns,
        expected: RunsMark,
        first_kept_ms: Option<i64>,
    ) -> Result<bool, BackboneError> {
        self.faults.write()?;
        self.inner.trim(thread, keep_from, kept, expected, first_kept_ms).await
    }

    async fn oldest_threads(&self, at_or_before_ms: i64, limit: usize) -> Result<Vec<ThreadId>, BackboneError> {
        self.inner.oldest_threads(at_or_before_ms, limit).await
    }

    async fn event_count(&self) -> Result<u64, BackboneError> {
        self.inner.event_count().await
    }

    async fn set_running(&self, run: &RunId, running: Option<&Running>) -> Result<(), BackboneError> {
        self.inner.set_running(run, running).await
    }

    async fn running(&self) -> Result<Vec<(RunId, Running)>, BackboneError> {
        self.inner.running().await
    }

    async fn heartbeat(&self, node: &str, ttl: Duration) -> Result<(), BackboneError> {
        self.inner.heartbeat(node, ttl).await
    }

    async fn live_nodes(&self) -> Result<HashSet<String>, BackboneError> {
        self.inner.live_nodes().await
    }

    async fn announce_rewind(&self, thread: &ThreadId) -> Result<(), BackboneError> {
        self.inner.announce_rewind(thread).await
    }

    async fn follow(&self, follower: Arc<dyn Follower>, stop: CancellationToken) {
        self.inner.follow(follower, stop).await
    }
}
