//! The embedded store, the default: a journal in front of a redb file, both
//! in the data directory.
//!
//! A write is durable once its [`journal`] record is synced, and is answered
//! then. The **applier**, a thread of the store's own, copies journal records
//! into the redb file ([`tree`]) behind the writes, many records per commit,
//! so redb's cost per commit is spread over everything that arrived while the
//! last one ran, and one of its slow commits holds up no publisher. Until a
//! record is in redb, reads find what it wrote in [`pending`].
//!
//! What removes (retention, forgetting `event_id`s, deleting a thread) waits
//! for the applier to catch up, then goes to redb directly: such writes are
//! periodic and batched, and the journal then only ever adds.
//!
//! At open, the journal's records that redb lacks (those a crash left) are
//! applied before anything else. The applier stops when the store is dropped,
//! after applying what the journal holds.
//!
//! Reads of what retention plans from (the oldest threads, the event count,
//! ended runs) go to redb alone, once it holds what was journaled before the
//! read: retention is periodic, so waiting a commit there costs nobody.

mod journal;
mod pending;
pub mod segment;
mod tree;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agentwire_protocol::{RunId, ThreadId};
use parking_lot::{Condvar, Mutex};

use crate::store::{Batch, LoadedThread, RunRecord, Snapshot, Store, StoreError, ThreadExtent};
use crate::{FeedSink, LogConfig, PageBudget, StoredEvent, StoredLog};
use journal::Journal;
use pending::Pending;
use tree::Tree;
pub use tree::{BackupLine, CACHE_BYTES, DB_FILE};

/// The journal's directory inside the data directory.
pub const JOURNAL_DIR: &str = "journal";
/// Events (and records, one each) the journal may hold ahead of redb before a
/// write waits for the applier: what bounds the memory [`pending`] takes if
/// redb falls behind.
const MOST_PENDING: usize = 8 * 1024;
/// Events (and records) the applier copies into redb per commit, at most.
const APPLY_EVENTS: usize = 4 * 1024;
/// The least time between two of the applier's commits, unless someone waits
/// for it: a redb commit has a fixed cost (page copies along each touched
/// path, allocator work), so fewer, larger commits cost far less per event.
const APPLY_EVERY: Duration = Duration::from_millis(50);
/// How often the applier makes redb durable. Its commits in between skip
/// redb's sync, which the journal makes unneeded; each durable one lets the
/// journal recycle what it covers, so this also bounds what a restart after
/// a crash reads back.
const SYNC_EVERY: Duration = Duration::from_millis(250);
/// After a spare for the journal could not be prepared (a full disk), how long
/// until the next try; the journal grows its segments meanwhile.
const PREPARE_RETRY: Duration = Duration::from_secs(10);

/// The journaled, redb-backed [`Store`].
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    applier: Mutex<Option<JoinHandle<()>>>,
}

/// The log over the embedded store.
pub type EmbeddedLog = StoredLog<EmbeddedStore>;

impl StoredLog<EmbeddedStore> {
    /// Opens (or creates) the log in `data_dir`.
    pub fn open_dir(data_dir: &Path, config: LogConfig, sink: Arc<dyn FeedSink>) -> Result<Self, StoreError> {
        Self::open(EmbeddedStore::open(data_dir)?, config, sink)
    }
}

/// What the writer, the applier and readers share.
struct Shared {
    tree: Tree,
    /// The journal's directory.
    dir: PathBuf,
    journal: Mutex<Journal>,
    state: Mutex<State>,
    /// Signalled when a record is journaled (for the applier) and when records
    /// are applied or the applier fails (for a writer that waits).
    changed: Condvar,
    /// One write at a time, so journal order is the order writes arrive in.
    writing: Mutex<()>,
    /// Held while redb is written: by the applier for each commit, by a
    /// direct write and by a recovery.
    applying: Mutex<()>,
}

#[derive(Default)]
struct State {
    pending: Pending,
    /// The last record redb holds, and the last it holds durably: the
    /// journal keeps every record after that.
    applied: u64,
    durable: u64,
    /// Why the applier stopped: a redb commit failed. Writes are refused
    /// until [`Store::recover`] applies the journal again.
    failed: Option<StoreError>,
    /// The store is closing: apply what is left, then stop.
    stop: bool,
    /// Applying stopped on purpose (tests): what is journaled stays there, as after a crash.
    paused: bool,
    /// Callers waiting for redb to catch up: the applier does not pace itself then.
    waiting: usize,
}

impl EmbeddedStore {
    /// Opens the store in `data_dir`, creating the directory and the file if
    /// they do not exist. A directory that holds other things but no agentwire
    /// file, a file that is not agentwire's, or one in use, is an error: the
    /// server never starts empty by mistake.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(data_dir, CACHE_BYTES)
    }

    /// [`EmbeddedStore::open`] with a page cache of `cache_bytes` (tests and
    /// benchmarks that must see a steady state sooner).
    pub fn open_with_cache(data_dir: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        let tree = Tree::open_with_cache(data_dir, cache_bytes)?;
        let dir = data_dir.join(JOURNAL_DIR);
        let (journal, applied) = replay(&tree, &dir)?;
        let shared = Arc::new(Shared {
            tree,
            dir,
            journal: Mutex::new(journal),
            state: Mutex::new(State { applied, durable: applied, ..State::default() }),
            changed: Condvar::new(),
            writing: Mutex::new(()),
            applying: Mutex::new(()),
        });
        let applier = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("agentwire-applier".into())
                .spawn(move || shared.apply_forever())
                .map_err(|e| StoreError::Io(format!("cannot start the applier: {e}")))?
        };
        Ok(Self { shared, applier: Mutex::new(Some(applier)) })
    }

    /// Waits until redb holds everything journaled.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.shared.caught_up()
    }

    /// Writes `thread` as JSON lines to `out`; `false` if there is no such thread.
    pub fn export_thread(&self, thread: &ThreadId, out: impl std::io::Write) -> Result<bool, StoreError> {
        self.flush()?;
        self.shared.tree.export_thread(thread, out)
    }

    /// Reads what [`EmbeddedStore::export_thread`] wrote and stores it, one
    /// thread per transaction. A thread that already exists here is refused.
    /// Answers the threads imported.
    pub fn import(&self, input: impl std::io::BufRead) -> Result<Vec<ThreadId>, StoreError> {
        let _one = self.shared.writing.lock();
        self.shared.caught_up()?;
        let _applying = self.shared.applying.lock();
        self.shared.tree.import(input)
    }

    /// Stops copying the journal into redb, for good: what is journaled from
    /// here on stays only in the journal, as if the process had crashed, and
    /// the next open applies it. For tests of that recovery.
    #[doc(hidden)]
    pub fn pause_applier(&self) {
        self.shared.state.lock().paused = true;
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.shared.state.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(applier) = self.applier.lock().take() {
            let _ = applier.join();
        }
    }
}

/// Opens the journal in `dir` and applies, durably, the records `tree` lacks
/// (those a crash left). Answers the journal and the last record applied.
fn replay(tree: &Tree, dir: &Path) -> Result<(Journal, u64), StoreError> {
    let mut applied = tree.journal_applied()?;
    let (mut journal, replayed) = Journal::open(dir, applied)?;
    if !replayed.is_empty() {
        for chunk in replayed.chunks(1024) {
            let batches: Vec<&Batch> = chunk.iter().map(|(_, b)| b).collect();
            let last = chunk.last().map_or(applied, |(no, _)| *no);
            tree.apply(&batches, Some(last), true)?;
            applied = last;
        }
        tracing::info!(records = replayed.len(), "applied the journal records the store file did not have");
    }
    journal::remove(journal.release_through(applied));
    Ok((journal, applied))
}

/// Whether `batch` removes anything (and so goes to redb directly).
fn removes(batch: &Batch) -> bool {
    !batch.trims.is_empty() || !batch.forget.is_empty() || !batch.deletes.is_empty()
}

impl Shared {
    /// The applier: copies the oldest journaled records into redb until the
    /// store closes (or applying is paused, or a commit fails: then it waits
    /// for a recovery). A commit is durable every [`SYNC_EVERY`] and at close.
    /// Between commits it keeps the journal a spare to write over.
    fn apply_forever(&self) {
        let mut synced = Instant::now();
        let mut committed = Instant::now();
        let mut prepare_failed: Option<Instant> = None;
        loop {
            self.keep_a_spare(&mut prepare_failed);
            let (records, stop) = {
                let mut state = self.state.lock();
                loop {
                    let blocked = state.failed.is_some() || state.paused;
                    let unsynced = state.durable < state.applied;
                    let due = state.stop || synced.elapsed() >= SYNC_EVERY;
                    let hurry = state.stop || state.waiting > 0 || state.pending.held() >= APPLY_EVENTS;
                    let paced = committed.elapsed() >= APPLY_EVERY || hurry;
                    if !blocked && ((!state.pending.is_empty() && paced) || (unsynced && due)) {
                        break (state.pending.oldest(APPLY_EVENTS), state.stop);
                    }
                    if state.stop && (blocked || state.pending.is_empty()) {
                        return;
                    }
                    let wake = if blocked {
                        None
                    } else if !state.pending.is_empty() {
                        Some(APPLY_EVERY.saturating_sub(committed.elapsed()))
                    } else if unsynced {
                        Some(SYNC_EVERY.saturating_sub(synced.elapsed()))
                    } else {
                        None
                    };
                    match wake {
                        Some(left) => {
                            self.changed.wait_for(&mut state, left);
                        }
                        None => self.changed.wait(&mut state),
                    }
                }
            };
            committed = Instant::now();
            let sync = stop || synced.elapsed() >= SYNC_EVERY;
            let applying = self.applying.lock();
            // A recovery may have applied some of these since they were taken.
            let applied = self.state.lock().applied;
            let fresh = pending::merged(records.iter().filter(|r| r.no > applied).map(|r| &r.batch));
            let through = records.last().map_or(applied, |r| r.no).max(applied);
            let result = self.tree.apply(&[&fresh], Some(through), sync);
            drop(applying);
            match result {
                Ok(()) => {
                    if sync {
                        synced = Instant::now();
                    }
                    self.applied(through, sync);
                }
                Err(e) => {
                    tracing::error!(error = %e, "the store file refused journal records; writes stop until it recovers");
                    self.state.lock().failed = Some(e);
                    self.changed.notify_all();
                }
            }
        }
    }

    /// Prepares a spare for the journal when it wants one
    /// ([`Journal::spare_wanted`]). No lock is held meanwhile: a direct write
    /// (retention, a deletion) holds `applying` and, through `writing`, every
    /// append, so it must never wait out 16 MiB of zeros. A recovery that
    /// replaces the journal meanwhile finds the spare itself or removes the
    /// unfinished file; [`Journal::add_spare`] takes a spare once.
    fn keep_a_spare(&self, failed_at: &mut Option<Instant>) {
        if failed_at.is_some_and(|at| at.elapsed() < PREPARE_RETRY) {
            return;
        }
        let Some(spare) = self.journal.lock().spare_wanted() else { return };
        match journal::prepare(&spare) {
            Ok(()) => self.journal.lock().add_spare(spare),
            Err(e) => {
                tracing::warn!(error = %e, "cannot prepare a spare journal segment; segments grow instead");
                let _ = std::fs::remove_file(spare.with_extension("filling"));
                *failed_at = Some(Instant::now());
            }
        }
    }

    /// Redb holds every record up to `through` (durably, if `durable`).
    fn applied(&self, through: u64, durable: bool) {
        let mut state = self.state.lock();
        state.pending.applied_through(through);
        state.applied = state.applied.max(through);
        if durable {
            state.durable = state.durable.max(through);
        }
        drop(state);
        self.changed.notify_all();
        if durable {
            let unwanted = self.journal.lock().release_through(through);
            journal::remove(unwanted);
        }
    }

    /// Waits until redb holds every record journaled before the call; the
    /// applier's error if it failed.
    fn caught_up(&self) -> Result<(), StoreError> {
        let target = self.journal.lock().last_no();
        self.wait_until(|state| state.applied >= target)
    }

    /// Waits until `ready` holds; the applier's error if it failed first.
    fn wait_until(&self, ready: impl Fn(&State) -> bool) -> Result<(), StoreError> {
        let mut state = self.state.lock();
        if ready(&state) && state.failed.is_none() {
            return Ok(());
        }
        state.waiting += 1;
        self.changed.notify_all();
        let answer = loop {
            if let Some(e) = &state.failed {
                break Err(e.clone());
            }
            if ready(&state) {
                break Ok(());
            }
            if state.paused {
                break Err(StoreError::Io("applying the journal is paused".into()));
            }
            self.changed.wait(&mut state);
        };
        state.waiting -= 1;
        answer
    }
}

impl Store for EmbeddedStore {
    fn write(&self, batches: &[&Batch]) -> Result<(), StoreError> {
        let shared = &*self.shared;
        let _one = shared.writing.lock();
        if batches.iter().any(|b| removes(b)) {
            shared.caught_up()?;
            let applying = shared.applying.lock();
            let last = shared.journal.lock().last_no();
            shared.tree.apply(batches, Some(last), true)?;
            drop(applying);
            shared.applied(last, true);
            return Ok(());
        }
        shared.wait_until(|state| state.pending.held() <= MOST_PENDING)?;
        // One batch for the journal and the pending index alike: a run that
        // took many appends in this group is encoded once, not once each.
        let batch = pending::merged(batches.iter().copied());
        let mut journal = shared.journal.lock();
        let no = journal.append(&[&batch])?;
        shared.state.lock().pending.push(no, batch);
        drop(journal);
        shared.changed.notify_all();
        Ok(())
    }

    fn read(&self, thread: &ThreadId, after_seq: u64, budget: PageBudget) -> Result<Vec<Arc<StoredEvent>>, StoreError> {
        // Pending first: what the applier moves to redb meanwhile is then in
        // one or the other, or both (see `pending`).
        let newest = self.shared.state.lock().pending.events_after(thread, after_seq, budget.events_left());
        let mut out = self.shared.tree.read(thread, after_seq, budget)?;
        let mut left = budget;
        for event in &out {
            left.admit(event.json.len());
        }
        // Only what follows redb's part without a gap: if redb stopped at the
        // budget, the rest is read next time.
        let mut next = out.last().map(|e| e.seq() + 1);
        for event in newest {
            if next.is_some_and(|n| event.seq() < n) {
                continue;
            }
            if next.is_some_and(|n| event.seq() != n) || !left.admit(event.json.len()) {
                break;
            }
            next = Some(event.seq() + 1);
            out.push(event);
        }
        Ok(out)
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        self.shared.caught_up()?;
        self.shared.tree.load()
    }

    fn keeps_threads(&self) -> bool {
        true
    }

    fn thread(&self, id: &ThreadId) -> Result<Option<LoadedThread>, StoreError> {
        let (record, head) = {
            let state = self.shared.state.lock();
            (state.pending.thread(id), state.pending.head(id))
        };
        let stored = self.shared.tree.thread(id)?;
        let Some(record) = record.or_else(|| stored.as_ref().map(|t| t.record.clone())) else { return Ok(None) };
        let stored_head = stored.map_or(record.oldest_seq.saturating_sub(1), |t| t.head_seq);
        Ok(Some(LoadedThread { id: id.clone(), record, head_seq: stored_head.max(head.unwrap_or(0)) }))
    }

    fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        if let Some(record) = self.shared.state.lock().pending.run(run_id) {
            return Ok(Some(record));
        }
        self.shared.tree.run(run_id)
    }

    fn keeps_runs(&self) -> bool {
        true
    }

    fn recover(&self) -> Result<(), StoreError> {
        let shared = &*self.shared;
        let _one = shared.writing.lock();
        let _applying = shared.applying.lock();
        // Reopened, redb holds what its last durable commit held; the
        // journal, read again, has the rest. It goes on in a fresh segment,
        // so nothing a failed journal write left can precede a new record.
        shared.tree.recover()?;
        let (journal, applied) = replay(&shared.tree, &shared.dir)?;
        *shared.journal.lock() = journal;
        let mut state = shared.state.lock();
        state.pending.clear();
        (state.applied, state.durable, state.failed) = (applied, applied, None);
        drop(state);
        shared.changed.notify_all();
        Ok(())
    }

    fn event_seq(&self, run: &RunId, event_id: &str) -> Result<Option<u64>, StoreError> {
        if let Some(seq) = self.shared.state.lock().pending.event_seq(run, event_id) {
            return Ok(Some(seq));
        }
        self.shared.tree.event_seq(run, event_id)
    }

    fn runs_ended_before(&self, before_ms: i64, limit: usize) -> Result<Vec<(i64, RunId)>, StoreError> {
        self.shared.caught_up()?;
        self.shared.tree.runs_ended_before(before_ms, limit)
    }

    fn oldest_threads(&self, at_or_before_ms: i64, limit: usize) -> Result<Vec<ThreadExtent>, StoreError> {
        self.shared.caught_up()?;
        self.shared.tree.oldest_threads(at_or_before_ms, limit)
    }

    fn event_count(&self) -> Result<u64, StoreError> {
        self.shared.caught_up()?;
        self.shared.tree.event_count()
    }

    fn last_seq_at_or_before(&self, thread: &ThreadId, ts_ms: i64) -> Result<Option<u64>, StoreError> {
        self.shared.caught_up()?;
        self.shared.tree.last_seq_at_or_before(thread, ts_ms)
    }
}
