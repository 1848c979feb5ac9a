//! A [`Store`] over fjall (an LSM tree), the peer the embedded redb store was
//! measured against. Bench-only: it writes and reads what the append benchmark
//! exercises; start-up loading and retention lookups answer empty.

use std::sync::Arc;

use agentwire_log::store::{Batch, RunRecord, Snapshot, Store, StoreError, ThreadExtent};
use agentwire_log::{PageBudget, StoredEvent};
use agentwire_protocol::{RunId, ThreadId};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

/// Events under `thread \0 seq(be)`, runs and event ids in their own keyspaces.
pub struct FjallStore {
    db: Database,
    events: Keyspace,
    runs: Keyspace,
    threads: Keyspace,
    event_ids: Keyspace,
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

fn event_key(thread: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(thread.len() + 9);
    key.extend_from_slice(thread.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn pair_key(a: &str, b: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(a.len() + b.len() + 1);
    key.extend_from_slice(a.as_bytes());
    key.push(0);
    key.extend_from_slice(b.as_bytes());
    key
}

impl FjallStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &std::path::Path) -> Result<Self, StoreError> {
        let db = Database::builder(dir).open().map_err(io)?;
        let ks = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default).map_err(io);
        Ok(Self { events: ks("events")?, runs: ks("runs")?, threads: ks("threads")?, event_ids: ks("event_ids")?, db })
    }
}

impl Store for FjallStore {
    fn write(&self, batches: &[&Batch]) -> Result<(), StoreError> {
        let mut write = self.db.batch().durability(Some(PersistMode::SyncAll));
        for batch in batches {
            for (id, record) in &batch.threads {
                write.insert(&self.threads, id.as_str(), serde_json::to_vec(record).map_err(io)?);
            }
            for (id, record) in &batch.runs {
                write.insert(&self.runs, id.as_str(), serde_json::to_vec(record).map_err(io)?);
            }
            for event in &batch.events {
                write.insert(&self.events, event_key(event.thread_id().as_str(), event.seq()), event.json.as_bytes());
            }
            for (run, event_id, seq) in &batch.event_ids {
                write.insert(&self.event_ids, pair_key(run.as_str(), event_id), seq.to_be_bytes());
            }
        }
        write.commit().map_err(io)
    }

    fn read(
        &self,
        thread: &ThreadId,
        after_seq: u64,
        mut budget: PageBudget,
    ) -> Result<Vec<Arc<StoredEvent>>, StoreError> {
        let from = event_key(thread.as_str(), after_seq.saturating_add(1));
        let to = event_key(thread.as_str(), u64::MAX);
        let mut out = Vec::new();
        for item in self.events.range(from..=to) {
            let value = item.value().map_err(io)?;
            if !budget.admit(value.len()) {
                break;
            }
            let json = std::str::from_utf8(&value).map_err(io)?;
            out.push(Arc::new(StoredEvent::from_json(json).map_err(io)?));
        }
        Ok(out)
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot::default())
    }

    fn keeps_runs(&self) -> bool {
        true
    }

    fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        match self.runs.get(run_id).map_err(io)? {
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(io),
            None => Ok(None),
        }
    }

    fn event_seq(&self, run: &RunId, event_id: &str) -> Result<Option<u64>, StoreError> {
        let found = self.event_ids.get(pair_key(run.as_str(), event_id)).map_err(io)?;
        Ok(found.and_then(|v| <[u8; 8]>::try_from(&v[..]).ok()).map(u64::from_be_bytes))
    }

    fn oldest_threads(&self, _at_or_before_ms: i64, _limit: usize) -> Result<Vec<ThreadExtent>, StoreError> {
        Ok(Vec::new())
    }

    fn event_count(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    fn last_seq_at_or_before(&self, _thread: &ThreadId, _ts_ms: i64) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
}
