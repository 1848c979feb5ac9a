//! The in-memory store: events kept in process memory, lost on restart.
//!
//! For tests and throwaway use. The working state (threads, runs, event ids) is
//! already in memory in [`StoredLog`], so this store only keeps the events
//! themselves; "durable" here means "in this process".

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use agentwire_protocol::{RunId, ThreadId};
use parking_lot::RwLock;

use crate::store::{Batch, RunRecord, Snapshot, Store, StoreError, ThreadExtent};
use crate::{FeedSink, LogConfig, PageBudget, StoredEvent, StoredLog};

/// Events per thread; `events[t][i]` has `seq == oldest[t] + i`.
#[derive(Default)]
pub struct MemoryStore {
    inner: RwLock<Kept>,
}

#[derive(Default)]
struct Kept {
    threads: HashMap<ThreadId, VecDeque<Arc<StoredEvent>>>,
    /// Threads by the time of their oldest event, for retention.
    by_age: BTreeSet<(i64, ThreadId)>,
    /// Events in all threads.
    count: u64,
}

impl Kept {
    /// `thread`'s oldest event time and its number of events.
    fn shape(&self, thread: &ThreadId) -> (Option<i64>, usize) {
        self.threads
            .get(thread)
            .map_or((None, 0), |events| (events.front().map(|e| e.envelope.ts.millis()), events.len()))
    }

    /// Changes `thread`'s events with `change`, keeping the count and the age order.
    fn change(&mut self, thread: &ThreadId, change: impl FnOnce(&mut HashMap<ThreadId, VecDeque<Arc<StoredEvent>>>)) {
        let (was_ts, was_len) = self.shape(thread);
        change(&mut self.threads);
        let (now_ts, now_len) = self.shape(thread);
        self.count = (self.count + now_len as u64).saturating_sub(was_len as u64);
        if was_ts != now_ts {
            if let Some(ts) = was_ts {
                self.by_age.remove(&(ts, thread.clone()));
            }
            if let Some(ts) = now_ts {
                self.by_age.insert((ts, thread.clone()));
            }
        }
    }
}

/// The log over memory.
pub type MemoryLog = StoredLog<MemoryStore>;

impl StoredLog<MemoryStore> {
    /// An empty in-memory log that hands committed events to `sink`.
    pub fn new(config: LogConfig, sink: Arc<dyn FeedSink>) -> Result<Self, StoreError> {
        Self::open(MemoryStore::default(), config, sink)
    }
}

impl Store for MemoryStore {
    fn write(&self, batches: &[&Batch]) -> Result<(), StoreError> {
        let mut kept = self.inner.write();
        for batch in batches {
            for event in &batch.events {
                kept.change(event.thread_id(), |threads| {
                    threads.entry(event.thread_id().clone()).or_default().push_back(event.clone());
                });
            }
            for (thread, below) in &batch.trims {
                kept.change(thread, |threads| {
                    if let Some(events) = threads.get_mut(thread) {
                        while events.front().is_some_and(|e| e.seq() < *below) {
                            events.pop_front();
                        }
                    }
                });
            }
            for thread in &batch.deletes {
                kept.change(thread, |threads| {
                    threads.remove(thread);
                });
            }
        }
        Ok(())
    }

    fn read(
        &self,
        thread: &ThreadId,
        after_seq: u64,
        mut budget: PageBudget,
    ) -> Result<Vec<Arc<StoredEvent>>, StoreError> {
        let kept = self.inner.read();
        let Some(events) = kept.threads.get(thread) else { return Ok(Vec::new()) };
        let first = events.front().map_or(1, |e| e.seq());
        let skip = usize::try_from(after_seq.saturating_add(1).saturating_sub(first)).unwrap_or(usize::MAX);
        Ok(events.iter().skip(skip).take_while(|e| budget.admit(e.json.len())).cloned().collect())
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot::default())
    }

    fn run(&self, _run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        // Every run of a memory log stays in the log's working state.
        Ok(None)
    }

    fn event_seq(&self, _run: &RunId, _event_id: &str) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    fn oldest_threads(&self, at_or_before_ms: i64, limit: usize) -> Result<Vec<ThreadExtent>, StoreError> {
        let kept = self.inner.read();
        Ok(kept
            .by_age
            .iter()
            .take_while(|(ts, _)| *ts <= at_or_before_ms)
            .take(limit)
            .filter_map(|(ts, thread)| {
                let events = kept.threads.get(thread)?;
                Some(ThreadExtent {
                    thread: thread.clone(),
                    oldest_seq: events.front()?.seq(),
                    head_seq: events.back()?.seq(),
                    oldest_ts_ms: Some(*ts),
                })
            })
            .collect())
    }

    fn event_count(&self) -> Result<u64, StoreError> {
        Ok(self.inner.read().count)
    }

    fn last_seq_at_or_before(&self, thread: &ThreadId, ts_ms: i64) -> Result<Option<u64>, StoreError> {
        let kept = self.inner.read();
        Ok(kept
            .threads
            .get(thread)
            .and_then(|events| events.iter().take_while(|e| e.envelope.ts.millis() <= ts_ms).last().map(|e| e.seq())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Log, LogError, LogStats, NewRun};
    use agentwire_protocol::{EventKind, LifecycleError, NewEvent, RunStatus, Timestamp, UserId};
    use parking_lot::Mutex;
    use serde_json::{Value, json};
    use std::time::Duration;

    /// A sink that records what it is handed.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, u64)>>);

    impl FeedSink for Recorder {
        fn deliver(&self, events: &[Arc<StoredEvent>]) {
            let mut seen = self.0.lock();
            seen.extend(events.iter().map(|e| (e.thread_id().to_string(), e.seq())));
        }
    }

    fn ev(kind: EventKind, data: Value) -> NewEvent {
        NewEvent::new(kind, data.as_object().cloned().unwrap_or_default())
    }

    fn started() -> NewEvent {
        ev(EventKind::AgentStarted, json!({"agent_name":"demo"}))
    }

    fn setup() -> (Arc<Recorder>, MemoryLog, UserId, ThreadId) {
        let rec = Arc::new(Recorder::default());
        let log = MemoryLog::new(
            LogConfig { run_idle_timeout: Duration::from_millis(50), ..Default::default() },
            rec.clone(),
        )
        .unwrap();
        (rec, log, UserId::parse("alice").unwrap(), ThreadId::parse("thread_a1").unwrap())
    }

    async fn new_run(log: &MemoryLog, user: &UserId, thread: &ThreadId) -> RunId {
        let new = NewRun {
            thread_id: thread.clone(),
            owner: user.clone(),
            agent_name: Some("demo".into()),
            in_process: false,
            run_id: None,
        };
        log.create_run(new).await.unwrap().run_id
    }

    #[tokio::test]
    async fn seqs_are_per_thread_gap_free_and_fed_in_order() {
        let (rec, log, user, thread) = setup();
        let other = ThreadId::parse("thread_b2").unwrap();
        let r1 = new_run(&log, &user, &thread).await;
        let r2 = new_run(&log, &user, &other).await;
        assert_eq!(log.append(r1.as_str(), vec![started()]).await.unwrap().seqs, vec![1]);
        assert_eq!(log.append(r2.as_str(), vec![started()]).await.unwrap().seqs, vec![1]);
        let thinking = ev(EventKind::AgentThinking, json!({"thought":"t"}));
        assert_eq!(log.append(r1.as_str(), vec![thinking.clone(), thinking]).await.unwrap().seqs, vec![2, 3]);
        let fed = rec.0.lock().clone();
        assert_eq!(
            fed,
            [("thread_a1", 1), ("thread_b2", 1), ("thread_a1", 2), ("thread_a1", 3)].map(|(t, s)| (t.to_owned(), s))
        );
        let page = log.read(&thread, 1, 10).await.unwrap();
        assert_eq!(page.events.iter().map(|e| e.seq()).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(page.head_seq, 3);
    }

    #[tokio::test]
    async fn a_violation_appends_nothing() {
        let (rec, log, user, thread) = setup();
        let run = new_run(&log, &user, &thread).await;
        let err = log
            .append(run.as_str(), vec![started(), ev(EventKind::ToolCompleted, json!({"tool_call_id":"x"}))])
            .await
            .unwrap_err();
        assert!(matches!(err, LogError::Lifecycle(LifecycleError::UnknownToolCall(_))));
        assert!(rec.0.lock().is_empty());
        assert_eq!(log.read(&thread, 0, 10).await.unwrap().head_seq, 0);
    }

    #[tokio::test]
    async fn refused_run_registrations_leave_nothing_behind() {
        let (_, log, user, thread) = setup();
        let chosen = |thread: &str, run: &RunId, owner: &UserId| NewRun {
            thread_id: ThreadId::parse(thread).unwrap(),
            owner: owner.clone(),
            agent_name: None,
            in_process: true,
            run_id: Some(run.clone()),
        };
        let run = RunId::parse("job-7").unwrap();
        log.create_run(chosen("thread_a1", &run, &user)).await.unwrap();
        // A taken id for a new thread: 409, and the thread was never made.
        let taken = log.create_run(chosen("thread_new1", &run, &user)).await;
        assert!(matches!(taken, Err(LogError::RunExists(_))));
        assert_eq!(log.thread_owner(&ThreadId::parse("thread_new1").unwrap()).await.unwrap(), None);
        // The same for another user: their record is not touched either.
        let bob = UserId::parse("bob").unwrap();
        assert!(matches!(log.create_run(chosen("thread_bob1", &run, &bob)).await, Err(LogError::RunExists(_))));
        assert_eq!(log.run(run.as_str()).await.unwrap().unwrap().thread_id, thread);
        // An id naming alice's thread by its pattern is bob's to take in no thread of his.
        let claim = RunId::parse("run_thread_a1_job42").unwrap();
        assert!(matches!(log.create_run(chosen("thread_bob1", &claim, &bob)).await, Err(LogError::Forbidden)));
        let unknown = RunId::parse("run_thread_nobody_1").unwrap();
        assert!(matches!(log.create_run(chosen("thread_bob1", &unknown, &bob)).await, Err(LogError::Forbidden)));
        assert_eq!(log.thread_owner(&ThreadId::parse("thread_bob1").unwrap()).await.unwrap(), None);
        assert_eq!(log.stats(), LogStats { threads: 1, runs_in_flight: 1 });
        // Alice may name her own thread from another of hers.
        assert!(log.create_run(chosen("thread_a2", &claim, &user)).await.is_ok());
    }

    #[tokio::test]
    async fn event_ids_deduplicate_even_after_the_run_ended() {
        let (_, log, user, thread) = setup();
        let run = new_run(&log, &user, &thread).await;
        log.append(run.as_str(), vec![started().with_event_id("s")]).await.unwrap();
        log.append(run.as_str(), vec![ev(EventKind::AgentCompleted, json!({})).with_event_id("end")]).await.unwrap();
        let again = log.append(run.as_str(), vec![started().with_event_id("s")]).await.unwrap();
        assert_eq!(again.seqs, vec![1]);
        assert_eq!(log.read(&thread, 0, 10).await.unwrap().head_seq, 2);
        assert_eq!(log.run(run.as_str()).await.unwrap().unwrap().status, RunStatus::Completed);
    }

    #[tokio::test]
    async fn foreign_run_ids_route_by_extraction_only_to_existing_threads() {
        let (_, log, user, thread) = setup();
        // A thread a user made by hand takes no events by the id pattern...
        let by_hand = ThreadId::parse("thread_hand").unwrap();
        log.create_thread(Some(by_hand.clone()), &user).await.unwrap();
        assert!(matches!(log.append("run_thread_hand_1", vec![started()]).await, Err(LogError::RunNotFound(_))));
        // ...one a publisher created does.
        new_run(&log, &user, &thread).await;
        let appended = log.append("legacy_thread_a1_42", vec![started()]).await.unwrap();
        assert_eq!(appended.thread_id, thread);
        let info = log.run("legacy_thread_a1_42").await.unwrap().expect("registered on first publish");
        assert_eq!(info.agent_name.as_deref(), Some("demo"));
        // A refused first publish registers nothing: no phantom run for the watchdog to end later.
        let refused =
            log.append("legacy_thread_a1_9", vec![ev(EventKind::AgentThinking, json!({"thought":"t"}))]).await;
        assert!(matches!(refused, Err(LogError::Lifecycle(LifecycleError::NotStarted))));
        assert_eq!(log.run("legacy_thread_a1_9").await.unwrap(), None);
        assert_eq!(log.stats().runs_in_flight, 2);
        for unroutable in ["run_thread_zz_1", "4f1c0f3e-uuid", "run with spaces thread_a1"] {
            assert!(
                matches!(log.append(unroutable, vec![started()]).await, Err(LogError::RunNotFound(_))),
                "{unroutable}"
            );
        }
    }

    #[tokio::test]
    async fn ownership_is_fixed_at_creation() {
        let (_, log, user, thread) = setup();
        let bob = UserId::parse("bob").unwrap();
        log.create_thread(Some(thread.clone()), &user).await.unwrap();
        assert!(matches!(log.create_thread(Some(thread.clone()), &bob).await, Err(LogError::ThreadExists(_))));
        assert!(matches!(log.ensure_thread(&thread, &bob).await, Err(LogError::Forbidden)));
        let run = NewRun { thread_id: thread.clone(), owner: bob, agent_name: None, in_process: false, run_id: None };
        assert!(matches!(log.create_run(run).await, Err(LogError::Forbidden)));
        assert_eq!(log.thread_owner(&thread).await.unwrap(), Some(user));
    }

    #[tokio::test]
    async fn idle_runs_time_out_and_cancel_ends_a_run() {
        let (_, log, user, thread) = setup();
        let idle = new_run(&log, &user, &thread).await;
        let busy = new_run(&log, &user, &thread).await;
        assert_eq!(log.stats().runs_in_flight, 2);
        log.append(busy.as_str(), vec![started()]).await.unwrap();
        assert!(log.expire_idle_runs(Timestamp::now()).await.unwrap().is_empty());
        let later = Timestamp(Timestamp::now().millis() + 60);
        let mut expired = log.expire_idle_runs(later).await.unwrap();
        expired.sort();
        let mut both = vec![idle.clone(), busy.clone()];
        both.sort();
        assert_eq!(expired, both);
        let last = log.read(&thread, 0, 10).await.unwrap().events.pop().unwrap();
        assert_eq!(last.envelope.data["code"], "timeout");
        assert_eq!(log.stats().runs_in_flight, 0);

        let run = new_run(&log, &user, &thread).await;
        log.cancel(run.as_str()).await.unwrap();
        let info = log.run(run.as_str()).await.unwrap().unwrap();
        assert!(info.cancel_requested);
        assert_eq!(info.status, RunStatus::Error);
        assert!(matches!(log.cancel(run.as_str()).await, Err(LogError::Lifecycle(LifecycleError::Ended))));
    }
}
