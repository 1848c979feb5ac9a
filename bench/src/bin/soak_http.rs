//! The soak over HTTP: a release `agentwire` server driven the way publishers
//! and watchers use it, run after run, to see whether its resident memory and
//! its disk follow what is live (`../shared/ENDURANCE.md`).
//!
//! Each run is registered (`POST /v1/runs`) and gets its ten events in one
//! publish; 64 publishers run at once over `threads` threads (a new thread for
//! each run until there are that many). WebSocket watchers hold subscriptions
//! to a share of the threads for the whole soak and count what they receive.
//! After every tenth of the runs it prints the server's resident memory, disk
//! bytes per stored event, publish latency p50/p99 over that tenth, the
//! server's CPU seconds, and the load generator's own. (The idle watchdog's tick
//! is measured by `bin/soak.rs`, which runs the log in process.)
//!
//! ```sh
//! cargo build --release -p agentwire -p agentwire-bench
//! ./target/release/soak_http [runs] [threads] [watched threads]
//! ```
//! Defaults: 100,000 runs, 100,000 threads, 1,000 watched. Loopback only; the
//! server and its data directory (under `target/bench-data`) go at the end.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentwire_bench::load::usage;
use agentwire_bench::soak::dir_bytes;
use agentwire_bench::stats::Percentiles;
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEY: &str = "soak-publish-key";
const PUBLISHERS: usize = 64;
const SAMPLES: usize = 10;
/// Subscriptions per watcher connection (under the server's 256).
const PER_WATCHER: usize = 200;

/// Starts the release server over `data` (dev mode on loopback: tokens from
/// `/dev/token`); answers the child and its base URL.
async fn start_server(data: &Path) -> (tokio::process::Child, String) {
    let binary = PathBuf::from("target/release/agentwire");
    assert!(binary.exists(), "build it first: cargo build --release -p agentwire");
    let mut child = tokio::process::Command::new(binary)
        .args(["serve", "--listen", "127.0.0.1:0", "--publish-key", KEY, "--data-dir"])
        .arg(data)
        // The soak is one publisher and one user doing a great deal: lift the
        // per-key and per-user limits that would otherwise pace it.
        .env("AGENTWIRE_PUBLISH_RATE", "10000000")
        .env("AGENTWIRE_KEY_RUNS_PER_MINUTE", "100000000")
        .env("AGENTWIRE_KEY_EVENTS_PER_MINUTE", "1000000000")
        .env("AGENTWIRE_WS_MESSAGE_RATE", "100000")
        .env("AGENTWIRE_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start agentwire");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let base = loop {
        let line = lines.next_line().await.expect("read stdout").expect("agentwire exited before listening");
        if let Some(url) = line.strip_prefix("agentwire is listening on ") {
            break url.trim().to_owned();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, base)
}

/// One watcher connection: subscribes to `threads` and counts events until `stop`.
async fn watch(base: String, token: String, threads: Vec<String>, seen: Arc<AtomicU64>, stop: Arc<AtomicUsize>) {
    let url = format!("{}/v1/ws?token={token}", base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("watcher connects");
    for thread in &threads {
        let frame = json!({"type":"subscribe","thread_id":thread,"after_seq":0}).to_string();
        ws.send(Message::Text(frame.into())).await.expect("subscribe");
    }
    while stop.load(Ordering::Acquire) == 0 {
        let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_millis(200), ws.next()).await else { continue };
        let Message::Text(text) = msg else { continue };
        let frame: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let n = match frame["type"].as_str() {
            Some("event") => 1,
            Some("batch") => frame["events"].as_array().map_or(0, Vec::len),
            _ => 0,
        };
        seen.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The ten events of one run, as one publish body.
fn run_body() -> Value {
    let mut events = vec![json!({"event":"agent_started","data":{"agent_name":"soak"},"event_id":"e0"})];
    for i in 1..=8 {
        let thought = format!("step {i}: reading the results and deciding what to do next");
        events
            .push(json!({"event":"agent_thinking","data":{"thought": thought, "step": i},"event_id": format!("e{i}")}));
    }
    events.push(json!({"event":"agent_completed","data":{"result":"ok"},"event_id":"e9"}));
    json!({ "events": events })
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000).max(1);
    let watched: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000).min(threads);
    let base_dir = Path::new("target/bench-data");
    std::fs::create_dir_all(base_dir).expect("bench data directory");
    let data = tempfile::tempdir_in(base_dir).expect("data directory");
    let (mut server, base) = start_server(data.path()).await;
    let pid = server.id().expect("server pid");
    let http = reqwest::Client::builder().pool_max_idle_per_host(PUBLISHERS).build().expect("client");
    let token: Value = http.get(format!("{base}/dev/token?user=soak")).send().await.unwrap().json().await.unwrap();
    let token = token["token"].as_str().expect("a dev token").to_owned();
    println!(
        "soak over HTTP: {runs} runs of 10 events over {threads} threads, {watched} watched, {PUBLISHERS} publishers"
    );

    // Watched threads exist before they are watched: the first runs are theirs.
    let (seen, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut watchers = Vec::new();
    for t in 0..watched {
        let thread = format!("thread_h{t}");
        let body = json!({"thread_id": thread, "user_id": "soak", "agent_name": "soak"});
        let resp = http.post(format!("{base}/v1/runs")).bearer_auth(KEY).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 201);
    }
    let names: Vec<String> = (0..watched).map(|t| format!("thread_h{t}")).collect();
    for group in names.chunks(PER_WATCHER) {
        let task = watch(base.clone(), token.clone(), group.to_vec(), seen.clone(), stop.clone());
        watchers.push(tokio::spawn(task));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let next = Arc::new(AtomicUsize::new(0));
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let watched_runs = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicUsize::new(0));
    let body = Arc::new(run_body());
    let began = Instant::now();
    let mut publishers = Vec::new();
    for _ in 0..PUBLISHERS {
        let (http, base, next, latencies, body) =
            (http.clone(), base.clone(), next.clone(), latencies.clone(), body.clone());
        let (watched_runs, completed) = (watched_runs.clone(), completed.clone());
        publishers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= runs {
                    return;
                }
                let t = i % threads;
                let create = json!({"thread_id": format!("thread_h{t}"), "user_id": "soak", "agent_name": "soak"});
                let resp = http.post(format!("{base}/v1/runs")).bearer_auth(KEY).json(&create).send().await;
                let Ok(resp) = resp else { continue };
                let created: Value = resp.json().await.unwrap_or(Value::Null);
                let Some(run) = created["run_id"].as_str() else { continue };
                let sent = Instant::now();
                let resp = http.post(format!("{base}/v1/runs/{run}/events")).bearer_auth(KEY).json(&*body).send().await;
                if resp.is_ok_and(|r| r.status().is_success()) {
                    latencies.lock().push(sent.elapsed());
                    completed.fetch_add(1, Ordering::Relaxed);
                    if t < watched {
                        watched_runs.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    println!(
        "| runs | server RSS (MB) | disk per event (B) | publish p50 / p99 (ms) | server CPU (s) | load generator CPU (s) |"
    );
    println!("|---|---|---|---|---|---|");
    let mut samples = Vec::new();
    for tenth in 1..=SAMPLES {
        let target = runs * tenth / SAMPLES;
        while completed.load(Ordering::Relaxed) < target && !publishers.iter().all(|p| p.is_finished()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut window = std::mem::take(&mut *latencies.lock());
        let done = samples.iter().map(|(n, _)| n).sum::<usize>() + window.len();
        let (memory_kib, server_cpu) = usage(&[pid]);
        let memory = memory_kib * 1024;
        let own_cpu = usage(&[std::process::id()]).1;
        let disk = dir_bytes(data.path()) as f64 / (done.max(1) * 10) as f64;
        let p = Percentiles::of(&mut window);
        let (p50, p99) = (p.p50.as_secs_f64() * 1e3, p.p99.as_secs_f64() * 1e3);
        println!(
            "| {done} | {:.1} | {disk:.0} | {p50:.1} / {p99:.1} | {server_cpu:.1} | {own_cpu:.1} |",
            memory as f64 / 1e6
        );
        samples.push((window.len(), memory));
    }
    for p in publishers {
        let _ = p.await;
    }
    let elapsed = began.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(1, Ordering::Release);
    for w in watchers {
        let _ = w.await;
    }
    let done: usize = samples.iter().map(|(n, _)| n).sum();
    let warm = samples[SAMPLES / 5 - 1].1 as f64;
    let end = samples.last().map_or(0.0, |s| s.1 as f64);
    let after_warmup = done.saturating_sub(samples.iter().take(SAMPLES / 5).map(|(n, _)| n).sum::<usize>());
    println!(
        "{done} runs in {elapsed:.1} s ({:.0} runs/s); server RSS after warm-up {:.1} → {:.1} MB, {:.1} B per ended run; \
         watchers received {} events of {} published to watched threads",
        done as f64 / elapsed,
        warm / 1e6,
        end / 1e6,
        (end - warm) / after_warmup.max(1) as f64,
        seen.load(Ordering::Relaxed),
        (watched_runs.load(Ordering::Relaxed)) * 10
    );
    let _ = server.kill().await;
}
