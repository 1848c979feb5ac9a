//! Several `agentwire` nodes over a real Redis and NATS.
//!
//! Three nodes share one backbone (each test under a prefix of its own, so runs
//! never collide). Publishers spread over every node, subscribers sit on two of
//! them, and one of those is killed with SIGKILL mid-stream: its subscribers
//! resume on a survivor with `after_seq`, every subscriber ends with every event
//! once and in order, repeats sent to other nodes answer their first `seq`, and
//! the demo run the killed node was executing ends with `worker_lost`.
//!
//! These tests need Redis and NATS with JetStream: the test run's own, which
//! `scripts/test` starts on free ports (`AGENTWIRE_TEST_REDIS`,
//! `AGENTWIRE_TEST_NATS`), else the default ports; they fail (they do not skip)
//! when either is missing.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
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
const RUNS: usize = 3;
const THOUGHTS: usize = 60;
/// Each run: `agent_started`, the thoughts, `agent_completed`.
const EVENTS: u64 = (RUNS * (THOUGHTS + 2)) as u64;
const THREAD: &str = "thread_cluster0";
const DEMO_THREAD: &str = "thread_cluster1";

/// A prefix no other test run uses.
pub fn unique_prefix(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("test-{tag}-{}-{nanos}", std::process::id())
}

/// Starts a node of the cluster `prefix` on `backbone`. The test engines are
/// single processes that do not sync every write, so nodes accept weak durability.
pub async fn start_node(dir: &std::path::Path, backbone: &str, prefix: &str, id: &str) -> Node {
    let args = ["--backbone", backbone, "--backbone-prefix", prefix, "--node-id", id, "--node-ttl", "2s"];
    start_with(dir, &[&args[..], &["--allow-weak-durability"]].concat()).await
}

/// A node on an engine that could lose an acknowledged event (the test Redis
/// keeps no append-only file; the test JetStream has one replica) refuses to
/// start and says why; told to accept it, it starts and reports it on
/// `/readyz` and in `agentwire_weak_durability`.
#[tokio::test]
async fn a_node_refuses_an_engine_that_could_lose_acknowledged_events_unless_told_to_accept_it() {
    let dir = tempfile::tempdir().unwrap();
    for (backbone, gap) in [(redis(), "appendonly"), (nats(), "replica")] {
        let prefix = unique_prefix("durability");
        let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentwire"))
            .args(["serve", "--listen", "127.0.0.1:0", "--jwt-secret", SECRET, "--publish-key", KEY])
            .args(["--backbone", &backbone, "--backbone-prefix", &prefix])
            .arg("--data-dir")
            .arg(dir.path())
            .env("AGENTWIRE_LOG", "error")
            .kill_on_drop(true)
            .output();
        let refused = tokio::time::timeout(WAIT, refused).await.expect("exits in time").expect("runs");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{backbone}: started on a weak engine");
        assert!(stderr.contains(gap) && stderr.contains("--allow-weak-durability"), "{backbone}: {stderr}");

        let node =
            start_with(dir.path(), &["--backbone", &backbone, "--backbone-prefix", &prefix, "--allow-weak-durability"])
                .await;
        let http = reqwest::Client::new();
        let ready: Value = http.get(format!("{}/readyz", node.base)).send().await.unwrap().json().await.unwrap();
        assert_eq!(ready["status"], "ready", "{ready}");
        let reported = ready["weak_durability"]
            .as_array()
            .map(|gaps| gaps.iter().any(|g| g.as_str().is_some_and(|g| g.contains(gap))));
        assert_eq!(reported, Some(true), "{backbone}: {ready}");
        let metrics = http.get(format!("{}/metrics", node.base)).send().await.unwrap().text().await.unwrap();
        assert!(metrics.lines().any(|l| l == "agentwire_weak_durability 1"), "{backbone}: {metrics}");
    }
}

/// Posts one event, moving on to the next node while one does not answer.
/// Answers the event's `seq`.
async fn publish(http: &reqwest::Client, nodes: &[String], first: usize, run: &str, body: Value) -> u64 {
    for attempt in 0..(nodes.len() * 20) {
        let base = &nodes[(first + attempt) % nodes.len()];
        match post(http, format!("{base}/v1/runs/{run}/events"), body.clone()).await {
            Ok((200, answer)) => return answer["seqs"][0].as_u64().expect("seq"),
            Ok((503, _)) | Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Ok((status, answer)) => panic!("{base}: unexpected {status} {answer} for {body}"),
        }
    }
    panic!("no node took {body}");
}

/// One run, published event by event over every node in turn; every tenth event
/// is sent again to the next node, which must answer the same `seq`.
async fn publish_run(nodes: Arc<Mutex<Vec<String>>>, run: String, r: usize) -> HashMap<String, u64> {
    let http = reqwest::Client::new();
    let mut acked = HashMap::new();
    let mut bodies =
        vec![json!({"event":"agent_started","data":{"agent_name":"cluster"},"event_id":format!("{r}-start")})];
    bodies.extend((0..THOUGHTS).map(
        |n| json!({"event":"agent_thinking","data":{"thought":format!("{r}/{n}")},"event_id":format!("{r}-{n}")}),
    ));
    bodies.push(json!({"event":"agent_completed","data":{},"event_id":format!("{r}-end")}));
    for (n, body) in bodies.into_iter().enumerate() {
        let live = nodes.lock().clone();
        let seq = publish(&http, &live, r + n, &run, body.clone()).await;
        if n % 10 == 5 {
            let again = publish(&http, &live, r + n + 1, &run, body.clone()).await;
            assert_eq!(again, seq, "a repeat of {body} on another node got a new seq");
        }
        acked.insert(body["event_id"].as_str().unwrap().to_owned(), seq);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    acked
}

/// Subscribes on `base` after `after`; pushes what arrives onto `seen`, checking
/// order, until the socket drops or every event is in.
async fn subscribe(base: String, after: u64, seen: Arc<Mutex<Vec<u64>>>) {
    follow(&base, THREAD, after, |e| {
        let mut seen = seen.lock();
        let seq = e["seq"].as_u64().unwrap();
        let last = seen.last().copied().unwrap_or(0);
        assert_eq!(seq, last + 1, "a subscriber on {base} saw a gap or a repeat");
        seen.push(seq);
        (seen.len() as u64) < EVENTS
    })
    .await;
}

/// A subscriber that follows the thread to the end, moving to `fallback` when its node dies.
async fn subscriber(first: String, fallback: String, seen: Arc<Mutex<Vec<u64>>>) {
    subscribe(first, 0, seen.clone()).await;
    while (seen.lock().len() as u64) < EVENTS {
        let after = seen.lock().last().copied().unwrap_or(0);
        subscribe(fallback.clone(), after, seen.clone()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn three_nodes_lose_nothing(backbone: &str) {
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix("3n");
    let http = reqwest::Client::new();
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(start_node(dir.path(), backbone, &prefix, &format!("node{i}")).await);
    }
    let bases: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();

    // Runs registered on different nodes, all on one thread.
    let mut runs = Vec::new();
    for (r, base) in bases.iter().enumerate().take(RUNS) {
        let (status, body) =
            post(&http, format!("{base}/v1/runs"), json!({"thread_id":THREAD,"user_id":"crash"})).await.unwrap();
        assert_eq!(status, 201, "run {r} on {base}: {body}");
        runs.push(body["run_id"].as_str().unwrap().to_owned());
    }

    // Subscribers on node1 (the one to be killed) and node2.
    let seen: Vec<Arc<Mutex<Vec<u64>>>> = (0..4).map(|_| Arc::default()).collect();
    let mut subscribers = Vec::new();
    for (i, s) in seen.iter().enumerate() {
        let (first, fallback) = if i < 2 { (1, 2) } else { (2, 0) };
        subscribers.push(tokio::spawn(subscriber(bases[first].clone(), bases[fallback].clone(), s.clone())));
    }

    let created = http
        .post(format!("{}/v1/threads", bases[0]))
        .bearer_auth(token("crash"))
        .json(&json!({"thread_id": DEMO_THREAD}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    // The demo agent on node1 is mid-run (its steps take 30 s) when node1 dies.
    let demo_run = ask_demo(&http, &bases[1], DEMO_THREAD).await;

    let live = Arc::new(Mutex::new(bases.clone()));
    let publishers: Vec<_> =
        runs.iter().enumerate().map(|(r, run)| tokio::spawn(publish_run(live.clone(), run.clone(), r))).collect();

    // Kill node1 once a third of the events are in.
    tokio::time::timeout(WAIT, async {
        while (seen[3].lock().len() as u64) < EVENTS / 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("events flow before the kill");
    nodes[1].child.kill().await.expect("SIGKILL node1");
    live.lock().retain(|b| b != &bases[1]);

    let mut acked: HashMap<String, u64> = HashMap::new();
    for p in publishers {
        acked.extend(p.await.expect("publisher"));
    }
    tokio::time::timeout(WAIT, async {
        for s in subscribers {
            s.await.expect("subscriber");
        }
    })
    .await
    .expect("every subscriber gets every event");

    let all: Vec<u64> = (1..=EVENTS).collect();
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(*s.lock(), all, "subscriber {i}");
    }
    let history = history(&http, &bases[2], THREAD).await;
    assert_eq!(history.iter().map(|e| e["seq"].as_u64().unwrap()).collect::<Vec<_>>(), all);
    assert_eq!(acked.len() as u64, EVENTS);
    for e in &history {
        let id = e["event_id"].as_str().expect("every event has an id");
        assert_eq!(acked.get(id), e["seq"].as_u64().as_ref(), "{id} is stored where it was acknowledged");
    }
    // Per run, the events are in the order they were published.
    for run in &runs {
        let mine: Vec<&str> =
            history.iter().filter(|e| e["run_id"] == run.as_str()).map(|e| e["event"].as_str().unwrap()).collect();
        assert_eq!(
            (mine.first(), mine.last(), mine.len()),
            (Some(&"agent_started"), Some(&"agent_completed"), THOUGHTS + 2)
        );
    }

    // The demo run of the dead node ends with worker_lost, seen through a survivor.
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            let events = common::history(&http, &bases[0], DEMO_THREAD).await;
            if let Some(end) =
                events.iter().rev().find(|e| e["run_id"] == demo_run.as_str() && e["event"] == "agent_error")
            {
                return end.clone();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the dead node's run ends rather than hanging");
    assert_eq!(ended["data"]["code"], "worker_lost", "{ended}");
    let (_, info) = get(&http, format!("{}/v1/runs/{demo_run}", bases[2])).await;
    assert_eq!(info["status"], "error", "{info}");
}

async fn get(http: &reqwest::Client, url: String) -> (u16, Value) {
    let resp = http.get(url).bearer_auth(KEY).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_on_redis_lose_nothing_when_one_dies() {
    three_nodes_lose_nothing(&redis()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_on_nats_lose_nothing_when_one_dies() {
    three_nodes_lose_nothing(&nats()).await;
}

/// Posts a message to `thread` on `base` as `crash`.
async fn say(http: &reqwest::Client, base: &str, thread: &str, body: Value) -> (u16, Value) {
    let resp =
        http.post(format!("{base}/v1/threads/{thread}/messages")).bearer_auth(token("crash")).json(&body).send().await;
    let resp = resp.unwrap();
    (resp.status().as_u16(), resp.json::<Value>().await.unwrap_or(Value::Null))
}

/// The thread's history on `base`, once it holds an event of `run` of one of `kinds`.
async fn until_run(http: &reqwest::Client, base: &str, thread: &str, run: &str, kinds: &[&str]) -> Vec<Value> {
    for _ in 0..500 {
        let events = history(http, base, thread).await;
        if events.iter().any(|e| e["run_id"] == run && kinds.contains(&e["event"].as_str().unwrap_or(""))) {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = history(http, base, thread).await;
    panic!("{base}: run {run} never reached {kinds:?}: {events:?}");
}

fn seq_of(events: &[Value], run: &str, kind: &str) -> u64 {
    events.iter().find(|e| e["run_id"] == run && e["event"] == kind).and_then(|e| e["seq"].as_u64()).unwrap()
}

/// Issue 18, item 2: a message sent to one node while the thread's run goes
/// on another is rejected naming that run, queued behind it (and started on
/// its own node once the other ends), or ends it first, on either engine.
#[tokio::test]
async fn double_texting_holds_across_nodes() {
    for backbone in [redis(), nats()] {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let prefix = unique_prefix("dt");
        let args = |id: &'static str| {
            let args = ["--backbone", backbone.as_str(), "--backbone-prefix", prefix.as_str(), "--node-id", id];
            [&args[..], &["--allow-weak-durability", "--demo-step-delay", "0s"]].concat()
        };
        let a = start_with(dir_a.path(), &args("a")).await;
        let b = start_with(dir_b.path(), &args("b")).await;
        let http = reqwest::Client::new();
        let thread = "thread_dtcluster";
        let made = http.post(format!("{}/v1/threads", a.base)).bearer_auth(token("crash"));
        assert_eq!(made.json(&json!({"thread_id": thread})).send().await.unwrap().status(), 201);

        // A run on node a that waits for its user's approval.
        let (_, body) = say(&http, &a.base, thread, json!({"text": "ask me first"})).await;
        let first = body["run_id"].as_str().unwrap().to_owned();
        let events = until_run(&http, &b.base, thread, &first, &["input_requested"]).await;
        let (status, body) = say(&http, &b.base, thread, json!({"text": "again", "double_texting": "reject"})).await;
        assert_eq!((status, &body["error"]["run_id"]), (409, &json!(first)), "{backbone}: {body}");

        let queue = json!({"text": "what is 2 + 2?", "double_texting": "enqueue"});
        let (status, body) = say(&http, &b.base, thread, queue).await;
        assert_eq!((status, &body["queued"]), (202, &json!(true)), "{backbone}: {body}");
        let queued = body["run_id"].as_str().unwrap().to_owned();
        let seen = until_run(&http, &a.base, thread, &queued, &["user_message"]).await;
        let (_, view) = get(&http, format!("{}/v1/runs/{queued}", a.base)).await;
        assert_eq!(view["queued"], true, "{backbone}: the other node shows the queue: {view}");
        assert!(!seen.iter().any(|e| e["run_id"] == queued.as_str() && e["event"] == "agent_started"), "{backbone}");
        let request = events.iter().find(|e| e["event"] == "input_requested").unwrap()["data"]["request_id"].clone();
        let answer = http
            .post(format!("{}/v1/threads/{thread}/inputs/{}", b.base, request.as_str().unwrap()))
            .bearer_auth(token("crash"))
            .json(&json!({"approved": true, "run_id": first}));
        assert_eq!(answer.send().await.unwrap().status(), 200, "{backbone}: answered through the other node");
        let events = until_run(&http, &a.base, thread, &queued, &["agent_completed", "agent_error"]).await;
        assert!(seq_of(&events, &first, "agent_completed") < seq_of(&events, &queued, "agent_started"), "{backbone}");
        assert_eq!(events.last().unwrap()["event"], "agent_completed", "{backbone}");

        let (_, body) = say(&http, &a.base, thread, json!({"text": "ask me first"})).await;
        let going = body["run_id"].as_str().unwrap().to_owned();
        until_run(&http, &b.base, thread, &going, &["input_requested"]).await;
        let (status, body) =
            say(&http, &b.base, thread, json!({"text": "never mind", "double_texting": "interrupt"})).await;
        assert_eq!(status, 202, "{backbone}: {body}");
        let next = body["run_id"].as_str().unwrap().to_owned();
        let events = until_run(&http, &a.base, thread, &next, &["agent_completed"]).await;
        let cancelled = events.iter().find(|e| e["run_id"] == going.as_str() && e["event"] == "agent_error").unwrap();
        assert_eq!(cancelled["data"]["code"], "cancelled", "{backbone}");
        assert!(cancelled["seq"].as_u64().unwrap() < seq_of(&events, &next, "user_message"), "{backbone}");
        drop((a, b));
    }
}
