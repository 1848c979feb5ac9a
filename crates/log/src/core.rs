//! [`StoredLog`]: the log's rules over any [`Store`].
//!
//! Working state (threads, their owners and heads, running runs with their
//! lifecycles and `event_id`s) lives in memory, each thread behind its own
//! mutex. An append is decided under that mutex (resolve, de-duplicate, check,
//! number) and handed, still under it, to the **committer**: one thread that
//! takes every decision waiting, writes them in one durable transaction (group
//! commit), and only then hands the events to the feed and answers the
//! appenders. So:
//!
//! - `seq` is gap-free: numbers are given out under the thread's mutex;
//! - the feed is in `seq` order: decisions reach the committer in that order;
//! - nothing is seen before it is durable: the feed and reads only ever show
//!   committed events, and a publisher's `200` waits for its commit.
//!
//! If a commit fails (a full disk, say) the log stops taking writes (`503`) and
//! reports unready: its working state ran ahead of the disk. The committer then
//! asks the store to recover every [`LogConfig::retry_after_failure`]; once a
//! write reaches the disk again, it reloads the working state from the store
//! (what was acknowledged, nothing else) and the log takes writes again. Every
//! decision taken before the reload belongs to an older **epoch** and is
//! refused, and every thread entry of the old working state is marked stale, so
//! nothing decided on the old state can reach the disk.
//!
//! The working state follows what is live, not history: once a run's end is
//! durable the committer evicts the run and its `event_id`s (when the store
//! keeps runs, see [`Store::keeps_runs`]). An ended run never changes again, so
//! a later lookup (a retried publish, `GET /v1/runs/{id}`) reads it from the
//! store without bringing it back into memory. Such reads happen before the
//! thread's lock is taken, on a blocking thread, so a slow disk holds up that
//! request and not the async runtime.
//!
//! The idle watchdog does not walk threads: every running run has an entry in an
//! ordered index of idle deadlines, written when the run is registered. A tick
//! takes the entries that are due and looks at those runs only; one that was
//! active since goes back in at its new deadline (so an append never touches the
//! index), one that ended is dropped. A run waiting on an input request is due
//! at the request's timeout instead (an append that asks sooner than the run's
//! deadline moves its entry forward): the tick answers what lapsed with the
//! request's default, and the run's idle time starts again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Instant;

use agentwire_protocol::{NewEvent, RunId, RunLifecycle, ThreadId, Timestamp, UserId, extract_thread_id};
use async_trait::async_trait;
use parking_lot::{Mutex, RwLock, RwLockWriteGuard};
use tokio::sync::oneshot;

use crate::input::{self, InputAnswer, InputWatch};
use crate::retention::{self, RetentionPolicy, Trim};
use crate::store::{Batch, LoadedThread, RunRecord, Snapshot, Store, StoreError, ThreadExtent, ThreadRecord};
use crate::{
    Appended, FeedSink, Log, LogConfig, LogError, LogStats, NewRun, Page, PageBudget, RunInfo, numbered, plan_append,
};

/// Decisions that may wait for the committer before appends are refused with `503`.
const COMMIT_QUEUE: usize = 16 * 1024;
/// Most decisions written in one transaction.
const MAX_GROUP: usize = 4096;
/// Threads trimmed per retention commit, so a sweep never holds the committer long.
const RETENTION_GROUP: usize = 64;
/// Runs whose event ids are forgotten per commit, for the same reason.
const FORGET_GROUP: usize = 1024;

/// A run in the working state.
struct RunState {
    record: RunRecord,
    /// `event_id → seq`; `None` for an ended run loaded from the store, whose ids are looked up there.
    event_ids: Option<HashMap<String, u64>>,
    /// The deadline under which a running run is in the idle index.
    due_ms: Option<i64>,
}

struct ThreadState {
    id: ThreadId,
    owner: UserId,
    /// Created by a publisher: takes unregistered runs by the id pattern.
    by_publisher: bool,
    /// The last `seq` given out (committed or on its way).
    head: u64,
    /// The oldest `seq` kept once what was decided is committed (retention
    /// may have trims on their way), so an append does not trim twice.
    oldest: u64,
    runs: HashMap<RunId, RunState>,
    /// Deleted: an operation that took this entry before the delete finds it
    /// here, under the lock, and does nothing.
    deleted: bool,
    /// Replaced by a reload after a failed commit: likewise.
    stale: bool,
}

impl ThreadState {
    /// Refuses to decide on an entry that is no longer the thread's.
    fn check_current(&self) -> Result<(), LogError> {
        if self.deleted || self.stale {
            return Err(LogError::Unavailable("the thread changed under this request; retry".into()));
        }
        Ok(())
    }
}

/// A thread of the working state and how far the disk has caught up with it.
struct ThreadEntry {
    state: Mutex<ThreadState>,
    /// The last committed `seq`: what reads and the feed may show.
    committed: AtomicU64,
    oldest: AtomicU64,
}

impl ThreadEntry {
    fn new(id: ThreadId, record: &ThreadRecord, head: u64) -> Self {
        let (owner, by_publisher, oldest) = (record.owner.clone(), record.by_publisher, record.oldest_seq);
        Self {
            state: Mutex::new(ThreadState {
                id,
                owner,
                by_publisher,
                head,
                oldest,
                runs: HashMap::new(),
                deleted: false,
                stale: false,
            }),
            committed: AtomicU64::new(head),
            oldest: AtomicU64::new(oldest),
        }
    }
}

/// The threads of the working state. On a store that keeps threads it is a cache:
/// a thread is loaded from the store when an operation needs it, and one with
/// no run in the working state is evicted once more than `cap` such threads
/// are held (oldest idle first). An entry is evicted only while nothing but the
/// map holds it (no operation is deciding on it, no decision of its is waiting
/// to be written), so whatever loads it next reads exactly what it left.
struct Threads {
    map: RwLock<HashMap<ThreadId, Arc<ThreadEntry>>>,
    /// Threads that had no run in the working state when they were queued.
    idle: Mutex<VecDeque<ThreadId>>,
    /// Idle threads kept; `usize::MAX` on a store that does not keep threads.
    cap: usize,
    /// Evictions so far: a thread read from the store is only as fresh as this
    /// was when the read began.
    evictions: AtomicU64,
}

impl Threads {
    fn new(map: HashMap<ThreadId, Arc<ThreadEntry>>, cap: usize) -> Self {
        Self { map: RwLock::new(map), idle: Mutex::new(VecDeque::new()), cap, evictions: AtomicU64::new(0) }
    }

    fn get(&self, id: &ThreadId) -> Option<Arc<ThreadEntry>> {
        self.map.read().get(id).cloned()
    }

    /// Queues a thread that has no run in the working state for eviction, and
    /// evicts the oldest idle ones past the cap.
    fn idle(&self, map: &mut HashMap<ThreadId, Arc<ThreadEntry>>, id: &ThreadId) {
        if self.cap == usize::MAX {
            return;
        }
        let mut idle = self.idle.lock();
        idle.push_back(id.clone());
        for _ in self.cap..idle.len() {
            let Some(oldest) = idle.pop_front() else { break };
            let Some(entry) = map.get(&oldest) else { continue };
            if Arc::strong_count(entry) > 1 {
                idle.push_back(oldest); // in use: later
                continue;
            }
            let unused = entry.state.lock().runs.is_empty();
            if unused {
                map.remove(&oldest);
                self.evictions.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// [`Threads::idle`] for a caller that holds no lock.
    fn idle_now(&self, id: &ThreadId) {
        if self.cap != usize::MAX {
            self.idle(&mut self.map.write(), id);
        }
    }

    /// The thread `id` under the map's write lock: the entry held, else what
    /// the store said (`stored`, read when the evictions were `before`; read
    /// again if a thread was evicted since, as it may have been this one).
    fn adopt<S: Store>(
        &self,
        map: &mut HashMap<ThreadId, Arc<ThreadEntry>>,
        id: &ThreadId,
        stored: Option<LoadedThread>,
        before: u64,
        store: &S,
    ) -> Result<Option<Arc<ThreadEntry>>, LogError> {
        if let Some(entry) = map.get(id) {
            return Ok(Some(entry.clone()));
        }
        let stored = if self.evictions.load(Ordering::Acquire) == before {
            stored
        } else {
            store.thread(id).map_err(storage)? // rare: an eviction raced this read
        };
        let Some(thread) = stored else { return Ok(None) };
        let entry = Arc::new(ThreadEntry::new(thread.id, &thread.record, thread.head_seq));
        map.insert(id.clone(), entry.clone());
        self.idle(map, id);
        Ok(Some(entry))
    }
}

/// What the committer does for one decision once it is durable.
struct Pending {
    batch: Batch,
    /// Heads to publish as committed.
    heads: Vec<(Arc<ThreadEntry>, u64)>,
    /// New oldest retained seqs, after retention removed events.
    oldest: Vec<(Arc<ThreadEntry>, u64)>,
    /// A run this decision ended, to evict from the working state once durable.
    ended: Option<(Arc<ThreadEntry>, RunId)>,
    /// A thread this decision deleted: its subscribers are told once it is durable.
    deleted: Option<ThreadId>,
    /// The working state's epoch when this was decided (see the module docs).
    epoch: u64,
    done: oneshot::Sender<Result<(), LogError>>,
}

/// run → thread for every run in the working state.
type Registry = RwLock<HashMap<RunId, ThreadId>>;

/// A run that is not in the working state, as the store has it, read off the
/// async runtime before the thread's lock is taken: its record and the `seq`s of
/// the `event_id`s the operation carries.
struct Stored {
    record: RunRecord,
    seqs: HashMap<String, u64>,
}

/// What was learnt about a run before the thread's lock was taken.
struct Lookup {
    stored: Option<Stored>,
    /// [`Core::evictions`] before the lookups: if it moved by the time the
    /// thread's lock is held, a run missing from the working state may have just
    /// been evicted, and only the store can tell.
    evictions: u64,
}

impl Lookup {
    /// For a run picked from the working state under the lock it is appended under.
    fn live() -> Self {
        Self { stored: None, evictions: u64::MAX }
    }
}

/// Where an operation on a run goes.
struct Resolved {
    run: RunId,
    entry: Arc<ThreadEntry>,
    lookup: Lookup,
}

/// Running runs by the time they would be idle for too long, as of when the entry
/// was written: (deadline in ms, run) → thread.
type Deadlines = Mutex<BTreeMap<(i64, RunId), ThreadId>>;

// `Stop` is sent once; boxing every decision instead would cost an allocation per append.
#[allow(clippy::large_enum_variant)]
enum Work {
    Commit(Pending),
    /// Try to recover from a failed commit now; answered whether it did.
    Recover(oneshot::Sender<Result<(), LogError>>),
    Stop,
}

struct Core<S: Store> {
    config: LogConfig,
    store: Arc<S>,
    threads: Arc<Threads>,
    registry: Arc<Registry>,
    /// Ended runs evicted so far (see [`Resolved::evictions`]).
    evictions: Arc<AtomicU64>,
    deadlines: Deadlines,
    runs_in_flight: AtomicU64,
    commits: SyncSender<Work>,
    failed: Arc<AtomicBool>,
    /// Bumped by every reload of the working state.
    epoch: Arc<AtomicU64>,
    committer: Mutex<Option<JoinHandle<()>>>,
    /// Woken when a committed event may close an input request.
    inputs: Arc<InputWatch>,
}

/// A working state as the store holds it.
struct Working {
    threads: HashMap<ThreadId, Arc<ThreadEntry>>,
    registry: HashMap<RunId, ThreadId>,
    deadlines: BTreeMap<(i64, RunId), ThreadId>,
    runs_in_flight: u64,
}

impl Working {
    /// The working state to start from: every thread, and the runs still running.
    fn load<S: Store>(store: &S, config: &LogConfig) -> Result<Self, StoreError> {
        let Snapshot { threads, running } = store.load()?;
        let mut entries: HashMap<ThreadId, Arc<ThreadEntry>> = threads
            .into_iter()
            .map(|t| (t.id.clone(), Arc::new(ThreadEntry::new(t.id, &t.record, t.head_seq))))
            .collect();
        let mut registry = HashMap::new();
        let mut deadlines = BTreeMap::new();
        let idle_ms = idle_millis(config);
        let runs_in_flight = running.len() as u64;
        for run in running {
            let Some(entry) = entries.get_mut(&run.record.thread_id) else {
                return Err(StoreError::Corrupt {
                    path: "runs".into(),
                    detail: format!("run {} names a thread that is not stored", run.id),
                });
            };
            registry.insert(run.id.clone(), run.record.thread_id.clone());
            let due = run.record.due_ms(idle_ms);
            deadlines.insert((due, run.id.clone()), run.record.thread_id.clone());
            let run_state = RunState { record: run.record, event_ids: Some(run.event_ids), due_ms: Some(due) };
            entry.state.lock().runs.insert(run.id, run_state);
        }
        Ok(Self { threads: entries, registry, deadlines, runs_in_flight })
    }
}

/// The log over a store. See the module docs.
pub struct StoredLog<S: Store> {
    core: Arc<Core<S>>,
}

/// The idle timeout in milliseconds.
fn idle_millis(config: &LogConfig) -> i64 {
    i64::try_from(config.run_idle_timeout.as_millis()).unwrap_or(i64::MAX)
}

fn storage(e: StoreError) -> LogError {
    LogError::Unavailable(e.to_string())
}

impl RunState {
    fn new(thread_id: ThreadId, agent_name: Option<String>, in_process: bool, now: Timestamp) -> Self {
        let record = RunRecord {
            thread_id,
            agent_name,
            lifecycle: RunLifecycle::default(),
            cancel_requested: false,
            last_activity_ms: now.millis(),
            in_process,
            last_seq: None,
        };
        Self { record, event_ids: Some(HashMap::new()), due_ms: None }
    }
}

impl<S: Store> StoredLog<S> {
    /// Opens a log over `store`: loads its working state and starts the committer.
    pub fn open(store: S, config: LogConfig, sink: Arc<dyn FeedSink>) -> Result<Self, StoreError> {
        let store = Arc::new(store);
        let working = Working::load(&*store, &config)?;
        let (commits, work) = sync_channel(COMMIT_QUEUE);
        let failed = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(AtomicU64::new(0));
        let registry = Arc::new(RwLock::new(working.registry));
        let evictions = Arc::new(AtomicU64::new(0));
        let cap = if store.keeps_threads() { config.thread_cache } else { usize::MAX };
        let threads = Arc::new(Threads::new(working.threads, cap));
        let mut spawned = Ok(());
        let inputs = Arc::new(InputWatch::default());
        let core = Arc::new_cyclic(|core: &Weak<Core<S>>| {
            let committer = Committer {
                store: store.clone(),
                work,
                sink,
                failed: failed.clone(),
                epoch: epoch.clone(),
                evicted: Evicted { registry: registry.clone(), count: evictions.clone(), threads: threads.clone() },
                core: core.clone(),
                retry_every: config.retry_after_failure,
                inputs: inputs.clone(),
            };
            let handle = std::thread::Builder::new()
                .name("agentwire-committer".into())
                .spawn(move || committer.run())
                .map_err(|e| spawned = Err(StoreError::Io(format!("cannot start the committer: {e}"))))
                .ok();
            Core {
                config,
                store,
                threads,
                registry,
                evictions,
                deadlines: Mutex::new(working.deadlines),
                runs_in_flight: AtomicU64::new(working.runs_in_flight),
                commits,
                failed,
                epoch,
                committer: Mutex::new(handle),
                inputs,
            }
        });
        spawned?;
        Ok(Self { core })
    }

    /// Asks the committer to recover from a failed commit now, instead of at
    /// its next retry; `Ok` when the log takes writes (again).
    pub async fn recover(&self) -> Result<(), LogError> {
        let (done, answer) = oneshot::channel();
        self.core.commits.try_send(Work::Recover(done)).map_err(|_| LogError::Unavailable("the log is busy".into()))?;
        answer.await.unwrap_or_else(|_| Err(LogError::Unavailable("the log is shutting down".into())))
    }

    /// The store under this log.
    pub fn store(&self) -> &Arc<S> {
        &self.core.store
    }

    /// Runs held in the working state (running ones, and ended ones whose
    /// eviction is not yet durable, or all of them on a store that does not keep runs).
    pub fn runs_in_memory(&self) -> usize {
        self.core.registry.read().len()
    }

    /// Entries in the idle-deadline index (one per running run).
    pub fn idle_index_len(&self) -> usize {
        self.core.deadlines.lock().len()
    }
}

/// The committer thread: what it needs to write, answer, and recover.
struct Committer<S: Store> {
    store: Arc<S>,
    work: Receiver<Work>,
    sink: Arc<dyn FeedSink>,
    failed: Arc<AtomicBool>,
    epoch: Arc<AtomicU64>,
    evicted: Evicted,
    /// To reload the working state after a failed commit.
    core: Weak<Core<S>>,
    retry_every: std::time::Duration,
    inputs: Arc<InputWatch>,
}

impl<S: Store> Committer<S> {
    /// Groups waiting decisions, writes them in one transaction, then publishes
    /// heads, feeds events and answers, in order. After a failed commit, tries
    /// to recover every `retry_every` (and whenever asked).
    fn run(self) {
        let mut group = Vec::new();
        let mut recover_asked = Vec::new();
        let mut next_try = Instant::now();
        let mut stop = false;
        while !stop {
            if self.failed.load(Ordering::Acquire) && Instant::now() >= next_try {
                let _ = self.recover();
                next_try = Instant::now() + self.retry_every;
            }
            let first = if self.failed.load(Ordering::Acquire) {
                match self.work.recv_timeout(next_try.saturating_duration_since(Instant::now())) {
                    Ok(work) => work,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match self.work.recv() {
                    Ok(work) => work,
                    Err(_) => break,
                }
            };
            match first {
                Work::Commit(p) => group.push(p),
                Work::Recover(done) => recover_asked.push(done),
                Work::Stop => break,
            }
            while group.len() < MAX_GROUP {
                match self.work.try_recv() {
                    Ok(Work::Commit(p)) => group.push(p),
                    Ok(Work::Recover(done)) => recover_asked.push(done),
                    Ok(Work::Stop) => {
                        stop = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            if self.commit(&mut group) {
                next_try = Instant::now() + self.retry_every;
            }
            for done in recover_asked.drain(..) {
                let _ = done.send(self.recover());
                next_try = Instant::now() + self.retry_every;
            }
        }
    }

    /// Commits `group`; answers whether this commit is the one that failed.
    fn commit(&self, group: &mut Vec<Pending>) -> bool {
        if group.is_empty() {
            return false;
        }
        // Decided on a working state that a reload has replaced since: refused.
        let epoch = self.epoch.load(Ordering::Acquire);
        if group.iter().any(|p| p.epoch != epoch) {
            let (current, stale): (Vec<Pending>, Vec<Pending>) = group.drain(..).partition(|p| p.epoch == epoch);
            for p in stale {
                let _ = p.done.send(Err(LogError::Unavailable("the log recovered from a failed write; retry".into())));
            }
            *group = current;
        }
        let mut batches: Vec<&Batch> = Vec::with_capacity(group.len());
        batches.extend(group.iter().map(|p| &p.batch).filter(|b| !b.is_empty()));
        let written = if self.failed.load(Ordering::Acquire) {
            Err(StoreError::Io("an earlier commit failed and the store has not recovered yet".into()))
        } else if batches.is_empty() {
            Ok(())
        } else {
            self.store.write(&batches)
        };
        match written {
            Ok(()) => {
                for p in group.drain(..) {
                    for (entry, head) in &p.heads {
                        entry.committed.fetch_max(*head, Ordering::AcqRel);
                    }
                    for (entry, oldest) in &p.oldest {
                        entry.oldest.fetch_max(*oldest, Ordering::AcqRel);
                    }
                    if !p.batch.events.is_empty() {
                        for thread_events in p.batch.events.chunk_by(|a, b| a.thread_id() == b.thread_id()) {
                            self.sink.deliver(thread_events);
                        }
                        for e in p.batch.events.iter().filter(|e| input::closes_inputs(e.kind())) {
                            self.inputs.changed(e.run_id());
                        }
                    }
                    if let Some((entry, run)) = &p.ended {
                        self.evicted.evict(entry, run);
                    }
                    if let Some(thread) = &p.deleted {
                        self.sink.thread_deleted(thread);
                    }
                    let _ = p.done.send(Ok(()));
                }
                false
            }
            Err(e) => {
                let newly = !self.failed.swap(true, Ordering::AcqRel);
                if newly {
                    tracing::error!(error = %e, "commit failed: the log takes no writes until the store recovers");
                }
                for p in group.drain(..) {
                    let _ = p.done.send(Err(storage(e.clone())));
                }
                newly
            }
        }
    }

    /// After a failed commit: once the store takes a write again, reloads the
    /// working state from it and takes writes again.
    fn recover(&self) -> Result<(), LogError> {
        if !self.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        let core = self.core.upgrade().ok_or_else(|| LogError::Unavailable("the log is closed".into()))?;
        let recovered = self.store.recover().and_then(|()| core.reload());
        if let Err(e) = recovered {
            tracing::debug!(error = %e, "the store has not recovered yet");
            return Err(storage(e));
        }
        self.failed.store(false, Ordering::Release);
        tracing::info!("the store takes writes again; the log resumed from what it holds");
        Ok(())
    }
}

/// What the committer needs to evict ended runs.
struct Evicted {
    registry: Arc<Registry>,
    count: Arc<AtomicU64>,
    threads: Arc<Threads>,
}

impl Evicted {
    /// Drops an ended run, now durable, from the working state: the store answers
    /// for it from here on. Registry first, so a lookup that misses it finds it in
    /// the store (where it already is), never nowhere.
    /// A thread left with no run in the working state may go too (see [`Threads`]).
    fn evict(&self, entry: &ThreadEntry, run: &RunId) {
        let mut state = entry.state.lock();
        if state.runs.get(run).is_some_and(|r| r.record.lifecycle.ended()) {
            self.count.fetch_add(1, Ordering::AcqRel);
            self.registry.write().remove(run);
            state.runs.remove(run);
            if state.runs.is_empty() && !state.deleted {
                let id = state.id.clone();
                drop(state);
                self.threads.idle_now(&id);
            }
        }
    }
}

/// The thread an operation acts on. A new one is held outside the thread map,
/// with the map's write lock, until the operation's write is queued: a refused
/// operation leaves no thread behind, and no other operation can see a thread
/// whose record is not on its way to disk.
enum Target<'a> {
    Existing(Arc<ThreadEntry>),
    New {
        id: ThreadId,
        entry: Arc<ThreadEntry>,
        record: ThreadRecord,
        threads: RwLockWriteGuard<'a, HashMap<ThreadId, Arc<ThreadEntry>>>,
    },
}

impl Target<'_> {
    fn entry(&self) -> &Arc<ThreadEntry> {
        match self {
            Self::Existing(entry) | Self::New { entry, .. } => entry,
        }
    }

    /// Queues a new thread's record with the operation's write.
    fn record_into(&self, batch: &mut Batch) {
        if let Self::New { id, record, .. } = self {
            batch.threads.push((id.clone(), record.clone()));
        }
    }

    /// Makes a new thread visible; call once its record is queued. `idle`: it
    /// has no run in the working state (a candidate for eviction).
    fn publish(self, all: &Threads, idle: bool) {
        if let Self::New { id, entry, mut threads, .. } = self {
            threads.insert(id.clone(), entry);
            if idle {
                all.idle(&mut threads, &id);
            }
        }
    }
}

/// A decision taken under a thread's lock, waiting to be durable.
type Ticket = oneshot::Receiver<Result<(), LogError>>;

async fn durable(ticket: Ticket) -> Result<(), LogError> {
    ticket.await.unwrap_or_else(|_| Err(LogError::Unavailable("the log is shutting down".into())))
}

impl<S: Store> Core<S> {
    /// One retention limit, applied a group at a time: `plan` gets the threads
    /// whose oldest event is at or before `at_or_before_ms`, oldest first, and
    /// answers their trims; they commit, and the next group is asked for, until
    /// a group plans nothing. Answers how many events went.
    async fn sweep(
        &self,
        at_or_before_ms: i64,
        plan: impl Fn(&S, &[ThreadExtent]) -> Result<Vec<Trim>, StoreError> + Send + Sync + 'static,
    ) -> Result<u64, LogError> {
        self.check_writable()?;
        let plan = Arc::new(plan);
        let mut removed = 0;
        loop {
            let (store, plan) = (self.store.clone(), plan.clone());
            let trims = tokio::task::spawn_blocking(move || {
                let due = store.oldest_threads(at_or_before_ms, RETENTION_GROUP)?;
                plan(&store, &due)
            })
            .await
            .map_err(|e| LogError::Unavailable(format!("retention task failed: {e}")))?
            .map_err(storage)?;
            let mut tickets = Vec::new();
            for trim in trims {
                let Some(entry) = self.thread(&trim.thread).await? else { continue };
                let mut state = entry.state.lock();
                // An append may have cut further since the plan was read: a thread's
                // oldest seq only ever moves forward.
                let kept_from = state.oldest.max(entry.oldest.load(Ordering::Acquire));
                if state.check_current().is_err() || trim.keep_from <= kept_from {
                    continue;
                }
                let record = ThreadRecord {
                    owner: state.owner.clone(),
                    oldest_seq: trim.keep_from,
                    by_publisher: state.by_publisher,
                };
                let batch = Batch {
                    trims: vec![(trim.thread.clone(), trim.keep_from)],
                    threads: vec![(trim.thread, record)],
                    ..Batch::default()
                };
                // Queued under the thread's lock, as appends are, so the thread's
                // trims reach the disk in the order they were decided.
                tickets.push(self.submit_with(batch, Vec::new(), vec![(entry.clone(), trim.keep_from)], None)?);
                removed += trim.keep_from - kept_from;
                state.oldest = trim.keep_from;
            }
            // Nothing planned (or only threads deleted or cut meanwhile): this limit holds.
            if tickets.is_empty() {
                return Ok(removed);
            }
            for ticket in tickets {
                durable(ticket).await?;
            }
        }
    }

    fn check_writable(&self) -> Result<(), LogError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(LogError::Unavailable(
                "the log failed to commit; it takes writes again once the store does".into(),
            ));
        }
        Ok(())
    }

    /// Replaces the working state with what the store holds (after a failed
    /// commit; called by the committer, so nothing is being written).
    fn reload(&self) -> Result<(), StoreError> {
        let working = Working::load(&*self.store, &self.config)?;
        let mut threads = self.threads.map.write();
        self.threads.idle.lock().clear();
        for entry in threads.values() {
            entry.state.lock().stale = true;
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
        *self.registry.write() = working.registry;
        *self.deadlines.lock() = working.deadlines;
        self.runs_in_flight.store(working.runs_in_flight, Ordering::Relaxed);
        *threads = working.threads;
        Ok(())
    }

    /// Queues a new thread's record and makes it visible. The decision holds the
    /// entry until it is written, so the thread cannot be evicted before then.
    fn create(&self, target: Target<'_>) -> Result<Ticket, LogError> {
        let mut batch = Batch::default();
        target.record_into(&mut batch);
        let ticket = self.submit(batch, vec![(target.entry().clone(), 0)])?;
        target.publish(&self.threads, true);
        Ok(ticket)
    }

    fn submit(&self, batch: Batch, heads: Vec<(Arc<ThreadEntry>, u64)>) -> Result<Ticket, LogError> {
        self.submit_with(batch, heads, Vec::new(), None)
    }

    fn submit_with(
        &self,
        batch: Batch,
        heads: Vec<(Arc<ThreadEntry>, u64)>,
        oldest: Vec<(Arc<ThreadEntry>, u64)>,
        ended: Option<(Arc<ThreadEntry>, RunId)>,
    ) -> Result<Ticket, LogError> {
        let (done, ticket) = oneshot::channel();
        let pending = Pending { batch, heads, oldest, ended, deleted: None, epoch: 0, done };
        self.send(pending, ticket)
    }

    fn send(&self, mut pending: Pending, ticket: Ticket) -> Result<Ticket, LogError> {
        pending.epoch = self.epoch.load(Ordering::Acquire);
        match self.commits.try_send(Work::Commit(pending)) {
            Ok(()) => Ok(ticket),
            Err(TrySendError::Full(_)) => Err(LogError::Unavailable("the log is saturated; retry shortly".into())),
            Err(TrySendError::Disconnected(_)) => Err(LogError::Unavailable("the log is closed".into())),
        }
    }

    /// Puts a running run in the deadline index at what `record` makes its
    /// deadline ([`RunRecord::due_ms`]); answers it.
    fn watch(&self, run: &RunId, thread: &ThreadId, record: &RunRecord) -> i64 {
        let due = record.due_ms(idle_millis(&self.config));
        self.deadlines.lock().insert((due, run.clone()), thread.clone());
        due
    }

    /// A thread in the working state, without asking the store.
    fn cached(&self, id: &ThreadId) -> Option<Arc<ThreadEntry>> {
        self.threads.get(id)
    }

    /// The thread `id`: from the working state, or loaded into it from the
    /// store (read on a blocking thread). With it, the evictions count the read
    /// was made under, for [`Threads::adopt`].
    async fn find(&self, id: &ThreadId) -> Result<(Option<Arc<ThreadEntry>>, u64), LogError> {
        let before = self.threads.evictions.load(Ordering::Acquire);
        if let Some(entry) = self.cached(id) {
            return Ok((Some(entry), before));
        }
        if !self.store.keeps_threads() {
            return Ok((None, before)); // every thread of such a store is in the working state
        }
        let (store, wanted) = (self.store.clone(), id.clone());
        let stored = tokio::task::spawn_blocking(move || store.thread(&wanted))
            .await
            .map_err(|e| LogError::Unavailable(format!("store read failed: {e}")))?
            .map_err(storage)?;
        if stored.is_none() {
            return Ok((None, before));
        }
        let mut map = self.threads.map.write();
        Ok((self.threads.adopt(&mut map, id, stored, before, &*self.store)?, before))
    }

    /// [`Core::find`] for callers that only want the entry.
    async fn thread(&self, id: &ThreadId) -> Result<Option<Arc<ThreadEntry>>, LogError> {
        Ok(self.find(id).await?.0)
    }

    /// The thread `id` for an operation of `owner`: an existing thread of
    /// theirs, or a new one that becomes visible only if the operation's write
    /// is queued ([`Target::publish`]). [`LogError::Forbidden`] if it is someone else's.
    async fn target(&self, id: &ThreadId, owner: &UserId, by_publisher: bool) -> Result<Target<'_>, LogError> {
        let owned = |entry: Arc<ThreadEntry>| {
            let state = entry.state.lock();
            state.check_current()?;
            let mine = &state.owner == owner;
            drop(state);
            if mine { Ok(Target::Existing(entry)) } else { Err(LogError::Forbidden) }
        };
        let (found, before) = self.find(id).await?;
        if let Some(entry) = found {
            return owned(entry);
        }
        let mut threads = self.threads.map.write();
        // Not in the store when it was read: unless a thread was evicted since, still not.
        if let Some(entry) = self.threads.adopt(&mut threads, id, None, before, &*self.store)? {
            drop(threads);
            return owned(entry);
        }
        let record = ThreadRecord { owner: owner.clone(), oldest_seq: 1, by_publisher };
        let entry = Arc::new(ThreadEntry::new(id.clone(), &record, 0));
        Ok(Target::New { id: id.clone(), entry, record, threads })
    }

    /// Whether `run` is registered anywhere (working state or store).
    async fn run_taken(&self, run: &RunId) -> Result<bool, LogError> {
        if self.registry.read().contains_key(run) {
            return Ok(true);
        }
        Ok(self.stored(run, Vec::new()).await?.is_some())
    }

    /// A run as the store has it, with the `seq`s of `event_ids`, read on a
    /// blocking thread: store reads never hold up the async runtime.
    async fn stored(&self, run: &RunId, event_ids: Vec<String>) -> Result<Option<Stored>, LogError> {
        if !self.store.keeps_runs() {
            return Ok(None); // every run of such a store stays in the working state
        }
        let (store, run) = (self.store.clone(), run.clone());
        let read = move || -> Result<Option<Stored>, StoreError> {
            let Some(record) = store.run(run.as_str())? else { return Ok(None) };
            let mut seqs = HashMap::new();
            for id in event_ids {
                if let Some(seq) = store.event_seq(&run, &id)? {
                    seqs.insert(id, seq);
                }
            }
            Ok(Some(Stored { record, seqs }))
        };
        tokio::task::spawn_blocking(read)
            .await
            .map_err(|e| LogError::Unavailable(format!("store read failed: {e}")))?
            .map_err(storage)
    }

    /// Refuses a caller-chosen run id that names, by its pattern, a thread that
    /// is not `owner`'s (see [`crate::foreign_pattern_thread`]).
    async fn check_chosen_run_id(&self, run: &RunId, thread: &ThreadId, owner: &UserId) -> Result<(), LogError> {
        let Some(named) = crate::foreign_pattern_thread(run, thread) else { return Ok(()) };
        match self.thread(&named).await? {
            Some(entry) if &entry.state.lock().owner == owner => Ok(()),
            _ => Err(LogError::Forbidden),
        }
    }

    /// The run's thread: working state, then the store, then extraction (PROTOCOL §1).
    /// A run found in the store comes with the `seq`s of the `event_id`s of `events`.
    async fn resolve(&self, run_id: &str, allow_fallback: bool, events: &[NewEvent]) -> Result<Resolved, LogError> {
        let not_found = || LogError::RunNotFound(run_id.to_owned());
        let evictions = self.evictions.load(Ordering::Acquire);
        let known = self.registry.read().get_key_value(run_id).map(|(r, t)| (r.clone(), t.clone()));
        if let Some((run, thread)) = known {
            let entry = self.thread(&thread).await?.ok_or_else(not_found)?;
            return Ok(Resolved { run, entry, lookup: Lookup { stored: None, evictions } });
        }
        let run = RunId::parse(run_id).map_err(|_| not_found())?;
        let event_ids = events.iter().filter_map(|e| e.event_id.clone()).collect();
        if let Some(stored) = self.stored(&run, event_ids).await? {
            let entry = self.thread(&stored.record.thread_id).await?.ok_or_else(not_found)?;
            return Ok(Resolved { run, entry, lookup: Lookup { stored: Some(stored), evictions } });
        }
        if !allow_fallback {
            return Err(not_found());
        }
        // Pattern routing reaches only threads a publisher created (PROTOCOL §1).
        let named = extract_thread_id(run_id).filter(|_| self.config.pattern_routing).ok_or_else(not_found)?;
        let entry = self.thread(&named).await?.filter(|entry| entry.state.lock().by_publisher).ok_or_else(not_found)?;
        Ok(Resolved { run, entry, lookup: Lookup { stored: None, evictions } })
    }

    /// A run of `state`'s thread that is not in the working state (an ended run,
    /// evicted), for this decision only: from what [`Core::resolve`] read, or, if
    /// an eviction may have happened since, from the store under the lock (rare).
    /// `None` if unknown; [`LogError::RunExists`] if it belongs to another thread.
    fn outside_run(&self, state: &ThreadState, run: &RunId, lookup: Lookup) -> Result<Option<RunState>, LogError> {
        let Lookup { stored, evictions } = lookup;
        let (record, event_ids) = match stored {
            Some(Stored { record, seqs }) => (record, Some(seqs)),
            None if self.evictions.load(Ordering::Acquire) == evictions => return Ok(None),
            None => match self.store.run(run.as_str()).map_err(storage)? {
                Some(record) => (record, None),
                None => return Ok(None),
            },
        };
        if record.thread_id != state.id {
            return Err(LogError::RunExists(run.to_string()));
        }
        Ok(Some(RunState { record, event_ids, due_ms: None }))
    }

    /// Decides an append under the thread's lock and queues it for commit.
    fn append_locked(
        &self,
        entry: &Arc<ThreadEntry>,
        state: &mut ThreadState,
        run: &RunId,
        events: Vec<NewEvent>,
        cancel: bool,
        lookup: Lookup,
    ) -> Result<(Appended, Ticket), LogError> {
        if state.deleted {
            return Err(LogError::RunNotFound(run.to_string()));
        }
        state.check_current()?;
        let now = Timestamp::now();
        let mut batch = Batch::default();
        // A run first seen here (through extraction) is registered only if its
        // events are accepted: a refused first publish leaves no phantom run behind.
        // One not in the working state but in the store (ended, evicted) is read
        // for this decision only.
        let mut outside = if state.runs.contains_key(run) {
            None
        } else {
            match self.outside_run(state, run, lookup)? {
                Some(stored) => Some((stored, false)),
                None if self.registry.read().contains_key(run) => return Err(LogError::RunExists(run.to_string())),
                None => Some((RunState::new(state.id.clone(), None, false, now), true)),
            }
        };
        let head = state.head;
        let thread_id = state.id.clone();
        let run_state = match outside.as_mut() {
            Some((run_state, _)) => run_state,
            None => state.runs.get_mut(run).ok_or_else(|| LogError::RunNotFound(run.to_string()))?,
        };
        let plan = {
            let (ids, store) = (&run_state.event_ids, &self.store);
            let mut lookup_error = None;
            let known = |id: &str| match ids {
                Some(map) => map.get(id).copied(),
                None => store.event_seq(run, id).unwrap_or_else(|e| {
                    lookup_error.get_or_insert(e);
                    None
                }),
            };
            let plan = plan_append(&run_state.record.lifecycle, known, events, head)?;
            if let Some(e) = lookup_error {
                return Err(storage(e));
            }
            plan
        };
        let seqs = plan.seqs(head);
        let appended = Appended { thread_id: thread_id.clone(), seqs };
        if plan.new_events.is_empty() {
            // Every event is a repeat (never of a fresh run, which has no ids yet):
            // answer once everything queued before is durable.
            return Ok((appended, self.submit(batch, Vec::new())?));
        }
        let mut record = run_state.record.clone();
        let was_running = !record.lifecycle.ended();
        record.lifecycle = plan.lifecycle;
        record.last_activity_ms = now.millis();
        record.cancel_requested |= cancel;
        record.last_seq = Some(head + plan.new_events.len() as u64);
        batch.events = numbered(&thread_id, run, head, now, plan.new_events);
        let event_ids: Vec<(RunId, String, u64)> = batch
            .events
            .iter()
            .filter_map(|e| e.envelope().event_id.as_ref().map(|id| (run.clone(), id.clone(), e.seq())))
            .collect();
        if record.agent_name.is_none() {
            record.agent_name = batch.events.iter().find_map(|e| e.started_agent_name()).map(str::to_owned);
        }
        let new_head = head + batch.events.len() as u64;
        let remembered: Vec<(String, u64)> = event_ids.iter().map(|(_, id, seq)| (id.clone(), *seq)).collect();
        batch.runs.push((run.clone(), record.clone()));
        batch.event_ids = event_ids;
        // The per-thread limit is kept here, in the append's own commit: no sweep looks for full threads.
        let mut oldest = Vec::new();
        let kept_from = state.oldest.max(entry.oldest.load(Ordering::Acquire));
        let trim = self.config.retention.thread_trim(kept_from, new_head);
        if let Some(keep_from) = trim {
            batch.trims.push((thread_id.clone(), keep_from));
            let trimmed =
                ThreadRecord { owner: state.owner.clone(), oldest_seq: keep_from, by_publisher: state.by_publisher };
            batch.threads.push((thread_id.clone(), trimmed));
            oldest.push((entry.clone(), keep_from));
        }
        let ended_now = record.lifecycle.ended();
        let evict = (ended_now && self.store.keeps_runs()).then(|| (entry.clone(), run.clone()));
        let ticket = self.submit_with(batch, vec![(entry.clone(), new_head)], oldest, evict)?;
        // Queued: now the working state may move on.
        state.oldest = trim.unwrap_or(kept_from);
        if let Some(map) = run_state.event_ids.as_mut() {
            map.extend(remembered);
        }
        run_state.record = record;
        state.head = new_head;
        if let Some((run_state, fresh)) = outside {
            self.registry.write().insert(run.clone(), state.id.clone());
            state.runs.insert(run.clone(), run_state);
            if fresh && !ended_now {
                self.runs_in_flight.fetch_add(1, Ordering::Relaxed);
                if let Some(r) = state.runs.get_mut(run) {
                    r.due_ms = Some(self.watch(run, &state.id, &r.record));
                }
            }
        } else if was_running && ended_now {
            self.runs_in_flight.fetch_sub(1, Ordering::Relaxed);
            // An ended run leaves the idle index now, not at its deadline.
            if let Some(due) = state.runs.get_mut(run).and_then(|r| r.due_ms.take()) {
                self.deadlines.lock().remove(&(due, run.clone()));
            }
        } else if let Some(r) = state.runs.get_mut(run)
            && let Some(due) = r.due_ms
            && r.record.due_ms(idle_millis(&self.config)) < due
        {
            // An input request that lapses before the run's deadline: due sooner.
            self.deadlines.lock().remove(&(due, run.clone()));
            r.due_ms = Some(self.watch(run, &state.id, &r.record));
        }
        Ok((appended, ticket))
    }
}

impl<S: Store> StoredLog<S> {
    fn info(state: &ThreadState, run: &RunId, record: &RunRecord) -> RunInfo {
        RunInfo {
            run_id: run.clone(),
            thread_id: state.id.clone(),
            owner: state.owner.clone(),
            agent_name: record.agent_name.clone(),
            status: record.lifecycle.status(),
            cancel_requested: record.cancel_requested,
            inputs: record.lifecycle.inputs().clone(),
            queued: record.lifecycle.queued(),
        }
    }

    /// Appends under the resolved thread's lock, then waits for durability.
    async fn append_to(&self, run_id: &str, events: Vec<NewEvent>, cancel: bool) -> Result<Appended, LogError> {
        let (appended, ticket) = self.decide(run_id, events, cancel).await?;
        durable(ticket).await?;
        Ok(appended)
    }

    /// Decides an append under the resolved thread's lock and queues its write.
    async fn decide(
        &self,
        run_id: &str,
        mut events: Vec<NewEvent>,
        cancel: bool,
    ) -> Result<(Appended, Ticket), LogError> {
        let core = &self.core;
        core.check_writable()?;
        core.config.prepare(&mut events);
        let Resolved { run, entry, lookup } = core.resolve(run_id, !cancel, &events).await?;
        let mut state = entry.state.lock();
        core.append_locked(&entry, &mut state, &run, events, cancel, lookup)
    }

    /// Ends every running run that `pick` chooses with `agent_error {code, message}`; answers them.
    async fn end_runs_where(
        &self,
        pick: impl Fn(&RunRecord) -> bool,
        code: &'static str,
        message: &str,
    ) -> Result<Vec<RunId>, LogError> {
        let core = &self.core;
        core.check_writable()?;
        let entries: Vec<Arc<ThreadEntry>> = core.threads.map.read().values().cloned().collect();
        let mut ended = Vec::new();
        let mut tickets = Vec::new();
        for entry in entries {
            let mut state = entry.state.lock();
            let chosen: Vec<RunId> = state
                .runs
                .iter()
                .filter(|(_, r)| !r.record.lifecycle.ended() && pick(&r.record))
                .map(|(id, _)| id.clone())
                .collect();
            for run in chosen {
                let error = NewEvent::agent_error(code, message);
                let (_, ticket) = core.append_locked(&entry, &mut state, &run, vec![error], false, Lookup::live())?;
                tickets.push(ticket);
                ended.push(run);
            }
        }
        for ticket in tickets {
            durable(ticket).await?;
        }
        Ok(ended)
    }
}

impl<S: Store> StoredLog<S> {
    /// Registers a run; with `if_idle`, only while no run of its thread is
    /// going, checked under the thread's lock with the registration.
    async fn register(&self, new: NewRun, if_idle: bool) -> Result<RunInfo, LogError> {
        let core = &self.core;
        core.check_writable()?;
        // Every check comes before anything changes: a refusal leaves no trace.
        let run = match new.run_id {
            Some(chosen) => {
                core.check_chosen_run_id(&chosen, &new.thread_id, &new.owner).await?;
                chosen
            }
            None => RunId::mint(&new.thread_id),
        };
        if core.run_taken(&run).await? {
            return Err(LogError::RunExists(run.to_string()));
        }
        let (info, ticket) = {
            let target = core.target(&new.thread_id, &new.owner, !new.in_process).await?;
            let entry = target.entry().clone();
            let mut state = entry.state.lock();
            state.check_current()?;
            if if_idle && let Some(running) = going(&state).next() {
                return Err(LogError::RunInFlight(running.clone()));
            }
            let mut registry = core.registry.write();
            if registry.contains_key(&run) {
                return Err(LogError::RunExists(run.to_string()));
            }
            let run_state = RunState::new(state.id.clone(), new.agent_name, new.in_process, Timestamp::now());
            let mut batch = Batch::default();
            target.record_into(&mut batch);
            batch.runs.push((run.clone(), run_state.record.clone()));
            let ticket = core.submit(batch, Vec::new())?;
            // Queued: now the working state may show it.
            registry.insert(run.clone(), state.id.clone());
            core.runs_in_flight.fetch_add(1, Ordering::Relaxed);
            let mut run_state = run_state;
            run_state.due_ms = Some(core.watch(&run, &state.id, &run_state.record));
            let info = Self::info(&state, &run, &run_state.record);
            state.runs.insert(run.clone(), run_state);
            drop((registry, state));
            target.publish(&core.threads, false);
            (info, ticket)
        };
        durable(ticket).await?;
        Ok(info)
    }
}

/// The runs of a thread that are going.
fn going(state: &ThreadState) -> impl Iterator<Item = &RunId> {
    state.runs.iter().filter(|(_, r)| !r.record.lifecycle.ended()).map(|(id, _)| id)
}

impl<S: Store> Drop for StoredLog<S> {
    fn drop(&mut self) {
        // Stops the committer once it has written what is queued.
        let _ = self.core.commits.send(Work::Stop);
    }
}

#[async_trait]
impl<S: Store> Log for StoredLog<S> {
    async fn create_thread(&self, thread_id: Option<ThreadId>, owner: &UserId) -> Result<ThreadId, LogError> {
        let core = &self.core;
        core.check_writable()?;
        let id = thread_id.unwrap_or_else(ThreadId::generate);
        let ticket = match core.target(&id, owner, false).await {
            Ok(target @ Target::New { .. }) => core.create(target)?,
            Ok(Target::Existing(_)) | Err(LogError::Forbidden) => return Err(LogError::ThreadExists(id)),
            Err(e) => return Err(e),
        };
        durable(ticket).await?;
        Ok(id)
    }

    async fn ensure_thread(&self, thread_id: &ThreadId, owner: &UserId) -> Result<(), LogError> {
        let core = &self.core;
        core.check_writable()?;
        let ticket = match core.target(thread_id, owner, false).await? {
            Target::Existing(_) => return Ok(()),
            target @ Target::New { .. } => core.create(target)?,
        };
        durable(ticket).await
    }

    async fn thread_owner(&self, thread_id: &ThreadId) -> Result<Option<UserId>, LogError> {
        Ok(self.core.thread(thread_id).await?.and_then(|t| {
            let state = t.state.lock();
            (!state.deleted).then(|| state.owner.clone())
        }))
    }

    async fn create_run(&self, new: NewRun) -> Result<RunInfo, LogError> {
        self.register(new, false).await
    }

    async fn create_run_if_idle(&self, new: NewRun) -> Result<RunInfo, LogError> {
        self.register(new, true).await
    }

    async fn running_runs(&self, thread_id: &ThreadId) -> Result<Vec<RunId>, LogError> {
        let Some(entry) = self.core.thread(thread_id).await? else { return Ok(Vec::new()) };
        let state = entry.state.lock();
        if state.deleted {
            return Ok(Vec::new());
        }
        Ok(going(&state).cloned().collect())
    }

    async fn run(&self, run_id: &str) -> Result<Option<RunInfo>, LogError> {
        match self.core.resolve(run_id, false, &[]).await {
            Ok(Resolved { run, entry, lookup }) => {
                let state = entry.state.lock();
                if state.deleted {
                    return Ok(None);
                }
                if let Some(live) = state.runs.get(&run) {
                    return Ok(Some(Self::info(&state, &run, &live.record)));
                }
                let outside = self.core.outside_run(&state, &run, lookup)?;
                Ok(outside.map(|stored| Self::info(&state, &run, &stored.record)))
            }
            Err(LogError::RunNotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn append(&self, run_id: &str, events: Vec<NewEvent>) -> Result<Appended, LogError> {
        self.append_to(run_id, events, false).await
    }

    async fn append_queued(&self, run_id: &str, events: Vec<NewEvent>) -> Result<crate::Queued, LogError> {
        let (appended, ticket) = self.decide(run_id, events, false).await?;
        Ok(Box::pin(async move { durable(ticket).await.map(|()| appended) }))
    }

    async fn answer_input(&self, thread_id: &ThreadId, answer: InputAnswer) -> Result<Appended, LogError> {
        let core = &self.core;
        core.check_writable()?;
        let not_found = || LogError::InputNotFound(answer.request_id.clone());
        let entry = core.thread(thread_id).await?.ok_or_else(|| LogError::ThreadNotFound(thread_id.clone()))?;
        // A named run that has ended is read here, before the lock (it may be on disk only).
        let named = match &answer.run_id {
            Some(run_id) => match core.resolve(run_id, false, &[]).await {
                Ok(Resolved { run, entry: found, lookup }) if Arc::ptr_eq(&found, &entry) => Some((run, lookup)),
                Ok(_) | Err(LogError::RunNotFound(_)) => return Err(not_found()),
                Err(e) => return Err(e),
            },
            None => None,
        };
        let (appended, ticket) = {
            let mut state = entry.state.lock();
            state.check_current()?;
            let holder = match &named {
                Some((run, _)) => state.runs.get_key_value(run),
                None => {
                    state.runs.iter().find(|(_, r)| input::asked_by_going_run(&r.record.lifecycle, &answer.request_id))
                }
            };
            let holder = holder.map(|(run, r)| (run.clone(), r.record.lifecycle.inputs().clone()));
            let (run, inputs) = match (holder, named) {
                (Some(found), _) => found,
                (None, Some((run, lookup))) => {
                    let ended = core.outside_run(&state, &run, lookup)?.ok_or_else(not_found)?;
                    (run, ended.record.lifecycle.inputs().clone())
                }
                (None, None) => return Err(not_found()),
            };
            let mut events = vec![input::answer_event(&inputs, &answer)?];
            core.config.prepare(&mut events);
            core.append_locked(&entry, &mut state, &run, events, false, Lookup::live())?
        };
        durable(ticket).await?;
        Ok(appended)
    }

    fn input_changes(&self) -> Option<Arc<InputWatch>> {
        Some(self.core.inputs.clone())
    }

    async fn cancel(&self, run_id: &str) -> Result<Appended, LogError> {
        self.append_to(run_id, vec![NewEvent::agent_error("cancelled", "the run was cancelled")], true).await
    }

    async fn read(&self, thread_id: &ThreadId, after_seq: u64, limit: usize) -> Result<Page, LogError> {
        let entry = self.core.thread(thread_id).await?.ok_or_else(|| LogError::ThreadNotFound(thread_id.clone()))?;
        let head_seq = entry.committed.load(Ordering::Acquire);
        let oldest_seq = entry.oldest.load(Ordering::Acquire);
        // Only committed events: the page ends at the committed head read above.
        let wanted = usize::try_from(head_seq.saturating_sub(after_seq)).unwrap_or(usize::MAX).min(limit);
        if wanted == 0 {
            return Ok(Page { events: Vec::new(), head_seq, oldest_seq });
        }
        let (store, thread) = (self.core.store.clone(), thread_id.clone());
        let budget = PageBudget::new(wanted, self.core.config.max_page_bytes);
        let events = tokio::task::spawn_blocking(move || store.read(&thread, after_seq, budget))
            .await
            .map_err(|e| LogError::Unavailable(format!("read task failed: {e}")))?
            .map_err(storage)?;
        Ok(Page { events, head_seq, oldest_seq })
    }

    async fn expire_idle_runs(&self, now: Timestamp) -> Result<Vec<RunId>, LogError> {
        let core = &self.core;
        core.check_writable()?;
        let idle_ms = idle_millis(&core.config);
        let message = format!("no event for {} s", core.config.run_idle_timeout.as_secs_f64());
        let due: Vec<(RunId, ThreadId)> = {
            let mut deadlines = core.deadlines.lock();
            let mut due = Vec::new();
            while let Some(first) = deadlines.first_entry() {
                if first.key().0 > now.millis() {
                    break;
                }
                let ((_, run), thread) = first.remove_entry();
                due.push((run, thread));
            }
            // One tick's order is the runs', not their deadlines': the same whatever the clock said.
            due.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            due
        };
        let mut ended = Vec::new();
        let mut tickets = Vec::new();
        let mut failure = None;
        for (run, thread) in due {
            let Some(entry) = core.cached(&thread) else { continue }; // a running run's thread is held
            let mut state = entry.state.lock();
            let Some(record) = state.runs.get(&run).filter(|r| !r.record.lifecycle.ended()).map(|r| r.record.clone())
            else {
                continue; // ended (or evicted) since: nothing to watch
            };
            let inputs = record.lifecycle.inputs();
            let lapsed = input::lapsed(inputs, now.millis());
            // Waiting on a request is not being idle.
            let idle = inputs.open.is_empty() && record.last_activity_ms.saturating_add(idle_ms) <= now.millis();
            if lapsed.is_empty() && !idle {
                // Active since, or still waiting: back in at its new deadline.
                let due = core.watch(&run, &thread, &record);
                if let Some(r) = state.runs.get_mut(&run) {
                    r.due_ms = Some(due);
                }
                continue;
            }
            if let Some(r) = state.runs.get_mut(&run) {
                r.due_ms = None; // taken out of the index above
            }
            let events = if idle { vec![NewEvent::agent_error("timeout", message.clone())] } else { lapsed };
            match core.append_locked(&entry, &mut state, &run, events, false, Lookup::live()) {
                Ok((_, ticket)) => {
                    tickets.push(ticket);
                    if idle {
                        ended.push(run);
                    } else if let Some(r) = state.runs.get_mut(&run) {
                        // Answered by default: the run goes on, watched from now.
                        r.due_ms = Some(core.watch(&run, &thread, &r.record));
                    }
                }
                Err(e) => {
                    // Not done: keep watching it (and the rest), and say why once what was queued is done.
                    let due = core.watch(&run, &thread, &record);
                    if let Some(r) = state.runs.get_mut(&run) {
                        r.due_ms = Some(due);
                    }
                    failure.get_or_insert(e);
                }
            }
        }
        for ticket in tickets {
            durable(ticket).await?;
        }
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(ended)
    }

    async fn end_orphaned_runs(&self) -> Result<Vec<RunId>, LogError> {
        let orphaned = |r: &RunRecord| r.in_process;
        self.end_runs_where(orphaned, "worker_lost", "the server stopped while the agent was running").await
    }

    async fn ready(&self) -> Result<(), LogError> {
        self.core.check_writable()
    }

    fn stats(&self) -> LogStats {
        LogStats {
            threads: self.core.threads.map.read().len() as u64,
            runs_in_flight: self.core.runs_in_flight.load(Ordering::Relaxed),
        }
    }

    async fn enforce_retention(&self, now: Timestamp) -> Result<u64, LogError> {
        let policy = self.core.config.retention;
        let mut removed = 0;
        if !policy.max_age.is_zero() {
            let cutoff = now.millis().saturating_sub(i64::try_from(policy.max_age.as_millis()).unwrap_or(i64::MAX));
            let age_only = RetentionPolicy { max_age: policy.max_age, ..RetentionPolicy::default() };
            removed += self
                .core
                .sweep(cutoff, move |store, due| {
                    let mut failure = None;
                    let trims = retention::plan(&age_only, due, |thread| {
                        store.last_seq_at_or_before(thread, cutoff).unwrap_or_else(|e| {
                            failure.get_or_insert(e);
                            None
                        })
                    });
                    failure.map_or(Ok(trims), Err)
                })
                .await?;
        }
        if policy.max_events > 0 {
            removed += self
                .core
                .sweep(i64::MAX, move |store, oldest| {
                    let excess = store.event_count()?.saturating_sub(policy.max_events);
                    Ok(retention::take_oldest(oldest, excess))
                })
                .await?;
        }
        Ok(removed)
    }

    async fn forget_event_ids(&self, now: Timestamp) -> Result<u64, LogError> {
        let core = &self.core;
        core.check_writable()?;
        let window = i64::try_from(core.config.dedup_window.as_millis()).unwrap_or(i64::MAX);
        let before = now.millis().saturating_sub(window);
        let mut forgotten = 0;
        loop {
            let store = core.store.clone();
            let due = tokio::task::spawn_blocking(move || store.runs_ended_before(before, FORGET_GROUP))
                .await
                .map_err(|e| LogError::Unavailable(format!("de-duplication sweep failed: {e}")))?
                .map_err(storage)?;
            if due.is_empty() {
                return Ok(forgotten);
            }
            let full = due.len() == FORGET_GROUP;
            forgotten += due.len() as u64;
            let batch = Batch { forget: due, ..Batch::default() };
            durable(core.submit(batch, Vec::new())?).await?;
            if !full {
                return Ok(forgotten);
            }
        }
    }

    async fn delete_thread(&self, thread_id: &ThreadId, owner: Option<&UserId>) -> Result<Vec<RunId>, LogError> {
        let core = &self.core;
        core.check_writable()?;
        let mut tickets = Vec::new();
        let mut cancelled = Vec::new();
        let entry = core.thread(thread_id).await?.ok_or_else(|| LogError::ThreadNotFound(thread_id.clone()))?;
        {
            // Held: the entry cannot be evicted, and it is the map's.
            let mut threads = core.threads.map.write();
            let mut state = entry.state.lock();
            state.check_current()?;
            if owner.is_some_and(|owner| owner != &state.owner) {
                return Err(LogError::Forbidden);
            }
            // Running runs end first, so their watchers see why.
            let running: Vec<RunId> =
                state.runs.iter().filter(|(_, r)| !r.record.lifecycle.ended()).map(|(id, _)| id.clone()).collect();
            for run in running {
                let error = NewEvent::agent_error("cancelled", "the thread was deleted");
                let (_, ticket) = core.append_locked(&entry, &mut state, &run, vec![error], true, Lookup::live())?;
                tickets.push(ticket);
                cancelled.push(run);
            }
            let batch = Batch { deletes: vec![thread_id.clone()], ..Batch::default() };
            let (done, ticket) = oneshot::channel();
            let pending = Pending {
                batch,
                heads: Vec::new(),
                oldest: Vec::new(),
                ended: None,
                deleted: Some(thread_id.clone()),
                epoch: 0,
                done,
            };
            tickets.push(core.send(pending, ticket)?);
            // Queued: the working state lets go of the thread and its runs.
            state.deleted = true;
            let mut registry = core.registry.write();
            for (run, run_state) in state.runs.drain() {
                registry.remove(&run);
                if let Some(due) = run_state.due_ms {
                    core.deadlines.lock().remove(&(due, run));
                }
            }
            drop((registry, state));
            threads.remove(thread_id);
        }
        for ticket in tickets {
            durable(ticket).await?;
        }
        Ok(cancelled)
    }

    async fn close(&self) {
        let _ = self.core.commits.send(Work::Stop);
        let handle = self.core.committer.lock().take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}
