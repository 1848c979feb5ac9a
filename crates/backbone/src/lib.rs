//! # agentwire-backbone
//!
//! agentwire on several nodes: the [`Log`](agentwire_log::Log) seam over an
//! engine the nodes share, [Redis Streams](redis_streams) or
//! [NATS JetStream](nats_jetstream). Any node takes any publish and serves any
//! subscriber, with the guarantees of one node (PROTOCOL §6).
//!
//! The split mirrors the single-node log: the rules live once, in
//! [`ClusterLog`], and a [`Backbone`] only keeps records. What makes it work
//! across nodes is that every append is a **compare-and-set on the thread's
//! head**: a node decides an append (de-duplication, lifecycle, numbering) on
//! its cached view of the thread and asks the backbone to store it only if
//! the thread is still where that view says. If another node got there first
//! the backbone refuses, the node reads what it missed and decides again. So
//! `seq` stays gap-free, `event_id`s de-duplicate and the lifecycle holds
//! whichever node a publisher talks to, and nothing is stored without a
//! decision made on the whole history.
//!
//! Every node follows one **feed** of everything appended (a Redis stream, a
//! JetStream ordered consumer) and hands it to its hub: one read per node, not
//! per subscriber. A node that misses part of the feed loses nothing: sessions
//! fill gaps from the log (see `agentwire_hub::session`).
//!
//! Nodes announce themselves with a heartbeat. A run executed by a node's
//! in-process engine names that node; when the node's heartbeat lapses, any
//! surviving node ends the run with `agent_error {code:"worker_lost"}`.

#![cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]

mod cluster;
#[cfg(feature = "nats")]
pub mod nats_jetstream;
#[cfg(feature = "redis")]
pub mod redis_streams;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use agentwire_log::{FeedSink, LogConfig, StoredEvent};
use agentwire_protocol::{RunId, RunLifecycle, ThreadId, UserId};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use cluster::ClusterLog;
#[cfg(feature = "nats")]
pub use nats_jetstream::NatsBackbone;
#[cfg(feature = "redis")]
pub use redis_streams::RedisBackbone;

/// A backbone that could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackboneError {
    /// The address or settings are wrong; retrying will not help.
    #[error("backbone configuration: {0}")]
    Config(String),
    /// The engine is unreachable or did not confirm: nothing may be assumed stored.
    #[error("backbone unavailable: {0}")]
    Unavailable(String),
    /// The engine answered something agentwire did not write.
    #[error("backbone data is corrupt: {0}")]
    Corrupt(String),
    /// The engine refuses a message this large, now and on every retry; nothing was stored.
    #[error("too large for the backbone: {0}")]
    TooLarge(String),
}

/// Where a thread's history ends: the last `seq`, and the backbone's own
/// marker for it (Redis: the same `seq`; JetStream: the stream sequence of the
/// message holding that event). `Position::default()` is an empty thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    pub seq: u64,
    pub token: u64,
}

/// A thread as the backbone keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadMeta {
    pub owner: UserId,
    /// Created by a publisher: takes unregistered runs by the id pattern.
    #[serde(default)]
    pub by_publisher: bool,
}

/// A registered run: where it routes, and which node executes it in-process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEntry {
    pub thread_id: ThreadId,
    #[serde(default)]
    pub agent_name: Option<String>,
    /// The node whose in-process engine runs it.
    #[serde(default)]
    pub node: Option<String>,
}

/// A run not yet ended, for the idle watchdog and the lost-worker sweep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    pub thread_id: ThreadId,
    #[serde(default)]
    pub node: Option<String>,
    /// Milliseconds since the epoch of its registration or a recent event.
    pub last_activity_ms: i64,
    /// While it waits on input requests, when the first of them lapses (ms
    /// since the epoch): a waiting run is not idle, and the watchdog answers
    /// the request with its default then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_until_ms: Option<i64>,
}

/// What an append does to the set of running runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunningChange {
    /// Nothing (the recorded activity is recent enough).
    Keep,
    /// Record (or refresh) the run as running.
    Set(RunId, Running),
    /// The run ended.
    Remove(RunId),
}

/// The answer to a conditional append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored; the thread now ends here.
    Appended(Position),
    /// The thread is no longer at the expected position: nothing was stored.
    Moved,
}

/// Events read after a position, and the position of the last one.
#[derive(Debug, Default)]
pub struct Tail {
    pub events: Vec<Arc<StoredEvent>>,
    pub at: Position,
}

/// What the rules know of one run: enough to decide its next append.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    pub lifecycle: RunLifecycle,
    /// `event_id` → the `seq` it was stored at.
    #[serde(default)]
    pub event_ids: HashMap<String, u64>,
    #[serde(default)]
    pub agent_name: Option<String>,
    #[serde(default)]
    pub cancel_requested: bool,
    /// When its terminal event was stored (ms since the epoch): its
    /// `event_id`s are remembered for the de-duplication window after it.
    #[serde(default)]
    pub ended_ms: Option<i64>,
    /// The `seq` of its latest event followed (0 in records written before
    /// it was kept, whose ended runs have every event removed).
    #[serde(default)]
    pub last_seq: u64,
}

/// The state of a thread's runs as of `through_seq`, kept beside the thread:
/// written when retention removes events (up to `removed_through`, never past
/// `through_seq`), so lifecycle and de-duplication outlive the events they
/// were learnt from, and every so many events as a checkpoint, so a view
/// rebuilt from nothing reads this and the events after it, not the whole
/// history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrimmedRuns {
    pub through_seq: u64,
    #[serde(default)]
    pub runs: BTreeMap<RunId, RunState>,
    /// The last `seq` retention removed (`None` in records written before
    /// checkpoints, where it is `through_seq`).
    #[serde(default)]
    pub removed_through: Option<u64>,
}

impl TrimmedRuns {
    /// The last `seq` retention removed, as far as this record says.
    pub fn removed_through(&self) -> u64 {
        self.removed_through.unwrap_or(self.through_seq)
    }

    /// What a compare-and-set on the record compares: every write moves one
    /// of the two (a checkpoint the first, a trim the second), so a writer
    /// that read an older record is refused.
    pub fn mark(&self) -> RunsMark {
        RunsMark { through_seq: self.through_seq, removed_through: self.removed_through() }
    }
}

/// The position of a thread's [`TrimmedRuns`] record, for a compare-and-set
/// (`RunsMark::default()`: no record yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunsMark {
    pub through_seq: u64,
    pub removed_through: u64,
}

/// A thread's retained range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extent {
    /// The oldest retained `seq` (1 until retention removes events).
    pub oldest_seq: u64,
    pub head: Position,
}

/// The records a [`ClusterLog`] keeps in a shared engine. Every method is one
/// or a few round trips; none holds state a node could lose.
#[async_trait]
pub trait Backbone: Send + Sync + 'static {
    /// `Ok` when the engine answers.
    async fn ping(&self) -> Result<(), BackboneError>;

    /// Why an append the engine acknowledged could still be lost, as the
    /// engine is set up (its persistence and replication settings); empty
    /// when it could not. Read once, at start.
    async fn durability(&self) -> Result<Vec<String>, BackboneError>;

    /// Records the thread unless it exists; `false` if it did.
    async fn create_thread(&self, thread: &ThreadId, meta: &ThreadMeta) -> Result<bool, BackboneError>;

    /// The thread's record, `None` if it does not exist.
    async fn thread(&self, thread: &ThreadId) -> Result<Option<ThreadMeta>, BackboneError>;

    /// Every thread: a walk over all of them, never made periodically.
    async fn threads(&self) -> Result<Vec<ThreadId>, BackboneError>;

    /// How many threads there are (for the dashboard, every few seconds).
    async fn thread_count(&self) -> Result<u64, BackboneError> {
        Ok(self.threads().await?.len() as u64)
    }

    /// Registers a run unless its id is taken (`false`), and records it as running if `running` is given.
    async fn register_run(
        &self,
        run: &RunId,
        entry: &RunEntry,
        running: Option<&Running>,
    ) -> Result<bool, BackboneError>;

    /// A registered run.
    async fn run(&self, run: &str) -> Result<Option<RunEntry>, BackboneError>;

    /// Stores `events` (numbered after `at.seq`) and applies `change`, all or
    /// nothing, if the thread still ends at `at`.
    async fn append(
        &self,
        thread: &ThreadId,
        at: Position,
        events: &[Arc<StoredEvent>],
        change: &RunningChange,
    ) -> Result<Outcome, BackboneError>;

    /// Up to `limit` events with `seq > after.seq` (`after.token` may be 0 when
    /// only the `seq` is known).
    async fn read(&self, thread: &ThreadId, after: Position, limit: usize) -> Result<Tail, BackboneError>;

    /// The thread's retained range, `None` if the thread does not exist.
    async fn extent(&self, thread: &ThreadId) -> Result<Option<Extent>, BackboneError>;

    /// Forgets the registrations of `runs`: retention removed every event of
    /// them and their de-duplication window has passed, so nothing refers to
    /// them any more and the engine need not keep them for ever.
    async fn remove_runs(&self, runs: &[RunId]) -> Result<(), BackboneError>;

    /// What retention recorded of the thread's runs when it last removed events.
    async fn trimmed_runs(&self, thread: &ThreadId) -> Result<Option<TrimmedRuns>, BackboneError>;

    /// Records `kept` (the runs' state through `kept.through_seq`, at least
    /// `keep_from - 1`) and removes the events of `thread` before `keep_from`
    /// (at the backbone's granularity: a JetStream message holding newer
    /// events too is kept), if the record is still at `expected`; `false`,
    /// with nothing changed, when another node wrote it meanwhile. The record
    /// comes first: a crash between the two leaves it ahead of the removal,
    /// never behind. `first_kept_ms` is when the first event kept was
    /// appended (`None`: none is), for [`Backbone::oldest_threads`]. With
    /// `keep_from` at or before the oldest retained event, it only records:
    /// a checkpoint.
    async fn trim(
        &self,
        thread: &ThreadId,
        keep_from: u64,
        kept: &TrimmedRuns,
        expected: RunsMark,
        first_kept_ms: Option<i64>,
    ) -> Result<bool, BackboneError>;

    /// Up to `limit` threads whose oldest retained event was appended at or
    /// before `at_or_before_ms`, oldest first: what the age and whole-log
    /// retention limits take from, at a cost that follows what is due, not
    /// the number of threads.
    async fn oldest_threads(&self, at_or_before_ms: i64, limit: usize) -> Result<Vec<ThreadId>, BackboneError>;

    /// What the whole-log retention limit counts, as the engine keeps it
    /// (one read, whatever the number of threads): events retained in the
    /// whole deployment (Redis), or stored appends (JetStream: one message
    /// per append, whatever number of events it holds, and one per thread
    /// whose every event retention removed).
    async fn event_count(&self) -> Result<u64, BackboneError>;

    /// Sets or removes one running entry.
    async fn set_running(&self, run: &RunId, running: Option<&Running>) -> Result<(), BackboneError>;

    /// Every running entry.
    async fn running(&self) -> Result<Vec<(RunId, Running)>, BackboneError>;

    /// Announces `node` as alive for `ttl`.
    async fn heartbeat(&self, node: &str, ttl: Duration) -> Result<(), BackboneError>;

    /// The nodes whose heartbeat has not lapsed.
    async fn live_nodes(&self) -> Result<HashSet<String>, BackboneError>;

    /// Tells every node, through the feed, that `thread`'s head moved back (the
    /// engine lost events it had acknowledged): each hands it to
    /// [`Follower::rewound`]. An engine whose writes cannot move back need not.
    async fn announce_rewind(&self, _thread: &ThreadId) -> Result<(), BackboneError> {
        Ok(())
    }

    /// Follows everything appended from now on and hands it to `follower`, one
    /// append at a time in `seq` order per thread, until `stop`. Reconnects by
    /// itself. Never skips an entry silently: if the feed dropped entries this
    /// node had not read, it says so with [`Follower::lost`].
    async fn follow(&self, follower: Arc<dyn Follower>, stop: CancellationToken);
}

/// What a node does with the feed: one append of one thread, and the position
/// the thread is at after it.
pub trait Follower: Send + Sync + 'static {
    fn appended(&self, events: &[Arc<StoredEvent>], at: Position);

    /// Entries of the feed were removed before this node read them (it fell
    /// behind a capped feed): what they held must be caught up from the threads.
    fn lost(&self) {}

    /// A node found `thread`'s head moved back (see [`Backbone::announce_rewind`]).
    fn rewound(&self, _thread: &ThreadId) {}
}

/// How a node takes part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Names this deployment's keys, streams and buckets, so several share one engine.
    pub prefix: String,
    /// This node's id: runs its engine executes name it.
    pub node_id: String,
    /// A node silent for this long is taken for dead and its in-process runs end with `worker_lost`.
    pub node_ttl: Duration,
    /// Copies the engine keeps of what agentwire creates in it (JetStream
    /// streams and buckets; Redis replicates by its own settings).
    pub replicas: usize,
    /// Start even when [`Backbone::durability`] finds a way to lose an
    /// acknowledged event; the log then reports it (`Log::durability_warnings`).
    pub allow_weak_durability: bool,
    /// A node records a thread's run state after reading this many events
    /// past the last record, so that a view rebuilt from nothing (a node that
    /// starts, or one whose view was evicted) reads that record and at most
    /// about this many events, not the whole history; 0: never.
    pub checkpoint_every: u64,
    pub log: LogConfig,
}

/// [`ClusterConfig::checkpoint_every`] unless set otherwise.
pub const CHECKPOINT_EVERY: u64 = 1024;

impl ClusterConfig {
    /// Checks the prefix: it ends up in Redis keys, NATS subjects and bucket names.
    pub fn validate(&self) -> Result<(), BackboneError> {
        let ok = !self.prefix.is_empty()
            && self.prefix.len() <= 64
            && self.prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(BackboneError::Config(format!(
                "backbone prefix {:?} must be 1 to 64 of [A-Za-z0-9_-]",
                self.prefix
            )));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(BackboneError::Config("backbone replicas must be 1 to 5".into()));
        }
        if self.node_ttl < Duration::from_secs(1) {
            return Err(BackboneError::Config("the node TTL must be at least 1 s".into()));
        }
        Ok(())
    }
}

/// Opens the log for a `redis://…` or `nats://…` backbone address; `None`
/// when `url` names neither engine this build was compiled with.
pub async fn open(
    url: &str,
    config: ClusterConfig,
    sink: Arc<dyn FeedSink>,
) -> Option<Result<Arc<dyn agentwire_log::Log>, BackboneError>> {
    async fn start<B: Backbone>(
        backbone: Result<B, BackboneError>,
        config: ClusterConfig,
        sink: Arc<dyn FeedSink>,
    ) -> Result<Arc<dyn agentwire_log::Log>, BackboneError> {
        let log = ClusterLog::start(backbone?, config, sink).await?;
        Ok(Arc::new(log))
    }
    if let Err(e) = config.validate() {
        return Some(Err(e));
    }
    #[cfg(feature = "redis")]
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        return Some(start(RedisBackbone::connect(url, &config.prefix).await, config, sink).await);
    }
    #[cfg(feature = "nats")]
    if url.starts_with("nats://") || url.starts_with("tls://") {
        return Some(start(NatsBackbone::connect(url, &config.prefix, config.replicas).await, config, sink).await);
    }
    let _ = (url, config, sink);
    None
}

/// The address schemes this build can open, for error messages.
pub const SCHEMES: &[&str] = &[
    #[cfg(feature = "redis")]
    "redis://…",
    #[cfg(feature = "nats")]
    "nats://…",
];

/// How long an append whose answer was lost keeps asking the engine what
/// became of it before it answers that the outcome is unknown: a publisher
/// waits this much longer during an outage, for a `503` it can trust.
pub(crate) const SETTLE_FOR: Duration = Duration::from_secs(6);

/// Where `sent` ended up if it is what the thread holds right after `at`
/// (the same envelopes, byte for byte); `None` if other events took that
/// place. How both engines settle an append whose answer was lost.
#[cfg(any(feature = "redis", feature = "nats"))]
pub(crate) async fn stored_as_sent<B: Backbone + ?Sized>(
    backbone: &B,
    thread: &ThreadId,
    at: Position,
    sent: &[Arc<StoredEvent>],
) -> Result<Option<Position>, BackboneError> {
    let stored = backbone.read(thread, at, sent.len()).await?;
    let ours = stored.events.len() == sent.len() && stored.events.iter().zip(sent).all(|(kept, s)| kept.json == s.json);
    Ok(ours.then_some(stored.at))
}

/// A record as JSON, for the engine to keep.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, BackboneError> {
    serde_json::to_vec(value).map_err(|e| BackboneError::Corrupt(e.to_string()))
}

/// A record the engine kept, from JSON.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, BackboneError> {
    serde_json::from_slice(json).map_err(|e| BackboneError::Corrupt(e.to_string()))
}

/// The events of one append as both engines carry it: a JSON array of envelopes.
pub(crate) fn decode_events(json: &[u8]) -> Result<Vec<Arc<StoredEvent>>, BackboneError> {
    let corrupt = |e: serde_json::Error| BackboneError::Corrupt(format!("stored events: {e}"));
    let raw: Vec<Box<serde_json::value::RawValue>> = serde_json::from_slice(json).map_err(corrupt)?;
    raw.iter().map(|r| StoredEvent::from_json(r.get()).map(Arc::new).map_err(corrupt)).collect()
}

#[cfg(feature = "nats")]
/// Encodes a run id for engines whose keys allow fewer characters than run ids
/// carry (`:` is not a NATS key character).
pub(crate) fn key_safe(run: &str) -> String {
    let mut out = String::with_capacity(run.len() * 2);
    for b in run.bytes() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(feature = "nats")]
/// Decodes [`key_safe`].
pub(crate) fn from_key_safe(key: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> =
        (0..key.len()).step_by(2).map(|i| key.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
    bytes.and_then(|b| String::from_utf8(b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "nats")]
    #[test]
    fn key_safe_round_trips_run_ids() {
        for run in ["run_thread_a_1f2e3d4c", "legacy:run.7-x", "r"] {
            let key = key_safe(run);
            assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(from_key_safe(&key).as_deref(), Some(run));
        }
        assert_eq!(from_key_safe("zz"), None);
    }

    #[test]
    fn prefixes_that_would_break_keys_or_subjects_are_refused() {
        let config = |prefix: &str| ClusterConfig {
            prefix: prefix.into(),
            node_id: "n".into(),
            node_ttl: Duration::from_secs(10),
            replicas: 1,
            allow_weak_durability: false,
            checkpoint_every: crate::CHECKPOINT_EVERY,
            log: LogConfig::default(),
        };
        assert!(config("agentwire-test_1").validate().is_ok());
        for bad in ["", "a.b", "a b", "a>", "a*"] {
            assert!(config(bad).validate().is_err(), "{bad:?}");
        }
    }
}
