//! What only a cluster does, on two nodes over one real Redis or NATS: finding
//! live nodes, settling appends whose answer was lost, refusing what the engine
//! cannot hold, healing half-made records, catching up a feed it fell behind,
//! noticing a head that moved back, forgetting registrations retention emptied.
//! The rules every log keeps (numbering, de-duplication, lifecycle, ownership,
//! cancel, retention, idle expiry, restart) and the model-based test run on the
//! cluster too, with every other log's: `crates/conformance`.
//!
//! Needs Redis and NATS with JetStream: the test run's own, which `scripts/test`
//! starts on free ports (`AGENTWIRE_TEST_REDIS`, `AGENTWIRE_TEST_NATS`), else the
//! default ports; fails when they are missing. Every test works under a prefix of its own.

use std::sync::Arc;
use std::time::Duration;

use agentwire_backbone::ClusterConfig;
use agentwire_log::{FeedSink, Log, LogConfig, NewRun, RetentionPolicy, StoredEvent};
use agentwire_protocol::{EventKind, NewEvent, RunId, RunStatus, ThreadId, Timestamp, UserId};
use parking_lot::Mutex;
use serde_json::{Value, json};

/// The test run's Redis (`scripts/engines.sh` starts one), else the default port.
fn redis() -> String {
    std::env::var("AGENTWIRE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The test run's NATS with JetStream, else the default port.
fn nats() -> String {
    std::env::var("AGENTWIRE_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Records what the feed hands over, and the threads said to be rewound.
#[derive(Default)]
struct Recorder(Mutex<Vec<(String, u64)>>, Mutex<Vec<ThreadId>>);

impl FeedSink for Recorder {
    fn deliver(&self, events: &[Arc<StoredEvent>]) {
        self.0.lock().extend(events.iter().map(|e| (e.thread_id().to_string(), e.seq())));
    }

    fn thread_rewound(&self, thread: &ThreadId) {
        self.1.lock().push(thread.clone());
    }
}

fn prefix(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("t-{tag}-{}-{nanos}", std::process::id())
}

async fn node(url: &str, prefix: &str, id: &str, idle: Duration) -> (Arc<dyn Log>, Arc<Recorder>) {
    node_keeping(url, prefix, id, idle, RetentionPolicy::default()).await
}

/// A node `id` of the deployment `prefix`, with the log's rules in `log`.
fn cluster_config(prefix: &str, id: &str, log: LogConfig) -> ClusterConfig {
    ClusterConfig {
        prefix: prefix.into(),
        node_id: id.into(),
        node_ttl: Duration::from_secs(5),
        replicas: 1,
        // The test engines are single processes without fsync on every write.
        allow_weak_durability: true,
        checkpoint_every: agentwire_backbone::CHECKPOINT_EVERY,
        log,
    }
}

async fn node_keeping(
    url: &str,
    prefix: &str,
    id: &str,
    idle: Duration,
    retention: RetentionPolicy,
) -> (Arc<dyn Log>, Arc<Recorder>) {
    let feed = Arc::new(Recorder::default());
    let config = cluster_config(prefix, id, LogConfig { run_idle_timeout: idle, retention, ..Default::default() });
    let log = agentwire_backbone::open(url, config, feed.clone())
        .await
        .expect("a backbone url")
        .expect("the backbone answers");
    (log, feed)
}

/// Waits until retention (the per-thread limit, kept by a node's retention
/// worker after the appends that pass it) has the thread start at `oldest`.
async fn oldest_becomes(log: &dyn Log, thread: &ThreadId, oldest: u64) {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while log.read(thread, 0, 0).await.unwrap().oldest_seq != oldest {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(waited.await.is_ok(), "the thread never came to start at {oldest}");
}

fn ev(kind: EventKind, data: Value) -> NewEvent {
    NewEvent::new(kind, data.as_object().cloned().unwrap_or_default())
}

fn thought(text: &str) -> NewEvent {
    ev(EventKind::AgentThinking, json!({"thought": text}))
}

fn started() -> NewEvent {
    ev(EventKind::AgentStarted, json!({"agent_name":"t"}))
}

fn new_run(thread: &ThreadId, owner: &UserId) -> NewRun {
    NewRun { thread_id: thread.clone(), owner: owner.clone(), agent_name: None, in_process: false, run_id: None }
}

#[tokio::test]
async fn nats_refuses_an_append_over_its_max_payload_with_413_and_stores_nothing() {
    // Issue 15: such an append got a 503, which a publisher retries for ever.
    let p = prefix("big");
    let (a, _) = node(&nats(), &p, "a", Duration::from_secs(60)).await;
    let (owner, thread) = (UserId::parse("bea").unwrap(), ThreadId::parse("thread_big").unwrap());
    let run = a.create_run(new_run(&thread, &owner)).await.unwrap().run_id;
    a.append(run.as_str(), vec![started()]).await.unwrap();
    // Over the default max_payload of 1 MB (an HTTP body this large is refused earlier).
    let err = a.append(run.as_str(), vec![thought(&"x".repeat(2 << 20))]).await.unwrap_err();
    assert_eq!(err.code(), agentwire_protocol::ErrorCode::TooLarge, "{err}");
    assert_eq!(a.read(&thread, 0, 10).await.unwrap().head_seq, 1);
    assert_eq!(a.append(run.as_str(), vec![thought("small")]).await.unwrap().seqs, vec![2]);
}

#[tokio::test]
async fn redis_finds_live_nodes_in_one_sorted_set_on_its_own_clock() {
    // Issue 15: live peers were found with a SCAN over the whole keyspace, which
    // slowed with every run key until healthy nodes were declared dead.
    use agentwire_backbone::{Backbone, RedisBackbone};
    let backbone = RedisBackbone::connect(&redis(), &prefix("live")).await.unwrap();
    backbone.heartbeat("node-a", Duration::from_millis(300)).await.unwrap();
    backbone.heartbeat("node:b", Duration::from_secs(30)).await.unwrap();
    let live = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<std::collections::HashSet<_>>();
    assert_eq!(backbone.live_nodes().await.unwrap(), live(&["node-a", "node:b"]));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(backbone.live_nodes().await.unwrap(), live(&["node:b"]), "an expired heartbeat is a dead node");
    backbone.heartbeat("node-a", Duration::from_secs(30)).await.unwrap();
    assert_eq!(backbone.live_nodes().await.unwrap(), live(&["node-a", "node:b"]), "and it comes back");
}

/// The engine's records under `prefix`, without a node's rules on top.
async fn records(url: &str, prefix: &str) -> Box<dyn agentwire_backbone::Backbone> {
    if url.starts_with("redis") {
        Box::new(agentwire_backbone::RedisBackbone::connect(url, prefix).await.unwrap())
    } else {
        Box::new(agentwire_backbone::NatsBackbone::connect(url, prefix, 1).await.unwrap())
    }
}

/// Issue 15: the watchdog compared a running entry stamped by one node's clock
/// with another node's clock, so skew could end an active run. Here the entry
/// says the run went quiet an hour ago (a node with a clock an hour behind
/// would write that) while the run keeps publishing: it is never ended, and
/// once it really goes quiet it is, by this node's own clock.
async fn a_skewed_activity_stamp_cannot_end_an_active_run(url: &str) {
    let p = prefix("skew");
    let idle = Duration::from_millis(600);
    let (a, _) = node(url, &p, "a", idle).await;
    let raw = records(url, &p).await;
    let (owner, thread) = (UserId::parse("u").unwrap(), ThreadId::parse("thread_skew").unwrap());
    let run = a.create_run(new_run(&thread, &owner)).await.unwrap().run_id;
    a.append(run.as_str(), vec![started()]).await.unwrap();
    let an_hour_ago = Timestamp::now().millis() - 3_600_000;
    let stale = agentwire_backbone::Running {
        thread_id: thread.clone(),
        node: None,
        last_activity_ms: an_hour_ago,
        waiting_until_ms: None,
    };
    for n in 0..12 {
        raw.set_running(&run, Some(&stale)).await.unwrap();
        assert!(a.expire_idle_runs(Timestamp::now()).await.unwrap().is_empty(), "an active run was ended");
        a.append(run.as_str(), vec![thought(&n.to_string())]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(a.run(run.as_str()).await.unwrap().unwrap().status, RunStatus::Running);
    assert!(a.expire_idle_runs(Timestamp::now()).await.unwrap().is_empty());
    tokio::time::sleep(idle + idle / 2).await;
    assert_eq!(a.expire_idle_runs(Timestamp::now()).await.unwrap(), vec![run.clone()], "a quiet run ends");
}

#[tokio::test]
async fn redis_a_skewed_activity_stamp_cannot_end_an_active_run() {
    a_skewed_activity_stamp_cannot_end_an_active_run(&redis()).await;
}

#[tokio::test]
async fn nats_a_skewed_activity_stamp_cannot_end_an_active_run() {
    a_skewed_activity_stamp_cannot_end_an_active_run(&nats()).await;
}

/// Issue 15: on NATS a run's registration and its running entry are two
/// writes. The running entry is written first, so a node that dies between
/// them leaves an entry with no registration, made here by hand: the idle
/// watchdog drops it rather than keeping it for ever.
async fn a_running_entry_without_its_registration_is_dropped(url: &str) {
    let p = prefix("heal");
    let idle = Duration::from_millis(300);
    let (a, _) = node(url, &p, "a", idle).await;
    let raw = records(url, &p).await;
    let thread = ThreadId::parse("thread_heal").unwrap();
    let orphan = RunId::parse("run_thread_heal_0badf00d").unwrap();
    let entry = agentwire_backbone::Running {
        thread_id: thread,
        node: None,
        last_activity_ms: Timestamp::now().millis(),
        waiting_until_ms: None,
    };
    raw.set_running(&orphan, Some(&entry)).await.unwrap();
    assert!(a.expire_idle_runs(Timestamp::now()).await.unwrap().is_empty());
    assert_eq!(raw.running().await.unwrap().len(), 1, "not before the timeout");
    tokio::time::sleep(idle + idle / 2).await;
    assert!(a.expire_idle_runs(Timestamp::now()).await.unwrap().is_empty(), "nothing to end: it never ran");
    assert!(raw.running().await.unwrap().is_empty(), "the orphaned entry is gone");
}

#[tokio::test]
async fn redis_a_running_entry_without_its_registration_is_dropped() {
    a_running_entry_without_its_registration_is_dropped(&redis()).await;
}

#[tokio::test]
async fn nats_a_running_entry_without_its_registration_is_dropped() {
    a_running_entry_without_its_registration_is_dropped(&nats()).await;
}

/// A feed sink whose deliveries wait while the test holds its gate (a node
/// that falls behind), watching the threads it is told to.
struct Stalled {
    gate: std::sync::Mutex<()>,
    watched: Vec<ThreadId>,
    seen: Mutex<Vec<(String, u64)>>,
}

impl FeedSink for Stalled {
    fn deliver(&self, events: &[Arc<StoredEvent>]) {
        let _wait = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        self.seen.lock().extend(events.iter().map(|e| (e.thread_id().to_string(), e.seq())));
    }

    fn watched(&self) -> Vec<ThreadId> {
        self.watched.clone()
    }
}

/// Issue 15: a node that fell behind the capped Redis feed skipped the trimmed
/// entries without a word, so a thread whose last events were among them never
/// got them to its subscribers. Now the node notices and hands each watched
/// thread's newest event over again (subscribers read any gap from the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
// Holding the gate across the appends is the point: b's feed waits on it.
#[allow(clippy::await_holding_lock)]
async fn redis_a_node_behind_a_trimmed_feed_catches_its_watched_threads_up() {
    use agentwire_backbone::{ClusterLog, RedisBackbone};
    let p = prefix("trimmed");
    let config = |id: &str| cluster_config(&p, id, LogConfig::default());
    // The feed is trimmed by whoever appends: `a` keeps about ten entries.
    let capped = RedisBackbone::connect(&redis(), &p).await.unwrap().with_feed_cap(10);
    let a = ClusterLog::start(capped, config("a"), Arc::new(Recorder::default())).await.unwrap();
    let quiet = ThreadId::parse("thread_quiet").unwrap();
    let sink = Arc::new(Stalled { gate: Default::default(), watched: vec![quiet.clone()], seen: Default::default() });
    let config = config("b");
    // b runs on a runtime of its own: its feed task blocks a worker thread while
    // the gate is held, which must not starve the tasks of `a` or of this test.
    let runtime_b = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (url, feed) = (redis(), sink.clone());
    let b = runtime_b
        .spawn(async move {
            let backbone = RedisBackbone::connect(&url, &config.prefix).await.unwrap().with_feed_cap(10);
            ClusterLog::start(backbone, config, feed).await.unwrap()
        })
        .await
        .unwrap();
    let owner = UserId::parse("u").unwrap();

    let gate = sink.gate.lock().unwrap_or_else(|e| e.into_inner());
    // b's feed blocks on this first delivery while everything below is appended.
    let busy = ThreadId::parse("thread_busy").unwrap();
    let busy_run = a.create_run(new_run(&busy, &owner)).await.unwrap().run_id;
    a.append(busy_run.as_str(), vec![started()]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let quiet_run = a.create_run(new_run(&quiet, &owner)).await.unwrap().run_id;
    a.append(quiet_run.as_str(), vec![started(), thought("last words")]).await.unwrap();
    for n in 0..400 {
        a.append(busy_run.as_str(), vec![thought(&n.to_string())]).await.unwrap();
    }
    drop(gate);

    tokio::time::timeout(Duration::from_secs(10), async {
        while !sink.seen.lock().contains(&("thread_quiet".to_owned(), 2)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the quiet thread's newest event reaches the node that fell behind");
    runtime_b.spawn(async move { b.close().await }).await.unwrap();
    runtime_b.shutdown_background();
}

/// A deployment whose threads were stored before the age index and the count
/// existed gets both from the first node that starts (once).
#[tokio::test]
async fn redis_threads_stored_before_the_age_index_join_it_at_start() {
    use agentwire_backbone::{Backbone, RedisBackbone};
    let p = prefix("upgrade");
    let (a, _) = node(&redis(), &p, "a", Duration::from_secs(3600)).await;
    let (owner, thread) = (UserId::parse("u").unwrap(), ThreadId::parse("thread_before").unwrap());
    let run = a.create_run(new_run(&thread, &owner)).await.unwrap().run_id;
    a.append(run.as_str(), vec![started(), thought("1"), thought("2")]).await.unwrap();
    let client = redis::Client::open(redis()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys = [format!("{p}:ages"), format!("{p}:events"), format!("{p}:indexed"), format!("{p}:indexing")];
    let () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.unwrap();

    let upgraded = RedisBackbone::connect(&redis(), &p).await.unwrap();
    assert_eq!(upgraded.oldest_threads(i64::MAX, 10).await.unwrap(), vec![thread]);
    assert_eq!(upgraded.event_count().await.unwrap(), 3);
}

/// Issue 15, item 4: after a Redis failover that lost acknowledged writes a
/// thread's head is behind what the nodes saw. A node's view past the head
/// made every append to the thread a refused compare-and-set, retried until
/// `503` for ever, and subscribers dropped the reused seqs as already seen.
/// Now the node that finds the head moved back rebuilds its view and tells
/// every node through the feed, whose hubs restart the thread's subscriptions
/// with `reset`. The lost writes are made here by hand.
#[tokio::test]
async fn redis_a_head_that_moves_back_is_rebuilt_and_every_node_is_told() {
    let p = prefix("rewind");
    let hour = Duration::from_secs(3600);
    let (a, feed_a) = node(&redis(), &p, "a", hour).await;
    let (b, feed_b) = node(&redis(), &p, "b", hour).await;
    let (owner, thread) = (UserId::parse("u").unwrap(), ThreadId::parse("thread_rewind").unwrap());
    let run = a.create_run(new_run(&thread, &owner)).await.unwrap().run_id;
    a.append(run.as_str(), vec![started(), thought("1"), thought("2"), thought("3")]).await.unwrap();
    assert_eq!(b.append(run.as_str(), vec![thought("4"), thought("5")]).await.unwrap().seqs, vec![5, 6]);
    a.read(&thread, 0, 10).await.unwrap();

    // The failover: the new primary never got seqs 5 and 6.
    let client = redis::Client::open(redis()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let events = format!("{p}:events:{thread}");
    let deleted: i64 = redis::cmd("XDEL").arg(&events).arg("5-0").arg("6-0").query_async(&mut conn).await.unwrap();
    assert_eq!(deleted, 2);
    // As on a replica that never had them: the stream's last id is 4 again.
    let _: String = redis::cmd("XSETID")
        .arg(&events)
        .arg("4-0")
        .arg("ENTRIESADDED")
        .arg(4)
        .arg("MAXDELETEDID")
        .arg("0-0")
        .query_async(&mut conn)
        .await
        .unwrap();
    let head = format!("{p}:thread:{thread}");
    let _: i64 = redis::cmd("HSET").arg(head).arg("head").arg(4).query_async(&mut conn).await.unwrap();

    let after = b.append(run.as_str(), vec![thought("after")]).await.unwrap();
    assert_eq!(after.seqs, vec![5], "the thread goes on from its real head");
    tokio::time::timeout(Duration::from_secs(10), async {
        while !(feed_a.1.lock().contains(&thread) && feed_b.1.lock().contains(&thread)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("both nodes hear that the thread was rewound");
    assert_eq!(a.append(run.as_str(), vec![thought("on a")]).await.unwrap().seqs, vec![6]);
    let page = a.read(&thread, 0, 10).await.unwrap();
    let thoughts: Vec<&str> = page.events.iter().filter_map(|e| e.envelope().data.get("thought")?.as_str()).collect();
    assert_eq!(thoughts, ["1", "2", "3", "after", "on a"]);
}

/// Registrations no longer grow with history: a run whose every event
/// retention removed, once its de-duplication window has passed, is forgotten
/// by the engine too; a run with events left keeps its registration.
async fn registrations_of_runs_retention_removed_are_forgotten(url: &str) {
    let p = prefix("forget");
    let log = LogConfig {
        retention: RetentionPolicy { max_events_per_thread: 2, ..Default::default() },
        dedup_window: Duration::ZERO,
        ..Default::default()
    };
    let config = cluster_config(&p, "a", log);
    let a = agentwire_backbone::open(url, config, Arc::new(Recorder::default())).await.unwrap().unwrap();
    let raw = records(url, &p).await;
    let (owner, thread) = (UserId::parse("u").unwrap(), ThreadId::parse("thread_forget").unwrap());
    let done = a.create_run(new_run(&thread, &owner)).await.unwrap().run_id;
    a.append(done.as_str(), vec![started()]).await.unwrap();
    a.append(done.as_str(), vec![ev(EventKind::AgentCompleted, json!({}))]).await.unwrap();
    let going = a.create_run(new_run(&thread, &owner)).await.unwrap().run_id;
    for event in [started(), thought("1"), thought("2")] {
        a.append(going.as_str(), vec![event]).await.unwrap();
    }
    oldest_becomes(&*a, &thread, 4).await;
    // Forgotten right after the trim that removed its last event.
    let gone = tokio::time::timeout(Duration::from_secs(10), async {
        while raw.run(done.as_str()).await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(gone.await.is_ok(), "the ended run's registration is gone");
    assert!(raw.run(going.as_str()).await.unwrap().is_some(), "the running one keeps it");
}

#[tokio::test]
async fn redis_registrations_of_runs_retention_removed_are_forgotten() {
    registrations_of_runs_retention_removed_are_forgotten(&redis()).await;
}

#[tokio::test]
async fn nats_registrations_of_runs_retention_removed_are_forgotten() {
    registrations_of_runs_retention_removed_are_forgotten(&nats()).await;
}
