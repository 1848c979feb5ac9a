//! What only the embedded log does: refuse bad data directories, keep its
//! working state small, upgrade old files, export and import threads. The rules
//! it shares with every log (a restart among them) are in `crates/conformance`.

use std::sync::Arc;
use std::time::Duration;

use agentwire_log::{
    EmbeddedLog, EmbeddedStore, Log, LogConfig, LogError, NewRun, NoFeed, RetentionPolicy, Store, StoreError, StoredLog,
};
use agentwire_protocol::{EventKind, LifecycleError, NewEvent, RunId, RunStatus, ThreadId, Timestamp, UserId};
use serde_json::{Value, json};

fn ev(kind: EventKind, data: Value) -> NewEvent {
    NewEvent::new(kind, data.as_object().cloned().unwrap_or_default())
}

fn open(dir: &std::path::Path, idle: Duration) -> EmbeddedLog {
    EmbeddedLog::open_dir(dir, LogConfig { run_idle_timeout: idle, ..Default::default() }, Arc::new(NoFeed))
        .expect("open")
}

async fn reopen(log: EmbeddedLog, dir: &std::path::Path, idle: Duration) -> EmbeddedLog {
    log.close().await;
    drop(log);
    open(dir, idle)
}

#[tokio::test]
async fn a_second_server_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path(), Duration::from_secs(1));
    let second = EmbeddedLog::open_dir(dir.path(), LogConfig::default(), Arc::new(NoFeed));
    assert!(matches!(second, Err(StoreError::Locked(_))), "{:?}", second.err());
}

#[test]
fn unreadable_data_is_an_error_never_an_empty_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(agentwire_log::embedded::DB_FILE), b"this is not a database, just bytes").unwrap();
    let garbage = EmbeddedLog::open_dir(dir.path(), LogConfig::default(), Arc::new(NoFeed));
    assert!(matches!(garbage, Err(StoreError::Corrupt { .. })), "{:?}", garbage.err());

    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("notes.txt"), b"someone else's files").unwrap();
    let foreign = EmbeddedLog::open_dir(other.path(), LogConfig::default(), Arc::new(NoFeed));
    assert!(matches!(foreign, Err(StoreError::Corrupt { .. })), "{:?}", foreign.err());
}

fn open_with(dir: &std::path::Path, retention: RetentionPolicy) -> EmbeddedLog {
    let config = LogConfig { run_idle_timeout: Duration::from_secs(3600), retention, ..Default::default() };
    EmbeddedLog::open_dir(dir, config, Arc::new(NoFeed)).expect("open")
}

#[tokio::test]
async fn retention_removes_old_events_and_what_is_left_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let keep4 = RetentionPolicy { max_events_per_thread: 4, ..Default::default() };
    let log = open_with(dir.path(), keep4);
    let (user, thread) = (UserId::parse("r").unwrap(), ThreadId::parse("thread_keepfew").unwrap());
    let run = log.create_run(external_run(thread.as_str(), &user, None)).await.unwrap().run_id;
    log.append(run.as_str(), vec![ev(EventKind::AgentStarted, json!({"agent_name":"a"}))]).await.unwrap();
    for i in 0..9 {
        log.append(run.as_str(), vec![ev(EventKind::AgentThinking, json!({"thought": format!("t{i}")}))])
            .await
            .unwrap();
    }
    // The per-thread limit is kept as events are appended, not by the sweep.
    let page = log.read(&thread, 0, 100).await.unwrap();
    assert_eq!((page.oldest_seq, page.head_seq), (7, 10));
    assert_eq!(page.events.iter().map(|e| e.seq()).collect::<Vec<_>>(), vec![7, 8, 9, 10]);
    assert_eq!(log.enforce_retention(Timestamp::now()).await.unwrap(), 0, "nothing left for the sweep");
    assert_eq!(log.store().event_count().unwrap(), 4);

    log.close().await;
    drop(log);
    let log = open_with(dir.path(), keep4);
    let page = log.read(&thread, 0, 100).await.unwrap();
    assert_eq!((page.oldest_seq, page.head_seq, page.events.len()), (7, 10, 4));
    // Numbering goes on after the retained head, never reusing a removed seq.
    let next = log.append(run.as_str(), vec![ev(EventKind::AgentThinking, json!({"thought":"next"}))]).await.unwrap();
    assert_eq!(next.seqs, vec![11]);
    // Age: everything older than a minute, seen from two minutes on, goes.
    log.close().await;
    drop(log);
    let log = open_with(dir.path(), RetentionPolicy { max_age: Duration::from_secs(60), ..keep4 });
    let later = Timestamp(Timestamp::now().millis() + 120_000);
    assert_eq!(log.enforce_retention(Timestamp::now()).await.unwrap(), 0, "nothing is a minute old yet");
    assert_eq!(log.enforce_retention(later).await.unwrap(), 4);
    let page = log.read(&thread, 0, 100).await.unwrap();
    assert_eq!((page.oldest_seq, page.head_seq, page.events.len()), (12, 11, 0));
    assert_eq!(log.store().oldest_threads(i64::MAX, 10).unwrap(), vec![], "an emptied thread has no age");
    let log = reopen(log, dir.path(), Duration::from_secs(3600)).await;
    let after = log.append(run.as_str(), vec![ev(EventKind::AgentThinking, json!({"thought":"after"}))]).await.unwrap();
    assert_eq!(after.seqs, vec![12], "an emptied thread keeps its numbering across a restart");
    let ages = log.store().oldest_threads(i64::MAX, 10).unwrap();
    assert_eq!(ages.iter().map(|e| (e.oldest_seq, e.head_seq)).collect::<Vec<_>>(), vec![(12, 12)]);
}

#[tokio::test]
async fn the_global_limit_takes_the_oldest_threads_first_and_the_count_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let limit = RetentionPolicy { max_events: 5, ..Default::default() };
    let log = open_with(dir.path(), limit);
    let user = UserId::parse("g").unwrap();
    let mut threads = Vec::new();
    for name in ["thread_g1", "thread_g2", "thread_g3"] {
        let run = log.create_run(external_run(name, &user, None)).await.unwrap().run_id;
        let events = vec![
            ev(EventKind::AgentStarted, json!({"agent_name":"a"})),
            ev(EventKind::AgentThinking, json!({"thought":"x"})),
            ev(EventKind::AgentCompleted, json!({})),
        ];
        log.append(run.as_str(), events).await.unwrap();
        threads.push(ThreadId::parse(name).unwrap());
        tokio::time::sleep(Duration::from_millis(3)).await; // distinct oldest times
    }
    assert_eq!(log.store().event_count().unwrap(), 9);
    assert_eq!(log.enforce_retention(Timestamp::now()).await.unwrap(), 4);
    assert_eq!(log.enforce_retention(Timestamp::now()).await.unwrap(), 0, "nothing twice");
    let kept: Vec<usize> = {
        let mut kept = Vec::new();
        for t in &threads {
            kept.push(log.read(t, 0, 100).await.unwrap().events.len());
        }
        kept
    };
    assert_eq!(kept, vec![0, 2, 3], "the oldest thread went whole, the next gave one");
    let log = reopen(log, dir.path(), Duration::from_secs(3600)).await;
    assert_eq!(log.store().event_count().unwrap(), 5);
    let order: Vec<String> =
        log.store().oldest_threads(i64::MAX, 10).unwrap().into_iter().map(|e| e.thread.to_string()).collect();
    assert_eq!(order, vec!["thread_g2", "thread_g3"]);
}

#[tokio::test]
async fn a_version_2_file_gets_its_retention_indexes_when_opened() {
    use redb::{ReadableDatabase, TableDefinition};
    let dir = tempfile::tempdir().unwrap();
    // Written by this build, then turned back into what version 2 left: no indexes, no count.
    let log = open(dir.path(), Duration::from_secs(3600));
    let user = UserId::parse("u").unwrap();
    let run = log.create_run(external_run("thread_v2", &user, None)).await.unwrap().run_id;
    let events = vec![ev(EventKind::AgentStarted, json!({"agent_name":"a"})), ev(EventKind::AgentCompleted, json!({}))];
    log.append(run.as_str(), events).await.unwrap();
    log.close().await;
    drop(log);
    {
        let db = redb::Database::create(dir.path().join(agentwire_log::embedded::DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        assert!(txn.delete_table(TableDefinition::<(&str, u64, &str), ()>::new("thread_ends")).unwrap());
        assert!(txn.delete_table(TableDefinition::<(i64, &str), u64>::new("thread_age")).unwrap());
        assert!(txn.delete_table(TableDefinition::<&str, i64>::new("thread_oldest")).unwrap());
        let mut meta = txn.open_table(TableDefinition::<&str, u64>::new("meta")).unwrap();
        meta.insert("format", 2).unwrap();
        meta.remove("events").unwrap();
        drop(meta);
        txn.commit().unwrap();
        let read = db.begin_read().unwrap();
        assert!(read.open_table(TableDefinition::<&str, i64>::new("thread_oldest")).is_err());
    }
    let log = open_with(dir.path(), RetentionPolicy { max_events_per_thread: 1, ..Default::default() });
    assert_eq!(log.store().event_count().unwrap(), 2);
    let ages = log.store().oldest_threads(i64::MAX, 10).unwrap();
    assert_eq!(
        ages.iter().map(|e| (e.thread.as_str(), e.oldest_seq, e.head_seq)).collect::<Vec<_>>(),
        vec![("thread_v2", 1, 2)]
    );
    // The ended run is indexed by its last event: a trim past it takes it.
    let next = log.create_run(external_run("thread_v2", &user, None)).await.unwrap().run_id;
    log.append(next.as_str(), vec![ev(EventKind::AgentStarted, json!({"agent_name":"a"}))]).await.unwrap();
    assert_eq!(log.run(run.as_str()).await.unwrap(), None);
    assert_eq!(log.store().event_count().unwrap(), 1);
}

#[tokio::test]
async fn a_thread_exported_and_imported_elsewhere_reads_and_goes_on_the_same() {
    use agentwire_log::EmbeddedStore;
    let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let hour = Duration::from_secs(3600);
    let log = open(from.path(), hour);
    let thread = ThreadId::parse("thread_moved").unwrap();
    let run = log.create_run(external_run(thread.as_str(), &UserId::parse("m").unwrap(), None)).await.unwrap().run_id;
    let events = vec![
        ev(EventKind::AgentStarted, json!({"agent_name":"a"})).with_event_id("s"),
        ev(EventKind::ToolExecuting, json!({"tool_call_id":"c","tool_name":"t"})),
    ];
    log.append(run.as_str(), events).await.unwrap();
    let before: Vec<String> =
        log.read(&thread, 0, 100).await.unwrap().events.iter().map(|e| e.json.to_string()).collect();
    log.close().await;
    drop(log);

    let mut dump = Vec::new();
    assert!(EmbeddedStore::open(from.path()).unwrap().export_thread(&thread, &mut dump).unwrap());
    assert!(
        !EmbeddedStore::open(from.path())
            .unwrap()
            .export_thread(&ThreadId::parse("thread_none").unwrap(), &mut Vec::new())
            .unwrap()
    );
    let target = EmbeddedStore::open(to.path()).unwrap();
    assert_eq!(target.import(dump.as_slice()).unwrap(), vec![thread.clone()]);
    assert!(target.import(dump.as_slice()).is_err(), "importing a thread twice is refused");
    drop(target);

    let moved = open(to.path(), hour);
    let after: Vec<String> =
        moved.read(&thread, 0, 100).await.unwrap().events.iter().map(|e| e.json.to_string()).collect();
    assert_eq!(after, before);
    assert_eq!(
        moved
            .append(run.as_str(), vec![ev(EventKind::AgentStarted, json!({"agent_name":"a"})).with_event_id("s")])
            .await
            .unwrap()
            .seqs,
        vec![1]
    );
    let done =
        vec![ev(EventKind::ToolCompleted, json!({"tool_call_id":"c"})), ev(EventKind::AgentCompleted, json!({}))];
    assert_eq!(moved.append(run.as_str(), done).await.unwrap().seqs, vec![3, 4]);
}

#[tokio::test]
async fn a_refused_registration_for_a_new_thread_does_not_break_the_next_start() {
    // Issue 13: the 409 of a taken run id left its new thread in memory only; the
    // next run of that thread was stored naming a thread that was not, and the
    // log refused to open again.
    let dir = tempfile::tempdir().unwrap();
    let hour = Duration::from_secs(3600);
    let log = open(dir.path(), hour);
    let alice = UserId::parse("alice").unwrap();
    let new =
        |thread: &str, run_id: Option<&str>| external_run(thread, &alice, run_id.map(|r| RunId::parse(r).unwrap()));
    log.create_run(new("thread_one", Some("job-1"))).await.unwrap();
    assert!(matches!(log.create_run(new("thread_two", Some("job-1"))).await, Err(LogError::RunExists(_))));
    let run = log.create_run(new("thread_two", None)).await.unwrap().run_id;
    let started = ev(EventKind::AgentStarted, json!({"agent_name":"a"}));
    assert_eq!(log.append(run.as_str(), vec![started]).await.unwrap().seqs, vec![1]);
    let log = reopen(log, dir.path(), hour).await;
    let page = log.read(&ThreadId::parse("thread_two").unwrap(), 0, 10).await.unwrap();
    assert_eq!(page.head_seq, 1);
    assert_eq!(log.thread_owner(&ThreadId::parse("thread_two").unwrap()).await.unwrap(), Some(alice.clone()));
}

#[tokio::test]
async fn ended_runs_leave_the_working_state_and_still_answer_from_the_store() {
    // Issue 13: every ended run and its event ids stayed in memory for good.
    let dir = tempfile::tempdir().unwrap();
    let hour = Duration::from_secs(3600);
    let log = open(dir.path(), hour);
    let alice = UserId::parse("alice").unwrap();
    let mut runs = Vec::new();
    for i in 0..50 {
        let run = log.create_run(external_run(&format!("thread_evict{}", i % 5), &alice, None)).await.unwrap().run_id;
        let events = vec![
            ev(EventKind::AgentStarted, json!({"agent_name":"a"})).with_event_id("start"),
            ev(EventKind::AgentThinking, json!({"thought":"t"})).with_event_id("think"),
            ev(EventKind::AgentCompleted, json!({})).with_event_id("end"),
        ];
        let seqs = log.append(run.as_str(), events).await.unwrap().seqs;
        runs.push((run, seqs));
    }
    let open_run = log.create_run(external_run("thread_evict0", &alice, None)).await.unwrap().run_id;
    assert_eq!(log.runs_in_memory(), 1, "only the running run is held");
    check_ended_runs(&log, &runs, &open_run, &alice).await;
    let log = reopen(log, dir.path(), hour).await;
    check_ended_runs(&log, &runs, &open_run, &alice).await;
}

/// What the ended `runs` still answer, with only `open_run` in memory.
async fn check_ended_runs(log: &EmbeddedLog, runs: &[(RunId, Vec<u64>)], open_run: &RunId, alice: &UserId) {
    for (run, seqs) in runs {
        let info = log.run(run.as_str()).await.unwrap().unwrap();
        assert_eq!(info.status, RunStatus::Completed);
        // A retried publish still answers its first seqs, from the store.
        let retry = vec![ev(EventKind::AgentThinking, json!({"thought":"t"})).with_event_id("think")];
        assert_eq!(log.append(run.as_str(), retry).await.unwrap().seqs, vec![seqs[1]]);
        let late = vec![ev(EventKind::AgentThinking, json!({"thought":"late"}))];
        assert!(matches!(log.append(run.as_str(), late).await, Err(LogError::Lifecycle(LifecycleError::Ended))));
        let again = external_run("thread_other", alice, Some(run.clone()));
        assert!(matches!(log.create_run(again).await, Err(LogError::RunExists(_))));
    }
    assert!(log.run(open_run.as_str()).await.unwrap().is_some());
    assert_eq!(log.runs_in_memory(), 1, "lookups do not bring ended runs back");
    assert_eq!(log.idle_index_len(), 1, "the watchdog watches the running run only");
}

/// A run an external publisher registers in `thread` for `owner`.
fn external_run(thread: &str, owner: &UserId, run_id: Option<RunId>) -> NewRun {
    NewRun {
        thread_id: ThreadId::parse(thread).unwrap(),
        owner: owner.clone(),
        agent_name: None,
        in_process: false,
        run_id,
    }
}

#[tokio::test]
async fn event_ids_are_forgotten_a_window_after_their_run_ends_on_disk_too() {
    // Issue 13: event-id entries were kept for ever.
    let dir = tempfile::tempdir().unwrap();
    let window = Duration::from_millis(200);
    let config = LogConfig { dedup_window: window, ..Default::default() };
    let log = EmbeddedLog::open_dir(dir.path(), config, Arc::new(NoFeed)).unwrap();
    let alice = UserId::parse("alice").unwrap();
    let ended = log.create_run(external_run("thread_window", &alice, None)).await.unwrap().run_id;
    let running = log.create_run(external_run("thread_window", &alice, None)).await.unwrap().run_id;
    let start = |id: &str| vec![ev(EventKind::AgentStarted, json!({"agent_name":"a"})).with_event_id(id)];
    log.append(ended.as_str(), start("s")).await.unwrap();
    log.append(ended.as_str(), vec![ev(EventKind::AgentCompleted, json!({})).with_event_id("end")]).await.unwrap();
    log.append(running.as_str(), start("s")).await.unwrap();
    let retry = || vec![ev(EventKind::AgentCompleted, json!({})).with_event_id("end")];

    // Within the window a repeat answers its first seq.
    assert_eq!(log.forget_event_ids(Timestamp::now()).await.unwrap(), 0);
    assert_eq!(log.append(ended.as_str(), retry()).await.unwrap().seqs, vec![2]);
    // Past it, the ended run's ids are gone from the store; the run still refuses more events.
    let later = Timestamp(Timestamp::now().millis() + 1_000);
    assert_eq!(log.forget_event_ids(later).await.unwrap(), 1);
    assert_eq!(log.store().event_seq(&ended, "end").unwrap(), None);
    assert!(matches!(log.append(ended.as_str(), retry()).await, Err(LogError::Lifecycle(LifecycleError::Ended))));
    // A running run's ids stay, and a second sweep finds nothing more.
    assert_eq!(log.store().event_seq(&running, "s").unwrap(), Some(3));
    assert_eq!(log.forget_event_ids(later).await.unwrap(), 0);
    // And after a restart.
    let log = reopen(log, dir.path(), Duration::from_secs(3600)).await;
    assert_eq!(log.store().event_seq(&ended, "s").unwrap(), None);
    assert_eq!(log.append(running.as_str(), start("s")).await.unwrap().seqs, vec![3]);
}

#[tokio::test]
async fn idle_threads_leave_memory_past_the_cache_and_start_up_loads_only_running_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { thread_cache: 10, ..Default::default() };
    let log = EmbeddedLog::open_dir(dir.path(), config.clone(), Arc::new(NoFeed)).unwrap();
    let alice = UserId::parse("alice").unwrap();
    let mut ended = Vec::new();
    for i in 0..100 {
        let thread = format!("thread_idle{i}");
        let run = log.create_run(external_run(&thread, &alice, None)).await.unwrap().run_id;
        let events = vec![ev(EventKind::AgentStarted, json!({"agent_name":"a"})).with_event_id("s")];
        log.append(run.as_str(), events).await.unwrap();
        log.append(run.as_str(), vec![ev(EventKind::AgentCompleted, json!({}))]).await.unwrap();
        ended.push((thread, run));
    }
    let running = log.create_run(external_run("thread_busy", &alice, None)).await.unwrap().run_id;
    // Ten idle threads, the running run's thread, and perhaps one whose eviction waits for its last decision.
    let held = log.stats().threads;
    assert!((11..=12).contains(&held), "{held} threads in memory");

    // An evicted thread reads, resolves its runs and de-duplicates as before.
    let (thread, run) = &ended[0];
    let thread = ThreadId::parse(thread).unwrap();
    let page = log.read(&thread, 0, 10).await.unwrap();
    assert_eq!((page.head_seq, page.events.len()), (2, 2));
    assert_eq!(log.thread_owner(&thread).await.unwrap(), Some(alice.clone()));
    assert_eq!(log.run(run.as_str()).await.unwrap().map(|r| r.status), Some(RunStatus::Completed));
    let again = vec![ev(EventKind::AgentStarted, json!({"agent_name":"a"})).with_event_id("s")];
    assert_eq!(log.append(run.as_str(), again).await.unwrap().seqs, vec![1], "a repeat answers its first seq");
    // Its id is still taken, and a new run there numbers on from its head.
    let bob = UserId::parse("bob").unwrap();
    assert!(matches!(log.create_thread(Some(thread.clone()), &bob).await, Err(LogError::ThreadExists(_))));
    assert!(matches!(log.create_run(external_run(thread.as_str(), &bob, None)).await, Err(LogError::Forbidden)));
    let next = log.create_run(external_run(thread.as_str(), &alice, None)).await.unwrap().run_id;
    let started = vec![ev(EventKind::AgentStarted, json!({"agent_name":"a"}))];
    assert_eq!(log.append(next.as_str(), started).await.unwrap().seqs, vec![3]);

    // A start loads the running runs' threads, not history.
    log.close().await;
    drop(log);
    let log = EmbeddedLog::open_dir(dir.path(), config, Arc::new(NoFeed)).unwrap();
    assert_eq!(log.stats().threads, 2, "only the threads with a running run");
    let busy = ThreadId::parse("thread_busy").unwrap();
    assert_eq!(log.run(running.as_str()).await.unwrap().map(|r| r.thread_id), Some(busy));
    let (thread, _) = &ended[99];
    assert_eq!(log.read(&ThreadId::parse(thread).unwrap(), 0, 10).await.unwrap().head_seq, 2);
}

#[tokio::test]
async fn retention_takes_ended_runs_and_their_event_ids_with_their_last_events() {
    let dir = tempfile::tempdir().unwrap();
    let hour = Duration::from_secs(3600);
    let log = open_with(dir.path(), RetentionPolicy { max_events_per_thread: 4, ..Default::default() });
    let (user, thread) = (UserId::parse("r").unwrap(), ThreadId::parse("thread_oldruns").unwrap());
    // Two short runs (seqs 1-2 and 3-4), then one still running (seqs 5-7).
    let mut runs = Vec::new();
    for _ in 0..2 {
        let run = log.create_run(external_run(thread.as_str(), &user, None)).await.unwrap().run_id;
        let events = vec![
            ev(EventKind::AgentStarted, json!({"agent_name":"a"})).with_event_id("s"),
            ev(EventKind::AgentCompleted, json!({})).with_event_id("f"),
        ];
        log.append(run.as_str(), events).await.unwrap();
        runs.push(run);
    }
    let going = log.create_run(external_run(thread.as_str(), &user, None)).await.unwrap().run_id;
    let events = vec![
        ev(EventKind::AgentStarted, json!({"agent_name":"a"})).with_event_id("s"),
        ev(EventKind::AgentThinking, json!({"thought":"1"})),
        ev(EventKind::AgentThinking, json!({"thought":"2"})),
    ];
    // Keep 4 events: seqs 4-7. The first run's events are all gone, the second's not.
    log.append(going.as_str(), events).await.unwrap();
    let log = reopen(log, dir.path(), hour).await;
    assert_eq!(log.run(runs[0].as_str()).await.unwrap(), None, "the run went with its last event");
    assert!(log.run(runs[1].as_str()).await.unwrap().is_some(), "one event of it is left: it stays");
    assert!(log.store().event_seq(&runs[0], "s").unwrap().is_none(), "its event ids went too");
    assert_eq!(log.store().event_seq(&runs[1], "f").unwrap(), Some(4));
    let repeat = vec![ev(EventKind::AgentCompleted, json!({})).with_event_id("f")];
    assert_eq!(log.append(runs[1].as_str(), repeat).await.unwrap().seqs, vec![4], "still de-duplicated");

    // Once the running run is past the trim too, it stays: only ended runs go.
    log.close().await;
    drop(log);
    let log = open_with(dir.path(), RetentionPolicy { max_events_per_thread: 1, ..Default::default() });
    let more = vec![ev(EventKind::AgentThinking, json!({"thought":"3"}))];
    assert_eq!(log.append(going.as_str(), more).await.unwrap().seqs, vec![8]);
    assert!(log.run(runs[1].as_str()).await.unwrap().is_none());
    assert!(log.run(going.as_str()).await.unwrap().is_some());
    assert_eq!(log.read(&thread, 0, 10).await.unwrap().oldest_seq, 8);
}

/// Holds the first write after it is armed until the test opens it, and says when it arrives.
struct Gate {
    armed: std::sync::atomic::AtomicBool,
    arrived: std::sync::mpsc::SyncSender<()>,
    open: parking_lot::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl agentwire_log::store::WriteHook for Gate {
    fn write(&self, inner: &dyn Store, batches: &[&agentwire_log::store::Batch]) -> Result<(), StoreError> {
        if self.armed.swap(false, std::sync::atomic::Ordering::AcqRel) {
            let _ = self.arrived.send(());
            let _ = self.open.lock().recv();
        }
        inner.write(batches)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_planned_before_an_append_cut_further_never_moves_the_oldest_seq_back() {
    use agentwire_log::StoredLog;
    use agentwire_log::store::Hooked;
    let dir = tempfile::tempdir().unwrap();
    let (arrived_tx, arrived) = std::sync::mpsc::sync_channel(1);
    let (release, held) = std::sync::mpsc::sync_channel(1);
    let gate = Gate { armed: false.into(), arrived: arrived_tx, open: parking_lot::Mutex::new(held) };
    let store = Hooked { inner: Box::new(agentwire_log::EmbeddedStore::open(dir.path()).unwrap()), hook: gate };
    let retention =
        RetentionPolicy { max_events_per_thread: 2, max_age: Duration::from_secs(3600), ..Default::default() };
    let config = LogConfig { run_idle_timeout: Duration::from_secs(3600), retention, ..Default::default() };
    let log = Arc::new(StoredLog::open(store, config, Arc::new(NoFeed)).unwrap());
    let (user, thread) = (UserId::parse("r").unwrap(), ThreadId::parse("thread_race").unwrap());
    let run = log.create_run(external_run(thread.as_str(), &user, None)).await.unwrap().run_id;
    log.append(run.as_str(), vec![ev(EventKind::AgentStarted, json!({"agent_name":"a"}))]).await.unwrap();
    for t in ["1", "2"] {
        log.append(run.as_str(), vec![ev(EventKind::AgentThinking, json!({"thought": t}))]).await.unwrap();
    }
    // Stored: seqs 2 and 3. Now seqs 4-6 are decided, with a cut to 5, and held before the disk.
    log.store().hook.armed.store(true, std::sync::atomic::Ordering::Release);
    let appending = {
        let (log, run) = (log.clone(), run.clone());
        let three = (0..3).map(|i| ev(EventKind::AgentThinking, json!({"thought": i}))).collect();
        tokio::spawn(async move { log.append(run.as_str(), three).await })
    };
    tokio::task::spawn_blocking(move || arrived.recv_timeout(Duration::from_secs(10))).await.unwrap().unwrap();
    // A sweep by age now reads the store, where seq 3 is the last old event, and plans a cut to 4.
    let later = Timestamp(Timestamp::now().millis() + 2 * 3600 * 1000);
    let swept = tokio::time::timeout(Duration::from_secs(5), log.enforce_retention(later)).await;
    assert!(
        matches!(swept, Ok(Ok(0))),
        "the sweep must see the append's cut and plan nothing, not queue a cut to 4 behind it: {swept:?}"
    );
    release.send(()).unwrap();
    assert_eq!(appending.await.unwrap().unwrap().seqs, vec![4, 5, 6]);
    let page = log.read(&thread, 0, 10).await.unwrap();
    assert_eq!((page.oldest_seq, page.events.iter().map(|e| e.seq()).collect::<Vec<_>>()), (5, vec![5, 6]));
    log.close().await;
    drop(log);
    let log = open(dir.path(), Duration::from_secs(3600));
    let page = log.read(&thread, 0, 10).await.unwrap();
    assert_eq!((page.oldest_seq, page.events.iter().map(|e| e.seq()).collect::<Vec<_>>()), (5, vec![5, 6]));
}

/// A log over an embedded store the test also holds, so it can stop the applier.
fn open_shared(dir: &std::path::Path) -> (StoredLog<Arc<EmbeddedStore>>, Arc<EmbeddedStore>) {
    let store = Arc::new(EmbeddedStore::open(dir).expect("open the store"));
    let config = LogConfig { run_idle_timeout: Duration::from_secs(3600), thread_cache: 1, ..Default::default() };
    (StoredLog::open(store.clone(), config, Arc::new(NoFeed)).expect("open the log"), store)
}

#[tokio::test]
async fn what_only_the_journal_holds_is_read_and_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let user = UserId::parse("j").unwrap();
    let (log, store) = open_shared(dir.path());
    let first = log.create_run(external_run("thread_journal1", &user, None)).await.unwrap().run_id;
    log.append(first.as_str(), vec![ev(EventKind::AgentStarted, json!({"agent_name":"a"}))]).await.unwrap();
    store.flush().unwrap();
    // From here on, nothing reaches the store file: every read below is
    // answered from what the journal holds.
    store.pause_applier();
    let mut thought = ev(EventKind::AgentThinking, json!({"thought":"only in the journal"}));
    thought.event_id = Some("t1".into());
    let done = ev(EventKind::AgentCompleted, json!({"result":"ok"}));
    assert_eq!(log.append(first.as_str(), vec![thought.clone(), done]).await.unwrap().seqs, vec![2, 3]);
    // A second thread pushes the first (its run ended, now evicted) out of the working state.
    let second = log.create_run(external_run("thread_journal2", &user, None)).await.unwrap().run_id;
    log.append(second.as_str(), vec![ev(EventKind::AgentStarted, json!({"agent_name":"b"}))]).await.unwrap();
    let thread = ThreadId::parse("thread_journal1").unwrap();
    let page = log.read(&thread, 0, 100).await.unwrap();
    assert_eq!(page.events.iter().map(|e| e.seq()).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(log.read(&thread, 1, 1).await.unwrap().events[0].seq(), 2, "a page after redb's part");
    assert_eq!(log.run(first.as_str()).await.unwrap().unwrap().status, RunStatus::Completed);
    assert_eq!(log.append(first.as_str(), vec![thought.clone()]).await.unwrap().seqs, vec![2], "a retry finds its seq");

    // A crash: the applier never copied those records.
    log.close().await;
    drop((log, store));
    let (log, _store) = open_shared(dir.path());
    let page = log.read(&thread, 0, 100).await.unwrap();
    assert_eq!((page.head_seq, page.events.len()), (3, 3));
    assert_eq!(log.append(first.as_str(), vec![thought]).await.unwrap().seqs, vec![2]);
    assert_eq!(log.run(second.as_str()).await.unwrap().unwrap().status, RunStatus::Running);
    let next = log.append(second.as_str(), vec![ev(EventKind::AgentThinking, json!({"thought":"on"}))]).await.unwrap();
    assert_eq!(next.seqs, vec![2], "numbering goes on after what the journal gave back");
}

#[tokio::test]
async fn event_ids_packed_per_commit_and_a_version_3_files_single_ids_both_deduplicate_after_a_reopen() {
    use redb::TableDefinition;
    let dir = tempfile::tempdir().unwrap();
    let hour = Duration::from_secs(3600);
    let user = UserId::parse("u").unwrap();
    let log = open(dir.path(), hour);
    let old = log.create_run(external_run("thread_ids", &user, None)).await.unwrap().run_id;
    let going = log.create_run(external_run("thread_ids", &user, None)).await.unwrap().run_id;
    let started = |id: &str| ev(EventKind::AgentStarted, json!({"agent_name":"a"})).with_event_id(id);
    let thought = |id: &str| ev(EventKind::AgentThinking, json!({"thought":"t"})).with_event_id(id);
    log.append(old.as_str(), vec![started("o1")]).await.unwrap();
    log.append(going.as_str(), vec![started("g1"), thought("g2")]).await.unwrap();
    log.append(going.as_str(), vec![thought("g3")]).await.unwrap();
    log.append(old.as_str(), vec![ev(EventKind::AgentCompleted, json!({})).with_event_id("o2")]).await.unwrap();
    log.close().await;
    drop(log);
    {
        // What version 3 left for the ended run: its ids one per key, no packs.
        let db = redb::Database::create(dir.path().join(agentwire_log::embedded::DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        let mut packs = txn.open_table(TableDefinition::<(&str, u64), &[u8]>::new("event_id_packs")).unwrap();
        packs.retain_in((old.as_str(), 0)..=(old.as_str(), u64::MAX), |_, _| false).unwrap();
        drop(packs);
        let mut single = txn.open_table(TableDefinition::<(&str, &str), u64>::new("event_ids")).unwrap();
        single.insert((old.as_str(), "o1"), 1).unwrap();
        single.insert((old.as_str(), "o2"), 5).unwrap();
        drop(single);
        txn.open_table(TableDefinition::<&str, u64>::new("meta")).unwrap().insert("format", 3).unwrap();
        txn.commit().unwrap();
    }
    let log = open(dir.path(), hour);
    // A retry answers the first seq: for the going run from what the reopen loaded,
    // for the ended one from the store (single keys), whatever commit carried them.
    let again = log.append(going.as_str(), vec![thought("g2"), thought("g3")]).await.unwrap();
    assert_eq!(again.seqs, vec![3, 4]);
    assert_eq!(log.append(old.as_str(), vec![started("o1")]).await.unwrap().seqs, vec![1]);
    let fresh = log.append(going.as_str(), vec![thought("g4")]).await.unwrap();
    assert_eq!(fresh.seqs, vec![6]);
    log.append(going.as_str(), vec![ev(EventKind::AgentCompleted, json!({})).with_event_id("g5")]).await.unwrap();
    log.close().await;
    drop(log);
    // Ended and reopened: every id of the packs is still known.
    let log = open(dir.path(), hour);
    for (id, seq) in [("g1", 2), ("g3", 4), ("g4", 6)] {
        assert_eq!(log.append(going.as_str(), vec![thought(id)]).await.unwrap().seqs, vec![seq], "{id}");
    }
}

/// The files in the journal's directory, with their lengths.
fn journal_files(dir: &std::path::Path) -> Vec<(String, u64)> {
    let journal = dir.join(agentwire_log::embedded::JOURNAL_DIR);
    let mut files: Vec<_> = std::fs::read_dir(journal)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn a_busy_store_moves_its_journal_onto_a_prepared_file_of_zeros_and_reads_back_across_it() {
    let dir = tempfile::tempdir().unwrap();
    let user = UserId::parse("busy").unwrap();
    let log = open(dir.path(), Duration::from_secs(3600));
    let run = log.create_run(external_run("thread_busy", &user, None)).await.unwrap().run_id;
    log.append(run.as_str(), vec![ev(EventKind::AgentStarted, json!({"agent_name":"a"}))]).await.unwrap();
    let thought = "x".repeat(4096);
    let mut head = 1;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // Busy enough (a megabyte in one segment), the applier prepares 16 MiB of
    // zeros, and the next append goes there instead of growing a file.
    while !journal_files(dir.path()).iter().any(|(name, len)| name.ends_with(".journal") && *len >= 16 << 20) {
        assert!(std::time::Instant::now() < deadline, "no prepared segment: {:?}", journal_files(dir.path()));
        let appended = log.append(run.as_str(), vec![ev(EventKind::AgentThinking, json!({"thought": thought}))]);
        head = appended.await.unwrap().seqs[0];
        if head > 256 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let log = reopen(log, dir.path(), Duration::from_secs(3600)).await;
    let thread = ThreadId::parse("thread_busy").unwrap();
    let mut seqs = Vec::new();
    while let Some(last) = {
        let page = log.read(&thread, seqs.last().copied().unwrap_or(0), 1000).await.unwrap();
        seqs.extend(page.events.iter().map(|e| e.seq()));
        page.events.last().map(|e| e.seq())
    } {
        assert!(last <= head);
    }
    assert_eq!(seqs, (1..=head).collect::<Vec<_>>(), "every event, from the grown segment and the prepared one");
    assert!(!journal_files(dir.path()).iter().any(|(name, _)| name.ends_with(".filling")));
}
