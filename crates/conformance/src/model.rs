//! Every log against a plain model of its rules (`../shared/ENDURANCE.md`).
//!
//! Random sequences of every operation a caller can make (threads and runs with
//! colliding ids, client-chosen and pattern-named run ids, publishes with
//! repeated `event_id`s that the lifecycle accepts or refuses, input requests
//! and answers to them, right, wrong, repeated or misdirected, cancels, run
//! lookups, reads, watchdog ticks, thread deletes, retention by age) run against
//! the real log and, beside it, a model made of plain maps. Each step goes
//! through one of the log's two handles (two nodes of a cluster), chosen at
//! random. After every step their answers must agree; a restart (close and
//! reopen the same files, or start fresh nodes) may happen anywhere, after which
//! the log must hold exactly what it acknowledged.
//!
//! A fault may be injected anywhere too. On one node the next commit fails, so
//! that operation is `503`, and the log takes no writes until the store
//! recovers (`Recover`, as the committer does by itself once a write reaches the
//! disk again) or it is restarted; what the failed operation decided must not
//! be on disk, nor in the working state once it has recovered. (Between the
//! failure and the recovery run lookups are not compared: the working state may
//! still show the decision whose commit failed.) On a cluster the engine
//! refuses the next write any node makes ([`crate::faults`]): that operation is
//! `503` and leaves nothing behind, and the next goes on as usual.
//!
//! The memory log runs without restarts. Each case on one node may set a
//! per-thread limit of one to three events, which the log keeps as it
//! appends; a cluster keeps that limit in the background, with slack, so its
//! cases run without one. A cluster judges idleness on its own clock, so
//! `ExpireAll` (a watchdog tick in the future) does nothing there; the
//! `idle_expiry` rule covers it.
//!
//! `PROPTEST_CASES=2000 cargo test -p agentwire-conformance --test memory` runs more.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use agentwire_log::store::{Batch, Hooked, Store, StoreError, WriteHook};
use agentwire_log::{
    EmbeddedStore, InputAnswer, Log, LogConfig, LogError, MemoryStore, NewRun, NoFeed, RetentionPolicy, StoredLog,
};
use agentwire_protocol::{EventKind, LifecycleError, NewEvent, RunId, RunStatus, ThreadId, Timestamp, UserId};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::json;

use crate::faults::Faults;
use crate::{ClusterDeployment, Deployment, Nodes};

const THREADS: u8 = 3;
/// A day, in milliseconds.
const DAY_MS: i64 = 24 * 3600 * 1000;
/// The idle timeout of the logs under test; only `ExpireAll` gets past it.
const IDLE_MS: i64 = 3_600_000;
const USERS: u8 = 2;

/// A run an operation names.
#[derive(Debug, Clone)]
enum RunRef {
    /// The n-th run the model knows (modulo how many there are).
    Known(u8),
    /// An id nobody registered and that names no thread.
    Unknown,
    /// `run_thread_m{thread}_p{n}`: names a thread by its pattern (PROTOCOL §1).
    Pattern(u8, u8),
}

#[derive(Debug, Clone)]
struct Ev {
    kind: u8,
    tool: u8,
    id: Option<u8>,
}

/// One operation, through the log's first handle or its second (`on_b`).
#[derive(Debug, Clone)]
pub struct Step {
    op: Op,
    on_b: bool,
}

#[derive(Debug, Clone)]
enum Op {
    CreateThread {
        thread: u8,
        user: u8,
    },
    CreateRun {
        thread: u8,
        user: u8,
        chosen: Option<u8>,
        /// Only while no run of the thread is going (one node only; a cluster registers as usual).
        if_idle: bool,
    },
    Append {
        run: RunRef,
        events: Vec<Ev>,
    },
    Cancel {
        run: RunRef,
    },
    /// The thread's owner answers request `q{request}`, rightly or with an
    /// answer of the wrong kind, naming the run that asked or not.
    Answer {
        thread: u8,
        request: u8,
        right: bool,
        run: Option<RunRef>,
    },
    RunInfo {
        run: RunRef,
    },
    Read {
        thread: u8,
    },
    DeleteThread {
        thread: u8,
        /// The user asking; `None`: the operator.
        user: Option<u8>,
    },
    /// A retention sweep a day from now: every event is past the age limit.
    Expire,
    Restart,
    FailNextCommit,
    /// The store takes writes again: the log recovers (as it would by itself).
    Recover,
    /// A watchdog tick two idle timeouts from now: every running run is idle.
    ExpireAll,
}

fn run_ref() -> impl Strategy<Value = RunRef> {
    prop_oneof![
        6 => any::<u8>().prop_map(RunRef::Known),
        1 => Just(RunRef::Unknown),
        2 => (0..THREADS, 0..2u8).prop_map(|(t, n)| RunRef::Pattern(t, n)),
    ]
}

/// Operation sequences for [`check`].
pub fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec((op(), any::<bool>()).prop_map(|(op, on_b)| Step { op, on_b }), 1..60)
}

/// A per-thread limit for [`check`] on one node: none, or one to three events.
pub fn keep() -> impl Strategy<Value = Option<u8>> {
    prop::option::of(1..4u8)
}

fn op() -> impl Strategy<Value = Op> {
    let ev = (0..7u8, 0..2u8, prop::option::of(0..3u8)).prop_map(|(kind, tool, id)| Ev { kind, tool, id });
    prop_oneof![
        2 => (0..THREADS, 0..USERS).prop_map(|(thread, user)| Op::CreateThread { thread, user }),
        4 => (0..THREADS, 0..USERS, prop::option::of(0..4u8), any::<bool>())
            .prop_map(|(thread, user, chosen, if_idle)| Op::CreateRun { thread, user, chosen, if_idle }),
        10 => (run_ref(), prop::collection::vec(ev, 1..4)).prop_map(|(run, events)| Op::Append { run, events }),
        1 => run_ref().prop_map(|run| Op::Cancel { run }),
        3 => (0..THREADS, 0..2u8, prop::bool::weighted(0.8), prop::option::of(run_ref()))
            .prop_map(|(thread, request, right, run)| Op::Answer { thread, request, right, run }),
        1 => run_ref().prop_map(|run| Op::RunInfo { run }),
        2 => (0..THREADS).prop_map(|thread| Op::Read { thread }),
        1 => (0..THREADS, prop::option::of(0..USERS)).prop_map(|(thread, user)| Op::DeleteThread { thread, user }),
        1 => Just(Op::Expire),
        1 => Just(Op::Restart),
        1 => Just(Op::FailNextCommit),
        1 => Just(Op::Recover),
        2 => Just(Op::ExpireAll),
    ]
}

fn thread_name(t: u8) -> String {
    format!("thread_m{t}")
}

/// The run ids a caller may choose: two plain ones and two that name a thread by pattern.
fn chosen_name(n: u8) -> String {
    match n {
        0 | 1 => format!("run_c{n}"),
        _ => format!("run_thread_m{}_p0", n - 2),
    }
}

fn event(e: &Ev) -> NewEvent {
    let tool = format!("c{}", e.tool);
    let (kind, data) = match e.kind {
        0 => (EventKind::AgentStarted, json!({"agent_name":"a"})),
        1 => (EventKind::AgentThinking, json!({"thought":"t"})),
        2 => (EventKind::ToolExecuting, json!({"tool_call_id": tool, "tool_name":"t"})),
        3 => (EventKind::ToolCompleted, json!({"tool_call_id": tool})),
        4 => (EventKind::AgentCompleted, json!({})),
        5 => (EventKind::AgentError, json!({"code":"failed","message":"m"})),
        _ => (EventKind::InputRequested, json!({"request_id": format!("q{}", e.tool), "kind": "text", "prompt": "?"})),
    };
    let event = NewEvent::new(kind, data.as_object().cloned().unwrap_or_default());
    match e.id {
        Some(id) => event.with_event_id(format!("e{id}")),
        None => event,
    }
}

/// An `input_received` for request `id`, as the model follows it.
fn received(id: &str) -> NewEvent {
    let data = json!({"request_id": id, "kind": "text", "answer": {"text": "x"}});
    NewEvent::new(EventKind::InputReceived, data.as_object().cloned().unwrap_or_default())
}

/// An answer, as comparable between the log and the model.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Seqs(Vec<u64>),
    Created,
    /// A run's status and its open input requests.
    Run(Option<(RunStatus, Vec<String>)>),
    Events(Vec<(u64, EventKind, String)>),
    /// A deleted thread's runs that were running, sorted.
    Deleted(Vec<String>),
    /// Events a retention sweep removed.
    Removed(u64),
    Refused(&'static str),
}

fn refused(e: &LogError) -> Answer {
    Answer::Refused(match e {
        LogError::ThreadNotFound(_) => "thread_not_found",
        LogError::RunNotFound(_) => "run_not_found",
        LogError::Forbidden => "forbidden",
        LogError::ThreadExists(_) => "thread_exists",
        LogError::RunExists(_) => "run_exists",
        LogError::Lifecycle(l) => match l {
            LifecycleError::NotStarted => "not_started",
            LifecycleError::AlreadyStarted => "already_started",
            LifecycleError::Ended => "ended",
            LifecycleError::UnknownToolCall(_) => "unknown_tool_call",
            LifecycleError::ToolCallAlreadyOpen(_) => "tool_call_open",
            LifecycleError::ToolCallsOpen(_) => "tool_calls_open",
            LifecycleError::InputAlreadyRequested(_) => "input_already_requested",
            LifecycleError::TooManyOpenInputs(_) => "too_many_open_inputs",
            LifecycleError::UnknownInput(_) | LifecycleError::InputClosed(_) => "input_lifecycle",
        },
        LogError::Unavailable(_) => "unavailable",
        LogError::TooLarge(_) => "too_large",
        LogError::Unsupported(_) => "unsupported",
        LogError::RunInFlight(_) => "run_in_flight",
        LogError::InputNotFound(_) => "input_not_found",
        LogError::InputClosed(_) => "input_closed",
        LogError::BadAnswer(_) => "bad_answer",
    })
}

/// A run's lifecycle, written out plainly.
#[derive(Debug, Clone, Default)]
struct Life {
    started: bool,
    status: Option<RunStatus>,
    open: BTreeSet<String>,
    /// Input requests open, and those closed (answered, or closed by the end).
    asked: BTreeSet<String>,
    closed: BTreeSet<String>,
}

impl Life {
    fn apply(&mut self, e: &NewEvent) -> Result<(), &'static str> {
        if self.status.is_some() {
            return Err("ended");
        }
        let tool = || e.data.get("tool_call_id").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        let request = || e.data.get("request_id").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        match e.kind {
            EventKind::AgentStarted if self.started => return Err("already_started"),
            EventKind::AgentStarted => self.started = true,
            EventKind::AgentError => self.end(RunStatus::Error),
            _ if !self.started => return Err("not_started"),
            EventKind::ToolExecuting if !self.open.insert(tool()) => return Err("tool_call_open"),
            EventKind::ToolCompleted if !self.open.remove(&tool()) => return Err("unknown_tool_call"),
            EventKind::AgentCompleted if !self.open.is_empty() => return Err("tool_calls_open"),
            EventKind::AgentCompleted => self.end(RunStatus::Completed),
            EventKind::InputRequested if self.asked.contains(&request()) || self.closed.contains(&request()) => {
                return Err("input_already_requested");
            }
            EventKind::InputRequested => {
                self.asked.insert(request());
            }
            EventKind::InputReceived if !self.asked.remove(&request()) => return Err("input_lifecycle"),
            EventKind::InputReceived => {
                self.closed.insert(request());
            }
            _ => {}
        }
        Ok(())
    }

    /// A terminal event: open requests close with the run.
    fn end(&mut self, status: RunStatus) {
        self.status = Some(status);
        self.closed.extend(std::mem::take(&mut self.asked));
    }

    fn answer(&self) -> (RunStatus, Vec<String>) {
        (self.status.unwrap_or(RunStatus::Running), self.asked.iter().cloned().collect())
    }
}

#[derive(Debug, Default, Clone)]
struct Model {
    /// thread → (owner, created by a publisher)
    threads: HashMap<String, (u8, bool)>,
    /// Registered runs, in order, with their thread.
    runs: Vec<(String, String)>,
    /// Every run id ever registered (also those a delete or retention took since).
    named: BTreeSet<String>,
    life: HashMap<String, Life>,
    ids: HashMap<(String, String), u64>,
    /// Retained events per thread.
    events: HashMap<String, Vec<(u64, EventKind, String)>>,
    /// The last seq given out per thread (retention does not move it).
    heads: HashMap<String, u64>,
    /// Whether retention takes an ended run with its last event (a store that
    /// keeps runs; the memory log keeps every run in its working state).
    drops_trimmed_runs: bool,
    /// Most events kept per thread, as the log's settings say.
    keep: Option<usize>,
    /// Whether the log deletes threads (a cluster answers `unsupported`).
    deletes: bool,
    /// Whether `CreateRun { if_idle }` asks the log to check (one node).
    exclusive_creates: bool,
    /// Whether a failed write leaves the log refusing writes until it
    /// recovers (one node), rather than failing alone (a cluster).
    faults_stick: bool,
    /// The next commit fails.
    armed: bool,
    /// A commit failed: writes are refused until a restart.
    failed: bool,
}

impl Model {
    fn thread_of(&self, run: &str) -> Option<String> {
        self.runs.iter().find(|(r, _)| r == run).map(|(_, t)| t.clone())
    }

    /// Whether a run of `thread` is going (registered or started, not ended).
    fn going(&self, thread: u8) -> bool {
        let name = thread_name(thread);
        self.runs.iter().any(|(run, t)| *t == name && self.life.get(run).is_some_and(|l| l.status.is_none()))
    }

    /// The run id an operation names.
    fn name(&self, run: &RunRef) -> String {
        match run {
            RunRef::Known(i) if !self.runs.is_empty() => self.runs[usize::from(*i) % self.runs.len()].0.clone(),
            RunRef::Known(_) | RunRef::Unknown => "run:nobody".into(),
            RunRef::Pattern(t, n) => format!("run_thread_m{t}_p{n}"),
        }
    }

    fn create_thread(&mut self, thread: u8, user: u8) -> Answer {
        let name = thread_name(thread);
        if self.threads.contains_key(&name) {
            return Answer::Refused("thread_exists");
        }
        self.threads.insert(name.clone(), (user, false));
        self.events.insert(name, Vec::new());
        Answer::Created
    }

    /// Checks a run registration; `Ok` with the chosen id (if any) when it may go ahead.
    fn check_run(&self, thread: u8, user: u8, chosen: Option<u8>) -> Result<Option<String>, Answer> {
        let name = thread_name(thread);
        let chosen = chosen.map(chosen_name);
        if let Some(id) = &chosen {
            if let Some(named) = agentwire_protocol::extract_thread_id(id).map(|t| t.to_string())
                && named != name
                && self.threads.get(&named).is_none_or(|(owner, _)| *owner != user)
            {
                return Err(Answer::Refused("forbidden"));
            }
            if self.thread_of(id).is_some() {
                return Err(Answer::Refused("run_exists"));
            }
        }
        if self.threads.get(&name).is_some_and(|(owner, _)| *owner != user) {
            return Err(Answer::Refused("forbidden"));
        }
        Ok(chosen)
    }

    fn register(&mut self, run: String, thread: u8, user: u8) {
        let name = thread_name(thread);
        self.threads.entry(name.clone()).or_insert((user, true));
        self.events.entry(name.clone()).or_default();
        self.runs.push((run.clone(), name));
        self.named.insert(run.clone());
        self.life.insert(run, Life::default());
    }

    fn append(&mut self, run: &str, events: &[NewEvent], cancel: bool) -> Answer {
        let fresh = self.thread_of(run).is_none();
        let thread = match self.thread_of(run) {
            Some(t) => t,
            None if cancel => return Answer::Refused("run_not_found"),
            None => match agentwire_protocol::extract_thread_id(run).map(|t| t.to_string()) {
                Some(t) if self.threads.get(&t).is_some_and(|(_, by_publisher)| *by_publisher) => t,
                _ => return Answer::Refused("run_not_found"),
            },
        };
        let mut life = self.life.get(run).cloned().unwrap_or_default();
        let head = self.heads.get(&thread).copied().unwrap_or(0);
        let mut seqs = Vec::new();
        let mut new: Vec<&NewEvent> = Vec::new();
        let mut in_batch: HashMap<String, u64> = HashMap::new();
        for e in events {
            if let Some(id) = &e.event_id {
                if let Some(&seq) = self.ids.get(&(run.to_owned(), id.clone())) {
                    seqs.push(seq);
                    continue;
                }
                if let Some(&seq) = in_batch.get(id) {
                    seqs.push(seq);
                    continue;
                }
                in_batch.insert(id.clone(), head + 1 + new.len() as u64);
            }
            seqs.push(head + 1 + new.len() as u64);
            new.push(e);
        }
        for e in &new {
            if let Err(why) = life.apply(e) {
                return Answer::Refused(why);
            }
        }
        if new.is_empty() {
            return Answer::Seqs(seqs);
        }
        if fresh {
            self.runs.push((run.to_owned(), thread.clone()));
            self.named.insert(run.to_owned());
        }
        self.life.insert(run.to_owned(), life);
        self.heads.insert(thread.clone(), head + new.len() as u64);
        let log = self.events.entry(thread.clone()).or_default();
        for (i, e) in new.iter().enumerate() {
            let seq = head + 1 + i as u64;
            log.push((seq, e.kind, run.to_owned()));
            if let Some(id) = &e.event_id {
                self.ids.insert((run.to_owned(), id.clone()), seq);
            }
        }
        if let Some(keep) = self.keep {
            self.trim(&thread, |events| events.len().saturating_sub(keep));
        }
        Answer::Seqs(seqs)
    }

    /// The owner answers request `request` of `thread` (PROTOCOL §2.1): a
    /// running run of the thread that asked it, or the run named.
    fn answer_input(&mut self, thread: u8, request: u8, right: bool, named: Option<&str>) -> Answer {
        let thread = thread_name(thread);
        if !self.threads.contains_key(&thread) {
            return Answer::Refused("thread_not_found");
        }
        let id = format!("q{request}");
        let holder = match named {
            Some(run) => self.thread_of(run).filter(|t| *t == thread).map(|_| run.to_owned()),
            None => self
                .runs
                .iter()
                .filter(|(run, t)| *t == thread && self.life.get(run).is_some_and(|l| l.status.is_none()))
                .find(|(run, _)| self.life.get(run).is_some_and(|l| l.asked.contains(&id) || l.closed.contains(&id)))
                .map(|(run, _)| run.clone()),
        };
        let Some(life) = holder.as_ref().and_then(|run| self.life.get(run)) else {
            return Answer::Refused("input_not_found");
        };
        if life.closed.contains(&id) {
            return Answer::Refused("input_closed");
        }
        if !life.asked.contains(&id) {
            return Answer::Refused("input_not_found");
        }
        if !right {
            return Answer::Refused("bad_answer");
        }
        let run = holder.unwrap_or_default();
        self.append(&run, &[received(&id)], true)
    }

    /// Deletes a thread with its runs, their lifecycles and event ids.
    fn delete_thread(&mut self, thread: u8, user: Option<u8>) -> Answer {
        if !self.deletes {
            return Answer::Refused("unsupported");
        }
        let name = thread_name(thread);
        match (self.threads.get(&name), user) {
            (None, _) => return Answer::Refused("thread_not_found"),
            (Some((owner, _)), Some(user)) if *owner != user => return Answer::Refused("forbidden"),
            _ => {}
        }
        self.threads.remove(&name);
        self.events.remove(&name);
        self.heads.remove(&name);
        let gone: Vec<String> = self.runs.iter().filter(|(_, t)| *t == name).map(|(r, _)| r.clone()).collect();
        self.runs.retain(|(_, t)| *t != name);
        let mut running = Vec::new();
        for run in &gone {
            if self.life.remove(run).is_some_and(|life| life.status.is_none()) {
                running.push(run.clone());
            }
        }
        self.ids.retain(|(run, _), _| !gone.contains(run));
        running.sort();
        Answer::Deleted(running)
    }

    /// Removes the first `cut(events)` events of `thread`; answers how many
    /// went. An ended run none of whose events is left goes too (where the
    /// store keeps runs).
    fn trim(&mut self, thread: &str, cut: impl FnOnce(&[(u64, EventKind, String)]) -> usize) -> u64 {
        let mut last_seq: HashMap<String, u64> = HashMap::new();
        for events in self.events.values() {
            for (seq, _, run) in events {
                last_seq.insert(run.clone(), *seq);
            }
        }
        let Some(events) = self.events.get_mut(thread) else { return 0 };
        let cut = cut(events);
        if cut == 0 {
            return 0;
        }
        let keep_from = events.get(cut).map_or(u64::MAX, |e| e.0);
        events.drain(..cut);
        let gone: Vec<String> = self
            .runs
            .iter()
            .filter(|(run, t)| {
                let ended = self.life.get(run).is_some_and(|l| l.status.is_some());
                t == thread && ended && last_seq.get(run).is_some_and(|s| *s < keep_from)
            })
            .map(|(run, _)| run.clone())
            .collect();
        if self.drops_trimmed_runs {
            self.runs.retain(|(run, _)| !gone.contains(run));
            self.life.retain(|run, _| !gone.contains(run));
            self.ids.retain(|(run, _), _| !gone.contains(run));
        }
        cut as u64
    }

    /// A sweep by age that every event is past; answers how many went.
    fn expire(&mut self) -> u64 {
        let threads: Vec<String> = self.events.keys().cloned().collect();
        threads.iter().map(|t| self.trim(t, <[_]>::len)).sum()
    }

    fn read(&self, thread: u8) -> Answer {
        match self.events.get(&thread_name(thread)) {
            Some(events) => Answer::Events(events.clone()),
            None => Answer::Refused("thread_not_found"),
        }
    }
}

/// Makes the next commit fail when told to.
struct FailNext(Arc<AtomicBool>);

impl WriteHook for FailNext {
    fn write(&self, inner: &dyn Store, batches: &[&Batch]) -> Result<(), StoreError> {
        if self.0.swap(false, Ordering::AcqRel) {
            return Err(StoreError::Io("injected: the disk said no".into()));
        }
        inner.write(batches)
    }
}

/// Which log [`check`] runs against.
#[derive(Debug, Clone)]
pub enum Target {
    /// The memory log (no restarts).
    Memory,
    /// The embedded log in a temporary directory.
    Embedded,
    /// Two nodes of a cluster on the engine at this address.
    Cluster(String),
}

/// The log under test, how to inject a fault, and how to restart it.
enum Subject {
    /// One node: the memory log, or the embedded one in `dir`.
    Stored {
        dir: Option<tempfile::TempDir>,
        /// The per-thread retention limit of this case.
        keep: Option<u8>,
        log: Option<Arc<StoredLog<Hooked<FailNext>>>>,
        fail_next: Arc<AtomicBool>,
        /// The embedded store under the log, and how many restarts it had:
        /// every other restart is a crash (see [`Subject::restart`]).
        embedded: Option<Arc<EmbeddedStore>>,
        restarts: u32,
    },
    Cluster {
        deployment: ClusterDeployment,
        nodes: Option<Nodes>,
        faults: Arc<Faults>,
    },
}

/// The settings of every log under test.
fn log_config(keep: Option<u8>) -> LogConfig {
    let idle = std::time::Duration::from_millis(IDLE_MS as u64);
    // Recovery happens only when a step says so.
    let never = std::time::Duration::from_secs(24 * 3600);
    // One idle thread kept: threads are evicted and read back all the time.
    // Events live an hour: `Op::Expire` sweeps as if a day had passed.
    let retention = RetentionPolicy {
        max_events_per_thread: keep.map_or(0, u64::from),
        max_age: std::time::Duration::from_secs(3600),
        ..RetentionPolicy::default()
    };
    LogConfig { run_idle_timeout: idle, retry_after_failure: never, thread_cache: 1, retention, ..LogConfig::default() }
}

impl Subject {
    async fn open(target: &Target, keep: Option<u8>) -> Self {
        match target {
            Target::Cluster(url) => {
                // A checkpoint every other event: views are rebuilt from them all the time.
                let mut deployment = ClusterDeployment::new(url, "model").checkpoint_every(2);
                let faults = deployment.faults();
                // Retention forgets an ended run once its window has passed, and a
                // node that did not trim knows by its own clock: the sweep a day
                // ahead (`Op::Expire`) would be ahead of it by a day, which no
                // window survives. With no window both agree at once.
                let config = LogConfig { dedup_window: std::time::Duration::ZERO, ..log_config(None) };
                let nodes = deployment.open(config, Arc::new(NoFeed)).await;
                Self::Cluster { deployment, nodes: Some(nodes), faults }
            }
            Target::Memory | Target::Embedded => {
                let dir = matches!(target, Target::Embedded).then(|| tempfile::tempdir().expect("temp dir"));
                let fail_next = Arc::new(AtomicBool::new(false));
                let (log, embedded) = Self::open_stored(dir.as_ref(), keep, &fail_next);
                Self::Stored { dir, keep, log: Some(log), fail_next, embedded, restarts: 0 }
            }
        }
    }

    fn open_stored(
        dir: Option<&tempfile::TempDir>,
        keep: Option<u8>,
        fail_next: &Arc<AtomicBool>,
    ) -> (Arc<StoredLog<Hooked<FailNext>>>, Option<Arc<EmbeddedStore>>) {
        let embedded = dir.map(|dir| Arc::new(EmbeddedStore::open(dir.path()).expect("open the store")));
        let inner: Box<dyn Store> = match &embedded {
            Some(store) => Box::new(store.clone()),
            None => Box::new(MemoryStore::default()),
        };
        let store = Hooked { inner, hook: FailNext(fail_next.clone()) };
        let log = Arc::new(StoredLog::open(store, log_config(keep), Arc::new(NoFeed)).expect("open the log"));
        (log, embedded)
    }

    /// The handle a step goes through.
    fn log(&self, on_b: bool) -> &dyn Log {
        match self {
            Self::Stored { log, .. } => &**log.as_ref().expect("open log"),
            Self::Cluster { nodes, .. } => {
                let nodes = nodes.as_ref().expect("open nodes");
                if on_b { &*nodes.b } else { &*nodes.a }
            }
        }
    }

    /// Closes and reopens the same files, or starts fresh nodes; the memory
    /// log cannot restart. Every other restart of the embedded log is a
    /// crash: what its journal holds and its file does not yet, stays there,
    /// and the reopened store must apply it.
    async fn restart(&mut self) -> bool {
        match self {
            Self::Stored { dir: None, .. } => false,
            Self::Stored { dir: Some(dir), keep, log, fail_next, embedded, restarts } => {
                *restarts += 1;
                if let Some(store) = embedded.take().filter(|_| *restarts % 2 == 1) {
                    store.pause_applier();
                }
                if let Some(old) = log.take() {
                    old.close().await;
                }
                fail_next.store(false, Ordering::Release);
                let (reopened, store) = Self::open_stored(Some(dir), *keep, fail_next);
                (*log, *embedded) = (Some(reopened), store);
                true
            }
            Self::Cluster { deployment, nodes, faults } => {
                faults.disarm();
                if let Some(old) = nodes.take() {
                    *nodes = Some(deployment.restart(old).await);
                }
                true
            }
        }
    }

    /// Makes the next write fail.
    fn fail_next(&self) {
        match self {
            Self::Stored { fail_next, .. } => fail_next.store(true, Ordering::Release),
            Self::Cluster { faults, .. } => faults.fail_next_write(),
        }
    }

    /// Has the log take writes again after a failed one; `None` where a
    /// failure does not stick (a cluster).
    async fn recover(&self) -> Option<Result<(), LogError>> {
        match self {
            Self::Stored { log, .. } => Some(log.as_ref().expect("open log").recover().await),
            Self::Cluster { .. } => None,
        }
    }

    async fn close(mut self) {
        match &mut self {
            Self::Stored { log, .. } => {
                if let Some(log) = log.take() {
                    log.close().await;
                }
            }
            Self::Cluster { deployment, nodes, .. } => {
                if let Some(nodes) = nodes.take() {
                    deployment.close(nodes).await;
                }
            }
        }
    }

    /// Whether an injected failure still waits for a write, where the log
    /// can tell (a cluster); `None`: it waits for the next commit (one node).
    fn armed(&self) -> Option<bool> {
        match self {
            Self::Stored { .. } => None,
            Self::Cluster { faults, .. } => Some(faults.armed()),
        }
    }

    fn is_memory(&self) -> bool {
        matches!(self, Self::Stored { dir: None, .. })
    }

    /// Whether idleness is judged by the time a watchdog tick says (one node)
    /// rather than on the node's own clock (a cluster).
    fn expires_by_the_given_time(&self) -> bool {
        matches!(self, Self::Stored { .. })
    }
}

fn user(u: u8) -> UserId {
    UserId::parse(&format!("u{u}")).expect("user id")
}

async fn read_all(log: &dyn Log, thread: u8) -> Answer {
    let Ok(thread) = ThreadId::parse(&thread_name(thread)) else { return Answer::Refused("bad id") };
    match log.read(&thread, 0, 10_000).await {
        Ok(page) => Answer::Events(page.events.iter().map(|e| (e.seq(), e.kind(), e.run_id().to_string())).collect()),
        Err(e) => refused(&e),
    }
}

/// Whether `op` asks the log to write.
fn writes(op: &Op) -> bool {
    matches!(
        op,
        Op::CreateThread { .. }
            | Op::CreateRun { .. }
            | Op::Append { .. }
            | Op::Cancel { .. }
            | Op::Answer { .. }
            | Op::DeleteThread { .. }
            | Op::Expire
    )
}

/// Runs a write on the log and answers what the log said.
async fn write(log: &dyn Log, model: &Model, op: &Op) -> (Answer, Option<RunId>) {
    let answer = |r: Result<Vec<u64>, LogError>| r.map_or_else(|e| refused(&e), Answer::Seqs);
    match op {
        Op::CreateThread { thread, user: u } => {
            let id = ThreadId::parse(&thread_name(*thread)).expect("thread id");
            (log.create_thread(Some(id), &user(*u)).await.map_or_else(|e| refused(&e), |_| Answer::Created), None)
        }
        Op::CreateRun { thread, user: u, chosen, if_idle } => {
            let new = NewRun {
                thread_id: ThreadId::parse(&thread_name(*thread)).expect("thread id"),
                owner: user(*u),
                agent_name: None,
                in_process: false,
                run_id: chosen.map(|c| RunId::parse(&chosen_name(c)).expect("run id")),
            };
            let created = if *if_idle && model.exclusive_creates {
                log.create_run_if_idle(new).await
            } else {
                log.create_run(new).await
            };
            match created {
                Ok(info) => (Answer::Created, Some(info.run_id)),
                Err(e) => (refused(&e), None),
            }
        }
        Op::Append { run, events } => {
            let events: Vec<NewEvent> = events.iter().map(event).collect();
            (answer(log.append(&model.name(run), events).await.map(|a| a.seqs)), None)
        }
        Op::Cancel { run } => (answer(log.cancel(&model.name(run)).await.map(|a| a.seqs)), None),
        Op::Answer { thread, request, right, run } => {
            let id = ThreadId::parse(&thread_name(*thread)).expect("thread id");
            let value = if *right { json!({"text": "x"}) } else { json!({"approved": true}) };
            let answer_of = InputAnswer {
                request_id: format!("q{request}"),
                run_id: run.as_ref().map(|r| model.name(r)),
                answer: value,
                user: user(0),
            };
            (answer(log.answer_input(&id, answer_of).await.map(|a| a.seqs)), None)
        }
        Op::DeleteThread { thread, user: u } => {
            let id = ThreadId::parse(&thread_name(*thread)).expect("thread id");
            let deleted = log.delete_thread(&id, u.map(user).as_ref()).await.map(|runs| {
                let mut runs: Vec<String> = runs.iter().map(ToString::to_string).collect();
                runs.sort();
                Answer::Deleted(runs)
            });
            (deleted.unwrap_or_else(|e| refused(&e)), None)
        }
        Op::Expire => {
            let removed = log.enforce_retention(Timestamp(Timestamp::now().millis() + DAY_MS)).await;
            (removed.map_or_else(|e| refused(&e), Answer::Removed), None)
        }
        _ => (Answer::Refused("not a write"), None),
    }
}

/// What the model answers to a write, on `next` (a copy of the model), and whether it commits.
fn expect_write(next: &mut Model, op: &Op, minted: Option<&RunId>) -> (Answer, bool) {
    match op {
        Op::CreateThread { thread, user } => {
            let answer = next.create_thread(*thread, *user);
            let commits = answer == Answer::Created;
            (answer, commits)
        }
        Op::CreateRun { thread, user, chosen, if_idle } => match next.check_run(*thread, *user, *chosen) {
            Ok(_) if *if_idle && next.exclusive_creates && next.going(*thread) => {
                (Answer::Refused("run_in_flight"), false)
            }
            Ok(chosen) => {
                // The model cannot guess a minted id: it takes the log's (checked below).
                let id = chosen.or_else(|| minted.map(ToString::to_string)).unwrap_or_else(|| "run:minted".into());
                next.register(id, *thread, *user);
                (Answer::Created, true)
            }
            Err(answer) => (answer, false),
        },
        Op::Append { run, events } => {
            let id = next.name(run);
            let events: Vec<NewEvent> = events.iter().map(event).collect();
            // Seqs given out, not events kept: an append may trim as much as it adds.
            let before: u64 = next.heads.values().sum();
            let answer = next.append(&id, &events, false);
            let commits = next.heads.values().sum::<u64>() > before;
            (answer, commits)
        }
        Op::Cancel { run } => {
            let id = next.name(run);
            let answer = next.append(&id, &[NewEvent::agent_error("cancelled", "the run was cancelled")], true);
            let commits = matches!(answer, Answer::Seqs(_));
            (answer, commits)
        }
        Op::Answer { thread, request, right, run } => {
            let named = run.as_ref().map(|r| next.name(r));
            let answer = next.answer_input(*thread, *request, *right, named.as_deref());
            let commits = matches!(answer, Answer::Seqs(_));
            (answer, commits)
        }
        Op::DeleteThread { thread, user } => {
            let answer = next.delete_thread(*thread, *user);
            let commits = matches!(answer, Answer::Deleted(_));
            (answer, commits)
        }
        Op::Expire => {
            let removed = next.expire();
            (Answer::Removed(removed), removed > 0)
        }
        _ => (Answer::Refused("not a write"), false),
    }
}

async fn step(subject: &mut Subject, model: &mut Model, step: &Step) -> Result<(), TestCaseError> {
    let op = &step.op;
    if writes(op) {
        let (real, minted) = write(subject.log(step.on_b), model, op).await;
        if model.failed {
            prop_assert_eq!(real, Answer::Refused("unavailable"), "{:?} after a failed commit", op);
            return Ok(());
        }
        let mut next = model.clone();
        let (expected, commits) = expect_write(&mut next, op, minted.as_ref());
        // On a cluster the engine decides refusals too (a thread made only if
        // absent is a write), so any write of an operation may meet the
        // injected failure: whether it did is what the switch says.
        let hit = match subject.armed() {
            Some(still_armed) => model.armed && !still_armed,
            None => commits && model.armed,
        };
        if hit {
            // The injected failure: 503, and the decision must not survive a restart.
            prop_assert_eq!(real, Answer::Refused("unavailable"), "{:?} with a failing commit", op);
            model.armed = false;
            model.failed = model.faults_stick;
            return Ok(());
        }
        if let (Op::CreateRun { chosen: Some(c), .. }, Some(minted)) = (op, &minted) {
            let wanted = chosen_name(*c);
            prop_assert_eq!(minted.as_str(), wanted.as_str());
        }
        prop_assert_eq!(real, expected, "{:?}", op);
        *model = next;
        return Ok(());
    }
    match op {
        Op::RunInfo { run } => {
            let id = model.name(run);
            let real = match subject.log(step.on_b).run(&id).await {
                Ok(info) => Answer::Run(info.map(|i| run_answer(&i))),
                Err(e) => refused(&e),
            };
            let expected = Answer::Run(model.life.get(&id).map(Life::answer));
            if !model.failed {
                prop_assert_eq!(real, expected, "{:?} ({})", op, id);
            }
        }
        Op::Read { thread } => {
            let real = read_all(subject.log(step.on_b), *thread).await;
            if !model.failed {
                prop_assert_eq!(real, model.read(*thread), "{:?}", op);
            }
        }
        // The memory log cannot restart: it stays as it is.
        Op::Restart if subject.restart().await => {
            model.armed = false;
            model.failed = false;
            // After a restart the log holds exactly what it acknowledged.
            agrees(subject, model, "after a restart").await?;
        }
        Op::FailNextCommit => {
            subject.fail_next();
            model.armed = true;
        }
        Op::Recover => {
            let Some(recovered) = subject.recover().await else { return Ok(()) };
            if model.failed && subject.is_memory() {
                // The memory store keeps no runs to reload: only a restart would do.
                prop_assert!(recovered.is_err(), "the memory log cannot recover");
                return Ok(());
            }
            prop_assert!(recovered.is_ok(), "recovery: {:?}", recovered);
            model.failed = false;
            // The working state is what the store holds: exactly what was acknowledged.
            agrees(subject, model, "after recovering").await?;
        }
        Op::ExpireAll if !subject.expires_by_the_given_time() => {}
        Op::ExpireAll => {
            let later = Timestamp(Timestamp::now().millis() + 2 * IDLE_MS);
            let real = subject.log(step.on_b).expire_idle_runs(later).await;
            let mut running: Vec<String> =
                model.life.iter().filter(|(_, life)| life.status.is_none()).map(|(run, _)| run.clone()).collect();
            running.sort();
            // A run waiting on a request is not idle: its requests lapse (answered by default) instead.
            let waiting: Vec<String> = running
                .iter()
                .filter(|run| model.life.get(*run).is_some_and(|l| !l.asked.is_empty()))
                .cloned()
                .collect();
            // After a failure nothing is written; an armed failure hits the first timeout's commit.
            let fails_now = !model.failed && model.armed && !running.is_empty();
            if model.failed || fails_now {
                prop_assert_eq!(real.map_err(|e| refused(&e)), Err(Answer::Refused("unavailable")), "{:?}", op);
                if fails_now {
                    model.armed = false;
                    model.failed = model.faults_stick;
                }
                return Ok(());
            }
            let ended: Vec<String> = match real {
                Ok(ended) => ended.iter().map(ToString::to_string).collect(),
                Err(e) => return Err(TestCaseError::fail(format!("{op:?}: {e}"))),
            };
            let mut sorted = ended.clone();
            sorted.sort();
            let idle: Vec<String> = running.iter().filter(|run| !waiting.contains(run)).cloned().collect();
            prop_assert_eq!(&sorted, &idle, "the runs ended as idle");
            prop_assert_eq!(&ended, &idle, "in the order of their ids");
            // A tick takes the runs due in the order of their ids, which fixes their seqs in each thread.
            for run in running {
                let asked: Vec<String> =
                    model.life.get(&run).map(|l| l.asked.iter().cloned().collect()).unwrap_or_default();
                if asked.is_empty() {
                    model.append(&run, &[NewEvent::agent_error("timeout", "idle")], true);
                } else {
                    let answers: Vec<NewEvent> = asked.iter().map(|id| received(id)).collect();
                    model.append(&run, &answers, true);
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// A run's status and open requests, as the log says.
fn run_answer(info: &agentwire_log::RunInfo) -> (RunStatus, Vec<String>) {
    (info.status, info.inputs.open.keys().cloned().collect())
}

/// Every thread reads as the model says, and every run ever named answers as the
/// model says (one that retention or a delete took answers nothing).
async fn agrees(subject: &Subject, model: &Model, when: &str) -> Result<(), TestCaseError> {
    for on_b in [false, true] {
        let log = subject.log(on_b);
        for thread in 0..THREADS {
            prop_assert_eq!(read_all(log, thread).await, model.read(thread), "{} (second handle: {})", when, on_b);
        }
        let chosen = (0..4).map(chosen_name);
        let names: BTreeSet<String> = model.named.iter().cloned().chain(chosen).collect();
        for run in &names {
            let real = log.run(run).await.map(|info| info.map(|i| run_answer(&i)));
            let expected = model.life.get(run).map(Life::answer);
            prop_assert_eq!(
                real.map_err(|e| refused(&e)),
                Ok(expected),
                "run {} {} (second handle: {})",
                run,
                when,
                on_b
            );
        }
    }
    Ok(())
}

/// Runs `steps` against the log `target` and the model side by side, with
/// `keep` as the per-thread limit (one node only); fails the case at the
/// first answer they disagree on.
pub fn check(target: &Target, steps: &[Step], keep: Option<u8>) -> Result<(), TestCaseError> {
    let cluster = matches!(target, Target::Cluster(_));
    assert!(!(cluster && keep.is_some()), "a cluster keeps the per-thread limit in the background");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut subject = Subject::open(target, keep).await;
        let mut model = Model {
            drops_trimmed_runs: !subject.is_memory(),
            keep: keep.map(usize::from),
            deletes: !cluster,
            exclusive_creates: !cluster,
            faults_stick: !cluster,
            ..Model::default()
        };
        let mut outcome = Ok(());
        for step in steps {
            outcome = Faults::on_behalf_of_caller(self::step(&mut subject, &mut model, step)).await;
            if outcome.is_err() {
                break;
            }
        }
        if outcome.is_ok() {
            // The last word: once restarted, every thread and run reads as the model says.
            if subject.restart().await {
                model.failed = false;
            }
            if !model.failed {
                outcome = agrees(&subject, &model, "at the end").await;
            }
        }
        subject.close().await;
        outcome
    })
}
