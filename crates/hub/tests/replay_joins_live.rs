//! Replay joined to live while publishers race the subscribers.

use std::sync::Arc;
use std::time::Duration;

use agentwire_hub::{Hub, HubConfig, HubMetrics, Session};
use agentwire_log::{Log, LogConfig, MemoryLog, NewRun};
use agentwire_protocol::{EventKind, NewEvent, ThreadId, UserId};
use serde_json::json;

fn thinking(i: usize) -> NewEvent {
    NewEvent::new(EventKind::AgentThinking, json!({"thought": format!("t{i}")}).as_object().cloned().unwrap())
}

fn setup(config: HubConfig) -> (Arc<Hub>, Arc<dyn Log>) {
    setup_with(config, LogConfig::default())
}

fn setup_with(config: HubConfig, log_config: LogConfig) -> (Arc<Hub>, Arc<dyn Log>) {
    let hub = Hub::new(config, HubMetrics::unregistered());
    let log: Arc<dyn Log> = Arc::new(MemoryLog::new(log_config, hub.clone()).unwrap());
    (hub, log)
}

/// An `agent_thinking` whose thought is `kb` kilobytes.
fn large(kb: usize) -> NewEvent {
    NewEvent::new(EventKind::AgentThinking, json!({"thought": "x".repeat(kb << 10)}).as_object().cloned().unwrap())
}

async fn start_run(log: &Arc<dyn Log>, thread: &ThreadId) -> String {
    let user = UserId::parse("alice").unwrap();
    let run = log
        .create_run(NewRun {
            thread_id: thread.clone(),
            owner: user,
            agent_name: None,
            in_process: false,
            run_id: None,
        })
        .await
        .unwrap()
        .run_id;
    let started = NewEvent::new(EventKind::AgentStarted, json!({"agent_name":"a"}).as_object().cloned().unwrap());
    log.append(run.as_str(), vec![started]).await.unwrap();
    run.to_string()
}

/// Subscribes after `after_seq` and collects seqs until `last`.
async fn collect(hub: Arc<Hub>, log: Arc<dyn Log>, thread: ThreadId, after_seq: u64, last: u64) -> Vec<u64> {
    let (conn, mut outbox) = hub.connect();
    let mut session = Session::new(conn, log, 7);
    let started = session.subscribe(&thread, after_seq).await.unwrap();
    assert_eq!(started.reset, None);
    let mut seen = Vec::new();
    loop {
        let page = session.replay(&thread).await.unwrap();
        if page.is_empty() {
            break;
        }
        seen.extend(page.iter().map(|e| e.seq()));
    }
    while seen.last().copied().unwrap_or(after_seq) < last {
        let batch = tokio::time::timeout(Duration::from_secs(10), outbox.next_batch()).await.expect("live events");
        assert!(!session.connection().is_overflowed());
        seen.extend(session.live(&batch).await.unwrap().iter().map(|e| e.seq()));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribers_racing_publishers_see_every_seq_once_in_order() {
    const PUBLISHERS: usize = 4;
    const PER_PUBLISHER: usize = 500;
    let (hub, log) = setup(HubConfig { send_queue: 100_000, max_batch: 64, ..HubConfig::default() });
    let thread = ThreadId::parse("thread_race").unwrap();
    let run = start_run(&log, &thread).await;
    let last = 1 + (PUBLISHERS * PER_PUBLISHER) as u64;

    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let (log, run) = (log.clone(), run.clone());
        publishers.push(tokio::spawn(async move {
            for i in 0..PER_PUBLISHER {
                log.append(&run, vec![thinking(p * PER_PUBLISHER + i)]).await.unwrap();
                // Pace the publishers so the subscribers below join while they run.
                if i % 16 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }));
    }
    // Subscribers join at different moments and from different positions while publishing runs.
    let mut subscribers = Vec::new();
    for k in 0..24u64 {
        let (hub, log, thread) = (hub.clone(), log.clone(), thread.clone());
        subscribers.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(k)).await;
            let head = log.read(&thread, 0, 0).await.unwrap().head_seq;
            let after = if k % 3 == 0 { 0 } else { head.saturating_sub(k) };
            (after, collect(hub, log, thread, after, last).await)
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    for s in subscribers {
        let (after, seen) = s.await.unwrap();
        let want: Vec<u64> = (after + 1..=last).collect();
        assert_eq!(seen, want, "subscriber after {after}");
    }
    // The join itself is exact: the gap-filling safety net was never needed.
    assert_eq!(hub.metrics().gap_fills.get(), 0);
}

#[tokio::test]
async fn a_slow_consumer_overflows_instead_of_growing() {
    let (hub, log) = setup(HubConfig { send_queue: 8, max_batch: 4, ..HubConfig::default() });
    let thread = ThreadId::parse("thread_slow").unwrap();
    let run = start_run(&log, &thread).await;
    let (conn, outbox) = hub.connect();
    let mut session = Session::new(conn, log.clone(), 100);
    session.subscribe(&thread, 1).await.unwrap();
    for i in 0..20 {
        log.append(&run, vec![thinking(i)]).await.unwrap();
    }
    assert!(session.connection().is_overflowed());
    assert_eq!(outbox.len(), 8, "the queue stays at its bound");
    // Others are unaffected: a fresh subscriber resumes everything from the log.
    let seen = collect(hub.clone(), log, thread, 1, 21).await;
    assert_eq!(seen, (2..=21).collect::<Vec<_>>());
}

#[tokio::test]
async fn ready_events_come_out_as_one_batch_and_unsubscribed_threads_are_dropped() {
    let (hub, log) = setup(HubConfig { send_queue: 64, max_batch: 5, ..HubConfig::default() });
    let a = ThreadId::parse("thread_a").unwrap();
    let b = ThreadId::parse("thread_b").unwrap();
    let (ra, rb) = (start_run(&log, &a).await, start_run(&log, &b).await);
    let (conn, mut outbox) = hub.connect();
    let mut session = Session::new(conn, log.clone(), 100);
    session.subscribe(&a, 1).await.unwrap();
    session.subscribe(&b, 1).await.unwrap();
    for i in 0..7 {
        log.append(if i % 2 == 0 { &ra } else { &rb }, vec![thinking(i)]).await.unwrap();
    }
    let first = tokio::time::timeout(Duration::from_secs(5), outbox.next_batch()).await.unwrap();
    assert_eq!(first.len(), 5, "everything ready, up to max_batch");
    assert!(session.unsubscribe(&b));
    let rest = tokio::time::timeout(Duration::from_secs(5), outbox.next_batch()).await.unwrap();
    let rest = session.live(&rest).await.unwrap();
    assert!(rest.iter().all(|e| e.thread_id() == &a));
    assert!(!session.unsubscribe(&b));
}

#[tokio::test]
async fn a_live_event_that_skips_ahead_is_preceded_by_the_gap_from_the_log() {
    let (hub, log) = setup(HubConfig::default());
    let thread = ThreadId::parse("thread_gap").unwrap();
    let run = start_run(&log, &thread).await;
    for i in 0..5 {
        log.append(&run, vec![thinking(i)]).await.unwrap();
    }
    let (conn, _outbox) = hub.connect();
    let mut session = Session::new(conn, log.clone(), 100);
    session.subscribe(&thread, 2).await.unwrap();
    // Pretend the feed lost seqs 3..=5 and only seq 6 arrived.
    let six = log.read(&thread, 5, 1).await.unwrap().events;
    let sent = session.live(&six).await.unwrap();
    assert_eq!(sent.iter().map(|e| e.seq()).collect::<Vec<_>>(), vec![3, 4, 5, 6]);
}

#[tokio::test]
async fn after_seq_beyond_the_head_is_reset() {
    let (hub, log) = setup(HubConfig::default());
    let thread = ThreadId::parse("thread_reset").unwrap();
    start_run(&log, &thread).await;
    let (conn, _outbox) = hub.connect();
    let mut session = Session::new(conn, log, 100);
    let started = session.subscribe(&thread, 40).await.unwrap();
    assert_eq!(started.reset, Some(1));
    assert_eq!(session.replay(&thread).await.unwrap().len(), 1);
}

#[tokio::test]
async fn queues_pages_and_batches_are_bounded_in_bytes_too() {
    // Issue 14: counts alone let eight stalled readers of a thread of 1 MB events
    // hold gigabytes. Budgets here: queue 256 KB, batch 100 KB, page 300 KB.
    let hub_config = HubConfig { send_queue_bytes: 256 << 10, max_batch_bytes: 100 << 10, ..HubConfig::default() };
    let log_config = LogConfig { max_page_bytes: 300 << 10, ..LogConfig::default() };
    let (hub, log) = setup_with(hub_config, log_config);
    let thread = ThreadId::parse("thread_big").unwrap();
    let run = start_run(&log, &thread).await;

    let (conn, mut reader) = hub.connect();
    let mut session = Session::new(conn, log.clone(), 1000);
    session.subscribe(&thread, 1).await.unwrap();
    let (stalled_conn, stalled) = hub.connect();
    let mut stalled_session = Session::new(stalled_conn, log.clone(), 1000);
    stalled_session.subscribe(&thread, 1).await.unwrap();

    // Three 64 KB events fit the queue; a batch stops once it holds 100 KB.
    for _ in 0..3 {
        log.append(&run, vec![large(64)]).await.unwrap();
    }
    let batch = reader.next_batch().await;
    assert_eq!(batch.len(), 2, "64 KB + 64 KB passes 100 KB: the batch ends there");
    assert_eq!(reader.ready_batch().len(), 1);
    // The reader that read has room again; the stalled one overflows on bytes,
    // long before its 4096-event queue would fill.
    for _ in 0..2 {
        log.append(&run, vec![large(64)]).await.unwrap();
    }
    assert!(!session.connection().is_overflowed());
    assert!(stalled_session.connection().is_overflowed());
    assert_eq!(stalled.len(), 3, "{} events queued", stalled.len());

    // One event larger than the whole queue still reaches a reader that keeps up.
    reader.ready_batch();
    log.append(&run, vec![large(512)]).await.unwrap();
    assert_eq!(reader.ready_batch().len(), 1);
    assert!(!session.connection().is_overflowed());

    // History: a page stops at 300 KB (never empty), and paging on reaches the head.
    let page = log.read(&thread, 1, 1000).await.unwrap();
    assert_eq!(page.events.iter().map(|e| e.seq()).collect::<Vec<_>>(), vec![2, 3, 4, 5]);
    let big = log.read(&thread, 6, 1000).await.unwrap();
    assert_eq!(big.events.len(), 1, "an event over the budget comes alone");
    let replayed = collect(hub.clone(), log.clone(), thread.clone(), 1, 7).await;
    assert_eq!(replayed, (2..=7).collect::<Vec<_>>());

    // A gap wider than one page is filled whole.
    let (gap_conn, _gap_outbox) = hub.connect();
    let mut gap = Session::new(gap_conn, log.clone(), 1000);
    gap.subscribe(&thread, 1).await.unwrap();
    log.append(&run, vec![thinking(0)]).await.unwrap();
    let eight = log.read(&thread, 7, 1).await.unwrap().events;
    let sent = gap.live(&eight).await.unwrap();
    assert_eq!(sent.iter().map(|e| e.seq()).collect::<Vec<_>>(), (2..=8).collect::<Vec<_>>());
}
