//! A streaming publish against one request per event (issue 16, item 4): a
//! release `agentwire` server on its durable store takes `events` token
//! deltas of one run,
//!
//! - over one publisher WebSocket (`GET /v1/publish`), sent without waiting
//!   for answers (the server keeps up to 1,024 waiting for the disk), every
//!   answer read and checked;
//! - then, the peer in the same run, as one HTTP request per event over
//!   `connections` keep-alive connections, each waiting for its answer.
//!
//! It prints events a second and the server's CPU per event for each, and
//! their ratios. Every event carries an `event_id`, as the publishers send them.
//!
//! ```sh
//! cargo build --release -p agentwire -p agentwire-bench
//! ./target/release/publish_stream [events] [connections]
//! ```
//! Defaults: 200,000 events, 64 connections. The server's data directory is
//! under `target/bench-data` and goes at the end.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentwire_bench::load::usage;
use agentwire_bench::soak_http::{SERVE_ARGS, start_release_server};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEY: &str = "stream-publish-key";

/// What one way of publishing measured.
struct Measured {
    events: usize,
    elapsed: Duration,
    server_cpu: f64,
    own_cpu: f64,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    fn cpu_us_per_event(&self) -> f64 {
        self.server_cpu * 1e6 / self.events as f64
    }
}

/// A run in a thread of its own, started; answers its id.
async fn started_run(http: &reqwest::Client, base: &str, thread: &str) -> String {
    let created: Value = http
        .post(format!("{base}/v1/runs"))
        .bearer_auth(KEY)
        .json(&json!({"thread_id": thread, "user_id": "bench", "agent_name": "streamer"}))
        .send()
        .await
        .expect("create a run")
        .json()
        .await
        .expect("a JSON answer");
    let run = created["run_id"].as_str().expect("run id").to_owned();
    let start = json!({"event": "agent_started", "data": {"agent_name": "streamer"}});
    let resp = http.post(format!("{base}/v1/runs/{run}/events")).bearer_auth(KEY).json(&start).send().await;
    assert!(resp.expect("start the run").status().is_success());
    run
}

/// The text of delta `n` of `run`, as a frame of the publisher socket.
fn frame(run: &str, n: usize) -> String {
    format!(
        r#"{{"ref":{n},"run_id":"{run}","event":"agent_message","event_id":"d{n}","data":{{"message_id":"m1","delta":"token {n} "}}}}"#
    )
}

/// The same delta as a request body.
fn body(n: usize) -> String {
    format!(r#"{{"event":"agent_message","event_id":"d{n}","data":{{"message_id":"m1","delta":"token {n} "}}}}"#)
}

async fn over_the_socket(base: &str, run: &str, events: usize, pid: u32) -> Measured {
    let url = format!("{}/v1/publish", base.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request().expect("a request");
    request.headers_mut().insert("authorization", format!("Bearer {KEY}").parse().expect("a header"));
    let (socket, _) = tokio_tungstenite::connect_async(request).await.expect("connect the publisher socket");
    let (mut sink, mut answers) = socket.split();
    let frames: Vec<String> = (0..events).map(|n| frame(run, n)).collect();
    let (cpu_before, own_before) = (usage(&[pid]).1, usage(&[std::process::id()]).1);
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        for text in frames {
            sink.feed(Message::Text(text.into())).await.expect("send");
        }
        sink.flush().await.expect("flush");
        sink
    });
    let mut last_seq = 0;
    for n in 0..events {
        let text = match answers.next().await {
            Some(Ok(Message::Text(text))) => text,
            other => panic!("answer {n}: {other:?}"),
        };
        let answer: Value = serde_json::from_str(&text).expect("a JSON answer");
        assert_eq!(answer["ref"], n, "answers come in order");
        let seq = answer["seqs"][0].as_u64().unwrap_or_else(|| panic!("refused: {answer}"));
        assert_eq!(seq, last_seq.max(1) + 1, "gap-free");
        last_seq = seq;
    }
    let elapsed = started.elapsed();
    let mut sink = sender.await.expect("sender");
    let _ = sink.close().await;
    Measured {
        events,
        elapsed,
        server_cpu: usage(&[pid]).1 - cpu_before,
        own_cpu: usage(&[std::process::id()]).1 - own_before,
    }
}

async fn one_request_each(base: &str, run: &str, events: usize, connections: usize, pid: u32) -> Measured {
    let http = reqwest::Client::builder().pool_max_idle_per_host(connections).build().expect("client");
    let url = Arc::new(format!("{base}/v1/runs/{run}/events"));
    let bodies: Arc<Vec<String>> = Arc::new((0..events).map(body).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let (cpu_before, own_before) = (usage(&[pid]).1, usage(&[std::process::id()]).1);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (http, url, bodies, next) = (http.clone(), url.clone(), bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(n) else { return };
                let resp = http
                    .post(url.as_str())
                    .bearer_auth(KEY)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .expect("publish");
                assert!(resp.status().is_success(), "{}", resp.status());
                resp.bytes().await.expect("answer");
            }
        }));
    }
    for task in tasks {
        task.await.expect("publisher");
    }
    Measured {
        events,
        elapsed: started.elapsed(),
        server_cpu: usage(&[pid]).1 - cpu_before,
        own_cpu: usage(&[std::process::id()]).1 - own_before,
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let events: usize = args.next().map_or(200_000, |a| a.parse().expect("events"));
    let connections: usize = args.next().map_or(64, |a| a.parse().expect("connections"));
    let data = Path::new("target/bench-data/publish-stream");
    let _ = std::fs::remove_dir_all(data);
    std::fs::create_dir_all(data).expect("data dir");
    // Every delta is its own publish here: the per-key rates must not be what limits it.
    let (server, base) = start_release_server(data, KEY, &SERVE_ARGS).await;
    let pid = server.id().expect("server pid");
    let http = reqwest::Client::new();

    let run = started_run(&http, &base, "thread_stream").await;
    let socket = over_the_socket(&base, &run, events, pid).await;
    let run = started_run(&http, &base, "thread_requests").await;
    let requests = one_request_each(&base, &run, events, connections, pid).await;

    println!("{events} token deltas of one run into the durable store, each with an event_id");
    println!("| way | events/s | server CPU per event | load generator CPU |");
    println!("|---|---:|---:|---:|");
    for (name, m) in
        [("one publisher WebSocket", &socket), (&*format!("one request each, {connections} connections"), &requests)]
    {
        println!("| {name} | {:.0} | {:.1} µs | {:.1} s |", m.rate(), m.cpu_us_per_event(), m.own_cpu);
    }
    println!(
        "socket / requests: {:.2}x the rate, {:.2}x the server CPU per event",
        socket.rate() / requests.rate(),
        socket.cpu_us_per_event() / requests.cpu_us_per_event()
    );
    drop(server);
    let _ = std::fs::remove_dir_all(data);
}
