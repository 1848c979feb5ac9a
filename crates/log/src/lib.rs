//! # agentwire-log
//!
//! The seam that lets agentwire scale: one [`Log`] trait that every store
//! implements. A log keeps the **run registry** (run → thread → owner), each
//! thread's **numbered events** (gap-free `seq` from 1), de-duplicates by
//! `event_id`, enforces the run lifecycle rules, and hands every appended event
//! to the node's [`FeedSink`] (the hub) in `seq` order.
//!
//! The rules live once, in [`StoredLog`], over a [`Store`] that only keeps
//! records: [`MemoryLog`] keeps them in process memory, [`EmbeddedLog`] in a
//! redb file with group commit (the default). The idle-run [`watchdog`] runs
//! over any [`Log`]; distributed logs implement the same trait.

mod append;
mod core;
pub mod embedded;
mod error;
pub mod input;
mod memory;
mod packed;
pub mod retention;
pub mod store;
pub mod watchdog;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use agentwire_protocol::{
    Envelope, EnvelopeType, EventKind, InputTimeouts, NewEvent, RunId, RunInputs, RunStatus, ThreadId, Timestamp,
    UserId,
};
use async_trait::async_trait;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Map;

pub use append::{AppendPlan, PlannedEvent, plan_append};
pub use core::StoredLog;
pub use embedded::{EmbeddedLog, EmbeddedStore};
pub use error::LogError;
pub use input::{InputAnswer, InputOutcome, InputStatus, InputWatch};
pub use memory::{MemoryLog, MemoryStore};
pub use retention::RetentionPolicy;
pub use store::{Store, StoreError};

/// An append decided and on its way to the store (see [`Log::append_queued`]).
pub type Queued = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Appended, LogError>> + Send>>;

/// An event as stored: its JSON, encoded once for every subscriber, the
/// fields every path needs, and when this node appended or received it (for
/// delivery lag).
///
/// An event read back from storage is checked whole but decodes only its
/// head: a replay sends `json` as it is, so building the `data` map of every
/// event would cost most of a cold replay's CPU for nothing. [`Self::envelope`]
/// decodes the rest the first time a path asks for it.
#[derive(Debug)]
pub struct StoredEvent {
    thread_id: ThreadId,
    run_id: RunId,
    seq: u64,
    kind: EventKind,
    ts: Timestamp,
    envelope: OnceLock<Envelope>,
    pub json: Box<str>,
    pub received_at: Instant,
}

impl StoredEvent {
    /// Encodes `envelope` once.
    pub fn new(envelope: Envelope) -> Self {
        let json = envelope.to_json().into_boxed_str();
        Self {
            thread_id: envelope.thread_id.clone(),
            run_id: envelope.run_id.clone(),
            seq: envelope.seq,
            kind: envelope.event,
            ts: envelope.ts,
            envelope: OnceLock::from(envelope),
            json,
            received_at: Instant::now(),
        }
    }

    /// An event read back from storage: `json` is the envelope as it was sent.
    pub fn from_json(json: impl AsRef<str> + Into<Box<str>>) -> Result<Self, serde_json::Error> {
        EventReader::default().read(json)
    }

    /// The event's position in its thread.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The event's thread.
    pub fn thread_id(&self) -> &ThreadId {
        &self.thread_id
    }

    /// The run that published it.
    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }

    /// Its type.
    pub fn kind(&self) -> EventKind {
        self.kind
    }

    /// When it was appended.
    pub fn ts(&self) -> Timestamp {
        self.ts
    }

    /// The whole envelope, decoded from `json` on first use.
    pub fn envelope(&self) -> &Envelope {
        self.envelope.get_or_init(|| {
            let body = serde_json::from_str::<Body>(&self.json).unwrap_or_else(|e| {
                // The head was checked against the same text, `data` as an object
                // and `event_id` as a string: this cannot fail.
                tracing::error!(error = %e, seq = self.seq, "a stored event's body did not decode twice");
                Body { event_id: None, data: Map::new() }
            });
            Envelope {
                frame_type: EnvelopeType::Event,
                thread_id: self.thread_id.clone(),
                run_id: self.run_id.clone(),
                seq: self.seq,
                event: self.kind,
                event_id: body.event_id,
                ts: self.ts,
                data: body.data,
            }
        })
    }

    /// The agent's name, when this is the run's `agent_started`.
    pub fn started_agent_name(&self) -> Option<&str> {
        (self.kind == EventKind::AgentStarted)
            .then(|| self.envelope().data.get("agent_name").and_then(|v| v.as_str()))
            .flatten()
    }
}

/// Decodes stored events, sharing the thread and run ids that consecutive
/// events have in common (a page is one thread, mostly one run).
#[derive(Default)]
pub struct EventReader {
    thread: Option<ThreadId>,
    run: Option<RunId>,
}

impl EventReader {
    /// Checks `json` as a whole envelope and decodes its head.
    pub fn read(&mut self, json: impl AsRef<str> + Into<Box<str>>) -> Result<StoredEvent, serde_json::Error> {
        let head: Head<'_> = serde_json::from_str(json.as_ref())?;
        let thread_id = match &self.thread {
            Some(t) if t.as_str() == head.thread_id => t.clone(),
            _ => ThreadId::parse(head.thread_id).map_err(serde::de::Error::custom)?,
        };
        let run_id = match &self.run {
            Some(r) if r.as_str() == head.run_id => r.clone(),
            _ => RunId::parse(head.run_id).map_err(serde::de::Error::custom)?,
        };
        let (seq, kind, ts) = (head.seq, head.event, head.ts);
        self.thread = Some(thread_id.clone());
        self.run = Some(run_id.clone());
        Ok(StoredEvent {
            thread_id,
            run_id,
            seq,
            kind,
            ts,
            envelope: OnceLock::new(),
            json: json.into(),
            received_at: Instant::now(),
        })
    }
}

/// An envelope's fields without its body; ids borrowed (they never need escapes).
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", default)]
    _frame_type: EnvelopeType,
    thread_id: &'a str,
    run_id: &'a str,
    seq: u64,
    event: EventKind,
    #[serde(rename = "event_id", default, borrow)]
    _event_id: Option<std::borrow::Cow<'a, str>>,
    ts: Timestamp,
    #[serde(rename = "data")]
    _data: AnyObject,
}

/// What [`StoredEvent::envelope`] decodes later.
#[derive(Deserialize)]
struct Body {
    #[serde(default)]
    event_id: Option<String>,
    data: Map<String, serde_json::Value>,
}

/// A JSON object, checked and skipped.
struct AnyObject;

impl<'de> Deserialize<'de> for AnyObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = AnyObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<AnyObject, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(AnyObject)
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// `events` of `run` as stored envelopes, numbered after `head` in `thread`:
/// what every log appends once it has planned them.
pub fn numbered(
    thread: &ThreadId,
    run: &RunId,
    head: u64,
    ts: Timestamp,
    events: Vec<NewEvent>,
) -> Vec<Arc<StoredEvent>> {
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| {
            Arc::new(StoredEvent::new(Envelope {
                frame_type: EnvelopeType::Event,
                thread_id: thread.clone(),
                run_id: run.clone(),
                seq: head + 1 + i as u64,
                event: event.kind,
                event_id: event.event_id,
                ts,
                data: event.data,
            }))
        })
        .collect()
}

/// Where a log hands what it appended: the node's hub. Called with the events
/// of one thread in `seq` order; it must not block.
pub trait FeedSink: Send + Sync + 'static {
    fn deliver(&self, events: &[Arc<StoredEvent>]);

    /// The thread was deleted, after its last events were delivered: its
    /// subscriptions end.
    fn thread_deleted(&self, _thread: &ThreadId) {}

    /// The thread's history was rewritten under its subscribers: its head moved
    /// back (a shared engine's failover lost acknowledged events) and `seq`s
    /// may be used again. Subscriptions start again from the log with `reset`.
    fn thread_rewound(&self, _thread: &ThreadId) {}

    /// Threads someone on this node is subscribed to (a node that missed part
    /// of a shared feed catches these up).
    fn watched(&self) -> Vec<ThreadId> {
        Vec::new()
    }

    /// Events delivered already or perhaps missed, handed over again so
    /// subscribers that missed them catch up (they drop what they have and
    /// read any gap from the log). Not counted as appended.
    fn redeliver(&self, events: &[Arc<StoredEvent>]) {
        self.deliver(events);
    }
}

/// A sink that delivers nowhere (a log without subscribers, e.g. in tools).
pub struct NoFeed;

impl FeedSink for NoFeed {
    fn deliver(&self, _: &[Arc<StoredEvent>]) {}
}

/// What the registry knows about a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInfo {
    pub run_id: RunId,
    pub thread_id: ThreadId,
    pub owner: UserId,
    pub agent_name: Option<String>,
    pub status: RunStatus,
    pub cancel_requested: bool,
    /// Its input requests: open, and the newest closed.
    pub inputs: RunInputs,
    /// Waiting behind its thread's runs (double-texting's `enqueue`), not started yet.
    pub queued: bool,
}

/// A run to register.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub thread_id: ThreadId,
    /// The thread's owner; the thread is created for them if it is new.
    pub owner: UserId,
    pub agent_name: Option<String>,
    /// Whether this node's in-process engine runs it: if the node dies, the run
    /// is ended with `worker_lost` when the node's log opens again.
    pub in_process: bool,
    /// A run id chosen by the caller (AG-UI's `runId`); minted when `None`.
    /// One that names another thread by its pattern must name a thread of `owner`.
    pub run_id: Option<RunId>,
}

/// One page of a thread's history.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub events: Vec<Arc<StoredEvent>>,
    /// The thread's last assigned `seq` when the page was read (0: no events).
    pub head_seq: u64,
    /// The oldest `seq` still retained (1 until retention removes events).
    pub oldest_seq: u64,
}

/// The answer to an append: the thread it went to and each event's `seq`
/// (a repeated `event_id` answers its first `seq`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub thread_id: ThreadId,
    pub seqs: Vec<u64>,
}

/// Figures for readiness and the dashboard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    pub threads: u64,
    pub runs_in_flight: u64,
}

/// Default of [`LogConfig::max_page_bytes`].
pub const DEFAULT_PAGE_BYTES: usize = 4 << 20;

/// How much one read may answer: at most `events` events, and no more events
/// once their encoded size reaches `bytes`. The first event always fits, so a
/// page is never empty while events remain (one event is bounded by the body limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageBudget {
    events: usize,
    bytes: usize,
    taken: usize,
    used: usize,
}

impl PageBudget {
    /// A budget of `events` events and `bytes` bytes.
    pub fn new(events: usize, bytes: usize) -> Self {
        Self { events, bytes, taken: 0, used: 0 }
    }

    /// Counts an event of `len` bytes in, or answers `false` when it does not fit.
    pub fn admit(&mut self, len: usize) -> bool {
        if self.taken >= self.events || (self.taken > 0 && self.used.saturating_add(len) > self.bytes) {
            return false;
        }
        self.taken += 1;
        self.used = self.used.saturating_add(len);
        true
    }

    /// Events still allowed.
    pub fn events_left(&self) -> usize {
        self.events - self.taken
    }

    /// Bytes still allowed.
    pub fn bytes_left(&self) -> usize {
        self.bytes.saturating_sub(self.used)
    }
}

/// Settings every log shares.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A run that sends nothing for this long is ended with `agent_error {code:"timeout"}`.
    pub run_idle_timeout: Duration,
    /// Whether an unregistered run id that names a thread by its pattern routes
    /// there (PROTOCOL §1), into threads a publisher created; off, only the
    /// registry routes.
    pub pattern_routing: bool,
    /// Whether events are redacted before they are stored (PROTOCOL §8). Every
    /// source appends through a log, so this is the one place it happens.
    pub redact: bool,
    /// Most bytes of encoded events one read answers (history pages, replays):
    /// what a reader holds in memory is bounded by bytes, not only by events.
    pub max_page_bytes: usize,
    /// How long after its run ends an `event_id` is still recognised as a repeat
    /// (PROTOCOL §2); then it is forgotten, on disk too.
    pub dedup_window: Duration,
    /// After a failed commit (a full disk), how often the store is asked
    /// whether it takes writes again; the log resumes by itself once it does.
    pub retry_after_failure: Duration,
    /// Threads with no run in the working state that it keeps (the oldest idle
    /// go first); the others are read back from the store when needed.
    pub thread_cache: usize,
    /// How much history is kept (all of it by default). A log over a store
    /// applies the per-thread limit as it appends; the sweep
    /// ([`Log::enforce_retention`]) applies the age and global limits.
    pub retention: RetentionPolicy,
    /// How long an input request waits for its answer, unless it says, and at most.
    pub input_timeouts: InputTimeouts,
}

impl LogConfig {
    /// Prepares a batch for storing: the redaction pass, when it is on, and
    /// each input request's timeout settled ([`agentwire_protocol::input::stamp_expiry`]).
    pub fn prepare(&self, events: &mut [NewEvent]) {
        if self.redact {
            events.iter_mut().for_each(agentwire_protocol::redact::redact_event);
        }
        let mut now = None;
        for event in events.iter_mut().filter(|e| e.kind == EventKind::InputRequested) {
            let now = *now.get_or_insert_with(Timestamp::now);
            agentwire_protocol::input::stamp_expiry(&mut event.data, now, self.input_timeouts);
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            run_idle_timeout: Duration::from_secs(300),
            pattern_routing: true,
            redact: true,
            max_page_bytes: DEFAULT_PAGE_BYTES,
            dedup_window: Duration::from_secs(24 * 3600),
            retry_after_failure: Duration::from_secs(1),
            thread_cache: 10_000,
            retention: RetentionPolicy::default(),
            input_timeouts: InputTimeouts::default(),
        }
    }
}

/// The thread a caller-chosen run id names by its pattern (PROTOCOL §1), when
/// that is not the thread the run is registered in. Such an id is accepted only
/// if that thread belongs to the same user: otherwise anyone could register
/// `run_thread_alice1_…` first and so capture the events alice's publisher
/// sends to it.
pub fn foreign_pattern_thread(run: &RunId, thread: &ThreadId) -> Option<ThreadId> {
    agentwire_protocol::extract_thread_id(run.as_str()).filter(|named| named != thread)
}

/// The log: registry, numbered events, lifecycle, feed (see the crate docs).
#[async_trait]
pub trait Log: Send + Sync + 'static {
    /// Creates a thread owned by `owner`; a fresh id when `thread_id` is `None`.
    /// [`LogError::ThreadExists`] if the id is taken.
    async fn create_thread(&self, thread_id: Option<ThreadId>, owner: &UserId) -> Result<ThreadId, LogError>;

    /// Creates the thread for `owner` if it is new; [`LogError::Forbidden`] if it
    /// belongs to someone else.
    async fn ensure_thread(&self, thread_id: &ThreadId, owner: &UserId) -> Result<(), LogError>;

    /// The thread's owner, `None` when the thread does not exist.
    async fn thread_owner(&self, thread_id: &ThreadId) -> Result<Option<UserId>, LogError>;

    /// Registers a run (creating its thread for `owner` if new). Its idle clock starts now.
    async fn create_run(&self, run: NewRun) -> Result<RunInfo, LogError>;

    /// The runs of `thread_id` that are going (registered or started, not
    /// ended), in no particular order; none for a thread that does not exist.
    async fn running_runs(&self, thread_id: &ThreadId) -> Result<Vec<RunId>, LogError>;

    /// [`Log::create_run`] only while no run of the thread is going:
    /// [`LogError::RunInFlight`] (naming one that is) otherwise. A log that can
    /// checks and registers in one step; this default looks, then registers.
    async fn create_run_if_idle(&self, run: NewRun) -> Result<RunInfo, LogError> {
        if let Some(going) = self.running_runs(&run.thread_id).await?.into_iter().next() {
            return Err(LogError::RunInFlight(going));
        }
        self.create_run(run).await
    }

    /// Looks a run up in the registry (no extraction fallback: a run that never
    /// published is unknown).
    async fn run(&self, run_id: &str) -> Result<Option<RunInfo>, LogError>;

    /// Appends a run's events, all or nothing: resolves the run (registry, then
    /// the thread extraction fallback), de-duplicates by `event_id`, checks the
    /// lifecycle, numbers the events and hands them to the feed.
    async fn append(&self, run_id: &str, events: Vec<NewEvent>) -> Result<Appended, LogError>;

    /// [`Log::append`] in two steps, for a publisher that sends events one
    /// after another without waiting for each to be stored: answers once the
    /// append is decided (refusals are the answer), with what answers once it
    /// is stored. Appends decided one after another are stored in that order;
    /// one whose write fails fails every one decided after it. A log that
    /// cannot tell the steps apart answers once the append is stored.
    async fn append_queued(&self, run_id: &str, events: Vec<NewEvent>) -> Result<Queued, LogError> {
        let appended = self.append(run_id, events).await?;
        Ok(Box::pin(std::future::ready(Ok(appended))))
    }

    /// Answers an open input request of `thread_id` (PROTOCOL §2.1): appends
    /// `input_received` with the checked answer, to the run that asked (the
    /// thread's live run holding the request, or `answer.run_id`'s). The caller
    /// checks that `answer.user` owns the thread. Refusals leave no trace:
    /// [`LogError::InputNotFound`], [`LogError::InputClosed`],
    /// [`LogError::BadAnswer`].
    async fn answer_input(&self, thread_id: &ThreadId, answer: InputAnswer) -> Result<Appended, LogError> {
        let _ = (thread_id, answer);
        Err(LogError::Unsupported("this log cannot answer input requests".into()))
    }

    /// Where input request `request_id` of `run_id` stands, waiting up to
    /// `wait` while it is open.
    async fn wait_input(&self, run_id: &str, request_id: &str, wait: Duration) -> Result<InputStatus, LogError> {
        input::wait_for_status(self, run_id, request_id, wait).await
    }

    /// Wakes a run's waiters whenever one of its input requests may have
    /// closed on this node's watch; `None`: waiters look again every so often instead.
    fn input_changes(&self) -> Option<Arc<input::InputWatch>> {
        None
    }

    /// Marks the run cancelled and appends `agent_error {code:"cancelled"}`.
    async fn cancel(&self, run_id: &str) -> Result<Appended, LogError>;

    /// Events of a thread with `seq > after_seq`, at most `limit` of them and
    /// fewer when they reach [`LogConfig::max_page_bytes`] (never none while
    /// events remain: page on with the last `seq`).
    async fn read(&self, thread_id: &ThreadId, after_seq: u64, limit: usize) -> Result<Page, LogError>;

    /// Ends every running run idle since before `now - run_idle_timeout` with
    /// `agent_error {code:"timeout"}`; answers the runs it ended. A run waiting
    /// on an input request is not idle: once the request lapses, its default
    /// answer is appended (`input_received`, `source: "timeout"`) and the run's
    /// idle time starts again.
    async fn expire_idle_runs(&self, now: Timestamp) -> Result<Vec<RunId>, LogError>;

    /// `Ok` when the log can take appends (its backbone is reachable).
    async fn ready(&self) -> Result<(), LogError>;

    /// Figures for the dashboard.
    fn stats(&self) -> LogStats;

    /// Whether other nodes append to this log too (a shared backbone), so what
    /// this node sees of its own connections is not the whole picture.
    fn is_shared(&self) -> bool {
        false
    }

    /// Ways an acknowledged event could still be lost that the operator chose
    /// to accept (a shared engine's persistence or replication settings); empty
    /// when there are none. The memory log's loss on restart is its nature, not listed.
    fn durability_warnings(&self) -> Vec<String> {
        Vec::new()
    }

    /// Ends, with `agent_error {code:"worker_lost"}`, every run still running
    /// that an in-process engine was executing when the log was last closed or
    /// its process died; answers them. Called once at start-up.
    async fn end_orphaned_runs(&self) -> Result<Vec<RunId>, LogError> {
        Ok(Vec::new())
    }

    /// Removes events past the log's retention policy ([`LogConfig::retention`],
    /// ages measured at `now`); answers how many went.
    async fn enforce_retention(&self, _now: Timestamp) -> Result<u64, LogError> {
        Ok(0)
    }

    /// Forgets the `event_id`s of runs that ended more than the de-duplication
    /// window before `now`; answers for how many runs.
    async fn forget_event_ids(&self, _now: Timestamp) -> Result<u64, LogError> {
        Ok(0)
    }

    /// Deletes a thread: ends its running runs with `agent_error {code:"cancelled"}`
    /// (answered, so their agents can be stopped), then removes the thread, its
    /// events, runs and event ids; its subscriptions end. The id is free again.
    /// With `owner`, [`LogError::Forbidden`] if the thread is someone else's.
    async fn delete_thread(&self, thread_id: &ThreadId, owner: Option<&UserId>) -> Result<Vec<RunId>, LogError> {
        let _ = (thread_id, owner);
        Err(LogError::Unsupported("this log cannot delete threads".into()))
    }

    /// Writes what is queued and stops background work; later writes are refused.
    async fn close(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored() -> StoredEvent {
        let thread = ThreadId::parse("thread_lazy1").unwrap();
        let run = RunId::parse("run_thread_lazy1_0000abcd").unwrap();
        let mut event = NewEvent::new(
            EventKind::ToolExecuting,
            json!({"tool_call_id":"c1","args":{"q":"é\n"}}).as_object().cloned().unwrap(),
        );
        event.event_id = Some("e-\"1\"".into());
        let mut events = numbered(&thread, &run, 6, Timestamp(1_795_600_800_123), vec![event]);
        Arc::try_unwrap(events.remove(0)).unwrap()
    }

    #[test]
    fn an_event_read_back_decodes_its_body_only_when_asked_and_equal_to_what_was_stored() {
        let original = stored();
        let read = StoredEvent::from_json(original.json.to_string()).unwrap();
        assert_eq!((read.seq(), read.kind(), read.ts()), (7, EventKind::ToolExecuting, original.ts()));
        assert_eq!((read.thread_id(), read.run_id()), (original.thread_id(), original.run_id()));
        assert!(read.envelope.get().is_none(), "the head alone was decoded");
        assert_eq!(read.envelope(), original.envelope());
    }

    #[test]
    fn a_reader_refuses_what_a_whole_envelope_would_not_decode_from() {
        let json = stored().json.to_string();
        let broken = [
            json.replace(r#""data":{"#, r#""data":["#).replace("}}", "]}"),
            json.replace(r#""seq":7"#, r#""seq":"7""#),
            json.replace(r#""event_id":"#, r#""event_id":1,"x":"#),
            json.replace("thread_lazy1\"", "thread-lazy1\""),
            json.replace(r#""type":"event""#, r#""type":"batch""#),
            json.replace("Z\"", "\""),
            json[..json.len() - 1].to_owned(),
        ];
        for text in broken {
            assert!(serde_json::from_str::<Envelope>(&text).is_err(), "a whole envelope refuses {text}");
            assert!(EventReader::default().read(text.clone()).is_err(), "the head reader refuses {text}");
        }
    }

    #[test]
    fn a_reader_shares_ids_between_events_and_still_checks_a_changed_one() {
        let json = stored().json.to_string();
        let mut reader = EventReader::default();
        let first = reader.read(json.clone()).unwrap();
        let second = reader.read(json.replace(r#""seq":7"#, r#""seq":8"#)).unwrap();
        assert!(std::ptr::eq(first.thread_id().as_str(), second.thread_id().as_str()));
        assert!(reader.read(json.replace("run_thread_lazy1_0000abcd", "run thread")).is_err());
    }
}
