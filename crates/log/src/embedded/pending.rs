//! What the journal holds and redb does not have yet, indexed for reads.
//!
//! Between a write's journal record and the applier's redb commit, reads must
//! still see it: a replay asks for a thread's newest events, a retried publish
//! for an `event_id`, a lookup for a run the log evicted. Each index entry
//! remembers the record that wrote it, so when the applier reports a record
//! applied, an entry a newer record overwrote stays.
//!
//! Reads look here first and then in redb. The applier drops records from here
//! only after their redb commit is visible, so a read that misses an entry here
//! finds it there: nothing journaled is ever in neither.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use agentwire_protocol::{RunId, ThreadId};

use crate::StoredEvent;
use crate::store::{Batch, RunRecord, ThreadRecord};

/// One journal record on its way to redb.
pub struct Record {
    pub no: u64,
    pub batch: Batch,
}

/// The records not yet in redb, oldest first, and what they wrote by key.
#[derive(Default)]
pub struct Pending {
    records: VecDeque<Arc<Record>>,
    threads: HashMap<ThreadId, (u64, ThreadRecord)>,
    runs: HashMap<RunId, (u64, RunRecord)>,
    /// Each thread's events not in redb: consecutive seqs, so a position is an offset.
    events: HashMap<ThreadId, VecDeque<Arc<StoredEvent>>>,
    ids: HashMap<RunId, HashMap<String, (u64, u64)>>,
    held: usize,
}

impl Pending {
    /// Adds a record the journal holds; records come in their numbers' order.
    pub fn push(&mut self, no: u64, batches: &[&Batch]) {
        let mut batch = Batch::default();
        for b in batches {
            batch.threads.extend(b.threads.iter().cloned());
            batch.runs.extend(b.runs.iter().cloned());
            batch.events.extend(b.events.iter().cloned());
            batch.event_ids.extend(b.event_ids.iter().cloned());
        }
        for (id, record) in &batch.threads {
            self.threads.insert(id.clone(), (no, record.clone()));
        }
        for (id, record) in &batch.runs {
            self.runs.insert(id.clone(), (no, record.clone()));
        }
        for event in &batch.events {
            self.events.entry(event.thread_id().clone()).or_default().push_back(event.clone());
        }
        for (run, event_id, seq) in &batch.event_ids {
            self.ids.entry(run.clone()).or_default().insert(event_id.clone(), (no, *seq));
        }
        self.held += batch.events.len();
        self.records.push_back(Arc::new(Record { no, batch }));
    }

    /// The oldest records, up to about `events` events (at least one record).
    pub fn oldest(&self, events: usize) -> Vec<Arc<Record>> {
        let mut taken = 0;
        let mut out = Vec::new();
        for record in &self.records {
            if !out.is_empty() && taken + record.batch.events.len() > events {
                break;
            }
            taken += record.batch.events.len();
            out.push(record.clone());
        }
        out
    }

    /// Redb now holds every record up to `no`: forgets them, except what
    /// newer records wrote over.
    pub fn applied_through(&mut self, no: u64) {
        while self.records.front().is_some_and(|r| r.no <= no) {
            let Some(record) = self.records.pop_front() else { break };
            let batch = &record.batch;
            for (id, _) in &batch.threads {
                if self.threads.get(id).is_some_and(|(by, _)| *by <= no) {
                    self.threads.remove(id);
                }
            }
            for (id, _) in &batch.runs {
                if self.runs.get(id).is_some_and(|(by, _)| *by <= no) {
                    self.runs.remove(id);
                }
            }
            for event in &batch.events {
                let thread = event.thread_id();
                if let Some(queue) = self.events.get_mut(thread) {
                    if queue.front().is_some_and(|e| e.seq() == event.seq()) {
                        queue.pop_front();
                    }
                    if queue.is_empty() {
                        self.events.remove(thread);
                    }
                }
            }
            for (run, event_id, _) in &batch.event_ids {
                if let Some(ids) = self.ids.get_mut(run) {
                    if ids.get(event_id).is_some_and(|(by, _)| *by <= no) {
                        ids.remove(event_id);
                    }
                    if ids.is_empty() {
                        self.ids.remove(run);
                    }
                }
            }
            self.held -= batch.events.len();
        }
    }

    /// Forgets everything (the records were applied by a replay).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Events held.
    pub fn held(&self) -> usize {
        self.held
    }

    pub fn thread(&self, id: &ThreadId) -> Option<ThreadRecord> {
        self.threads.get(id).map(|(_, record)| record.clone())
    }

    /// The last seq of `thread` held here.
    pub fn head(&self, id: &ThreadId) -> Option<u64> {
        self.events.get(id).and_then(|q| q.back()).map(|e| e.seq())
    }

    pub fn run(&self, id: &str) -> Option<RunRecord> {
        self.runs.get(id).map(|(_, record)| record.clone())
    }

    pub fn event_seq(&self, run: &RunId, event_id: &str) -> Option<u64> {
        self.ids.get(run)?.get(event_id).map(|(_, seq)| *seq)
    }

    /// Up to `most` events of `thread` after `after_seq`.
    pub fn events_after(&self, thread: &ThreadId, after_seq: u64, most: usize) -> Vec<Arc<StoredEvent>> {
        let Some(queue) = self.events.get(thread) else { return Vec::new() };
        let Some(first) = queue.front().map(|e| e.seq()) else { return Vec::new() };
        let skip = usize::try_from(after_seq.saturating_add(1).saturating_sub(first)).unwrap_or(usize::MAX);
        queue.iter().skip(skip).take(most).cloned().collect()
    }
}
