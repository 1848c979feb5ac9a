//! The soak over HTTP, shared by `bin/soak_http.rs` (a release server, by hand,
//! up to a million runs) and the test suite's short version (the debug server
//! of `crates/cli`): a server in its own process, driven the way publishers and
//! watchers use it, run after run, with its resident memory, its disk and its
//! latency sampled after every tenth of the runs.
//!
//! Each run is registered (`POST /v1/runs`) and gets its ten events in one
//! publish; [`PUBLISHERS`] publishers run at once over the threads (a new thread
//! for each run until there are that many). WebSocket watchers hold
//! subscriptions to a share of the threads for the whole soak and count what
//! they receive.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

use crate::load::usage;
use crate::soak::{SAMPLES, dir_bytes, slope};
use crate::stats::Percentiles;

/// Runs going at once.
pub const PUBLISHERS: usize = 64;
/// Subscriptions per watcher connection (under the server's 256).
const PER_WATCHER: usize = 200;

/// The server-side settings a soak needs: one publisher and one user doing a
/// great deal, so the per-key, per-user and per-connection rates that would
/// otherwise pace it are lifted.
pub const SERVE_ARGS: [&str; 8] = [
    "--publish-rate",
    "10000000",
    "--quota-key-runs",
    "100000000",
    "--quota-key-events",
    "1000000000",
    "--ws-message-rate",
    "100000",
];

/// Starts `target/release/agentwire` over `data` on a loopback port, in dev
/// mode (tokens from `/dev/token`), with `extra` arguments; answers the child
/// (killed when dropped) and its base URL.
pub async fn start_release_server(data: &Path, publish_key: &str, extra: &[&str]) -> (Child, String) {
    let binary = Path::new("target/release/agentwire");
    assert!(binary.exists(), "build it first: cargo build --release -p agentwire");
    let mut child = Command::new(binary)
        .args(["serve", "--listen", "127.0.0.1:0", "--publish-key", publish_key, "--data-dir"])
        .arg(data)
        .args(extra)
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

/// Where the soak goes: a running server and how to speak to it.
pub struct Target<'a> {
    pub base: &'a str,
    /// The server's process id, for its memory and CPU.
    pub pid: u32,
    /// Its data directory, for the disk.
    pub data_dir: &'a Path,
    pub publish_key: &'a str,
    /// A subscriber token of the user the threads belong to.
    pub token: &'a str,
    /// That user's id.
    pub user: &'a str,
}

/// How much the soak drives.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub runs: usize,
    pub threads: usize,
    /// Threads watched over WebSockets for the whole soak.
    pub watched: usize,
}

/// What one tenth of the soak measured.
#[derive(Debug, Clone)]
pub struct Tenth {
    /// Runs published so far.
    pub runs: usize,
    pub server_rss: u64,
    pub disk_per_event: f64,
    pub publish: Percentiles,
    pub server_cpu: f64,
    pub own_cpu: f64,
}

/// What the whole soak measured.
pub struct Outcome {
    pub tenths: Vec<Tenth>,
    pub elapsed: Duration,
    /// Events the watchers received, and events published to watched threads.
    pub seen: u64,
    pub published_to_watched: u64,
}

impl Outcome {
    /// Bytes of the server's resident memory per ended run after the warm-up.
    pub fn slope(&self) -> f64 {
        let samples: Vec<(usize, u64)> = self.tenths.iter().map(|t| (t.runs, t.server_rss)).collect();
        slope(&samples)
    }

    /// Runs published.
    pub fn runs(&self) -> usize {
        self.tenths.last().map_or(0, |t| t.runs)
    }
}

fn thread_name(t: usize) -> String {
    format!("thread_h{t}")
}

/// The body that registers a run in thread `t` for `user`.
fn new_run(t: usize, user: &str) -> Value {
    json!({"thread_id": thread_name(t), "user_id": user, "agent_name": "soak"})
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

/// Drives `plan` through `target`, handing each tenth to `report` as it is measured.
pub async fn drive(target: &Target<'_>, plan: Plan, mut report: impl FnMut(&Tenth)) -> Outcome {
    let Plan { runs, threads, watched } = plan;
    let (threads, watched) = (threads.max(1), watched.min(threads.max(1)));
    let base = target.base.to_owned();
    let key = target.publish_key.to_owned();
    let http = reqwest::Client::builder().pool_max_idle_per_host(PUBLISHERS).build().expect("client");

    // Watched threads exist before they are watched: their first runs are registered here.
    for t in 0..watched {
        let resp = http.post(format!("{base}/v1/runs")).bearer_auth(&key).json(&new_run(t, target.user)).send().await;
        assert_eq!(resp.expect("register a run").status(), 201);
    }
    let (seen, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicUsize::new(0)));
    let names: Vec<String> = (0..watched).map(thread_name).collect();
    let watchers: Vec<_> = names
        .chunks(PER_WATCHER)
        .map(|group| {
            let task = watch(base.clone(), target.token.to_owned(), group.to_vec(), seen.clone(), stop.clone());
            tokio::spawn(task)
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let next = Arc::new(AtomicUsize::new(0));
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let (watched_runs, completed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicUsize::new(0)));
    let body = Arc::new(run_body());
    let user = target.user.to_owned();
    let began = Instant::now();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|_| {
            let (http, base, key, user) = (http.clone(), base.clone(), key.clone(), user.clone());
            let (next, latencies, body) = (next.clone(), latencies.clone(), body.clone());
            let (watched_runs, completed) = (watched_runs.clone(), completed.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= runs {
                        return;
                    }
                    let t = i % threads;
                    let resp =
                        http.post(format!("{base}/v1/runs")).bearer_auth(&key).json(&new_run(t, &user)).send().await;
                    let Ok(resp) = resp else { continue };
                    let created: Value = resp.json().await.unwrap_or(Value::Null);
                    let Some(run) = created["run_id"].as_str() else { continue };
                    let sent = Instant::now();
                    let url = format!("{base}/v1/runs/{run}/events");
                    let resp = http.post(url).bearer_auth(&key).json(&*body).send().await;
                    if resp.is_ok_and(|r| r.status().is_success()) {
                        latencies.lock().push(sent.elapsed());
                        completed.fetch_add(1, Ordering::Relaxed);
                        if t < watched {
                            watched_runs.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();

    let mut tenths: Vec<Tenth> = Vec::new();
    for tenth in 1..=SAMPLES {
        let target_runs = runs * tenth / SAMPLES;
        while completed.load(Ordering::Relaxed) < target_runs && !publishers.iter().all(|p| p.is_finished()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut window = std::mem::take(&mut *latencies.lock());
        let done = tenths.last().map_or(0, |t| t.runs) + window.len();
        let (server_kib, server_cpu) = usage(&[target.pid]);
        let sample = Tenth {
            runs: done,
            server_rss: server_kib * 1024,
            disk_per_event: dir_bytes(target.data_dir) as f64 / (done.max(1) * 10) as f64,
            publish: Percentiles::of(&mut window),
            server_cpu,
            own_cpu: usage(&[std::process::id()]).1,
        };
        report(&sample);
        tenths.push(sample);
    }
    for p in publishers {
        let _ = p.await;
    }
    let elapsed = began.elapsed();
    // The last events reach the watchers (or ten seconds pass), then they stop.
    let published_to_watched = watched_runs.load(Ordering::Relaxed) * 10;
    let waited = Instant::now();
    while seen.load(Ordering::Relaxed) < published_to_watched && waited.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(1, Ordering::Release);
    for w in watchers {
        let _ = w.await;
    }
    Outcome { tenths, elapsed, seen: seen.load(Ordering::Relaxed), published_to_watched }
}
