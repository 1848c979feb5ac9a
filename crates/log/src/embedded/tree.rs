//! The B-tree: one redb file in the data directory, where the embedded store
//! keeps everything once the journal has handed it over.
//!
//! redb is a pure-Rust B-tree with ACID transactions and copy-on-write pages:
//! a commit is durable (fsynced) when it returns, and a crash leaves the last
//! committed state. `BENCHMARKS.md` records why it was chosen. Tables:
//!
//! | table | key | value |
//! |---|---|---|
//! | `threads` | thread id | `ThreadRecord` (JSON) |
//! | `runs` | run id | `RunRecord` (JSON) |
//! | `running` | run id | `()`: the runs to load at start-up |
//! | `events` | (thread id, seq) | the envelope's JSON as sent to clients, packed ([`crate::packed`]) |
//! | `event_ids` | (run id, event id) | seq (layout 3 and before; read, no longer written) |
//! | `event_id_packs` | (run id, first seq) | the run's event ids of one commit, packed ([`id_pack`]) |
//! | `thread_runs` | (thread id, run id) | `()`: a thread's runs, to delete them with it |
//! | `run_ends` | (end time in ms, run id) | `()`: ended runs whose event ids are kept |
//! | `thread_ends` | (thread id, last seq, run id) | `()`: ended runs by their last event, for retention |
//! | `thread_age` | (oldest event's time in ms, thread id) | that event's seq: threads oldest first, for retention |
//! | `thread_oldest` | thread id | its key in `thread_age` |
//! | `meta` | name | number (`format`; `events`: how many are stored; `journal`: the last journal record applied) |
//!
//! The last four make retention cost what it removes: the sweep reads the
//! threads with the oldest events from `thread_age` and the total from `meta`,
//! and a trim finds the runs it ends in `thread_ends`, so nothing walks every
//! thread or every run.
//!
//! The file is locked by redb while open, so a second server on the same data
//! directory is refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use agentwire_protocol::{RunId, ThreadId};
use parking_lot::{MappedRwLockReadGuard, RwLock, RwLockReadGuard};
use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition};

use crate::store::{
    Batch, LoadedRun, LoadedThread, RunRecord, Snapshot, Store, StoreError, ThreadExtent, ThreadRecord,
};
use crate::{EventReader, PageBudget, StoredEvent, packed};

const THREADS: TableDefinition<&str, &[u8]> = TableDefinition::new("threads");
const RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("runs");
const RUNNING: TableDefinition<&str, ()> = TableDefinition::new("running");
const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
const EVENT_IDS: TableDefinition<(&str, &str), u64> = TableDefinition::new("event_ids");
/// A run's event ids of one commit as one value: one insert per run and commit
/// instead of one per event at a random place of a B-tree (the applier's
/// largest cost with one event per publish).
const EVENT_ID_PACKS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("event_id_packs");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Ended runs whose event ids are kept, by end time: (ms, run) → ().
const RUN_ENDS: TableDefinition<(i64, &str), ()> = TableDefinition::new("run_ends");

/// A thread's runs: (thread, run) → ().
const THREAD_RUNS: TableDefinition<(&str, &str), ()> = TableDefinition::new("thread_runs");
/// Ended runs by their last event: (thread, last seq, run) → ().
const THREAD_ENDS: TableDefinition<(&str, u64, &str), ()> = TableDefinition::new("thread_ends");
/// Threads by the time of their oldest stored event: (ms, thread) → that event's seq.
const THREAD_AGE: TableDefinition<(i64, &str), u64> = TableDefinition::new("thread_age");
/// Each thread's key in `thread_age`: thread → ms.
const THREAD_OLDEST: TableDefinition<&str, i64> = TableDefinition::new("thread_oldest");

/// The on-disk layout version this build reads and writes. Version 1 had no
/// `thread_runs`, version 2 none of the retention indexes; they are built when
/// such a file is opened.
const FORMAT: u64 = 4;
/// `meta`'s entry for the last journal record applied.
const JOURNAL: &str = "journal";
/// The database file inside the data directory.
pub const DB_FILE: &str = "agentwire.redb";

/// Memory redb may use to cache pages. Its default (1 GiB) makes resident memory
/// grow with history until it is reached; appends write the newest pages and
/// reads mostly want the newest, so a small cache loses little.
pub const CACHE_BYTES: usize = 32 << 20;

/// The redb file: a [`Store`] on its own (every write its own durable
/// commit), and where the applier copies journal records.
pub struct Tree {
    /// `None` only while [`Store::recover`] reopens the file (or could not).
    db: RwLock<Option<Database>>,
    path: PathBuf,
    cache_bytes: usize,
}

/// Opens (or creates) the database file; a file another process holds is [`StoreError::Locked`].
fn open_database(path: &Path, cache_bytes: usize, data_dir: &Path) -> Result<Database, StoreError> {
    Database::builder().set_cache_size(cache_bytes).create(path).map_err(|e| match e {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            StoreError::Locked(data_dir.display().to_string())
        }
        other => StoreError::Corrupt { path: path.display().to_string(), detail: other.to_string() },
    })
}

fn io(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Io(e.into().to_string())
}

impl Tree {
    /// Opens the file in `data_dir` with a page cache of `cache_bytes`,
    /// creating the directory and the file if they do not exist. A directory
    /// that holds other things but no agentwire file, a file that is not
    /// agentwire's, or one in use, is an error: the server never starts empty
    /// by mistake.
    pub fn open_with_cache(data_dir: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        let path = data_dir.join(DB_FILE);
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::Io(format!("cannot create data directory {}: {e}", data_dir.display())))?;
        if !path.exists() {
            let foreign = std::fs::read_dir(data_dir)
                .map_err(|e| StoreError::Io(format!("cannot read data directory {}: {e}", data_dir.display())))?
                .filter_map(Result::ok)
                .any(|entry| !entry.file_name().to_string_lossy().starts_with('.'));
            if foreign {
                return Err(StoreError::Corrupt {
                    path: data_dir.display().to_string(),
                    detail: format!(
                        "the directory is not empty but holds no {DB_FILE}; refusing to start an empty log there"
                    ),
                });
            }
        }
        let db = open_database(&path, cache_bytes, data_dir)?;
        let store = Self { db: RwLock::new(Some(db)), path, cache_bytes };
        store.check_format()?;
        Ok(store)
    }

    /// The open database, held for as long as the guard lives: a reopen waits for it.
    fn db(&self) -> Result<MappedRwLockReadGuard<'_, Database>, StoreError> {
        RwLockReadGuard::try_map(self.db.read(), Option::as_ref)
            .map_err(|_| StoreError::Io("the store is being reopened after a failed write".into()))
    }

    /// Creates the tables on first use, upgrades a version 1 file, and refuses
    /// a file of another layout.
    fn check_format(&self) -> Result<(), StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt { path: self.path.display().to_string(), detail };
        let db = self.db()?;
        let txn = db.begin_write().map_err(io)?;
        {
            let mut meta = txn.open_table(META).map_err(|e| corrupt(e.to_string()))?;
            let found = meta.get("format").map_err(|e| corrupt(e.to_string()))?.map(|v| v.value());
            match found {
                Some(FORMAT) | None => {}
                // Version 3 wrote event ids one per key; they are still read where they are.
                Some(3) => tracing::info!(path = %self.path.display(), "upgraded the store to layout version {FORMAT}"),
                Some(old @ (1 | 2)) => {
                    let stored = self.upgrade(&txn, old)?;
                    meta.insert("events", stored).map_err(io)?;
                    tracing::info!(path = %self.path.display(), "upgraded the store to layout version {FORMAT}");
                }
                Some(other) => return Err(corrupt(format!("layout version {other}, this build reads {FORMAT}"))),
            }
            meta.insert("format", FORMAT).map_err(io)?;
            for table in [THREADS, RUNS] {
                txn.open_table(table).map_err(|e| corrupt(e.to_string()))?;
            }
            txn.open_table(RUNNING).map_err(|e| corrupt(e.to_string()))?;
            txn.open_table(EVENTS).map_err(|e| corrupt(e.to_string()))?;
            txn.open_table(EVENT_IDS).map_err(|e| corrupt(e.to_string()))?;
            txn.open_table(EVENT_ID_PACKS).map_err(|e| corrupt(e.to_string()))?;
            txn.open_table(THREAD_RUNS).map_err(|e| corrupt(e.to_string()))?;
            txn.open_table(THREAD_ENDS).map_err(|e| corrupt(e.to_string()))?;
            txn.open_table(THREAD_AGE).map_err(|e| corrupt(e.to_string()))?;
            txn.open_table(THREAD_OLDEST).map_err(|e| corrupt(e.to_string()))?;
        }
        txn.commit().map_err(io)
    }

    /// Builds what layout version `from` lacks from what it holds: one walk
    /// over the file, once. Answers how many events are stored.
    fn upgrade(&self, txn: &redb::WriteTransaction, from: u64) -> Result<u64, StoreError> {
        let runs = txn.open_table(RUNS).map_err(io)?;
        let mut thread_runs = txn.open_table(THREAD_RUNS).map_err(io)?;
        let mut thread_ends = txn.open_table(THREAD_ENDS).map_err(io)?;
        for item in runs.iter().map_err(io)? {
            let (key, value) = item.map_err(io)?;
            let record: RunRecord = self.decode("run", value.value())?;
            if from < 2 {
                thread_runs.insert((record.thread_id.as_str(), key.value()), ()).map_err(io)?;
            }
            if let Some(last) = record.last_seq.filter(|_| record.lifecycle.ended()) {
                thread_ends.insert((record.thread_id.as_str(), last, key.value()), ()).map_err(io)?;
            }
        }
        let threads = txn.open_table(THREADS).map_err(io)?;
        let events = txn.open_table(EVENTS).map_err(io)?;
        let mut ages =
            Ages { age: txn.open_table(THREAD_AGE).map_err(io)?, oldest: txn.open_table(THREAD_OLDEST).map_err(io)? };
        for item in threads.iter().map_err(io)? {
            let (key, value) = item.map_err(io)?;
            let record: ThreadRecord = self.decode("thread", value.value())?;
            ages.reindex(self, &events, key.value(), record.oldest_seq)?;
        }
        let mut count = 0u64;
        for item in events.iter().map_err(io)? {
            count += packed::count(item.map_err(io)?.1.value());
        }
        Ok(count)
    }

    /// A thread's record and head, as `threads` and `events` hold them.
    fn thread_in(
        &self,
        threads: &impl ReadableTable<&'static str, &'static [u8]>,
        events: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
        id: &ThreadId,
    ) -> Result<Option<LoadedThread>, StoreError> {
        let Some(bytes) = threads.get(id.as_str()).map_err(io)? else { return Ok(None) };
        let record: ThreadRecord = self.decode("thread", bytes.value())?;
        let head_seq = head_of(events, id.as_str())?.unwrap_or(record.oldest_seq.saturating_sub(1));
        Ok(Some(LoadedThread { id: id.clone(), record, head_seq }))
    }

    fn corrupt(&self, detail: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt { path: self.path.display().to_string(), detail: detail.to_string() }
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, what: &str, bytes: &[u8]) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| self.corrupt(format!("{what}: {e}")))
    }

    fn event(&self, json: &str) -> Result<Arc<StoredEvent>, StoreError> {
        StoredEvent::from_json(json).map(Arc::new).map_err(|e| self.corrupt(format!("event: {e}")))
    }

    /// Hands `each` the stored events of `thread` from `from` on, in seq order,
    /// as (seq, JSON), until it answers `false`.
    fn each_event(
        &self,
        events: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
        thread: &str,
        from: u64,
        mut each: impl FnMut(u64, &str) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        // The chunk holding `from` starts at or before it.
        let start = match events.range((thread, 0)..=(thread, from)).map_err(io)?.next_back() {
            Some(item) => item.map_err(io)?.0.value().1,
            None => from,
        };
        for item in events.range((thread, start)..=(thread, u64::MAX)).map_err(io)? {
            let (key, value) = item.map_err(io)?;
            let first = key.value().1;
            if first + packed::count(value.value()) <= from {
                continue;
            }
            let lines = packed::unpack(value.value()).map_err(|e| self.corrupt(format!("events of {thread}: {e}")))?;
            for (seq, json) in (first..).zip(lines.split('\n')) {
                if seq >= from && !each(seq, json)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Where `thread`'s retained events start (`None`: no such thread). A chunk
    /// may still hold events retention removed before this seq.
    fn retained_from(&self, txn: &redb::ReadTransaction, thread: &str) -> Result<Option<u64>, StoreError> {
        let threads = txn.open_table(THREADS).map_err(io)?;
        let Some(bytes) = threads.get(thread).map_err(io)? else { return Ok(None) };
        Ok(Some(self.decode::<ThreadRecord>("thread", bytes.value())?.oldest_seq))
    }

    /// The oldest stored event of `thread` from `from` on: (its time in ms, its seq).
    fn first_event(
        &self,
        events: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
        thread: &str,
        from: u64,
    ) -> Result<Option<(i64, u64)>, StoreError> {
        let mut first = None;
        self.each_event(events, thread, from, |seq, json| {
            first = Some((self.event(json)?.ts().millis(), seq));
            Ok(false)
        })?;
        Ok(first)
    }
}

impl Tree {
    /// Writes `chunk` (consecutive events of `thread`) as one frame, appended to
    /// the thread's last chunk when that has room, else as a value of its own;
    /// indexes the thread if these are its only events. Answers how many events
    /// it added.
    fn store_chunk(
        &self,
        events: &mut redb::Table<'_, (&'static str, u64), &'static [u8]>,
        ages: &mut Ages<'_>,
        thread: &str,
        chunk: &[&Arc<StoredEvent>],
    ) -> Result<u64, StoreError> {
        let Some(first) = chunk.first() else { return Ok(0) };
        let frame = packed::pack(chunk.iter().map(|e| &*e.json));
        // The thread's last chunk takes this frame if it ends just before it and has room.
        let last = events.range((thread, 0)..(thread, first.seq())).map_err(io)?.next_back().transpose().map_err(io)?;
        let joined = last.and_then(|(key, value)| {
            let (start, stored) = (key.value().1, value.value());
            (start + packed::count(stored) == first.seq() && packed::has_room(stored))
                .then(|| (start, [stored, frame.as_slice()].concat()))
        });
        let (start, value) = joined.unwrap_or((first.seq(), frame));
        let replaced = events.insert((thread, start), value.as_slice()).map_err(io)?;
        let replaced = replaced.map_or(0, |old| packed::count(old.value()));
        if !ages.has(thread)? {
            ages.set(thread, Some((first.ts().millis(), first.seq())))?;
        }
        Ok(packed::count(&value).saturating_sub(replaced))
    }
}

impl Tree {
    /// Removes `thread`'s events below `below` (all of them at `u64::MAX`) and
    /// moves it in the age index; answers how many retained events went.
    fn cut_events(
        &self,
        events: &mut redb::Table<'_, (&'static str, u64), &'static [u8]>,
        ages: &mut Ages<'_>,
        thread: &str,
        below: u64,
    ) -> Result<u64, StoreError> {
        let oldest = ages.oldest_seq(thread)?;
        let removed = match (oldest, head_of(events, thread)?) {
            (Some(oldest), Some(head)) => (head + 1).min(below).saturating_sub(oldest),
            _ => 0,
        };
        remove_chunks(events, thread, below)?;
        ages.reindex(self, events, thread, oldest.unwrap_or(0).max(below))?;
        Ok(removed)
    }

    /// Removes `run` of `thread`: its record, its place among ended runs, its
    /// event ids and its place among the thread's runs.
    fn remove_run(
        &self,
        runs: &mut redb::Table<'_, &'static str, &'static [u8]>,
        run_ends: &mut redb::Table<'_, (i64, &'static str), ()>,
        event_ids: &mut IdTables<'_>,
        thread_runs: &mut redb::Table<'_, (&'static str, &'static str), ()>,
        thread: &str,
        run: &str,
    ) -> Result<(), StoreError> {
        let removed = runs.remove(run).map_err(io)?;
        let record = removed.map(|bytes| self.decode::<RunRecord>("run", bytes.value())).transpose()?;
        if let Some(record) = record.filter(|r| r.lifecycle.ended()) {
            run_ends.remove((record.last_activity_ms, run)).map_err(io)?;
        }
        forget_ids(event_ids, run)?;
        thread_runs.remove((thread, run)).map_err(io)?;
        Ok(())
    }
}

/// The last stored seq of `thread`: its last chunk's last event.
fn head_of(
    events: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    thread: &str,
) -> Result<Option<u64>, StoreError> {
    let last = events.range((thread, 0)..=(thread, u64::MAX)).map_err(io)?.next_back().transpose().map_err(io)?;
    Ok(last.map(|(key, value)| key.value().1 + packed::count(value.value()) - 1))
}

/// The runs of `thread`, from the `thread_runs` index.
fn runs_of(
    thread_runs: &impl ReadableTable<(&'static str, &'static str), ()>,
    thread: &str,
) -> Result<Vec<String>, StoreError> {
    thread_runs
        .range((thread, "")..)
        .map_err(io)?
        .map_while(|item| match item {
            Ok((key, _)) => (key.value().0 == thread).then(|| Ok(key.value().1.to_owned())),
            Err(e) => Some(Err(io(e))),
        })
        .collect()
}

/// The event id tables as a write sees them: ids one per key (layout 3, read
/// and removed), and packs (written).
struct IdTables<'t> {
    single: redb::Table<'t, (&'static str, &'static str), u64>,
    packs: redb::Table<'t, (&'static str, u64), &'static [u8]>,
}

/// Removes every event id of `run`.
fn forget_ids(ids: &mut IdTables<'_>, run: &str) -> Result<(), StoreError> {
    // Every (run, id) key sorts between (run, "") and (run + "\0", "").
    let past = format!("{run}\0");
    ids.single.retain_in((run, "")..(past.as_str(), ""), |_, _| false).map_err(io)?;
    ids.packs.retain_in((run, 0)..=(run, u64::MAX), |_, _| false).map_err(io)
}

/// Writes the ids of `run` this commit brought as one pack, keyed by their
/// first seq (merged with a pack already there, should a record be applied again).
fn store_ids(ids: &mut IdTables<'_>, run: &str, new: &mut Vec<(u64, &str)>) -> Result<(), StoreError> {
    if new.is_empty() {
        return Ok(());
    }
    new.sort_unstable_by_key(|(seq, _)| *seq);
    let key = (run, new[0].0);
    let existing = ids.packs.get(key).map_err(io)?.map(|v| id_pack::decode(v.value()));
    let value = match existing {
        Some(Ok(mut old)) => {
            old.extend(new.iter().map(|(seq, id)| (*seq, (*id).to_owned())));
            old.sort_unstable_by_key(|(seq, _)| *seq);
            old.dedup_by_key(|(seq, _)| *seq);
            id_pack::encode(old.iter().map(|(seq, id)| (*seq, id.as_str())))
        }
        Some(Err(e)) => return Err(StoreError::Io(format!("event ids of {run}: {e}"))),
        None => id_pack::encode(new.iter().copied()),
    };
    ids.packs.insert(key, value.as_slice()).map_err(io)?;
    new.clear();
    Ok(())
}

/// A pack of event ids: `[seq u64 LE][length u16 LE][id]` per id, by seq.
mod id_pack {
    pub fn encode<'a>(ids: impl Iterator<Item = (u64, &'a str)>) -> Vec<u8> {
        let mut out = Vec::new();
        for (seq, id) in ids {
            // Event ids are at most 128 characters (PROTOCOL §2): the length fits.
            let len = u16::try_from(id.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&id.as_bytes()[..usize::from(len)]);
        }
        out
    }

    pub fn decode(mut bytes: &[u8]) -> Result<Vec<(u64, String)>, String> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (Some(seq), Some(len)) = (bytes.get(..8), bytes.get(8..10)) else { return Err("a torn entry".into()) };
            let seq = u64::from_le_bytes(seq.try_into().map_err(|_| "a torn seq")?);
            let len = usize::from(u16::from_le_bytes(len.try_into().map_err(|_| "a torn length")?));
            let id = bytes.get(10..10 + len).ok_or("a torn id")?;
            out.push((seq, String::from_utf8(id.to_vec()).map_err(|e| e.to_string())?));
            bytes = &bytes[10 + len..];
        }
        Ok(out)
    }

    /// The seq of `wanted` in a pack, if it is there.
    pub fn find(bytes: &[u8], wanted: &str) -> Result<Option<u64>, String> {
        Ok(decode(bytes)?.into_iter().find(|(_, id)| id == wanted).map(|(seq, _)| seq))
    }
}

/// The age index (`thread_age` and `thread_oldest`) as a write sees it.
struct Ages<'txn> {
    age: redb::Table<'txn, (i64, &'static str), u64>,
    oldest: redb::Table<'txn, &'static str, i64>,
}

impl Ages<'_> {
    /// Puts `thread` in the index at its first stored event from `from` on, or
    /// takes it out if it has none.
    fn reindex(
        &mut self,
        store: &Tree,
        events: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
        thread: &str,
        from: u64,
    ) -> Result<(), StoreError> {
        let first = store.first_event(events, thread, from)?;
        self.set(thread, first)
    }

    /// The seq `thread`'s retained events start at, if it has any.
    fn oldest_seq(&self, thread: &str) -> Result<Option<u64>, StoreError> {
        let Some(ms) = self.oldest.get(thread).map_err(io)?.map(|v| v.value()) else { return Ok(None) };
        Ok(self.age.get((ms, thread)).map_err(io)?.map(|v| v.value()))
    }

    /// Indexes `thread` at (time, seq) of its oldest event, or not at all.
    fn set(&mut self, thread: &str, at: Option<(i64, u64)>) -> Result<(), StoreError> {
        let was = self.oldest.get(thread).map_err(io)?.map(|v| v.value());
        if let Some(ms) = was {
            self.age.remove((ms, thread)).map_err(io)?;
        }
        match at {
            Some((ms, seq)) => {
                self.oldest.insert(thread, ms).map_err(io)?;
                self.age.insert((ms, thread), seq).map_err(io)?;
            }
            None if was.is_some() => {
                self.oldest.remove(thread).map_err(io)?;
            }
            None => {}
        }
        Ok(())
    }

    fn has(&self, thread: &str) -> Result<bool, StoreError> {
        Ok(self.oldest.get(thread).map_err(io)?.is_some())
    }
}

/// Removes the chunks of `thread` whose events are all below `below`. A chunk
/// that holds events on both sides stays whole until a later trim passes it
/// (reads start at the thread's oldest retained seq, so its older events are
/// not seen again).
fn remove_chunks(
    events: &mut redb::Table<'_, (&'static str, u64), &'static [u8]>,
    thread: &str,
    below: u64,
) -> Result<(), StoreError> {
    events
        .retain_in((thread, 0)..(thread, below), |(_, first), value| first.saturating_add(packed::count(value)) > below)
        .map_err(io)
}

fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Io(format!("cannot encode a record: {e}")))
}

impl Tree {
    /// The number of the last journal record the file holds (0: none).
    pub fn journal_applied(&self) -> Result<u64, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(io)?;
        let meta = txn.open_table(META).map_err(io)?;
        Ok(meta.get(JOURNAL).map_err(io)?.map_or(0, |v| v.value()))
    }

    /// Writes `batches` in one commit; with `journal` (a record number),
    /// records that this commit holds the journal up to it. A commit that is
    /// not `durable` is seen by every read at once but reaches the disk with
    /// the next durable one (or a clean close); a crash loses it, and the
    /// journal still has it.
    pub fn apply(&self, batches: &[&Batch], journal: Option<u64>, durable: bool) -> Result<(), StoreError> {
        let db = self.db()?;
        let mut txn = db.begin_write().map_err(io)?;
        if !durable {
            txn.set_durability(redb::Durability::None).map_err(|e| StoreError::Io(e.to_string()))?;
        }
        {
            let mut threads = txn.open_table(THREADS).map_err(io)?;
            let mut runs = txn.open_table(RUNS).map_err(io)?;
            let mut running = txn.open_table(RUNNING).map_err(io)?;
            let mut events = txn.open_table(EVENTS).map_err(io)?;
            let mut event_ids = IdTables {
                single: txn.open_table(EVENT_IDS).map_err(io)?,
                packs: txn.open_table(EVENT_ID_PACKS).map_err(io)?,
            };
            // Each run's event ids of this transaction, not yet written: one pack per run.
            let mut new_ids: HashMap<&str, Vec<(u64, &str)>> = HashMap::new();
            let mut run_ends = txn.open_table(RUN_ENDS).map_err(io)?;
            let mut thread_runs = txn.open_table(THREAD_RUNS).map_err(io)?;
            let mut thread_ends = txn.open_table(THREAD_ENDS).map_err(io)?;
            let mut ages = Ages {
                age: txn.open_table(THREAD_AGE).map_err(io)?,
                oldest: txn.open_table(THREAD_OLDEST).map_err(io)?,
            };
            let mut meta = txn.open_table(META).map_err(io)?;
            let mut count = meta.get("events").map_err(io)?.map_or(0, |v| v.value());
            // Each thread's consecutive events of this transaction, not yet
            // written: they go as one value ([`packed`]), before anything else
            // touches that thread's events.
            let mut chunks: HashMap<&str, Vec<&Arc<StoredEvent>>> = HashMap::new();
            for batch in batches {
                for (id, record) in &batch.threads {
                    threads.insert(id.as_str(), json(record)?.as_slice()).map_err(io)?;
                }
                for (id, record) in &batch.runs {
                    let before = runs.insert(id.as_str(), json(record)?.as_slice()).map_err(io)?;
                    if before.is_none() {
                        drop(before);
                        thread_runs.insert((record.thread_id.as_str(), id.as_str()), ()).map_err(io)?;
                    }
                    // Touch the index only when it changes: a write copies pages, a read does not.
                    let indexed = running.get(id.as_str()).map_err(io)?.is_some();
                    if record.lifecycle.ended() && indexed {
                        running.remove(id.as_str()).map_err(io)?;
                    } else if !record.lifecycle.ended() && !indexed {
                        running.insert(id.as_str(), ()).map_err(io)?;
                    }
                    // An ended record is written once, when the run ends: its ids' clock starts.
                    if record.lifecycle.ended() {
                        run_ends.insert((record.last_activity_ms, id.as_str()), ()).map_err(io)?;
                        if let Some(last) = record.last_seq {
                            thread_ends.insert((record.thread_id.as_str(), last, id.as_str()), ()).map_err(io)?;
                        }
                    }
                }
                for event in &batch.events {
                    let thread = event.thread_id().as_str();
                    let chunk = chunks.entry(thread).or_default();
                    if chunk.last().is_some_and(|last| last.seq() + 1 != event.seq()) {
                        count += self.store_chunk(&mut events, &mut ages, thread, &std::mem::take(chunk))?;
                    }
                    chunk.push(event);
                }
                for (run, event_id, seq) in &batch.event_ids {
                    new_ids.entry(run.as_str()).or_default().push((*seq, event_id.as_str()));
                }
                // What removes ids must see the ones written before it.
                if !(batch.trims.is_empty() && batch.forget.is_empty() && batch.deletes.is_empty()) {
                    for (run, ids) in &mut new_ids {
                        store_ids(&mut event_ids, run, ids)?;
                    }
                }
                for (thread, below) in &batch.trims {
                    let id = thread.as_str();
                    if let Some(chunk) = chunks.remove(id) {
                        count += self.store_chunk(&mut events, &mut ages, id, &chunk)?;
                    }
                    count = count.saturating_sub(self.cut_events(&mut events, &mut ages, id, *below)?);
                    // Ended runs whose last event went go with it.
                    let gone: Vec<(u64, String)> = thread_ends
                        .range((id, 0, "")..(id, *below, ""))
                        .map_err(io)?
                        .map(|item| item.map(|(key, _)| (key.value().1, key.value().2.to_owned())).map_err(io))
                        .collect::<Result<_, _>>()?;
                    for (last, run) in gone {
                        self.remove_run(&mut runs, &mut run_ends, &mut event_ids, &mut thread_runs, id, &run)?;
                        thread_ends.remove((id, last, run.as_str())).map_err(io)?;
                    }
                }
                for (ended_ms, run) in &batch.forget {
                    forget_ids(&mut event_ids, run.as_str())?;
                    run_ends.remove((*ended_ms, run.as_str())).map_err(io)?;
                }
                for thread in &batch.deletes {
                    let id = thread.as_str();
                    threads.remove(id).map_err(io)?;
                    chunks.remove(id);
                    count = count.saturating_sub(self.cut_events(&mut events, &mut ages, id, u64::MAX)?);
                    thread_ends.retain_in((id, 0, "")..=(id, u64::MAX, ""), |_, _| false).map_err(io)?;
                    for run in &runs_of(&thread_runs, id)? {
                        self.remove_run(&mut runs, &mut run_ends, &mut event_ids, &mut thread_runs, id, run)?;
                        running.remove(run.as_str()).map_err(io)?;
                    }
                }
            }
            for (thread, chunk) in &chunks {
                count += self.store_chunk(&mut events, &mut ages, thread, chunk)?;
            }
            for (run, ids) in &mut new_ids {
                store_ids(&mut event_ids, run, ids)?;
            }
            meta.insert("events", count).map_err(io)?;
            if let Some(no) = journal {
                meta.insert(JOURNAL, no).map_err(io)?;
            }
        }
        txn.commit().map_err(io)
    }
}

impl Store for Tree {
    fn write(&self, batches: &[&Batch]) -> Result<(), StoreError> {
        self.apply(batches, None, true)
    }

    fn read(
        &self,
        thread: &ThreadId,
        after_seq: u64,
        mut budget: PageBudget,
    ) -> Result<Vec<Arc<StoredEvent>>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(io)?;
        let events = txn.open_table(EVENTS).map_err(io)?;
        let Some(from) = self.retained_from(&txn, thread.as_str())? else { return Ok(Vec::new()) };
        let mut out = Vec::with_capacity(budget.events_left().min(1024));
        let mut reader = EventReader::default();
        self.each_event(&events, thread.as_str(), from.max(after_seq.saturating_add(1)), |_, json| {
            // Checked on the text, before decoding an event the page has no room for.
            if !budget.admit(json.len()) {
                return Ok(false);
            }
            let event = reader.read(json).map_err(|e| self.corrupt(format!("event: {e}")))?;
            out.push(Arc::new(event));
            Ok(true)
        })?;
        Ok(out)
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        // Only what is running: a start-up costs what is live, not history.
        let db = self.db()?;
        let txn = db.begin_read().map_err(io)?;
        let threads_table = txn.open_table(THREADS).map_err(io)?;
        let events = txn.open_table(EVENTS).map_err(io)?;
        let runs = txn.open_table(RUNS).map_err(io)?;
        let running_table = txn.open_table(RUNNING).map_err(io)?;
        let event_ids = txn.open_table(EVENT_IDS).map_err(io)?;
        let packs = txn.open_table(EVENT_ID_PACKS).map_err(io)?;
        let mut running = Vec::new();
        let mut threads: HashMap<ThreadId, LoadedThread> = HashMap::new();
        for item in running_table.iter().map_err(io)? {
            let (key, _) = item.map_err(io)?;
            let id = RunId::parse(key.value()).map_err(|e| self.corrupt(format!("run key: {e}")))?;
            let bytes = runs
                .get(id.as_str())
                .map_err(io)?
                .ok_or_else(|| self.corrupt(format!("running run {id} has no record")))?;
            let record: RunRecord = self.decode("run", bytes.value())?;
            let mut ids = HashMap::new();
            for item in event_ids.range((id.as_str(), "")..).map_err(io)? {
                let (key, seq) = item.map_err(io)?;
                let (run, event_id) = key.value();
                if run != id.as_str() {
                    break;
                }
                ids.insert(event_id.to_owned(), seq.value());
            }
            for item in packs.range((id.as_str(), 0)..=(id.as_str(), u64::MAX)).map_err(io)? {
                let (_, pack) = item.map_err(io)?;
                let pack =
                    id_pack::decode(pack.value()).map_err(|e| self.corrupt(format!("event ids of {id}: {e}")))?;
                ids.extend(pack.into_iter().map(|(seq, event_id)| (event_id, seq)));
            }
            if !threads.contains_key(&record.thread_id)
                && let Some(thread) = self.thread_in(&threads_table, &events, &record.thread_id)?
            {
                threads.insert(record.thread_id.clone(), thread);
            }
            running.push(LoadedRun { id, record, event_ids: ids });
        }
        Ok(Snapshot { threads: threads.into_values().collect(), running })
    }

    fn thread(&self, thread: &ThreadId) -> Result<Option<LoadedThread>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(io)?;
        let threads = txn.open_table(THREADS).map_err(io)?;
        let events = txn.open_table(EVENTS).map_err(io)?;
        self.thread_in(&threads, &events, thread)
    }

    fn keeps_runs(&self) -> bool {
        true
    }

    fn keeps_threads(&self) -> bool {
        true
    }

    fn recover(&self) -> Result<(), StoreError> {
        // redb refuses every operation after a failed write until the file is
        // closed and opened again (which repairs it if it must).
        let mut db = self.db.write();
        drop(db.take());
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let reopened = open_database(&self.path, self.cache_bytes, dir)?;
        // A write that reaches the disk, or the store is not back yet.
        let probe = reopened.begin_write().map_err(io)?;
        {
            let mut meta = probe.open_table(META).map_err(io)?;
            meta.insert("format", FORMAT).map_err(io)?;
        }
        probe.commit().map_err(io)?;
        *db = Some(reopened);
        Ok(())
    }

    fn runs_ended_before(&self, before_ms: i64, limit: usize) -> Result<Vec<(i64, RunId)>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(io)?;
        let run_ends = match txn.open_table(RUN_ENDS) {
            Ok(table) => table,
            // A file written before the table existed: nothing ended since.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(io(e)),
        };
        let mut out = Vec::new();
        for item in run_ends.range((i64::MIN, "")..(before_ms, "")).map_err(io)?.take(limit) {
            let (key, _) = item.map_err(io)?;
            let (ended_ms, run) = key.value();
            let run = RunId::parse(run).map_err(|e| self.corrupt(format!("run key: {e}")))?;
            out.push((ended_ms, run));
        }
        Ok(out)
    }

    fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(io)?;
        let runs = txn.open_table(RUNS).map_err(io)?;
        let found = runs.get(run_id).map_err(io)?;
        found.map(|bytes| self.decode("run", bytes.value())).transpose()
    }

    fn event_seq(&self, run: &RunId, event_id: &str) -> Result<Option<u64>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(io)?;
        let ids = txn.open_table(EVENT_IDS).map_err(io)?;
        if let Some(seq) = ids.get((run.as_str(), event_id)).map_err(io)? {
            return Ok(Some(seq.value()));
        }
        // A run's packs, one per commit that carried its ids; only runs no longer
        // in memory are looked up here (a retry after the run ended).
        let packs = txn.open_table(EVENT_ID_PACKS).map_err(io)?;
        for item in packs.range((run.as_str(), 0)..=(run.as_str(), u64::MAX)).map_err(io)? {
            let (_, pack) = item.map_err(io)?;
            let found =
                id_pack::find(pack.value(), event_id).map_err(|e| self.corrupt(format!("event ids of {run}: {e}")))?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    fn oldest_threads(&self, at_or_before_ms: i64, limit: usize) -> Result<Vec<ThreadExtent>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(io)?;
        let ages = txn.open_table(THREAD_AGE).map_err(io)?;
        let events = txn.open_table(EVENTS).map_err(io)?;
        let mut out = Vec::new();
        for item in ages.range(..(at_or_before_ms.saturating_add(1), "")).map_err(io)?.take(limit) {
            let (key, oldest_seq) = item.map_err(io)?;
            let (ms, thread) = key.value();
            let head_seq = head_of(&events, thread)?.unwrap_or(oldest_seq.value());
            let thread = ThreadId::parse(thread).map_err(|e| self.corrupt(format!("thread key: {e}")))?;
            out.push(ThreadExtent { thread, oldest_seq: oldest_seq.value(), head_seq, oldest_ts_ms: Some(ms) });
        }
        Ok(out)
    }

    fn event_count(&self) -> Result<u64, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(io)?;
        let meta = txn.open_table(META).map_err(io)?;
        Ok(meta.get("events").map_err(io)?.map_or(0, |v| v.value()))
    }

    fn last_seq_at_or_before(&self, thread: &ThreadId, ts_ms: i64) -> Result<Option<u64>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(io)?;
        let events = txn.open_table(EVENTS).map_err(io)?;
        let Some(from) = self.retained_from(&txn, thread.as_str())? else { return Ok(None) };
        let mut last = None;
        // Events are in append order, so times only rise along a thread: stop at the first younger one.
        self.each_event(&events, thread.as_str(), from, |seq, json| {
            if self.event(json)?.ts().millis() > ts_ms {
                return Ok(false);
            }
            last = Some(seq);
            Ok(true)
        })?;
        Ok(last)
    }
}

/// What `agentwire export` writes, one JSON object per line: the thread, its
/// runs, then its retained events as clients receive them.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BackupLine {
    Thread { thread_id: ThreadId, record: ThreadRecord },
    Run { run_id: RunId, record: RunRecord },
    Event(serde_json::Value),
}

impl Tree {
    /// Writes `thread` as JSON lines to `out`; `false` if there is no such thread.
    pub fn export_thread(&self, thread: &ThreadId, mut out: impl std::io::Write) -> Result<bool, StoreError> {
        let mut write =
            |line: &str| writeln!(out, "{line}").map_err(|e| StoreError::Io(format!("cannot write the export: {e}")));
        let record = {
            let db = self.db()?;
            let txn = db.begin_read().map_err(io)?;
            let threads = txn.open_table(THREADS).map_err(io)?;
            let Some(bytes) = threads.get(thread.as_str()).map_err(io)? else { return Ok(false) };
            self.decode::<ThreadRecord>("thread", bytes.value())?
        };
        let header = BackupLine::Thread { thread_id: thread.clone(), record };
        write(&serde_json::to_string(&header).map_err(|e| StoreError::Io(e.to_string()))?)?;
        {
            let db = self.db()?;
            let txn = db.begin_read().map_err(io)?;
            let runs = txn.open_table(RUNS).map_err(io)?;
            let thread_runs = txn.open_table(THREAD_RUNS).map_err(io)?;
            for run in runs_of(&thread_runs, thread.as_str())? {
                let Some(bytes) = runs.get(run.as_str()).map_err(io)? else { continue };
                let record: RunRecord = self.decode("run", bytes.value())?;
                let run_id = RunId::parse(&run).map_err(|e| self.corrupt(format!("run key: {e}")))?;
                let line = BackupLine::Run { run_id, record };
                write(&serde_json::to_string(&line).map_err(|e| StoreError::Io(e.to_string()))?)?;
            }
        }
        let mut after = 0;
        loop {
            let page = self.read(thread, after, PageBudget::new(1000, crate::DEFAULT_PAGE_BYTES))?;
            let Some(last) = page.last() else { return Ok(true) };
            after = last.seq();
            for event in &page {
                write(&event.json)?;
            }
        }
    }

    /// Reads what [`Tree::export_thread`] wrote and stores it, one
    /// thread per transaction. A thread that already exists here is refused.
    /// Answers the threads imported.
    pub fn import(&self, input: impl std::io::BufRead) -> Result<Vec<ThreadId>, StoreError> {
        let bad = |n: usize, e: &dyn std::fmt::Display| StoreError::Io(format!("import line {n}: {e}"));
        let mut imported = Vec::new();
        let mut batch: Option<(ThreadId, Batch)> = None;
        for (n, line) in input.lines().enumerate().map(|(i, l)| (i + 1, l)) {
            let line = line.map_err(|e| bad(n, &e))?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<BackupLine>(&line).map_err(|e| bad(n, &e))? {
                BackupLine::Thread { thread_id, record } => {
                    if let Some((id, b)) = batch.take() {
                        self.write(&[&b])?;
                        imported.push(id);
                    }
                    if self.thread_exists(&thread_id)? {
                        return Err(bad(n, &format!("thread {thread_id} already exists here")));
                    }
                    let mut b = Batch::default();
                    b.threads.push((thread_id.clone(), record));
                    batch = Some((thread_id, b));
                }
                BackupLine::Run { run_id, record } => {
                    let (_, b) = batch.as_mut().ok_or_else(|| bad(n, &"a run before its thread"))?;
                    b.runs.push((run_id, record));
                }
                BackupLine::Event(_) => {
                    let (thread, b) = batch.as_mut().ok_or_else(|| bad(n, &"an event before its thread"))?;
                    let event = StoredEvent::from_json(line.as_str()).map_err(|e| bad(n, &e))?;
                    if event.thread_id() != thread {
                        return Err(bad(n, &format!("an event of {} inside {thread}", event.thread_id())));
                    }
                    if let Some(id) = &event.envelope().event_id {
                        b.event_ids.push((event.run_id().clone(), id.clone(), event.seq()));
                    }
                    b.events.push(Arc::new(event));
                }
            }
        }
        if let Some((id, b)) = batch.take() {
            self.write(&[&b])?;
            imported.push(id);
        }
        Ok(imported)
    }

    fn thread_exists(&self, thread: &ThreadId) -> Result<bool, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(io)?;
        let threads = txn.open_table(THREADS).map_err(io)?;
        Ok(threads.get(thread.as_str()).map_err(io)?.is_some())
    }
}
