//! One conformance suite for every [`Log`]: the rules agentwire promises
//! (numbering, de-duplication, lifecycle, ownership, routing, cancel,
//! retention, idle expiry, deletion, restart) written once, against the `Log`
//! trait alone, and run against each log the same way.
//!
//! A log under test is a [`Deployment`]: it opens the log as two handles, which
//! are two nodes of one deployment on a shared engine, or the same log twice
//! for a single-node log, and can restart it over what it stored. Every test
//! in [`rules`] takes a deployment; [`model`] drives random operation
//! sequences over both handles, with restarts and injected faults, against a
//! plain model of the rules.
//!
//! The deployments here cover the logs in this repository: [`MemoryDeployment`],
//! [`EmbeddedDeployment`] and [`ClusterDeployment`] (Redis Streams or NATS
//! JetStream). [`conformance_tests!`] writes the
//! `#[tokio::test]` functions, one per rule, so each log's test file is a few
//! lines (see `tests/`).

pub mod deployments;
pub mod faults;
pub mod model;
pub mod rules;

use std::sync::Arc;

use agentwire_log::{FeedSink, Log, LogConfig, StoredEvent};
use agentwire_protocol::ThreadId;
use async_trait::async_trait;
use parking_lot::Mutex;

pub use deployments::{ClusterDeployment, EmbeddedDeployment, MemoryDeployment};

/// Two handles on one log: two nodes of a deployment, or one log twice.
#[derive(Clone)]
pub struct Nodes {
    pub a: Arc<dyn Log>,
    pub b: Arc<dyn Log>,
}

/// A log under test, as the suite opens and restarts it.
#[async_trait]
pub trait Deployment: Send {
    /// Opens the log with `config`, as two handles; `feed` is told what the
    /// node behind `a` is fed (on a shared engine, every node's appends).
    async fn open(&mut self, config: LogConfig, feed: Arc<dyn FeedSink>) -> Nodes;

    /// Closes `nodes` and opens the log again with the same settings over
    /// what it stored (on a shared engine: fresh nodes, with nothing cached).
    /// A log that keeps nothing goes on as it is and answers `nodes`. The
    /// caller must hold no other handle, or a store that locks its files
    /// cannot open again.
    async fn restart(&mut self, nodes: Nodes) -> Nodes;

    /// Closes `nodes` for good.
    async fn close(&mut self, nodes: Nodes) {
        nodes.a.close().await;
        nodes.b.close().await;
    }

    /// Whether a restart finds what was stored before it.
    fn keeps_data(&self) -> bool {
        true
    }

    /// Whether the whole-log retention limit counts appends rather than
    /// events (JetStream: one message per append, and one per emptied thread).
    fn counts_appends(&self) -> bool {
        false
    }

    /// Whether `Log::delete_thread` deletes (a shared engine answers `Unsupported`).
    fn deletes_threads(&self) -> bool {
        true
    }

    /// Whether a per-thread limit removes whole appends only (JetStream).
    fn trims_whole_appends(&self) -> bool {
        false
    }
}

/// Records what a feed hands over, as `(thread, seq)`.
#[derive(Default)]
pub struct Recorder(Mutex<Vec<(String, u64)>>);

impl Recorder {
    /// What was fed so far.
    pub fn fed(&self) -> Vec<(String, u64)> {
        self.0.lock().clone()
    }

    /// The seqs fed for `thread`, in the order they came.
    pub fn seqs_of(&self, thread: &ThreadId) -> Vec<u64> {
        self.0.lock().iter().filter(|(t, _)| t == thread.as_str()).map(|(_, s)| *s).collect()
    }
}

impl FeedSink for Recorder {
    fn deliver(&self, events: &[Arc<StoredEvent>]) {
        self.0.lock().extend(events.iter().map(|e| (e.thread_id().to_string(), e.seq())));
    }
}

/// The test run's Redis (`scripts/engines.sh` starts one), else the default port.
pub fn test_redis() -> String {
    std::env::var("AGENTWIRE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The test run's NATS with JetStream, else the default port.
pub fn test_nats() -> String {
    std::env::var("AGENTWIRE_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Writes one `#[tokio::test]` per rule of [`rules`] named, each on a new
/// deployment made by `$make`.
///
/// ```ignore
/// agentwire_conformance::conformance_tests!(MemoryDeployment::new(); numbering, deduplication);
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr; $($rule:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $rule() {
                let mut deployment = $make;
                $crate::rules::$rule(&mut deployment).await;
            }
        )+
    };
}
