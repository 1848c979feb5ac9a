//! The load generator: subscribers over WebSocket, a paced publisher over HTTP,
//! and every delivery checked and timed. It speaks to agentwire and to the peers
//! through a small adapter ([`Target`]).
//!
//! ```sh
//! loadgen --target agentwire --url http://127.0.0.1:8080 --threads 10 --subs 100 --rate 2000 --seconds 5 --pid 1234
//! ```
//! Several nodes of one agentwire cluster: `--url` takes a comma-separated list
//! (subscribers spread over it), `--publish-url` another (publishes spread over
//! it; default: `--url`), and `--pid` one process id per node (figures summed).
//! Loopback only; bounded by `--seconds` plus a drain of at most 10 s. Prints one
//! JSON line: deliveries per second, publish→receive latency percentiles,
//! lost / duplicated / out-of-order deliveries, and the server's RSS and CPU.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentwire_bench::stats::{Percentiles, ms};
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Agentwire,
    /// `bench/peers/ws-fanout`: POST /publish {thread, …}.
    Ws,
    /// `bench/peers/fastapi`, the seed stack: POST /publish {run_id, …}, thread parsed from the run id.
    Fastapi,
}

/// How to reach one system: where to subscribe and how to publish.
#[derive(Clone)]
struct Target {
    kind: Kind,
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Target {
    /// The target at `base`; on agentwire, with a dev token of that node (each
    /// dev-mode node signs with a secret of its own).
    async fn connect(kind: Kind, base: &str, http: &reqwest::Client) -> Self {
        let token = match kind {
            Kind::Agentwire => {
                let t: Value = http
                    .get(format!("{base}/dev/token?user=bench"))
                    .send()
                    .await
                    .expect("dev token")
                    .json()
                    .await
                    .expect("token json");
                t["token"].as_str().unwrap_or_default().to_owned()
            }
            Kind::Ws | Kind::Fastapi => String::new(),
        };
        Self { kind, base: base.to_owned(), token, http: http.clone() }
    }

    fn ws_url(&self, thread: &str) -> String {
        let ws = self.base.replacen("http://", "ws://", 1);
        match self.kind {
            Kind::Agentwire => format!("{ws}/v1/ws?token={}", self.token),
            Kind::Ws | Kind::Fastapi => format!("{ws}/ws?thread={thread}"),
        }
    }

    /// The frame that subscribes after connecting, if the system needs one: on
    /// agentwire, after `after_seq` (the run's `agent_started`, which `prepare` published).
    fn subscribe_frame(&self, thread: &str, after_seq: u64) -> Option<String> {
        (self.kind == Kind::Agentwire)
            .then(|| json!({"type":"subscribe","thread_id":thread,"after_seq":after_seq}).to_string())
    }

    /// Prepares a thread; answers the id to publish to and the seq subscribers start after.
    async fn prepare(&self, thread: &str) -> (String, u64) {
        match self.kind {
            Kind::Ws => (thread.to_owned(), 0),
            // The seed's run ids carry their thread: run_{thread_id}_{uuid8}.
            Kind::Fastapi => (format!("run_{thread}_{:08x}", std::process::id()), 0),
            Kind::Agentwire => {
                let body = json!({"thread_id": thread, "user_id": "bench", "agent_name": "loadgen"});
                let run: Value = self.post("/v1/runs", &body).await.expect("create run");
                let run_id = run["run_id"].as_str().expect("run_id").to_owned();
                let started = json!({"event":"agent_started","data":{"agent_name":"loadgen"}});
                let seqs = self.post(&format!("/v1/runs/{run_id}/events"), &started).await.expect("start run");
                (run_id, seqs["seqs"][0].as_u64().unwrap_or(0))
            }
        }
    }

    async fn publish(&self, target: &str, thread: &str, sent_ns: u64, n: u64) -> bool {
        let data = json!({"thought": format!("step {n}: streaming a token of the answer"), "sent_ns": sent_ns});
        let result = match self.kind {
            Kind::Agentwire => {
                self.post(&format!("/v1/runs/{target}/events"), &json!({"event":"agent_thinking","data":data})).await
            }
            Kind::Ws => self.post("/publish", &json!({"thread":thread,"event":"agent_thinking","data":data})).await,
            Kind::Fastapi => {
                self.post("/publish", &json!({"run_id":target,"event":"agent_thinking","data":data})).await
            }
        };
        result.is_ok()
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth("dev-publish-key")
            .json(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("{} {}", resp.status(), resp.text().await.unwrap_or_default()));
        }
        resp.json().await.map_err(|e| e.to_string())
    }
}

#[derive(Default)]
struct Tally {
    failed_connections: AtomicU64,
    received: AtomicU64,
    lost_or_gap: AtomicU64,
    duplicated: AtomicU64,
    latencies: Mutex<Vec<Duration>>,
}

/// One subscriber: connects from `source`, then checks and times every event.
async fn subscriber(
    target: Target,
    thread: String,
    after_seq: u64,
    source: Ipv4Addr,
    start: Instant,
    tally: Arc<Tally>,
    ready: Arc<AtomicU64>,
) {
    let url = target.ws_url(&thread);
    let host: SocketAddr = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|h| h.parse().ok())
        .expect("loopback address in --url");
    let connected = async {
        let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        socket.bind(SocketAddr::new(source.into(), 0)).map_err(|e| e.to_string())?;
        let stream = socket.connect(host).await.map_err(|e| e.to_string())?;
        let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.map_err(|e| e.to_string())?;
        if let Some(frame) = target.subscribe_frame(&thread, after_seq) {
            ws.send(Message::text(frame)).await.map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(ws)
    };
    let mut ws = match connected.await {
        Ok(ws) => ws,
        Err(e) => {
            eprintln!("a subscriber could not connect: {e}");
            tally.failed_connections.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let mut last = 0u64;
    let mut counted_ready = false;
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        let frame: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) => continue,
        };
        let events = match frame["type"].as_str() {
            Some("event") => vec![frame],
            Some("batch") => frame["events"].as_array().cloned().unwrap_or_default(),
            Some("subscribed") => {
                // agentwire replays from after_seq; the peers have no replay and start at their head.
                last = if target.kind == Kind::Agentwire { after_seq } else { frame["head_seq"].as_u64().unwrap_or(0) };
                if !counted_ready {
                    counted_ready = true;
                    ready.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            _ => continue,
        };
        let now = start.elapsed();
        let mut lat = Vec::with_capacity(events.len());
        for e in events {
            let seq = e["seq"].as_u64().unwrap_or(0);
            if seq <= last {
                tally.duplicated.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if seq != last + 1 {
                tally.lost_or_gap.fetch_add(seq - last - 1, Ordering::Relaxed);
            }
            last = seq;
            tally.received.fetch_add(1, Ordering::Relaxed);
            if let Some(sent) = e["data"]["sent_ns"].as_u64() {
                lat.push(now.saturating_sub(Duration::from_nanos(sent)));
            }
        }
        tally.latencies.lock().extend(lat);
    }
}

/// RSS (KiB) and CPU seconds (user + system) of a process, from /proc.
/// RSS (KiB) and CPU seconds summed over `pids`.
fn usage(pids: &[u32]) -> (u64, f64) {
    pids.iter().map(|&pid| usage_of(pid)).fold((0, 0.0), |(r, c), (r2, c2)| (r + r2, c + c2))
}

fn usage_of(pid: u32) -> (u64, f64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let fields: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0);
    (rss, cpu)
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kind = match arg(&args, "--target", String::from("agentwire")).as_str() {
        "ws" => Kind::Ws,
        "fastapi" => Kind::Fastapi,
        _ => Kind::Agentwire,
    };
    let list = |name: &str, default: &str| -> Vec<String> {
        arg(&args, name, default.to_owned()).split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()
    };
    let bases = list("--url", "http://127.0.0.1:8080");
    let publish_bases = list("--publish-url", &bases.join(","));
    let pids: Vec<u32> = list("--pid", "0").iter().filter_map(|p| p.parse().ok()).collect();
    let threads: usize = arg(&args, "--threads", 10);
    let subs: usize = arg(&args, "--subs", 10);
    let rate: u64 = arg(&args, "--rate", 1000);
    let seconds: f64 = arg(&args, "--seconds", 5.0);
    let sources: u8 = arg(&args, "--sources", 8);
    for b in bases.iter().chain(&publish_bases) {
        assert!(b.starts_with("http://127.") || b.starts_with("http://localhost"), "loopback targets only");
    }

    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build().expect("http client");
    let mut targets = Vec::new();
    for b in &bases {
        targets.push(Target::connect(kind, b, &http).await);
    }
    let mut publish_targets = Vec::new();
    for b in &publish_bases {
        publish_targets.push(Target::connect(kind, b, &http).await);
    }
    let start = Instant::now();
    let tally = Arc::new(Tally::default());
    let ready = Arc::new(AtomicU64::new(0));
    // Fresh thread names each run, so a server reused between runs starts them empty.
    let run_tag = std::process::id();
    let names: Vec<String> = (0..threads).map(|t| format!("thread_load{run_tag}x{t}")).collect();
    let mut publish_to = Vec::new();
    let mut starts = Vec::new();
    for name in &names {
        let (to, after) = publish_targets[publish_to.len() % publish_targets.len()].prepare(name).await;
        publish_to.push(to);
        starts.push(after);
    }
    let (rss_idle, _) = usage(&pids);
    let mut tasks = Vec::new();
    for (t, name) in names.iter().enumerate() {
        for s in 0..subs {
            let source = Ipv4Addr::new(127, 0, 0, 1 + ((t * subs + s) % usize::from(sources.max(1))) as u8);
            let target = targets[(t * subs + s) % targets.len()].clone();
            let (name, tally, ready) = (name.clone(), tally.clone(), ready.clone());
            tasks.push(tokio::spawn(subscriber(target, name, starts[t], source, start, tally, ready)));
        }
    }
    let want = (threads * subs) as u64;
    while ready.load(Ordering::Relaxed) + tally.failed_connections.load(Ordering::Relaxed) < want {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(start.elapsed() < Duration::from_secs(120), "subscribers did not connect in time");
    }
    let (rss_connected, cpu_before) = usage(&pids);

    // Publish at `rate` events per second, round-robin over threads, up to 256 requests in flight.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(256));
    let published = Arc::new(AtomicU64::new(0));
    let publish_start = Instant::now();
    let total = (rate as f64 * seconds) as u64;
    let mut publishers = Vec::new();
    for n in 0..total {
        let due = publish_start + Duration::from_secs_f64(n as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let permit = in_flight.clone().acquire_owned().await.expect("semaphore");
        let t = (n as usize) % threads;
        let target = publish_targets[(n as usize) % publish_targets.len()].clone();
        let (to, name, published) = (publish_to[t].clone(), names[t].clone(), published.clone());
        publishers.push(tokio::spawn(async move {
            let sent = start.elapsed().as_nanos() as u64;
            if target.publish(&to, &name, sent, n).await {
                published.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        }));
    }
    for p in publishers {
        let _ = p.await;
    }
    let publish_secs = publish_start.elapsed().as_secs_f64();
    let connected = want - tally.failed_connections.load(Ordering::Relaxed);
    let expected = published.load(Ordering::Relaxed) * connected / threads as u64;
    let drain = Instant::now();
    while tally.received.load(Ordering::Relaxed) < expected && drain.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = publish_start.elapsed().as_secs_f64();
    let (rss_end, cpu_after) = usage(&pids);
    for t in tasks {
        t.abort();
    }
    let received = tally.received.load(Ordering::Relaxed);
    let mut lat = std::mem::take(&mut *tally.latencies.lock());
    let p = Percentiles::of(&mut lat);
    let connections = (threads * subs) as u64;
    let report = json!({
        "target": format!("{kind:?}").to_lowercase(), "nodes": bases.len().max(publish_bases.len()),
        "threads": threads, "subscribers_per_thread": subs, "rate": rate, "seconds": seconds,
        "published": published.load(Ordering::Relaxed), "publish_seconds": publish_secs,
        "deliveries": received, "deliveries_per_s": received as f64 / elapsed,
        "lost": expected.saturating_sub(received) + tally.lost_or_gap.load(Ordering::Relaxed),
        "duplicated": tally.duplicated.load(Ordering::Relaxed),
        "failed_connections": tally.failed_connections.load(Ordering::Relaxed),
        "latency_ms": {"p50": ms(p.p50), "p99": ms(p.p99), "p999": ms(p.p999), "max": ms(p.max)},
        "rss_kib": {"before_connections": rss_idle, "connected": rss_connected, "end": rss_end},
        "rss_kib_per_connection": if connections > 0 { (rss_connected.saturating_sub(rss_idle)) as f64 / connections as f64 } else { 0.0 },
        "cpu_seconds": cpu_after - cpu_before,
    });
    println!("{report}");
}
