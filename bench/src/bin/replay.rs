//! Cold replay (issue 16, item 5): a subscriber joins a thread that holds
//! `events` stored events and receives all of them over a WebSocket, from a
//! release `agentwire` server on its durable store. The peer, in the same run:
//! the same envelopes read back in order from a Redis stream (`XRANGE` in pages
//! of 1,000, each entry's JSON checked, as the subscriber checks its frames), a
//! store made for reading a stream in order, on the same loopback. While the
//! replay runs, a publisher to another thread sends an event every 2 ms, so the
//! table shows whether a replay holds up publishers to other threads.
//!
//! ```sh
//! cargo build --release -p agentwire -p agentwire-bench
//! ./target/release/replay [events] [redis url]
//! ```
//! Defaults: 100,000 events, `redis://127.0.0.1:6379` (a loopback Redis; its
//! key is removed at the end). The server's data directory is under
//! `target/bench-data` and goes at the end.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agentwire_bench::soak_http::{SERVE_ARGS, start_release_server};
use agentwire_bench::stats::Percentiles;
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use redis::AsyncCommands;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEY: &str = "replay-publish-key";
const THREAD: &str = "thread_replay";
/// Publish latencies, shared with the task that measures them.
type Latencies = Arc<Mutex<Vec<Duration>>>;
/// Events per publish while filling (the server's default cap).
const FILL_BATCH: usize = 1000;

async fn post(http: &reqwest::Client, url: String, body: Value) -> Value {
    let resp = http.post(url).bearer_auth(KEY).json(&body).send().await.expect("post");
    assert!(resp.status().is_success(), "{}", resp.status());
    resp.json().await.expect("a JSON answer")
}

/// Registers a run in `thread`; answers its id.
async fn new_run(http: &reqwest::Client, base: &str, thread: &str) -> String {
    let created = post(http, format!("{base}/v1/runs"), json!({"thread_id": thread, "user_id": "replay"})).await;
    created["run_id"].as_str().expect("run id").to_owned()
}

/// Fills the thread with `events` events: one run, `agent_started` then thoughts.
async fn fill(http: &reqwest::Client, base: &str, events: usize) {
    let run = new_run(http, base, THREAD).await;
    let url = format!("{base}/v1/runs/{run}/events");
    let mut sent = 0;
    while sent < events {
        let batch: Vec<Value> = (sent..(sent + FILL_BATCH).min(events))
            .map(|n| match n {
                0 => json!({"event":"agent_started","data":{"agent_name":"replay"}}),
                n => json!({"event":"agent_thinking","data":{
                    "thought": format!("step {n}: comparing the search results with what the user asked"),
                    "step": n}}),
            })
            .collect();
        sent += batch.len();
        post(http, url.clone(), json!({ "events": batch })).await;
    }
}

/// The thread's stored envelopes, as the history route answers them.
async fn history(http: &reqwest::Client, base: &str, token: &str) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let url = format!("{base}/v1/threads/{THREAD}/events?after_seq={}&limit=10000", out.len());
        let page: Value = http.get(url).bearer_auth(token).send().await.unwrap().json().await.unwrap();
        let events = page["events"].as_array().cloned().unwrap_or_default();
        if events.is_empty() {
            return out;
        }
        out.extend(events.iter().map(Value::to_string));
    }
}

/// A frame as the reader needs it: its type and how many events it carries
/// (checked as JSON, not built into values: the reader should cost little).
#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    events: Option<Vec<IgnoredAny>>,
}

/// Subscribes from the start and counts events until `events` arrived; answers the time it took.
async fn replay_over_websocket(base: &str, token: &str, events: usize) -> Duration {
    let url = format!("{}/v1/ws?token={token}", base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
    let began = Instant::now();
    let subscribe = json!({"type":"subscribe","thread_id": THREAD,"after_seq": 0}).to_string();
    ws.send(Message::Text(subscribe.into())).await.expect("subscribe");
    let mut seen = 0;
    while seen < events {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next()).await.expect("the replay goes on");
        let Some(Ok(Message::Text(text))) = msg else { continue };
        let frame: Frame = serde_json::from_str(&text).expect("a JSON frame");
        seen += match (frame.kind.as_str(), frame.events) {
            ("event", _) => 1,
            ("batch", Some(events)) => events.len(),
            _ => 0,
        };
    }
    began.elapsed()
}

/// Writes `envelopes` to a fresh stream, then reads them back in pages of
/// 1,000, parsing each; answers the read's time.
async fn replay_from_redis(url: &str, envelopes: &[String]) -> Duration {
    let client = redis::Client::open(url).expect("a redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis answers");
    let key = format!("agentwire-bench:replay:{}", std::process::id());
    for chunk in envelopes.chunks(1000) {
        let mut pipe = redis::pipe();
        for e in chunk {
            pipe.xadd(&key, "*", &[("e", e.as_str())]).ignore();
        }
        let () = pipe.query_async(&mut conn).await.expect("xadd");
    }
    let began = Instant::now();
    let (mut after, mut seen) = ("-".to_owned(), 0);
    loop {
        let page: redis::streams::StreamRangeReply = conn.xrange_count(&key, &after, "+", 1000).await.expect("xrange");
        let Some(last) = page.ids.last() else { break };
        for entry in &page.ids {
            let json: String = entry.get("e").expect("an envelope");
            let _: IgnoredAny = serde_json::from_str(&json).expect("JSON");
            seen += 1;
        }
        after = format!("({}", last.id);
    }
    let took = began.elapsed();
    assert_eq!(seen, envelopes.len(), "every entry read back");
    let _: () = conn.del(&key).await.expect("del");
    took
}

/// Publishes one event every 2 ms to another thread until `stop`; the latencies
/// land in `during` while `replaying` is set, else in `before`.
async fn other_publisher(
    http: reqwest::Client,
    base: String,
    replaying: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    before: Latencies,
    during: Latencies,
) {
    let run = new_run(&http, &base, "thread_elsewhere").await;
    let url = format!("{base}/v1/runs/{run}/events");
    post(&http, url.clone(), json!({"event":"agent_started","data":{"agent_name":"other"}})).await;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    while !stop.load(Ordering::Acquire) {
        tick.tick().await;
        let sent = Instant::now();
        post(&http, url.clone(), json!({"event":"agent_thinking","data":{"thought":"still here"}})).await;
        let into = if replaying.load(Ordering::Acquire) { &during } else { &before };
        into.lock().push(sent.elapsed());
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let events: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let redis_url = args.next().unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let base_dir = Path::new("target/bench-data");
    std::fs::create_dir_all(base_dir).expect("bench data directory");
    let data = tempfile::tempdir_in(base_dir).expect("data directory");
    let (mut server, base) = start_release_server(data.path(), KEY, &SERVE_ARGS).await;
    let http = reqwest::Client::new();
    let token: Value = http.get(format!("{base}/dev/token?user=replay")).send().await.unwrap().json().await.unwrap();
    let token = token["token"].as_str().expect("a dev token").to_owned();

    let filling = Instant::now();
    fill(&http, &base, events).await;
    println!("cold replay: {events} events in one thread, filled in {:.1} s", filling.elapsed().as_secs_f64());
    let envelopes = history(&http, &base, &token).await;
    assert_eq!(envelopes.len(), events, "the history holds every event");
    let envelope_bytes = envelopes.iter().map(String::len).sum::<usize>() / envelopes.len().max(1);

    let (replaying, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let (before, during) = (Latencies::default(), Latencies::default());
    let publisher = tokio::spawn(other_publisher(
        http.clone(),
        base.clone(),
        replaying.clone(),
        stop.clone(),
        before.clone(),
        during.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    replaying.store(true, Ordering::Release);
    let agentwire = replay_over_websocket(&base, &token, events).await;
    replaying.store(false, Ordering::Release);
    stop.store(true, Ordering::Release);
    let _ = publisher.await;
    let redis = replay_from_redis(&redis_url, &envelopes).await;

    let rate = |d: Duration| events as f64 / d.as_secs_f64();
    println!("envelopes of {envelope_bytes} B on average");
    println!("| reader | time (ms) | events/s |");
    println!("|---|---:|---:|");
    println!(
        "| agentwire, WebSocket subscribe from seq 0 | {:.1} | {:.0} |",
        agentwire.as_secs_f64() * 1e3,
        rate(agentwire)
    );
    println!("| Redis XRANGE, pages of 1,000 | {:.1} | {:.0} |", redis.as_secs_f64() * 1e3, rate(redis));
    println!("agentwire / Redis: {:.2}x events/s", rate(agentwire) / rate(redis));
    let (mut before, mut during) = (before.lock().clone(), during.lock().clone());
    let (b, d) = (Percentiles::of(&mut before), Percentiles::of(&mut during));
    println!(
        "publishes to another thread, p50 / p99 / max (ms): before the replay {:.2} / {:.2} / {:.2} ({} sent), during it {:.2} / {:.2} / {:.2} ({} sent)",
        b.p50.as_secs_f64() * 1e3,
        b.p99.as_secs_f64() * 1e3,
        b.max.as_secs_f64() * 1e3,
        before.len(),
        d.p50.as_secs_f64() * 1e3,
        d.p99.as_secs_f64() * 1e3,
        d.max.as_secs_f64() * 1e3,
        during.len()
    );
    let _ = server.kill().await;
}
