//! [`ClusterLog`]: the log's rules over a [`Backbone`] that several nodes share.
//!
//! Each node caches, per thread it has touched, a **view**: the thread's owner,
//! where its history ends ([`Position`]) and, per run, the lifecycle and the
//! `event_id`s seen. An append is decided on the view and stored with a
//! compare-and-set on the position; when another node moved the thread on, the
//! view reads what it missed and the append is decided again. The view is
//! never trusted blindly: a stale view only ever costs a retry, because the
//! backbone refuses any append decided on less than the whole history.
//!
//! Appends to one thread from one node queue on the view's async mutex, so a
//! node never races itself; nodes race each other only on shared threads.
//!
//! **Retention keeps the run state it removes.** Before it removes a thread's
//! events up to a `seq`, a node records beside the thread what the rules know
//! of its runs through that `seq` ([`TrimmedRuns`]: lifecycle, open tool
//! calls, the newest `event_id`s, within the de-duplication window for ended
//! runs), moved on from the previous record by exactly the events removed; the
//! record is a compare-and-set, so two nodes trimming at once cannot set it
//! back. A view built later, or one that finds a gap retention left, starts
//! from that record and reads only the events after it. Every
//! [`ClusterConfig::checkpoint_every`] events a node's retention worker also
//! writes a view's run state there (a checkpoint, which removes nothing), so a
//! view rebuilt from nothing reads a bounded tail, not the whole history. A run
//! retention forgot may leave state in other nodes' views and caches; they ask
//! the engine before acting on it ([`Inner::forgotten`]). The per-thread limit
//! is kept where it is passed: an append that takes its thread past the limit
//! (and its slack) queues a trim for the node's retention worker, so no task
//! walks every thread for it.
//!
//! A **janitor** task per node sends its heartbeat, keeps the dashboard figures,
//! and ends the in-process runs of nodes whose heartbeat has lapsed for a whole
//! TTL with `agent_error {code:"worker_lost"}`.
//!
//! The **idle watchdog** never compares one node's clock with another's. A run
//! is idle when this node has watched its running entry stay unchanged for the
//! timeout (plus the tenth by which appends refresh it), measured on its own
//! monotonic clock; and the `timeout` error is appended only if, on the
//! thread's current view, this node has seen no event of the run for the
//! timeout. The append is a compare-and-set on the thread's head like any
//! other, so an event that lands meanwhile makes it re-check and stand down.
//! A run waiting on an input request says until when in its running entry;
//! it is not idle then, and once that time passes (on the node's wall clock,
//! as the request's `expires_at` says) a node appends the lapsed requests'
//! default answers, decided on the current view: a request answered meanwhile
//! is closed, and the node stands down.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentwire_log::input::{self, InputAnswer, InputWatch};
use agentwire_log::store::ThreadExtent;
use agentwire_log::{
    Appended, FeedSink, Log, LogError, LogStats, NewRun, Page, PageBudget, RetentionPolicy, RunInfo, StoredEvent,
    numbered, plan_append, retention,
};
use agentwire_protocol::{EventKind, NewEvent, RunId, RunLifecycle, ThreadId, Timestamp, UserId, extract_thread_id};
use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{
    Backbone, BackboneError, ClusterConfig, Follower, Outcome, Position, RunEntry, RunState, Running, RunningChange,
    ThreadMeta, TrimmedRuns,
};

/// Decisions retried on one append before giving up on a thread this contended.
const MAX_ATTEMPTS: usize = 64;
/// Events read per round trip when a view catches up.
const SYNC_PAGE: usize = 1024;
/// Registrations and thread records cached per thread view kept (both are
/// small, and a node looks them up for threads it holds no view of too).
const RECORDS_PER_VIEW: usize = 4;
/// `event_id`s of one run kept by retention past the events they name, and by
/// a view of a run that goes on (the newest): enough for any retry, small
/// enough for one engine record.
const MAX_KEPT_IDS: usize = 2048;
/// Trims waiting for the retention worker; past it an append's request is
/// dropped and the thread's next append asks again.
const TRIM_QUEUE: usize = 1024;
/// Threads one round of the retention sweep takes up.
const RETENTION_GROUP: usize = 64;
/// Events read per round trip when retention looks for the age cut-off.
const AGE_PAGE: usize = 256;
/// Events asked of the backbone by a page's first read; later reads are sized
/// by the page's byte budget and the events' average size so far.
const FIRST_READ_CHUNK: usize = 16;
/// Most events asked of the backbone at once for a page.
const MAX_READ_CHUNK: usize = 1024;

/// The average encoded size of `events` (1 when there are none).
fn budget_average(events: &[Arc<StoredEvent>]) -> usize {
    if events.is_empty() {
        return 1;
    }
    events.iter().map(|e| e.json.len()).sum::<usize>() / events.len()
}

/// What an append stores: events given, or events decided on the run's
/// current state (an answer to an input request, the lapsed requests'
/// defaults), decided again whenever the view moves on.
enum Events<'a> {
    Given(Vec<NewEvent>),
    Decided(&'a (dyn Fn(&RunLifecycle) -> Result<Vec<NewEvent>, LogError> + Send + Sync)),
}

/// What a node knows of one run from its thread's history.
#[derive(Debug, Default)]
struct RunView {
    /// What the rules need, as retention keeps it when it removes the events.
    state: RunState,
    /// When this node last refreshed the run's running entry (ms since the epoch).
    touched_ms: i64,
    /// When this node learnt of the run's latest event (its own clock; a view
    /// rebuilt from history counts from the rebuild, which only delays expiry).
    last_seen: Option<Instant>,
}

/// A node's cached view of a thread (see the module docs).
#[derive(Debug, Default)]
struct ThreadView {
    loaded: bool,
    at: Position,
    runs: HashMap<RunId, RunView>,
    /// The `seq` retention last removed through, as far as this view knows
    /// (another node's trim can make it more): where the per-thread limit counts from.
    trimmed_through: u64,
    /// A trim of this thread is queued for the retention worker.
    trim_queued: bool,
    /// How far the thread's recorded run state goes, as far as this view
    /// knows: the next checkpoint is due [`ClusterConfig::checkpoint_every`] after it.
    checkpointed_through: u64,
    /// A checkpoint of this view is queued for the retention worker.
    checkpoint_queued: bool,
}

impl ThreadView {
    /// Follows events already stored, in `seq` order.
    fn apply(&mut self, events: &[Arc<StoredEvent>]) {
        for event in events.iter().filter(|e| e.seq() > self.at.seq) {
            let run = self.runs.entry(event.run_id().clone()).or_default();
            if run.state.lifecycle.ended() {
                // An ended run takes no more events: this is a new run under
                // the id of one retention forgot (see `Inner::forgotten`).
                *run = RunView::default();
            }
            run.last_seen = Some(Instant::now());
            follow_run(&mut run.state, event);
            // A run that never ends must not grow its view without bound: past
            // twice what a record keeps, the view keeps what a record would.
            if run.state.event_ids.len() > 2 * MAX_KEPT_IDS {
                keep_newest_ids(&mut run.state);
            }
        }
    }

    /// A view that starts where the recorded run state does (a trim's or a
    /// checkpoint's): its runs as they were through `trimmed.through_seq`, the
    /// events after it still to read.
    fn from_trimmed(trimmed: TrimmedRuns) -> Self {
        let now = Instant::now();
        let removed_through = trimmed.removed_through();
        let runs = trimmed
            .runs
            .into_iter()
            .map(|(run, state)| (run, RunView { state, touched_ms: 0, last_seen: Some(now) }))
            .collect();
        Self {
            loaded: false,
            at: Position { seq: trimmed.through_seq, token: 0 },
            runs,
            trimmed_through: removed_through,
            trim_queued: false,
            checkpointed_through: trimmed.through_seq,
            checkpoint_queued: false,
        }
    }
}

/// Keeps at most [`MAX_KEPT_IDS`] `event_id`s per run in a record, the newest.
fn cap_event_ids(kept: &mut TrimmedRuns) {
    for run in kept.runs.values_mut() {
        keep_newest_ids(run);
    }
}

/// Keeps the run's newest [`MAX_KEPT_IDS`] `event_id`s: what a record keeps,
/// and what a view keeps of a run that goes on and on.
fn keep_newest_ids(run: &mut RunState) {
    if run.event_ids.len() <= MAX_KEPT_IDS {
        return;
    }
    let mut seqs: Vec<u64> = run.event_ids.values().copied().collect();
    seqs.sort_unstable();
    let oldest_kept = seqs[seqs.len() - MAX_KEPT_IDS];
    run.event_ids.retain(|_, seq| *seq >= oldest_kept);
}

/// Whether `kept`, the thread's recorded run state, shows that retention
/// forgot `run` (whose state a view holds as `state`): every event of it is
/// removed, and the record left it out.
fn is_forgotten(kept: &TrimmedRuns, run: &RunId, state: &RunState) -> bool {
    kept.removed_through() >= state.last_seq && !kept.runs.contains_key(run)
}

/// Moves a run's state past one of its stored events.
fn follow_run(run: &mut RunState, event: &StoredEvent) {
    let e = event.envelope();
    run.last_seq = e.seq;
    run.lifecycle.replay(e.event, &e.data, e.seq);
    if let Some(id) = &e.event_id {
        run.event_ids.insert(id.clone(), e.seq);
    }
    if run.agent_name.is_none() {
        run.agent_name = event.started_agent_name().map(str::to_owned);
    }
    if e.event == EventKind::AgentError && e.data.get("code").and_then(Value::as_str) == Some("cancelled") {
        run.cancel_requested = true;
    }
    if run.lifecycle.ended() && run.ended_ms.is_none() {
        run.ended_ms = Some(e.ts.millis());
    }
}

type Cell = Arc<tokio::sync::Mutex<ThreadView>>;

/// The thread views a node holds, at most `cap` of them. Past it, views give
/// way one at a time in second-chance order (CLOCK): one used since it was last
/// looked at gets another round, one in use is skipped. A view that went is
/// rebuilt from the backbone when it is needed again; nothing drops every idle
/// view at once.
struct Views<V> {
    map: HashMap<ThreadId, (Arc<V>, bool)>,
    order: VecDeque<ThreadId>,
    cap: usize,
}

impl<V: Default> Views<V> {
    fn new(cap: usize) -> Self {
        Self { map: HashMap::new(), order: VecDeque::new(), cap: cap.max(1) }
    }

    /// The view of `thread`, without counting it as used (the feed's look).
    fn peek(&self, thread: &ThreadId) -> Option<Arc<V>> {
        self.map.get(thread).map(|(view, _)| view.clone())
    }

    /// The view of `thread`, made (empty) if there is none.
    fn get(&mut self, thread: &ThreadId) -> Arc<V> {
        if let Some((view, used)) = self.map.get_mut(thread) {
            *used = true;
            return view.clone();
        }
        // Each view is looked at at most twice per insertion: the cost stays flat.
        let mut looks = self.order.len() * 2;
        while self.map.len() >= self.cap && looks > 0 {
            looks -= 1;
            let Some(oldest) = self.order.pop_front() else { break };
            let Some((view, used)) = self.map.get_mut(&oldest) else { continue };
            if Arc::strong_count(view) > 1 || *used {
                *used = false;
                self.order.push_back(oldest);
            } else {
                self.map.remove(&oldest);
            }
        }
        let view = Arc::new(V::default());
        self.map.insert(thread.clone(), (view.clone(), false));
        self.order.push_back(thread.clone());
        view
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

struct Inner<B> {
    backbone: B,
    config: ClusterConfig,
    views: Mutex<Views<tokio::sync::Mutex<ThreadView>>>,
    /// Per-node caches of what the backbone holds, bounded; the least used
    /// entries give way (quick_cache), and what went is read again on demand.
    metas: quick_cache::sync::Cache<ThreadId, ThreadMeta>,
    registry: quick_cache::sync::Cache<RunId, RunEntry>,
    runs_in_flight: AtomicU64,
    threads: AtomicU64,
    /// Each running entry's value as last read, and since when (this node's
    /// clock) it has not changed: the idle watchdog's evidence. Holds the
    /// running runs only.
    unchanged: Mutex<HashMap<RunId, (Running, Instant)>>,
    /// This node's hub.
    sink: Arc<dyn FeedSink>,
    /// Threads said to be rewound while their view was busy: the holder's
    /// next sync starts the view again. At most one per view held.
    rewound_busy: Mutex<std::collections::HashSet<ThreadId>>,
    /// Trims the per-thread limit asks for, and checkpoints, in order, for the retention worker.
    trims: tokio::sync::mpsc::Sender<Job>,
    /// What the engine's settings leave open for an acknowledged event to be lost (accepted at start).
    weak: Vec<String>,
    /// Woken when the feed brings an event that may close an input request.
    inputs: Arc<InputWatch>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// The log over a shared backbone. See the module docs.
pub struct ClusterLog<B> {
    inner: Arc<Inner<B>>,
}

fn unavailable(e: BackboneError) -> LogError {
    match e {
        // Permanent: a retry would be refused the same way, so not a `503`.
        BackboneError::TooLarge(why) => LogError::TooLarge(why),
        e => LogError::Unavailable(e.to_string()),
    }
}

impl<B: Backbone> ClusterLog<B> {
    /// Checks the backbone answers, then starts following its feed into `sink`
    /// and the janitor.
    pub async fn start(backbone: B, config: ClusterConfig, sink: Arc<dyn FeedSink>) -> Result<Self, BackboneError> {
        config.validate()?;
        backbone.ping().await?;
        let weak = backbone.durability().await?;
        if !weak.is_empty() {
            if !config.allow_weak_durability {
                return Err(BackboneError::Config(format!(
                    "an acknowledged event could be lost: {}. Fix the engine's settings (README: several nodes) \
                     or start with --allow-weak-durability to accept it",
                    weak.join("; ")
                )));
            }
            tracing::warn!(gaps = ?weak, "weak durability accepted: an acknowledged event could be lost");
        }
        backbone.heartbeat(&config.node_id, config.node_ttl).await?;
        let (trims, queued) = tokio::sync::mpsc::channel(TRIM_QUEUE);
        let cached = config.log.thread_cache.max(1);
        let inner = Arc::new(Inner {
            backbone,
            config,
            // `--thread-cache` bounds a node's views as it bounds the embedded log's threads.
            views: Mutex::new(Views::new(cached)),
            metas: quick_cache::sync::Cache::new(cached * RECORDS_PER_VIEW),
            registry: quick_cache::sync::Cache::new(cached * RECORDS_PER_VIEW),
            runs_in_flight: AtomicU64::new(0),
            threads: AtomicU64::new(0),
            unchanged: Mutex::new(HashMap::new()),
            trims,
            sink,
            rewound_busy: Mutex::new(std::collections::HashSet::new()),
            weak,
            inputs: Arc::new(InputWatch::default()),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        let follower = Arc::new(Feed { inner: Arc::downgrade(&inner) });
        let (feed, stop) = (inner.clone(), inner.stop.clone());
        inner.tasks.spawn(async move { feed.backbone.follow(follower, stop).await });
        inner.tasks.spawn(janitor(inner.clone()));
        inner.tasks.spawn(trim_threads(Arc::downgrade(&inner), queued, inner.stop.clone()));
        Ok(Self { inner })
    }
}

impl<B: Backbone> Inner<B> {
    fn cell(&self, thread: &ThreadId) -> Cell {
        self.views.lock().get(thread)
    }

    /// This node's view of `thread`, locked, if it holds one (none is made).
    async fn held_view(&self, thread: &ThreadId) -> Option<tokio::sync::OwnedMutexGuard<ThreadView>> {
        let cell = self.views.lock().peek(thread)?;
        Some(cell.lock_owned().await)
    }

    async fn meta(&self, thread: &ThreadId) -> Result<Option<ThreadMeta>, LogError> {
        if let Some(meta) = self.metas.get(thread) {
            return Ok(Some(meta));
        }
        let meta = self.backbone.thread(thread).await.map_err(unavailable)?;
        if let Some(meta) = &meta {
            self.remember_meta(thread.clone(), meta.clone());
        }
        Ok(meta)
    }

    /// Caches a thread's record; a thread's owner and creator never change, so
    /// the cache only needs a bound, not invalidation.
    fn remember_meta(&self, thread: ThreadId, meta: ThreadMeta) {
        self.metas.insert(thread, meta);
    }

    async fn owner(&self, thread: &ThreadId) -> Result<Option<UserId>, LogError> {
        Ok(self.meta(thread).await?.map(|m| m.owner))
    }

    /// Creates the thread for `owner` if it is new; `Forbidden` if it is someone else's.
    async fn ensure_thread(&self, thread: &ThreadId, owner: &UserId, by_publisher: bool) -> Result<(), LogError> {
        let existing = match self.owner(thread).await? {
            Some(existing) => existing,
            None => {
                let meta = ThreadMeta { owner: owner.clone(), by_publisher };
                if self.backbone.create_thread(thread, &meta).await.map_err(unavailable)? {
                    self.remember_meta(thread.clone(), meta);
                    return Ok(());
                }
                // Another node created it just now.
                self.owner(thread).await?.ok_or_else(|| LogError::ThreadNotFound(thread.clone()))?
            }
        };
        if &existing == owner { Ok(()) } else { Err(LogError::Forbidden) }
    }

    async fn registration(&self, run: &str) -> Result<Option<RunEntry>, LogError> {
        if let Some(entry) = self.registry.get(run) {
            return Ok(Some(entry));
        }
        let entry = self.backbone.run(run).await.map_err(unavailable)?;
        if let (Some(entry), Ok(id)) = (&entry, RunId::parse(run)) {
            self.remember(id, entry.clone());
        }
        Ok(entry)
    }

    fn remember(&self, run: RunId, entry: RunEntry) {
        self.registry.insert(run, entry);
    }

    /// The run's thread: registry, then (for appends) extraction (PROTOCOL §1).
    async fn resolve(
        &self,
        run_id: &str,
        allow_fallback: bool,
    ) -> Result<(RunId, Option<RunEntry>, ThreadId), LogError> {
        let not_found = || LogError::RunNotFound(run_id.to_owned());
        let run = RunId::parse(run_id).map_err(|_| not_found())?;
        if let Some(entry) = self.registration(run_id).await? {
            let thread = entry.thread_id.clone();
            return Ok((run, Some(entry), thread));
        }
        if !allow_fallback {
            return Err(not_found());
        }
        // Pattern routing reaches only threads a publisher created (PROTOCOL §1).
        let thread = extract_thread_id(run_id).filter(|_| self.config.log.pattern_routing).ok_or_else(not_found)?;
        if !self.meta(&thread).await?.is_some_and(|m| m.by_publisher) {
            return Err(not_found());
        }
        Ok((run, None, thread))
    }

    /// Reads what the view has not seen, up to the thread's current head. A
    /// view built from nothing starts from what retention kept of the runs
    /// whose events it removed, then reads only the events after that.
    async fn sync(&self, thread: &ThreadId, view: &mut ThreadView) -> Result<(), LogError> {
        if self.rewound_busy.lock().remove(thread) {
            *view = ThreadView::default();
        }
        if !view.loaded && view.at.seq == 0 && view.runs.is_empty() {
            self.start_from_trimmed(thread, view, 0).await?;
        }
        for _ in 0..MAX_ATTEMPTS {
            let mut read_any = false;
            loop {
                let tail = self.backbone.read(thread, view.at, SYNC_PAGE).await.map_err(unavailable)?;
                if let Some(first) = tail.events.first()
                    && first.seq() > view.at.seq + 1
                    && self.start_from_trimmed(thread, view, first.seq() - 1).await?
                {
                    // Retention removed events this view never saw: it goes on from what retention kept.
                    continue;
                }
                let full = tail.events.len() >= SYNC_PAGE;
                if !tail.events.is_empty() {
                    view.apply(&tail.events);
                    view.at = tail.at;
                    read_any = true;
                }
                if !full {
                    break;
                }
            }
            if read_any && view.loaded {
                // Caught up with what was there; if more came meanwhile, the next
                // compare-and-set says so. The head is only asked for when reading
                // found nothing (a first load, or a gap retention left).
                return Ok(());
            }
            let extent = self.backbone.extent(thread).await.map_err(unavailable)?;
            let extent = extent.ok_or_else(|| LogError::ThreadNotFound(thread.clone()))?;
            if extent.head.seq < view.at.seq {
                // The head moved back: the engine lost events this view had seen (a
                // failover of an asynchronously replicated Redis), and their seqs will
                // be used again. Rebuild from what is there, and have every node's
                // subscribers start again from the log with `reset`, never silence.
                tracing::error!(%thread, was = view.at.seq, now = extent.head.seq,
                    "the thread's head moved back: the engine lost acknowledged events");
                *view = ThreadView::default();
                if let Err(e) = self.backbone.announce_rewind(thread).await {
                    tracing::warn!(%thread, error = %e, "could not tell the other nodes; telling this one");
                    self.sink.thread_rewound(thread);
                }
                continue;
            }
            if extent.head.seq == view.at.seq {
                view.at.token = extent.head.token;
                view.loaded = true;
                return Ok(());
            }
            if extent.oldest_seq > extent.head.seq {
                // Everything after the view was removed by retention before this node read it.
                if self.start_from_trimmed(thread, view, extent.head.seq).await? {
                    continue;
                }
                view.at = extent.head;
                view.loaded = true;
                return Ok(());
            }
            // Another node appended between the read and the head: read again.
        }
        Err(LogError::Unavailable(format!("thread {thread} is too contended; retry shortly")))
    }

    /// Whether retention has forgotten the run `known` shows (ended past the
    /// de-duplication window, with every event removed and left out of the
    /// state kept): this view's state, and any cached registration, are of a
    /// run that no longer exists, and its id may name a new one. Reads the
    /// engine only for runs past that window.
    async fn forgotten(&self, thread: &ThreadId, run: &RunId, known: &RunView) -> Result<bool, LogError> {
        if !self.forgets_runs() || !self.past_its_window(&known.state, Timestamp::now()) {
            return Ok(false);
        }
        let Some(kept) = self.backbone.trimmed_runs(thread).await.map_err(unavailable)? else { return Ok(false) };
        Ok(is_forgotten(&kept, run, &known.state))
    }

    /// Whether `run` ended longer ago than the de-duplication window, as of
    /// `now`: only such a run may be forgotten by retention.
    fn past_its_window(&self, run: &RunState, now: Timestamp) -> bool {
        let window = i64::try_from(self.config.log.dedup_window.as_millis()).unwrap_or(i64::MAX);
        run.ended_ms.is_some_and(|ended| ended.saturating_add(window) <= now.millis())
    }

    /// Whether retention may forget runs here: only then can a cached
    /// registration or a view's state be of a run that no longer exists (every
    /// node of a deployment runs with the same limits).
    fn forgets_runs(&self) -> bool {
        self.config.log.retention.is_active()
    }

    /// Whether the engine still registers `run` in `thread`: a run this
    /// node's view has no event of may be one retention forgot since its
    /// registration was cached (one read, once per run and view).
    async fn still_registered(&self, run: &RunId, thread: &ThreadId) -> Result<bool, LogError> {
        let entry = self.backbone.run(run.as_str()).await.map_err(unavailable)?;
        Ok(entry.is_some_and(|e| &e.thread_id == thread))
    }

    /// Whether what this node holds of `run` (its state in `view`, or a
    /// registration it resolved, `registered`) may be of a run retention has
    /// forgotten since: then the id must be resolved again from the engine.
    async fn holds_forgotten(
        &self,
        thread: &ThreadId,
        run: &RunId,
        view: &ThreadView,
        registered: bool,
    ) -> Result<bool, LogError> {
        match view.runs.get(run) {
            Some(known) => self.forgotten(thread, run, known).await,
            // Registered with no event yet, or a cached registration of a run
            // retention forgot since: the engine says which.
            None => Ok(registered && self.forgets_runs() && !self.still_registered(run, thread).await?),
        }
    }

    /// Drops what this node holds of a run retention forgot: its state in
    /// `view` and its cached registration.
    fn drop_forgotten(&self, view: &mut ThreadView, run: &RunId) {
        view.runs.remove(run);
        self.registry.remove(run);
    }

    /// Queues a trim of the thread for the retention worker when the append
    /// just made took it past the per-thread limit (with the policy's slack),
    /// so the limit costs work where it is due, not a walk over every thread.
    /// A full queue skips it: the thread's next append asks again.
    fn queue_thread_trim(&self, thread: &ThreadId, view: &mut ThreadView) {
        let policy = &self.config.log.retention;
        let Some(keep_from) = policy.thread_trim(view.trimmed_through + 1, view.at.seq) else { return };
        if !view.trim_queued && self.trims.try_send(Job::Trim(thread.clone(), keep_from)).is_ok() {
            view.trim_queued = true;
        }
    }

    /// Queues a checkpoint of `view` for the retention worker once it has read
    /// [`ClusterConfig::checkpoint_every`] events past the thread's recorded
    /// run state, so that a view rebuilt later reads at most about that many.
    /// A full queue skips it: the next append asks again.
    fn queue_checkpoint(&self, thread: &ThreadId, view: &mut ThreadView) {
        let every = self.config.checkpoint_every;
        if every == 0 || view.checkpoint_queued || view.at.seq < view.checkpointed_through.saturating_add(every) {
            return;
        }
        let runs = view.runs.iter().map(|(id, r)| (id.clone(), r.state.clone())).collect();
        let snapshot = TrimmedRuns { through_seq: view.at.seq, runs, removed_through: None };
        if self.trims.try_send(Job::Checkpoint(thread.clone(), snapshot)).is_ok() {
            view.checkpoint_queued = true;
        }
    }

    /// Records `snapshot` (a view's state of the thread's runs) unless the
    /// record already goes as far; answers how far the record now goes. Runs
    /// a trim forgot after the snapshot was taken are left out of it.
    async fn checkpoint(&self, thread: &ThreadId, mut snapshot: TrimmedRuns) -> Result<u64, LogError> {
        for _ in 0..MAX_ATTEMPTS {
            let record = self.backbone.trimmed_runs(thread).await.map_err(unavailable)?.unwrap_or_default();
            if record.through_seq >= snapshot.through_seq {
                return Ok(record.through_seq);
            }
            snapshot.runs.retain(|run, state| !is_forgotten(&record, run, state));
            snapshot.removed_through = Some(record.removed_through());
            cap_event_ids(&mut snapshot);
            // Nothing before the oldest event goes: it only records.
            if self.backbone.trim(thread, 0, &snapshot, record.mark(), None).await.map_err(unavailable)? {
                return Ok(snapshot.through_seq);
            }
        }
        Err(LogError::Unavailable(format!("thread {thread} is too contended to checkpoint; retry shortly")))
    }

    /// Replaces `view` with the runs' state retention kept, if that goes at
    /// least through `needed` and further than the view; `true` if it did.
    async fn start_from_trimmed(
        &self,
        thread: &ThreadId,
        view: &mut ThreadView,
        needed: u64,
    ) -> Result<bool, LogError> {
        let Some(trimmed) = self.backbone.trimmed_runs(thread).await.map_err(unavailable)? else { return Ok(false) };
        if trimmed.through_seq <= view.at.seq || trimmed.through_seq < needed {
            return Ok(false);
        }
        *view = ThreadView::from_trimmed(trimmed);
        Ok(true)
    }

    /// Appends under the thread's view: decide, compare-and-set, retry on a move.
    async fn append_to(&self, run_id: &str, events: Vec<NewEvent>, cancel: bool) -> Result<Appended, LogError> {
        let appended = self.append_guarded(run_id, Events::Given(events), cancel, None).await?;
        appended.ok_or_else(|| LogError::Unavailable("an unguarded append stood down".into()))
    }

    /// [`Self::append_to`], standing down (`None`) if this node has seen an
    /// event of the run within `quiet_for` on the thread's current view, checked
    /// again after every refused compare-and-set.
    async fn append_guarded(
        &self,
        run_id: &str,
        mut events: Events<'_>,
        cancel: bool,
        quiet_for: Option<Duration>,
    ) -> Result<Option<Appended>, LogError> {
        if let Events::Given(given) = &mut events {
            self.config.log.prepare(given);
        }
        let (run, entry, thread) = self.resolve(run_id, !cancel).await?;
        let cell = self.cell(&thread);
        let mut view = cell.lock().await;
        // Whether the view was brought up to date during this call: a refusal
        // decided on an older view is checked against the current one first.
        let mut current = false;
        if !view.loaded || quiet_for.is_some() {
            self.sync(&thread, &mut view).await?;
            current = true;
        }
        if self.holds_forgotten(&thread, &run, &view, entry.is_some()).await? {
            // Route the id afresh: it may name a new run now, or none.
            self.drop_forgotten(&mut view, &run);
            drop(view);
            return Box::pin(self.append_guarded(run_id, events, cancel, quiet_for)).await;
        }
        let idle_ms = i64::try_from(self.config.log.run_idle_timeout.as_millis()).unwrap_or(i64::MAX);
        for _ in 0..MAX_ATTEMPTS {
            if let Some(quiet) = quiet_for {
                let seen = view.runs.get(&run).and_then(|r| r.last_seen);
                if seen.is_some_and(|at| at.elapsed() < quiet) {
                    return Ok(None);
                }
            }
            let now = Timestamp::now();
            let known = view.runs.get(&run);
            let lifecycle = known.map(|r| r.state.lifecycle.clone()).unwrap_or_default();
            let seen = |id: &str| known.and_then(|r| r.state.event_ids.get(id).copied());
            let decided = match &events {
                Events::Given(given) => Ok(given.clone()),
                Events::Decided(decide) => decide(&lifecycle).map(|mut decided| {
                    self.config.log.prepare(&mut decided);
                    decided
                }),
            };
            let decided = match decided {
                Ok(decided) => decided,
                Err(refused) if current => return Err(refused),
                Err(_) => {
                    self.sync(&thread, &mut view).await?;
                    current = true;
                    continue;
                }
            };
            let plan = match plan_append(&lifecycle, seen, decided, view.at.seq) {
                Ok(plan) => plan,
                Err(refused) if current => return Err(refused.into()),
                Err(_) => {
                    // Another node may have moved the run on (its `agent_started`, say).
                    self.sync(&thread, &mut view).await?;
                    current = true;
                    continue;
                }
            };
            let seqs = plan.seqs(view.at.seq);
            if plan.new_events.is_empty() {
                return Ok(Some(Appended { thread_id: thread, seqs }));
            }
            let fresh = known.is_none() && entry.is_none();
            let stored = numbered(&thread, &run, view.at.seq, now, plan.new_events);
            let waiting_until_ms = plan.lifecycle.inputs().next_expiry();
            let running = Running {
                thread_id: thread.clone(),
                node: entry.as_ref().and_then(|e| e.node.clone()),
                last_activity_ms: now.millis(),
                waiting_until_ms,
            };
            let touched = known.map_or(0, |r| r.touched_ms);
            let change = if plan.lifecycle.ended() {
                RunningChange::Remove(run.clone())
            } else if fresh
                || now.millis().saturating_sub(touched) > idle_ms / 10
                || waiting_until_ms != lifecycle.inputs().next_expiry()
            {
                RunningChange::Set(run.clone(), running.clone())
            } else {
                RunningChange::Keep
            };
            match self.backbone.append(&thread, view.at, &stored, &change).await.map_err(unavailable)? {
                Outcome::Appended(at) => {
                    view.apply(&stored);
                    view.at = at;
                    self.queue_thread_trim(&thread, &mut view);
                    self.queue_checkpoint(&thread, &mut view);
                    if let (RunningChange::Set(..), Some(r)) = (&change, view.runs.get_mut(&run)) {
                        r.touched_ms = now.millis();
                    }
                    if fresh {
                        // A run first seen through extraction: register it so every node (and
                        // `GET /v1/runs/{id}`) finds it. It is already routed by its events.
                        let agent_name = view.runs.get(&run).and_then(|r| r.state.agent_name.clone());
                        let registration = RunEntry { thread_id: thread.clone(), agent_name, node: None };
                        if let Err(e) = self.backbone.register_run(&run, &registration, None).await {
                            tracing::warn!(run = %run, error = %e, "could not register a run first seen by extraction");
                        }
                    }
                    return Ok(Some(Appended { thread_id: thread, seqs }));
                }
                Outcome::Moved => {
                    self.sync(&thread, &mut view).await?;
                    current = true;
                }
            }
        }
        Err(LogError::Unavailable(format!("thread {thread} is too contended; retry shortly")))
    }

    async fn run_info(&self, run_id: &str) -> Result<Option<RunInfo>, LogError> {
        let (run, entry, thread) = match self.resolve(run_id, false).await {
            Ok(found) => found,
            Err(LogError::RunNotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let owner = self.owner(&thread).await?.ok_or_else(|| LogError::ThreadNotFound(thread.clone()))?;
        let cell = self.cell(&thread);
        let mut view = cell.lock().await;
        self.sync(&thread, &mut view).await?;
        if self.holds_forgotten(&thread, &run, &view, entry.is_some()).await? {
            // Looked up afresh: the id may name a new run now, or none.
            self.drop_forgotten(&mut view, &run);
            drop(view);
            return Box::pin(self.run_info(run_id)).await;
        }
        let known = view.runs.get(&run);
        Ok(Some(RunInfo {
            run_id: run.clone(),
            thread_id: thread,
            owner,
            // As on one node: the name registered, else the one its `agent_started` gave.
            agent_name: entry.and_then(|e| e.agent_name).or_else(|| known.and_then(|r| r.state.agent_name.clone())),
            status: known.map(|r| r.state.lifecycle.status()).unwrap_or_default(),
            cancel_requested: known.is_some_and(|r| r.state.cancel_requested),
            inputs: known.map(|r| r.state.lifecycle.inputs().clone()).unwrap_or_default(),
            queued: known.is_some_and(|r| r.state.lifecycle.queued()),
        }))
    }

    /// Removes the thread's events before `keep_from`, recording first what
    /// the rules still need of its runs (see [`TrimmedRuns`]): the state
    /// recorded last, moved on (when it does not go that far yet) by the
    /// events this trim removes. Runs that ended longer ago than the
    /// de-duplication window and have no event left are left out.
    async fn trim_keeping_runs(&self, thread: &ThreadId, keep_from: u64, now: Timestamp) -> Result<TrimDone, LogError> {
        for _ in 0..MAX_ATTEMPTS {
            let before = self.backbone.trimmed_runs(thread).await.map_err(unavailable)?.unwrap_or_default();
            if keep_from <= before.removed_through() + 1 {
                return Ok(TrimDone { removed: false, removed_through: before.removed_through() });
            }
            let mut kept = before.clone();
            // When the first event kept was appended: where the thread now ranks by age.
            let mut first_kept_ms = None;
            let mut at = Position { seq: kept.through_seq.min(keep_from - 1), token: 0 };
            'read: loop {
                let tail = self.backbone.read(thread, at, SYNC_PAGE).await.map_err(unavailable)?;
                for event in &tail.events {
                    if event.seq() >= keep_from {
                        first_kept_ms = Some(event.ts().millis());
                        break 'read;
                    }
                    if event.seq() > kept.through_seq {
                        follow_run(kept.runs.entry(event.run_id().clone()).or_default(), event);
                    }
                }
                if tail.events.len() < SYNC_PAGE {
                    break;
                }
                at = tail.at;
            }
            kept.through_seq = kept.through_seq.max(keep_from - 1);
            kept.removed_through = Some(keep_from - 1);
            // Ended runs whose every event goes, past their de-duplication window: forgotten.
            let forgotten: Vec<RunId> = kept
                .runs
                .iter()
                .filter(|(_, run)| run.last_seq < keep_from && self.past_its_window(run, now))
                .map(|(id, _)| id.clone())
                .collect();
            kept.runs.retain(|id, _| !forgotten.contains(id));
            cap_event_ids(&mut kept);
            if self.backbone.trim(thread, keep_from, &kept, before.mark(), first_kept_ms).await.map_err(unavailable)? {
                // After the trim: a registration must not go while events still name it.
                if let Err(e) = self.backbone.remove_runs(&forgotten).await {
                    tracing::warn!(%thread, error = %e, "could not forget the registrations of runs retention removed");
                }
                // This node's view of the thread need not keep them either.
                let mut view = self.held_view(thread).await;
                for run in &forgotten {
                    self.registry.remove(run);
                    if let Some(view) = view.as_deref_mut() {
                        view.runs.remove(run);
                    }
                }
                return Ok(TrimDone { removed: true, removed_through: keep_from - 1 });
            }
            // Another node trimmed the thread meanwhile: start again from what it kept.
        }
        Err(LogError::Unavailable(format!("thread {thread} is too contended to trim; retry shortly")))
    }

    /// The thread's oldest retained `seq` and the last one appended at or
    /// before `cutoff`, if any; reads only the old events.
    async fn aged_out(&self, thread: &ThreadId, cutoff: i64) -> Result<Option<(u64, u64)>, LogError> {
        let Some(extent) = self.backbone.extent(thread).await.map_err(unavailable)? else { return Ok(None) };
        let mut at = Position { seq: extent.oldest_seq.saturating_sub(1), token: 0 };
        let mut last_old = None;
        'pages: loop {
            let page = self.backbone.read(thread, at, AGE_PAGE).await.map_err(unavailable)?;
            for e in &page.events {
                if e.ts().millis() > cutoff {
                    break 'pages;
                }
                last_old = Some(e.seq());
            }
            if page.events.len() < AGE_PAGE {
                break;
            }
            at = page.at;
        }
        Ok(last_old.map(|last| (extent.oldest_seq, last)))
    }

    /// Removes the oldest threads' oldest events until the whole log holds at
    /// most `policy.max_events` (as the engine counts, see
    /// [`Backbone::event_count`]); answers how many went. Reads the engine's
    /// count and the oldest threads only.
    async fn keep_whole_log_under(&self, policy: &RetentionPolicy, now: Timestamp) -> Result<u64, LogError> {
        let mut removed = 0;
        loop {
            let total = self.backbone.event_count().await.map_err(unavailable)?;
            if total <= policy.max_events {
                return Ok(removed);
            }
            let oldest = self.backbone.oldest_threads(i64::MAX, RETENTION_GROUP).await.map_err(unavailable)?;
            let mut extents = self.extents(oldest).await?;
            extents.sort_by_key(|e| e.oldest_ts_ms.unwrap_or(i64::MAX));
            let mut moved = false;
            for trim in retention::take_oldest(&extents, total.saturating_sub(policy.max_events)) {
                let was = extents.iter().find(|e| e.thread == trim.thread).map_or(trim.keep_from, |e| e.oldest_seq);
                if self.trim_keeping_runs(&trim.thread, trim.keep_from, now).await?.removed {
                    removed += trim.keep_from.saturating_sub(was);
                    moved = true;
                }
            }
            if !moved {
                return Ok(removed);
            }
        }
    }

    /// Each thread's retained range and the append time of its oldest event.
    async fn extents(&self, threads: Vec<ThreadId>) -> Result<Vec<ThreadExtent>, LogError> {
        let mut extents = Vec::with_capacity(threads.len());
        for thread in threads {
            let Some(extent) = self.backbone.extent(&thread).await.map_err(unavailable)? else { continue };
            let before = Position { seq: extent.oldest_seq.saturating_sub(1), token: 0 };
            let first = self.backbone.read(&thread, before, 1).await.map_err(unavailable)?;
            let oldest_ts_ms = first.events.first().map(|e| e.ts().millis());
            extents.push(ThreadExtent {
                thread,
                oldest_seq: extent.oldest_seq,
                head_seq: extent.head.seq,
                oldest_ts_ms,
            });
        }
        Ok(extents)
    }

    /// Ends `run` with `agent_error {code}`; `false` if it had already ended
    /// (its running entry is dropped) or, with `quiet_for`, if it turned out
    /// not to be quiet that long.
    async fn end_run(
        &self,
        run: &RunId,
        code: &'static str,
        message: &str,
        quiet_for: Option<Duration>,
    ) -> Result<bool, LogError> {
        let error = Events::Given(vec![NewEvent::agent_error(code, message)]);
        match self.append_guarded(run.as_str(), error, false, quiet_for).await {
            Ok(appended) => Ok(appended.is_some()),
            Err(LogError::Lifecycle(_) | LogError::RunNotFound(_) | LogError::ThreadNotFound(_)) => {
                self.backbone.set_running(run, None).await.map_err(unavailable)?;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Ends the running runs `pick` chooses; answers those it ended.
    async fn end_runs_where(
        &self,
        pick: impl Fn(&Running) -> bool,
        code: &'static str,
        message: &str,
    ) -> Result<Vec<RunId>, LogError> {
        let running = self.backbone.running().await.map_err(unavailable)?;
        self.end_runs(running, pick, code, message).await
    }

    /// Ends those of `running` that `pick` chooses; answers those it ended.
    async fn end_runs(
        &self,
        running: Vec<(RunId, Running)>,
        pick: impl Fn(&Running) -> bool,
        code: &'static str,
        message: &str,
    ) -> Result<Vec<RunId>, LogError> {
        self.runs_in_flight.store(running.len() as u64, Ordering::Relaxed);
        let mut ended = Vec::new();
        for (run, _) in running.into_iter().filter(|(_, r)| pick(r)) {
            if self.end_run(&run, code, message, None).await? {
                ended.push(run);
            }
        }
        Ok(ended)
    }
}

/// The running runs whose entry `unchanged` has seen stay the same for `limit`
/// (less what the caller looks `ahead`); updates `unchanged` with what `running`
/// holds now and forgets the runs no longer in it. Values are compared, never
/// clocks: a node whose clock is off cannot make another's run look old.
fn idle_candidates(
    unchanged: &mut HashMap<RunId, (Running, Instant)>,
    running: Vec<(RunId, Running)>,
    limit: Duration,
    ahead: Duration,
) -> Vec<RunId> {
    let now = Instant::now();
    let mut still = HashMap::with_capacity(running.len());
    let mut idle = Vec::new();
    for (run, entry) in running {
        let since = match unchanged.remove(&run) {
            Some((seen, since)) if seen == entry => since,
            _ => now,
        };
        if now.duration_since(since) + ahead >= limit {
            idle.push(run.clone());
        }
        still.insert(run, (entry, since));
    }
    *unchanged = still;
    idle
}

/// The node's end of the feed: hands events to the hub, and moves the thread's
/// view on when it is free and the events follow on from it, so the node's next
/// append to a thread another node is busy with usually finds its view current
/// (one round trip, not a refused compare-and-set and a catch-up read).
/// Once the log is gone there is nobody left to hand anything to.
struct Feed<B> {
    inner: std::sync::Weak<Inner<B>>,
}

impl<B: Backbone> Follower for Feed<B> {
    fn appended(&self, events: &[Arc<StoredEvent>], at: Position) {
        let Some(inner) = self.inner.upgrade() else { return };
        inner.sink.deliver(events);
        for e in events.iter().filter(|e| input::closes_inputs(e.kind())) {
            inner.inputs.changed(e.run_id());
        }
        let Some(first) = events.first() else { return };
        let Some(cell) = inner.views.lock().peek(first.thread_id()) else { return };
        // A busy view is left alone: whoever holds it catches up on its own.
        let Ok(mut view) = cell.try_lock() else { return };
        if view.loaded && first.seq() == view.at.seq + 1 {
            view.apply(events);
            view.at = at;
        }
    }

    fn rewound(&self, thread: &ThreadId) {
        let Some(inner) = self.inner.upgrade() else { return };
        let cell = inner.views.lock().peek(thread);
        if let Some(cell) = cell {
            match cell.try_lock() {
                Ok(mut view) => *view = ThreadView::default(),
                // Busy: whoever holds it starts it again at its next sync (which
                // a refused compare-and-set brings about).
                Err(_) => {
                    let mut marked = inner.rewound_busy.lock();
                    // A mark outlives its view for nothing (a view built anew starts
                    // from the engine): only threads with a view stay marked.
                    marked.retain(|t| inner.views.lock().peek(t).is_some());
                    marked.insert(thread.clone());
                }
            }
        }
        inner.sink.thread_rewound(thread);
    }

    /// Hands every watched thread's newest event to the hub again: a subscriber
    /// that missed events reads the gap from the log, one that did not drops it.
    /// Views need nothing: one that missed events is no longer followed by the
    /// feed (its next `seq` never comes) and catches up on its next append.
    fn lost(&self) {
        let Some(inner) = self.inner.upgrade() else { return };
        tracing::warn!("the feed dropped entries before this node read them; catching up watched threads from the log");
        let (sink, threads) = (inner.sink.clone(), inner.sink.watched());
        let (stop, tasks) = (inner.stop.clone(), inner.tasks.clone());
        tasks.spawn(async move {
            for thread in threads {
                if stop.is_cancelled() {
                    return;
                }
                match newest_event(&inner.backbone, &thread).await {
                    Ok(Some(event)) => sink.redeliver(&[event]),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(%thread, error = %e, "could not catch a watched thread up"),
                }
            }
        });
    }
}

/// The newest retained event of `thread`, if any.
async fn newest_event<B: Backbone>(backbone: &B, thread: &ThreadId) -> Result<Option<Arc<StoredEvent>>, BackboneError> {
    let Some(extent) = backbone.extent(thread).await? else { return Ok(None) };
    if extent.head.seq < extent.oldest_seq {
        return Ok(None);
    }
    let before = Position { seq: extent.head.seq - 1, token: 0 };
    Ok(backbone.read(thread, before, 1).await?.events.pop())
}

/// What a trim found: whether it removed events, and through which `seq`
/// the thread's events are now removed.
struct TrimDone {
    removed: bool,
    removed_through: u64,
}

/// Work for the retention worker.
enum Job {
    /// Remove the thread's events before this `seq` (the per-thread limit).
    Trim(ThreadId, u64),
    /// Record this state of the thread's runs, as a view holds it.
    Checkpoint(ThreadId, TrimmedRuns),
}

/// The retention worker: trims the threads appends found past the per-thread
/// limit and records checkpoints of views, one at a time, then tells their
/// views how far the record and the removal have gone.
async fn trim_threads<B: Backbone>(
    inner: std::sync::Weak<Inner<B>>,
    mut queued: tokio::sync::mpsc::Receiver<Job>,
    stop: CancellationToken,
) {
    loop {
        let job = tokio::select! {
            _ = stop.cancelled() => return,
            next = queued.recv() => match next {
                Some(next) => next,
                None => return,
            },
        };
        let Some(inner) = inner.upgrade() else { return };
        match job {
            Job::Trim(thread, keep_from) => {
                let removed_through = match inner.trim_keeping_runs(&thread, keep_from, Timestamp::now()).await {
                    Ok(done) => done.removed_through,
                    Err(e) => {
                        tracing::warn!(%thread, error = %e, "could not trim a thread past its limit; its next append retries");
                        0
                    }
                };
                if let Some(mut view) = inner.held_view(&thread).await {
                    view.trim_queued = false;
                    view.trimmed_through = view.trimmed_through.max(removed_through);
                    // Appends that came while this trim ran may have passed the limit again.
                    inner.queue_thread_trim(&thread, &mut view);
                }
            }
            Job::Checkpoint(thread, snapshot) => {
                let recorded = match inner.checkpoint(&thread, snapshot).await {
                    Ok(through) => through,
                    Err(e) => {
                        tracing::warn!(%thread, error = %e, "could not record a checkpoint; a later append retries");
                        0
                    }
                };
                if let Some(mut view) = inner.held_view(&thread).await {
                    view.checkpoint_queued = false;
                    view.checkpointed_through = view.checkpointed_through.max(recorded);
                }
            }
        }
    }
}

/// Heartbeats, figures, and the lost-worker sweep (see the module docs).
async fn janitor<B: Backbone>(inner: Arc<Inner<B>>) {
    let ttl = inner.config.node_ttl;
    let mut tick = tokio::time::interval(ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A node must be missing for a whole TTL, seen from here, before its runs are
    // taken for lost: a heartbeat that lapsed during a backbone outage gets a chance.
    let mut missing_since: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = inner.stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = inner.backbone.heartbeat(&inner.config.node_id, ttl).await {
            tracing::warn!(error = %e, "heartbeat failed");
            continue;
        }
        match inner.backbone.thread_count().await {
            Ok(threads) => inner.threads.store(threads, Ordering::Relaxed),
            Err(e) => tracing::debug!(error = %e, "could not count threads"),
        }
        let live = match inner.backbone.live_nodes().await {
            Ok(live) => live,
            Err(e) => {
                tracing::warn!(error = %e, "could not list live nodes");
                continue;
            }
        };
        let now = Instant::now();
        missing_since.retain(|node, _| !live.contains(node));
        let running = match inner.backbone.running().await {
            Ok(running) => running,
            Err(e) => {
                tracing::warn!(error = %e, "could not list running runs");
                continue;
            }
        };
        for (_, r) in &running {
            if let Some(node) = r.node.as_ref().filter(|n| !live.contains(*n)) {
                missing_since.entry(node.clone()).or_insert(now);
            }
        }
        let lost: Vec<String> = missing_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= ttl)
            .map(|(n, _)| n.clone())
            .collect();
        // The list just read serves the sweep too (and refreshes the dashboard's count).
        let is_lost = |r: &Running| r.node.as_ref().is_some_and(|n| lost.contains(n));
        match inner.end_runs(running, is_lost, "worker_lost", "the node running the agent stopped").await {
            Ok(ended) if !ended.is_empty() => {
                tracing::warn!(count = ended.len(), nodes = ?lost, "ended runs of nodes that stopped");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not end the runs of stopped nodes"),
        }
    }
}

#[async_trait]
impl<B: Backbone> Log for ClusterLog<B> {
    async fn create_thread(&self, thread_id: Option<ThreadId>, owner: &UserId) -> Result<ThreadId, LogError> {
        let id = thread_id.unwrap_or_else(ThreadId::generate);
        let meta = ThreadMeta { owner: owner.clone(), by_publisher: false };
        if !self.inner.backbone.create_thread(&id, &meta).await.map_err(unavailable)? {
            return Err(LogError::ThreadExists(id));
        }
        self.inner.remember_meta(id.clone(), meta);
        Ok(id)
    }

    async fn ensure_thread(&self, thread_id: &ThreadId, owner: &UserId) -> Result<(), LogError> {
        self.inner.ensure_thread(thread_id, owner, false).await
    }

    async fn thread_owner(&self, thread_id: &ThreadId) -> Result<Option<UserId>, LogError> {
        self.inner.owner(thread_id).await
    }

    async fn create_run(&self, new: NewRun) -> Result<RunInfo, LogError> {
        let inner = &self.inner;
        // Every check comes before anything is written: a refusal leaves no trace.
        // A minted id is fresh; a chosen one may be taken, which must be known
        // before the thread is made (the registration below is the atomic check).
        let run = match new.run_id {
            Some(chosen) => {
                if let Some(named) = agentwire_log::foreign_pattern_thread(&chosen, &new.thread_id)
                    && inner.owner(&named).await?.as_ref() != Some(&new.owner)
                {
                    return Err(LogError::Forbidden);
                }
                // The engine, not the cache: a cached registration may be of a run retention forgot.
                if inner.backbone.run(chosen.as_str()).await.map_err(unavailable)?.is_some() {
                    return Err(LogError::RunExists(chosen.to_string()));
                }
                chosen
            }
            None => RunId::mint(&new.thread_id),
        };
        inner.ensure_thread(&new.thread_id, &new.owner, !new.in_process).await?;
        let node = new.in_process.then(|| inner.config.node_id.clone());
        let entry =
            RunEntry { thread_id: new.thread_id.clone(), agent_name: new.agent_name.clone(), node: node.clone() };
        let running = Running {
            thread_id: new.thread_id.clone(),
            node,
            last_activity_ms: Timestamp::now().millis(),
            waiting_until_ms: None,
        };
        if !inner.backbone.register_run(&run, &entry, Some(&running)).await.map_err(unavailable)? {
            return Err(LogError::RunExists(run.to_string()));
        }
        inner.remember(run.clone(), entry);
        // Whatever this node's view holds under the id is of a run retention forgot.
        if let Some(mut view) = inner.held_view(&new.thread_id).await {
            view.runs.remove(&run);
        }
        inner.runs_in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(RunInfo {
            run_id: run,
            thread_id: new.thread_id,
            owner: new.owner,
            agent_name: new.agent_name,
            status: Default::default(),
            cancel_requested: false,
            inputs: Default::default(),
            queued: false,
        })
    }

    async fn run(&self, run_id: &str) -> Result<Option<RunInfo>, LogError> {
        self.inner.run_info(run_id).await
    }

    async fn append(&self, run_id: &str, events: Vec<NewEvent>) -> Result<Appended, LogError> {
        self.inner.append_to(run_id, events, false).await
    }

    /// The runs this node's view of the thread holds as going, once caught up.
    /// A run registered on another node and yet without an event is not in
    /// any view yet: the window in which [`Log::create_run_if_idle`] can let
    /// two runs start is that long (an in-process run's first event follows
    /// its registration at once).
    async fn running_runs(&self, thread_id: &ThreadId) -> Result<Vec<RunId>, LogError> {
        let inner = &self.inner;
        if inner.meta(thread_id).await?.is_none() {
            return Ok(Vec::new());
        }
        let cell = inner.cell(thread_id);
        let mut view = cell.lock().await;
        inner.sync(thread_id, &mut view).await?;
        Ok(view.runs.iter().filter(|(_, r)| !r.state.lifecycle.ended()).map(|(id, _)| id.clone()).collect())
    }

    async fn answer_input(&self, thread_id: &ThreadId, answer: InputAnswer) -> Result<Appended, LogError> {
        let inner = &self.inner;
        let not_found = || LogError::InputNotFound(answer.request_id.clone());
        if inner.owner(thread_id).await?.is_none() {
            return Err(LogError::ThreadNotFound(thread_id.clone()));
        }
        let run = match &answer.run_id {
            Some(run_id) => match inner.resolve(run_id, false).await {
                Ok((run, _, thread)) if &thread == thread_id => run,
                Ok(_) | Err(LogError::RunNotFound(_)) => return Err(not_found()),
                Err(e) => return Err(e),
            },
            None => {
                let cell = inner.cell(thread_id);
                let mut view = cell.lock().await;
                inner.sync(thread_id, &mut view).await?;
                let holder =
                    view.runs.iter().find(|(_, r)| input::asked_by_going_run(&r.state.lifecycle, &answer.request_id));
                holder.map(|(run, _)| run.clone()).ok_or_else(not_found)?
            }
        };
        let decide = |lifecycle: &RunLifecycle| input::answer_event(lifecycle.inputs(), &answer).map(|e| vec![e]);
        match inner.append_guarded(run.as_str(), Events::Decided(&decide), false, None).await {
            Ok(appended) => appended.ok_or_else(|| LogError::Unavailable("an unguarded append stood down".into())),
            // Retention forgot the run since it was looked up.
            Err(LogError::RunNotFound(_)) => Err(not_found()),
            Err(e) => Err(e),
        }
    }

    fn input_changes(&self) -> Option<Arc<InputWatch>> {
        Some(self.inner.inputs.clone())
    }

    async fn cancel(&self, run_id: &str) -> Result<Appended, LogError> {
        self.inner.append_to(run_id, vec![NewEvent::agent_error("cancelled", "the run was cancelled")], true).await
    }

    async fn read(&self, thread_id: &ThreadId, after_seq: u64, limit: usize) -> Result<Page, LogError> {
        let backbone = &self.inner.backbone;
        let extent = backbone.extent(thread_id).await.map_err(unavailable)?;
        let extent = extent.ok_or_else(|| LogError::ThreadNotFound(thread_id.clone()))?;
        let (head_seq, oldest_seq) = (extent.head.seq, extent.oldest_seq);
        // Only up to the head read above, so a page never runs past what `head_seq` says.
        let wanted = usize::try_from(head_seq.saturating_sub(after_seq)).unwrap_or(usize::MAX).min(limit);
        if wanted == 0 {
            return Ok(Page { events: Vec::new(), head_seq, oldest_seq });
        }
        // Read in chunks sized by what the page budget has left, so a thread of
        // large events is never fetched whole to answer one page.
        let mut budget = PageBudget::new(wanted, self.inner.config.log.max_page_bytes);
        let mut at = Position { seq: after_seq, token: 0 };
        let mut events = Vec::new();
        let mut chunk = FIRST_READ_CHUNK.min(wanted);
        'read: loop {
            let tail = backbone.read(thread_id, at, chunk).await.map_err(unavailable)?;
            let got = tail.events.len();
            for event in tail.events {
                if event.seq() > head_seq || !budget.admit(event.json.len()) {
                    break 'read;
                }
                events.push(event);
            }
            if got < chunk || budget.events_left() == 0 {
                break;
            }
            at = tail.at;
            let average = budget_average(&events);
            chunk = (budget.bytes_left() / average.max(1)).clamp(1, MAX_READ_CHUNK).min(budget.events_left());
        }
        Ok(Page { events, head_seq, oldest_seq })
    }

    async fn expire_idle_runs(&self, now: Timestamp) -> Result<Vec<RunId>, LogError> {
        let inner = &self.inner;
        let timeout = inner.config.log.run_idle_timeout;
        // A `now` ahead of this node's clock (a caller looking ahead) counts as time already waited.
        let ahead = Duration::from_millis(u64::try_from(now.millis() - Timestamp::now().millis()).unwrap_or(0));
        let running = inner.backbone.running().await.map_err(unavailable)?;
        inner.runs_in_flight.store(running.len() as u64, Ordering::Relaxed);
        // A run waiting on an input request is not idle; once the request lapses, its default answers it.
        let (waiting, running): (Vec<_>, Vec<_>) = running.into_iter().partition(|(_, r)| r.waiting_until_ms.is_some());
        for (run, _) in waiting.into_iter().filter(|(_, r)| r.waiting_until_ms.is_some_and(|t| t <= now.millis())) {
            let lapsed = |lifecycle: &RunLifecycle| {
                let answers = input::lapsed(lifecycle.inputs(), now.millis());
                if answers.is_empty() { Err(LogError::InputClosed(String::new())) } else { Ok(answers) }
            };
            match inner.append_guarded(run.as_str(), Events::Decided(&lapsed), false, None).await {
                // Answered or ended meanwhile, maybe by another node: nothing left to do.
                Ok(_) | Err(LogError::InputClosed(_) | LogError::Lifecycle(_) | LogError::RunNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        // Running entries are refreshed every tenth of the timeout, so allow that much slack.
        let candidates = idle_candidates(&mut inner.unchanged.lock(), running, timeout + timeout / 10, ahead);
        let message = format!("no event for {} s", timeout.as_secs_f64());
        let mut ended = Vec::new();
        for run in candidates {
            if inner.end_run(&run, "timeout", &message, Some(timeout.saturating_sub(ahead))).await? {
                ended.push(run);
            }
        }
        Ok(ended)
    }

    async fn ready(&self) -> Result<(), LogError> {
        self.inner.backbone.ping().await.map_err(unavailable)
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn durability_warnings(&self) -> Vec<String> {
        self.inner.weak.clone()
    }

    fn stats(&self) -> LogStats {
        LogStats {
            threads: self.inner.threads.load(Ordering::Relaxed),
            runs_in_flight: self.inner.runs_in_flight.load(Ordering::Relaxed),
        }
    }

    async fn end_orphaned_runs(&self) -> Result<Vec<RunId>, LogError> {
        // Runs this node's engine was executing when it last stopped (same node id).
        let node = self.inner.config.node_id.clone();
        let mine = |r: &Running| r.node.as_deref() == Some(node.as_str());
        self.inner.end_runs_where(mine, "worker_lost", "the server stopped while the agent was running").await
    }

    async fn enforce_retention(&self, now: Timestamp) -> Result<u64, LogError> {
        // The per-thread limit is kept by the appends that pass it (the
        // retention worker); the sweep is for the age and whole-log limits.
        let policy = &RetentionPolicy { max_events_per_thread: 0, ..self.inner.config.log.retention };
        if !policy.is_active() {
            return Ok(0);
        }
        let inner = &self.inner;
        let mut removed = 0;
        if !policy.max_age.is_zero() {
            let cutoff = now.millis().saturating_sub(i64::try_from(policy.max_age.as_millis()).unwrap_or(i64::MAX));
            loop {
                let due = inner.backbone.oldest_threads(cutoff, RETENTION_GROUP).await.map_err(unavailable)?;
                let mut moved = false;
                for thread in due {
                    let Some((oldest, last_old)) = inner.aged_out(&thread, cutoff).await? else { continue };
                    if inner.trim_keeping_runs(&thread, last_old + 1, now).await?.removed {
                        removed += last_old + 1 - oldest;
                        moved = true;
                    }
                }
                // Nothing due moved (or another node took it): the age limit holds.
                if !moved {
                    break;
                }
            }
        }
        if policy.max_events > 0 {
            removed += inner.keep_whole_log_under(policy, now).await?;
        }
        Ok(removed)
    }

    async fn close(&self) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

impl<B> Drop for ClusterLog<B> {
    fn drop(&mut self) {
        self.inner.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> ThreadId {
        ThreadId::parse(&format!("thread_v{n}")).expect("thread id")
    }

    #[test]
    fn a_run_that_goes_on_and_on_keeps_a_bounded_number_of_event_ids_the_newest() {
        let (thread, run) = (id(0), RunId::parse("run_endless").expect("run id"));
        let mut view = ThreadView::default();
        let start = NewEvent::new(EventKind::AgentStarted, serde_json::Map::new());
        let started = numbered(&thread, &run, 0, Timestamp::now(), vec![start]);
        view.apply(&started);
        view.at.seq = 1;
        for n in 0..10_000u64 {
            let thought =
                NewEvent::new(EventKind::AgentThinking, serde_json::Map::new()).with_event_id(format!("e{n}"));
            let stored = numbered(&thread, &run, view.at.seq, Timestamp::now(), vec![thought]);
            view.apply(&stored);
            view.at.seq += 1;
        }
        let ids = &view.runs[&run].state.event_ids;
        assert!(ids.len() <= 2 * MAX_KEPT_IDS, "{} ids held", ids.len());
        assert_eq!(ids.get("e9999"), Some(&10_001), "the newest are kept");
        assert!(!ids.contains_key("e0"), "the oldest went");
    }

    #[test]
    fn views_past_the_cap_give_way_one_at_a_time_used_and_busy_ones_last() {
        let mut views: Views<u8> = Views::new(3);
        let busy = views.get(&id(0)); // held by someone: never dropped
        views.get(&id(1));
        views.get(&id(2));
        views.get(&id(1)); // used again: gets a second chance
        views.get(&id(3));
        assert_eq!(views.len(), 3, "one view went, not every idle one");
        assert!(views.peek(&id(0)).is_some_and(|v| Arc::ptr_eq(&v, &busy)), "the busy view stays");
        assert!(views.peek(&id(1)).is_some(), "the used view stays");
        assert!(views.peek(&id(2)).is_none(), "the idle, unused one went");
        // Everything busy: the cap bends rather than dropping a view in use.
        let held: Vec<_> = (10..15).map(|n| views.get(&id(n))).collect();
        assert_eq!(views.len(), 3 + held.len() - 2, "idle views went first, busy ones stayed");
        assert!(held.iter().enumerate().all(|(i, v)| views.peek(&id(10 + i)).is_some_and(|p| Arc::ptr_eq(&p, v))));
    }
}
