//! The in-memory log: everything in process memory, lost on restart.
//!
//! For tests and throwaway use. Each thread sits behind its own mutex, so
//! appends to different threads do not wait for each other, while appends to one
//! thread are numbered and handed to the feed in one critical section: that is
//! what makes `seq` gap-free and the feed ordered.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use agentwire_protocol::{
    Envelope, EnvelopeType, EventKind, NewEvent, RunId, RunLifecycle, ThreadId, Timestamp, UserId, extract_thread_id,
};
use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use serde_json::Value;

use crate::{Appended, FeedSink, Log, LogConfig, LogError, LogStats, NewRun, Page, RunInfo, StoredEvent, plan_append};

/// The state of one run, kept with its thread.
struct RunState {
    agent_name: Option<String>,
    lifecycle: RunLifecycle,
    event_ids: HashMap<String, u64>,
    cancel_requested: bool,
    /// The idle clock: creation or last event.
    last_activity: Timestamp,
}

impl RunState {
    fn new(agent_name: Option<String>, now: Timestamp) -> Self {
        Self {
            agent_name,
            lifecycle: RunLifecycle::default(),
            event_ids: HashMap::new(),
            cancel_requested: false,
            last_activity: now,
        }
    }
}

struct ThreadState {
    id: ThreadId,
    owner: UserId,
    /// `events[i]` has `seq == i + 1`.
    events: Vec<Arc<StoredEvent>>,
    runs: HashMap<RunId, RunState>,
}

type SharedThread = Arc<Mutex<ThreadState>>;

/// The in-memory [`Log`].
pub struct MemoryLog {
    config: LogConfig,
    sink: Arc<dyn FeedSink>,
    threads: RwLock<HashMap<ThreadId, SharedThread>>,
    /// The run registry's index: run → thread. The run's state lives with its thread.
    registry: RwLock<HashMap<RunId, ThreadId>>,
    runs_in_flight: AtomicU64,
}

impl MemoryLog {
    /// An empty log that hands appended events to `sink`.
    pub fn new(config: LogConfig, sink: Arc<dyn FeedSink>) -> Self {
        Self {
            config,
            sink,
            threads: RwLock::new(HashMap::new()),
            registry: RwLock::new(HashMap::new()),
            runs_in_flight: AtomicU64::new(0),
        }
    }

    fn thread(&self, id: &ThreadId) -> Option<SharedThread> {
        self.threads.read().get(id).cloned()
    }

    fn insert_thread(&self, id: ThreadId, owner: &UserId) -> Result<SharedThread, SharedThread> {
        let mut threads = self.threads.write();
        if let Some(existing) = threads.get(&id) {
            return Err(existing.clone());
        }
        let state = Arc::new(Mutex::new(ThreadState {
            id: id.clone(),
            owner: owner.clone(),
            events: Vec::new(),
            runs: HashMap::new(),
        }));
        threads.insert(id, state.clone());
        Ok(state)
    }

    fn owned_thread(&self, id: &ThreadId, owner: &UserId) -> Result<SharedThread, LogError> {
        let thread = self.insert_thread(id.clone(), owner).unwrap_or_else(|existing| existing);
        if &thread.lock().owner != owner {
            return Err(LogError::Forbidden);
        }
        Ok(thread)
    }

    /// The run's thread: from the registry, else by extraction (PROTOCOL §1).
    fn resolve(&self, run_id: &str, allow_fallback: bool) -> Result<(RunId, SharedThread), LogError> {
        let not_found = || LogError::RunNotFound(run_id.to_owned());
        if let Some((run, thread_id)) = self.registry.read().get_key_value(run_id) {
            let thread = self.thread(thread_id).ok_or_else(not_found)?;
            return Ok((run.clone(), thread));
        }
        if !allow_fallback {
            return Err(not_found());
        }
        let run = RunId::parse(run_id).map_err(|_| not_found())?;
        let thread = extract_thread_id(run_id).and_then(|t| self.thread(&t)).ok_or_else(not_found)?;
        Ok((run, thread))
    }

    /// Registers `run` in `state` if it is not there yet (a run first seen through
    /// extraction). The registry's write lock makes the id check and the insert one step.
    fn register_in(
        &self,
        state: &mut ThreadState,
        run: &RunId,
        agent_name: Option<String>,
        now: Timestamp,
    ) -> Result<(), LogError> {
        if state.runs.contains_key(run) {
            return Ok(());
        }
        let mut registry = self.registry.write();
        if registry.contains_key(run) {
            return Err(LogError::RunExists(run.to_string()));
        }
        registry.insert(run.clone(), state.id.clone());
        state.runs.insert(run.clone(), RunState::new(agent_name, now));
        self.runs_in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Appends under the thread's lock: plan, number, store, feed.
    fn append_locked(&self, state: &mut ThreadState, run: &RunId, events: Vec<NewEvent>) -> Result<Appended, LogError> {
        let now = Timestamp::now();
        self.register_in(state, run, None, now)?;
        let head = state.events.len() as u64;
        let run_state = state.runs.get_mut(run).ok_or_else(|| LogError::RunNotFound(run.to_string()))?;
        let plan = plan_append(&run_state.lifecycle, |id| run_state.event_ids.get(id).copied(), events)?;
        let seqs = plan.seqs(head);
        if plan.new_events.is_empty() {
            return Ok(Appended { thread_id: state.id.clone(), seqs });
        }
        let was_running = !run_state.lifecycle.ended();
        let mut fresh = Vec::with_capacity(plan.new_events.len());
        for (i, event) in plan.new_events.into_iter().enumerate() {
            let seq = head + 1 + i as u64;
            if let Some(id) = &event.event_id {
                run_state.event_ids.insert(id.clone(), seq);
            }
            if event.kind == EventKind::AgentStarted && run_state.agent_name.is_none() {
                run_state.agent_name = event.data.get("agent_name").and_then(Value::as_str).map(str::to_owned);
            }
            fresh.push(Arc::new(StoredEvent::new(Envelope {
                frame_type: EnvelopeType::Event,
                thread_id: state.id.clone(),
                run_id: run.clone(),
                seq,
                event: event.kind,
                event_id: event.event_id,
                ts: now,
                data: event.data,
            })));
        }
        run_state.lifecycle = plan.lifecycle;
        run_state.last_activity = now;
        if was_running && run_state.lifecycle.ended() {
            self.runs_in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        state.events.extend(fresh.iter().cloned());
        self.sink.deliver(&fresh);
        Ok(Appended { thread_id: state.id.clone(), seqs })
    }

    fn info(state: &ThreadState, run: &RunId) -> Option<RunInfo> {
        state.runs.get(run).map(|r| RunInfo {
            run_id: run.clone(),
            thread_id: state.id.clone(),
            owner: state.owner.clone(),
            agent_name: r.agent_name.clone(),
            status: r.lifecycle.status(),
            cancel_requested: r.cancel_requested,
        })
    }
}

#[async_trait]
impl Log for MemoryLog {
    async fn create_thread(&self, thread_id: Option<ThreadId>, owner: &UserId) -> Result<ThreadId, LogError> {
        let id = thread_id.unwrap_or_else(ThreadId::generate);
        self.insert_thread(id.clone(), owner).map_err(|_| LogError::ThreadExists(id.clone()))?;
        Ok(id)
    }

    async fn ensure_thread(&self, thread_id: &ThreadId, owner: &UserId) -> Result<(), LogError> {
        self.owned_thread(thread_id, owner).map(drop)
    }

    async fn thread_owner(&self, thread_id: &ThreadId) -> Result<Option<UserId>, LogError> {
        Ok(self.thread(thread_id).map(|t| t.lock().owner.clone()))
    }

    async fn create_run(&self, new: NewRun) -> Result<RunInfo, LogError> {
        let thread = self.owned_thread(&new.thread_id, &new.owner)?;
        let mut state = thread.lock();
        let run = new.run_id.unwrap_or_else(|| RunId::mint(&new.thread_id));
        if state.runs.contains_key(&run) {
            return Err(LogError::RunExists(run.to_string()));
        }
        self.register_in(&mut state, &run, new.agent_name, Timestamp::now())?;
        Self::info(&state, &run).ok_or_else(|| LogError::RunNotFound(run.to_string()))
    }

    async fn run(&self, run_id: &str) -> Result<Option<RunInfo>, LogError> {
        match self.resolve(run_id, false) {
            Ok((run, thread)) => Ok(Self::info(&thread.lock(), &run)),
            Err(LogError::RunNotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn append(&self, run_id: &str, events: Vec<NewEvent>) -> Result<Appended, LogError> {
        let (run, thread) = self.resolve(run_id, true)?;
        let mut state = thread.lock();
        self.append_locked(&mut state, &run, events)
    }

    async fn cancel(&self, run_id: &str) -> Result<Appended, LogError> {
        let (run, thread) = self.resolve(run_id, false)?;
        let mut state = thread.lock();
        let appended =
            self.append_locked(&mut state, &run, vec![NewEvent::agent_error("cancelled", "the run was cancelled")])?;
        if let Some(r) = state.runs.get_mut(&run) {
            r.cancel_requested = true;
        }
        Ok(appended)
    }

    async fn read(&self, thread_id: &ThreadId, after_seq: u64, limit: usize) -> Result<Page, LogError> {
        let thread = self.thread(thread_id).ok_or_else(|| LogError::ThreadNotFound(thread_id.clone()))?;
        let state = thread.lock();
        let head = state.events.len();
        let from = usize::try_from(after_seq).unwrap_or(usize::MAX).min(head);
        let to = from.saturating_add(limit).min(head);
        Ok(Page { events: state.events[from..to].to_vec(), head_seq: head as u64, oldest_seq: 1 })
    }

    async fn expire_idle_runs(&self, now: Timestamp) -> Result<Vec<crate::RunId>, LogError> {
        let idle_ms = i64::try_from(self.config.run_idle_timeout.as_millis()).unwrap_or(i64::MAX);
        let threads: Vec<SharedThread> = self.threads.read().values().cloned().collect();
        let mut expired = Vec::new();
        for thread in threads {
            let mut state = thread.lock();
            let idle: Vec<RunId> = state
                .runs
                .iter()
                .filter(|(_, r)| {
                    !r.lifecycle.ended() && r.last_activity.millis().saturating_add(idle_ms) <= now.millis()
                })
                .map(|(id, _)| id.clone())
                .collect();
            for run in idle {
                let message = format!("no event for {} s", self.config.run_idle_timeout.as_secs_f64());
                self.append_locked(&mut state, &run, vec![NewEvent::agent_error("timeout", message)])?;
                expired.push(run);
            }
        }
        Ok(expired)
    }

    async fn ready(&self) -> Result<(), LogError> {
        Ok(())
    }

    fn stats(&self) -> LogStats {
        LogStats {
            threads: self.threads.read().len() as u64,
            runs_in_flight: self.runs_in_flight.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentwire_protocol::{LifecycleError, RunStatus};
    use serde_json::json;
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
        let log = MemoryLog::new(LogConfig { run_idle_timeout: Duration::from_millis(50) }, rec.clone());
        (rec, log, UserId::parse("alice").unwrap(), ThreadId::parse("thread_a1").unwrap())
    }

    async fn new_run(log: &MemoryLog, user: &UserId, thread: &ThreadId) -> RunId {
        let new =
            NewRun { thread_id: thread.clone(), owner: user.clone(), agent_name: Some("demo".into()), run_id: None };
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
        log.create_thread(Some(thread.clone()), &user).await.unwrap();
        let appended = log.append("legacy_thread_a1_42", vec![started()]).await.unwrap();
        assert_eq!(appended.thread_id, thread);
        let info = log.run("legacy_thread_a1_42").await.unwrap().expect("registered on first publish");
        assert_eq!(info.agent_name.as_deref(), Some("demo"));
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
        let run = NewRun { thread_id: thread.clone(), owner: bob, agent_name: None, run_id: None };
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
