//! The feed every transport encodes: replay, then live, then an end with its reason.

use std::sync::Arc;
use std::time::Duration;

use agentwire_hub::{End, Feed, Hub, HubConfig, HubMetrics, Next};
use agentwire_log::{FeedSink, Log, LogConfig, MemoryLog, NewRun};
use agentwire_protocol::{EventKind, NewEvent, ThreadId, UserId};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const HOUR: Duration = Duration::from_secs(3600);

fn thinking(i: usize) -> NewEvent {
    NewEvent::new(EventKind::AgentThinking, json!({"thought": format!("t{i}")}).as_object().cloned().unwrap())
}

struct Setup {
    hub: Arc<Hub>,
    log: Arc<dyn Log>,
    thread: ThreadId,
    run: String,
}

/// A thread with a started run (seq 1).
async fn setup() -> Setup {
    setup_with(HubConfig::default()).await
}

async fn setup_with(config: HubConfig) -> Setup {
    let hub = Hub::new(config, HubMetrics::unregistered());
    let log: Arc<dyn Log> = Arc::new(MemoryLog::new(LogConfig::default(), hub.clone()).unwrap());
    let thread = ThreadId::parse("thread_feed").unwrap();
    let new = NewRun {
        thread_id: thread.clone(),
        owner: UserId::parse("alice").unwrap(),
        agent_name: None,
        in_process: false,
        run_id: None,
    };
    let run = log.create_run(new).await.unwrap().run_id.to_string();
    let started = NewEvent::new(EventKind::AgentStarted, json!({"agent_name":"a"}).as_object().cloned().unwrap());
    log.append(&run, vec![started]).await.unwrap();
    Setup { hub, log, thread, run }
}

fn feed(s: &Setup, closing: &CancellationToken, expires_in: Duration) -> Feed {
    let (conn, outbox) = s.hub.connect();
    Feed::new(conn, outbox, s.log.clone(), 2, closing.clone(), expires_in)
}

fn seqs(events: &[Arc<agentwire_log::StoredEvent>]) -> Vec<u64> {
    events.iter().map(|e| e.seq()).collect()
}

async fn next(feed: &mut Feed) -> Next {
    tokio::time::timeout(Duration::from_secs(10), feed.next()).await.expect("a step")
}

#[tokio::test]
async fn history_comes_in_pages_then_live_events_then_the_shutdown_flush() {
    let s = setup().await;
    for i in 0..4 {
        s.log.append(&s.run, vec![thinking(i)]).await.unwrap();
    }
    let closing = CancellationToken::new();
    let mut feed = feed(&s, &closing, HOUR);
    feed.subscribe(&s.thread, 0).await.unwrap();
    // Published while the replay is still to come: it arrives once, after it.
    s.log.append(&s.run, vec![thinking(9)]).await.unwrap();
    let mut steps = Vec::new();
    let mut all = Vec::new();
    while all.last() != Some(&6) {
        match next(&mut feed).await {
            Next::Replay(page) => {
                assert!(page.len() <= 2, "pages of the configured size");
                steps.push("replay");
                all.extend(seqs(&page));
            }
            other => panic!("replay expected, got {other:?}"),
        }
    }
    // The replay goes on until it has caught up; then live events flow.
    s.log.append(&s.run, vec![thinking(10)]).await.unwrap();
    while all.last() != Some(&7) {
        match next(&mut feed).await {
            Next::Replay(events) => all.extend(seqs(&events)),
            Next::Live(events) => {
                steps.push("live");
                all.extend(seqs(&events));
            }
            other => panic!("events expected, got {other:?}"),
        }
    }
    assert_eq!(all, vec![1, 2, 3, 4, 5, 6, 7]);
    // Published while the feed waits, once its replay has caught up: a live event.
    let later = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.log.append(&s.run, vec![thinking(11)]).await.unwrap();
    };
    let (step, ()) = tokio::join!(next(&mut feed), later);
    let Next::Live(live) = step else { panic!("live events expected") };
    steps.push("live");
    assert_eq!(seqs(&live), vec![8], "the queued copies of 6 and 7 are dropped: they were replayed");
    assert_eq!(steps.last(), Some(&"live"));

    s.log.append(&s.run, vec![thinking(12)]).await.unwrap();
    closing.cancel();
    match next(&mut feed).await {
        Next::End(End::Shutdown(flush)) => assert_eq!(seqs(&flush), vec![9], "queued events go out before the close"),
        other => panic!("shutdown expected, got {other:?}"),
    }
}

#[tokio::test]
async fn a_deleted_thread_is_reported_after_the_events_queued_before_it() {
    let s = setup().await;
    let closing = CancellationToken::new();
    let mut feed = feed(&s, &closing, HOUR);
    feed.subscribe(&s.thread, 1).await.unwrap();
    s.log.append(&s.run, vec![thinking(1)]).await.unwrap();
    s.hub.thread_deleted(&s.thread);
    let mut steps = Vec::new();
    loop {
        match next(&mut feed).await {
            Next::Replay(events) if events.is_empty() => {}
            Next::Replay(events) | Next::Live(events) => steps.push(format!("events {:?}", seqs(&events))),
            Next::Deleted(thread) => {
                steps.push(format!("deleted {thread}"));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(steps, vec!["events [2]".to_owned(), "deleted thread_feed".to_owned()]);
    assert!(!feed.is_subscribed(&s.thread));
    assert_eq!(feed.connection().watch_count(), 0);
    assert!(!s.hub.is_watched(&s.thread));
    // The id is free for a new subscription, which starts over.
    feed.subscribe(&s.thread, 0).await.unwrap();
    assert!(s.hub.is_watched(&s.thread));
}

#[tokio::test]
async fn the_feed_ends_when_the_token_expires_and_can_be_renewed() {
    let s = setup().await;
    let closing = CancellationToken::new();
    let mut feed = feed(&s, &closing, Duration::from_millis(50));
    feed.subscribe(&s.thread, 1).await.unwrap();
    feed.renew(Duration::from_millis(300));
    let started = std::time::Instant::now();
    loop {
        match next(&mut feed).await {
            Next::End(End::TokenExpired) => break,
            Next::Replay(_) => {}
            other => panic!("expiry expected, got {other:?}"),
        }
    }
    assert!(started.elapsed() >= Duration::from_millis(250), "the renewed expiry holds");
}

#[tokio::test]
async fn a_slow_consumer_ends_the_feed() {
    let s = setup_with(HubConfig { send_queue: 2, ..HubConfig::default() }).await;
    let closing = CancellationToken::new();
    let mut feed = feed(&s, &closing, HOUR);
    feed.subscribe(&s.thread, 0).await.unwrap();
    for i in 0..5 {
        s.log.append(&s.run, vec![thinking(i)]).await.unwrap();
    }
    loop {
        match next(&mut feed).await {
            Next::End(End::SlowConsumer) => break,
            Next::Replay(_) | Next::Live(_) => {}
            other => panic!("slow consumer expected, got {other:?}"),
        }
    }
}

/// A thread whose history is rewritten under its subscribers (a shared
/// engine's failover lost acknowledged events, and `seq`s will be used again)
/// gets `reset` to the oldest seq and the whole replay again, never silence.
#[tokio::test]
async fn a_rewound_thread_is_reset_and_replayed_from_its_oldest_event() {
    let s = setup().await;
    s.log.append(&s.run, vec![thinking(0), thinking(1)]).await.unwrap();
    let closing = CancellationToken::new();
    let mut feed = feed(&s, &closing, HOUR);
    feed.subscribe(&s.thread, 3).await.unwrap();
    s.hub.thread_rewound(&s.thread);
    match next(&mut feed).await {
        Next::Reset { thread, oldest_seq } => assert_eq!((thread, oldest_seq), (s.thread.clone(), 1)),
        other => panic!("reset expected, got {other:?}"),
    }
    let mut replayed = Vec::new();
    while replayed.last() != Some(&3) {
        match next(&mut feed).await {
            Next::Replay(page) => replayed.extend(seqs(&page)),
            other => panic!("the replay expected, got {other:?}"),
        }
    }
    assert_eq!(replayed, vec![1, 2, 3]);
    // And the thread goes on after it, each event once (replayed or live).
    s.log.append(&s.run, vec![thinking(2)]).await.unwrap();
    let mut after = Vec::new();
    while after.last() != Some(&4) {
        match next(&mut feed).await {
            Next::Replay(events) | Next::Live(events) => after.extend(seqs(&events)),
            other => panic!("events expected, got {other:?}"),
        }
    }
    assert_eq!(after, vec![4]);
}
