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

/// Journal records (which only add) as one batch with the same effect: each
/// thread's and run's last record only, since every one before it is written
/// over in the same commit anyway (most appends rewrite their run's record).
pub fn merged<'a>(batches: impl Iterator<Item = &'a Batch> + Clone) -> Batch {
    // Sized once: a group of a thousand one-event appends would otherwise
    // grow (and copy) these vectors a dozen times.
    let (events, ids) = batches.clone().fold((0, 0), |(e, i), b| (e + b.events.len(), i + b.event_ids.len()));
    let mut out = Batch { events: Vec::with_capacity(events), event_ids: Vec::with_capacity(ids), ..Batch::default() };
    let mut threads = HashMap::new();
    let mut runs = HashMap::new();
    for batch in batches {
        keep_last(&mut out.threads, &mut threads, &batch.threads);
        keep_last(&mut out.runs, &mut runs, &batch.runs);
        out.events.extend(batch.events.iter().cloned());
        out.event_ids.extend(batch.event_ids.iter().cloned());
    }
    out
}

/// Adds `items` to `out`, an item whose key is there already taking its place.
fn keep_last<K: Clone + Eq + std::hash::Hash, V: Clone>(
    out: &mut Vec<(K, V)>,
    at: &mut HashMap<K, usize>,
    items: &[(K, V)],
) {
    for (key, value) in items {
        match at.get(key) {
            Some(&i) => out[i].1 = value.clone(),
            None => {
                at.insert(key.clone(), out.len());
                out.push((key.clone(), value.clone()));
            }
        }
    }
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
    /// The [`weight`] of the records held.
    held: usize,
}

/// What a record counts for against the bounds: its events, and one for the
/// record itself, so records that carry no event (a run registered, a repeat)
/// are bounded too.
fn weight(batch: &Batch) -> usize {
    batch.events.len() + 1
}

impl Pending {
    /// Adds a record the journal holds (as [`merged`] made it); records come
    /// in their numbers' order.
    pub fn push(&mut self, no: u64, batch: Batch) {
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
        self.held += weight(&batch);
        self.records.push_back(Arc::new(Record { no, batch }));
    }

    /// The oldest records, up to about `most` in [`weight`] (at least one record).
    pub fn oldest(&self, most: usize) -> Vec<Arc<Record>> {
        let mut taken = 0;
        let mut out = Vec::new();
        for record in &self.records {
            if !out.is_empty() && taken + weight(&record.batch) > most {
                break;
            }
            taken += weight(&record.batch);
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
            self.held -= weight(batch);
        }
    }

    /// Forgets everything (the records were applied by a replay).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The [`weight`] of the records held: their events and the records themselves.
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

#[cfg(test)]
mod tests {
    use super::*;
    use agentwire_protocol::{RunLifecycle, UserId};

    fn run_record(thread: &ThreadId, last_seq: u64) -> RunRecord {
        RunRecord {
            thread_id: thread.clone(),
            agent_name: None,
            lifecycle: RunLifecycle::default(),
            cancel_requested: false,
            last_activity_ms: 0,
            in_process: false,
            last_seq: Some(last_seq),
        }
    }

    #[test]
    fn merging_keeps_each_runs_last_record_and_every_event_id_in_order() {
        let thread = ThreadId::parse("thread_m").unwrap();
        let (a, b) = (RunId::parse("run_a").unwrap(), RunId::parse("run_b").unwrap());
        let owner = UserId::parse("u").unwrap();
        let mut first = Batch::default();
        first.threads.push((thread.clone(), ThreadRecord { owner, oldest_seq: 1, by_publisher: true }));
        first.runs.push((a.clone(), run_record(&thread, 1)));
        first.event_ids.push((a.clone(), "x".into(), 1));
        let mut second = Batch::default();
        second.runs.push((b.clone(), run_record(&thread, 2)));
        second.runs.push((a.clone(), run_record(&thread, 3)));
        second.event_ids.push((a.clone(), "y".into(), 3));
        let merged = merged([&first, &second].into_iter());
        assert_eq!(merged.threads.len(), 1);
        let runs: Vec<(&str, Option<u64>)> = merged.runs.iter().map(|(id, r)| (id.as_str(), r.last_seq)).collect();
        assert_eq!(runs, vec![("run_a", Some(3)), ("run_b", Some(2))]);
        let ids: Vec<u64> = merged.event_ids.iter().map(|(_, _, seq)| *seq).collect();
        assert_eq!(ids, vec![1, 3]);
    }

    #[test]
    fn an_entry_a_newer_record_wrote_stays_when_the_older_one_is_applied() {
        let thread = ThreadId::parse("thread_p").unwrap();
        let run = RunId::parse("run_p").unwrap();
        let mut pending = Pending::default();
        let mut first = Batch::default();
        first.runs.push((run.clone(), run_record(&thread, 1)));
        let mut second = Batch::default();
        second.runs.push((run.clone(), run_record(&thread, 2)));
        pending.push(1, first);
        pending.push(2, second);
        pending.applied_through(1);
        assert_eq!(pending.run("run_p").and_then(|r| r.last_seq), Some(2));
        pending.applied_through(2);
        assert!(pending.run("run_p").is_none() && pending.is_empty());
    }
}
