//! The load generator as a library: subscribers over WebSocket, a paced
//! publisher over HTTP, and every delivery checked and timed. It speaks to
//! agentwire and to each peer through a small adapter ([`Kind`]), so the same
//! [`Scenario`] runs against all of them.
//!
//! Three modes: **stream** (publish at a rate, deliver, drain), **idle**
//! (connect and measure memory, publish nothing) and **storm** (stream, and
//! halfway through every subscriber drops its connection and reconnects at
//! once, resuming where it can: `after_seq` on agentwire, connection state
//! recovery on socket.io; the ws and FastAPI peers have no resume, so what was
//! sent while a subscriber was away counts as lost there).
//!
//! Loopback only; bounded by the scenario's seconds plus a drain of at most 10 s.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::publisher::{Counts, Publish, Publisher};
use crate::stats::{Percentiles, ms};

/// The system under load.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Agentwire,
    /// `bench/peers/ws-fanout`: POST /publish {thread, …}.
    Ws,
    /// `bench/peers/fastapi`, the seed stack: POST /publish {run_id, …}, thread parsed from the run id.
    Fastapi,
    /// `bench/peers/socketio`: rooms per thread, connection state recovery.
    SocketIo,
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "agentwire" => Ok(Self::Agentwire),
            "ws" => Ok(Self::Ws),
            "fastapi" => Ok(Self::Fastapi),
            "socketio" => Ok(Self::SocketIo),
            other => Err(format!("unknown target {other}")),
        }
    }
}

/// What the scenario does with its connections.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Stream,
    Idle,
    Storm,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stream" => Ok(Self::Stream),
            "idle" => Ok(Self::Idle),
            "storm" => Ok(Self::Storm),
            other => Err(format!("unknown mode {other}")),
        }
    }
}

/// What is published: reasoning steps, or an answer streamed token by token.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Shape {
    Thinking,
    Delta,
}

/// One workload.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub kind: Kind,
    /// Where subscribers connect (spread over the list).
    pub bases: Vec<String>,
    /// Where publishes go (spread over the list).
    pub publish_bases: Vec<String>,
    /// Server processes whose RSS and CPU are reported (summed).
    pub pids: Vec<u32>,
    pub threads: usize,
    pub subs: usize,
    /// Publishes per second over all threads.
    pub rate: u64,
    pub seconds: f64,
    /// Source addresses 127.0.0.1..=127.0.0.N, so tens of thousands of connections fit.
    pub sources: u8,
    pub mode: Mode,
    pub shape: Shape,
    /// agentwire only: publish over one publisher WebSocket per node
    /// (`GET /v1/publish`, frames not awaited) instead of a request per event.
    pub stream_publish: bool,
}

impl Scenario {
    /// A small stream scenario against one server.
    pub fn new(kind: Kind, base: &str) -> Self {
        Self {
            kind,
            bases: vec![base.to_owned()],
            publish_bases: vec![base.to_owned()],
            pids: Vec::new(),
            threads: 10,
            subs: 10,
            rate: 1000,
            seconds: 5.0,
            sources: 8,
            mode: Mode::Stream,
            shape: Shape::Thinking,
            stream_publish: false,
        }
    }
}

/// How to reach one server: where to subscribe and how to publish.
#[derive(Clone)]
struct Target {
    kind: Kind,
    base: String,
    token: String,
    http: reqwest::Client,
    /// Frames for this node's publisher WebSocket, when publishes stream.
    frames: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

impl Target {
    /// The target at `base`; on agentwire, with a dev token of that node (each
    /// dev-mode node signs with a secret of its own).
    async fn connect(kind: Kind, base: &str, http: &reqwest::Client) -> Result<Self, String> {
        let token = match kind {
            Kind::Agentwire => {
                let t: Value = http
                    .get(format!("{base}/dev/token?user=bench"))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                t["token"].as_str().unwrap_or_default().to_owned()
            }
            _ => String::new(),
        };
        Ok(Self { kind, base: base.to_owned(), token, http: http.clone(), frames: None })
    }

    /// Opens this node's publisher WebSocket: frames go out as they come, and
    /// answers are read and counted (a refusal counts in `refused`).
    async fn stream_publishes(&mut self, refused: Arc<AtomicU64>) -> Result<(), String> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("{}/v1/publish", self.base.replacen("http://", "ws://", 1));
        let mut request = url.into_client_request().map_err(|e| e.to_string())?;
        let auth = "Bearer dev-publish-key".parse().map_err(|_| "a header value")?;
        request.headers_mut().insert("authorization", auth);
        let (socket, _) = tokio_tungstenite::connect_async(request).await.map_err(|e| e.to_string())?;
        let (mut sink, mut answers) = socket.split();
        let (frames, mut queued) = tokio::sync::mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(frame) = queued.recv().await {
                if sink.feed(Message::text(frame)).await.is_err() {
                    return;
                }
                // Whatever else is queued goes in the same write.
                while let Ok(frame) = queued.try_recv() {
                    if sink.feed(Message::text(frame)).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(Ok(answer)) = answers.next().await {
                if let Message::Text(text) = answer
                    && text.contains("\"error\"")
                {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        self.frames = Some(frames);
        Ok(())
    }

    fn ws_url(&self, thread: &str) -> String {
        let ws = self.base.replacen("http://", "ws://", 1);
        match self.kind {
            Kind::Agentwire => format!("{ws}/v1/ws?token={}", self.token),
            Kind::Ws | Kind::Fastapi => format!("{ws}/ws?thread={thread}"),
            Kind::SocketIo => format!("{ws}/socket.io/?EIO=4&transport=websocket"),
        }
    }

    /// Prepares a thread; answers the id to publish to and the seq subscribers start after.
    async fn prepare(&self, thread: &str) -> Result<(String, u64), String> {
        match self.kind {
            Kind::Ws | Kind::SocketIo => Ok((thread.to_owned(), 0)),
            // The seed's run ids carry their thread: run_{thread_id}_{uuid8}.
            Kind::Fastapi => Ok((format!("run_{thread}_{:08x}", std::process::id()), 0)),
            Kind::Agentwire => {
                let body = json!({"thread_id": thread, "user_id": "bench", "agent_name": "loadgen"});
                let run: Value = self.post("/v1/runs", &body).await?;
                let run_id = run["run_id"].as_str().ok_or("no run_id")?.to_owned();
                let started = json!({"event":"agent_started","data":{"agent_name":"loadgen"}});
                let seqs = self.post(&format!("/v1/runs/{run_id}/events"), &started).await?;
                Ok((run_id, seqs["seqs"][0].as_u64().unwrap_or(0)))
            }
        }
    }

    /// Sends a publish over this node's publisher WebSocket; `false` if it is closed.
    fn stream(&self, to: &str, shape: Shape, sent_ns: u64, n: u64) -> bool {
        let Some(frames) = &self.frames else { return false };
        let (event, data) = event_of(shape, sent_ns, n);
        frames.send(format!(r#"{{"run_id":"{to}","event":"{event}","data":{data}}}"#)).is_ok()
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
    /// Subscriptions confirmed, counting each reconnect again.
    subscribed: AtomicU64,
    latencies: Mutex<Vec<Duration>>,
}

/// What the load generator reads of a delivered event.
#[derive(serde::Deserialize)]
struct Seen {
    seq: u64,
    #[serde(default)]
    data: SeenData,
}

#[derive(serde::Deserialize, Default)]
struct SeenData {
    sent_ns: Option<u64>,
}

/// A JSON frame, read into only the fields checked: parsing every delivery
/// into a `Value` cost the load generator more CPU than the server spent.
#[derive(serde::Deserialize)]
struct WireFrame {
    #[serde(rename = "type")]
    kind: String,
    seq: Option<u64>,
    #[serde(default)]
    data: SeenData,
    events: Option<Vec<Seen>>,
    head_seq: Option<u64>,
}

/// What one server frame means to a subscriber.
enum Frame {
    Events(Vec<Seen>),
    Subscribed {
        head_seq: u64,
    },
    /// socket.io: the engine is open; answer with a CONNECT.
    SioOpen,
    /// socket.io: connected, with the session's private id (kept across a recovery).
    SioConnected {
        pid: Option<String>,
    },
    /// socket.io: a ping to answer.
    SioPing,
    Other,
}

/// Reads a frame; on socket.io also the packet offset that recovery resumes from.
fn parse(kind: Kind, text: &str, offset: &mut Option<String>) -> Frame {
    if kind == Kind::SocketIo {
        return match text.as_bytes().first() {
            Some(b'0') => Frame::SioOpen,
            Some(b'2') => Frame::SioPing,
            Some(b'4') => parse_sio_packet(&text[1..], offset),
            _ => Frame::Other,
        };
    }
    let Ok(frame) = serde_json::from_str::<WireFrame>(text) else { return Frame::Other };
    match (frame.kind.as_str(), frame.seq) {
        ("event", Some(seq)) => Frame::Events(vec![Seen { seq, data: frame.data }]),
        ("batch", _) => Frame::Events(frame.events.unwrap_or_default()),
        ("subscribed", _) => Frame::Subscribed { head_seq: frame.head_seq.unwrap_or(0) },
        _ => Frame::Other,
    }
}

fn parse_sio_packet(packet: &str, offset: &mut Option<String>) -> Frame {
    match packet.as_bytes().first() {
        Some(b'0') => {
            let body: Value = serde_json::from_str(&packet[1..]).unwrap_or(Value::Null);
            Frame::SioConnected { pid: body["pid"].as_str().map(str::to_owned) }
        }
        Some(b'2') => {
            let Ok(Value::Array(args)) = serde_json::from_str::<Value>(&packet[1..]) else { return Frame::Other };
            // With recovery on, the server appends the packet's offset as a last argument.
            if let Some(Value::String(o)) = args.get(2) {
                *offset = Some(o.clone());
            }
            match args.first().and_then(Value::as_str) {
                Some("event") => Frame::Events(
                    args.get(1).and_then(|e| serde_json::from_value(e.clone()).ok()).into_iter().collect(),
                ),
                Some("subscribed") => Frame::Subscribed { head_seq: args[1]["head_seq"].as_u64().unwrap_or(0) },
                _ => Frame::Other,
            }
        }
        _ => Frame::Other,
    }
}

/// A subscriber's state that outlives its connections.
struct Cursor {
    last: u64,
    /// socket.io: the session to recover and the last packet offset seen.
    pid: Option<String>,
    offset: Option<String>,
}

/// One subscriber: connects from `source`, checks and times every event, and
/// when `storm` fires drops its connection and reconnects at once.
#[allow(clippy::too_many_arguments)]
async fn subscriber(
    target: Target,
    thread: String,
    after_seq: u64,
    source: Ipv4Addr,
    start: Instant,
    tally: Arc<Tally>,
    mut storm: watch::Receiver<bool>,
) {
    let mut cursor = Cursor { last: after_seq, pid: None, offset: None };
    let mut stormed = false;
    loop {
        let dropped = connection(&target, &thread, source, start, &tally, &mut cursor, &mut storm, stormed).await;
        match dropped {
            Err(e) => {
                if tally.failed_connections.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("a subscriber could not connect (more may follow, counted): {e}");
                }
                return;
            }
            Ok(true) if !stormed => stormed = true,
            Ok(_) => return,
        }
    }
}

/// One connection of a subscriber; `Ok(true)` when it was dropped for the storm.
#[allow(clippy::too_many_arguments)]
async fn connection(
    target: &Target,
    thread: &str,
    source: Ipv4Addr,
    start: Instant,
    tally: &Tally,
    cursor: &mut Cursor,
    storm: &mut watch::Receiver<bool>,
    stormed: bool,
) -> Result<bool, String> {
    let url = target.ws_url(thread);
    let host: SocketAddr = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|h| h.parse().ok())
        .ok_or("a loopback address")?;
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket.bind(SocketAddr::new(source.into(), 0)).map_err(|e| e.to_string())?;
    let stream = socket.connect(host).await.map_err(|e| e.to_string())?;
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.map_err(|e| e.to_string())?;
    if target.kind == Kind::Agentwire {
        let frame = json!({"type":"subscribe","thread_id":thread,"after_seq":cursor.last}).to_string();
        ws.send(Message::text(frame)).await.map_err(|e| e.to_string())?;
    }
    loop {
        let msg = tokio::select! {
            changed = storm.changed(), if !stormed => {
                if changed.is_ok() {
                    let _ = ws.close(None).await;
                    return Ok(true);
                }
                continue;
            }
            msg = ws.next() => msg,
        };
        let Some(Ok(msg)) = msg else { return Ok(false) };
        let Message::Text(text) = msg else { continue };
        match parse(target.kind, &text, &mut cursor.offset) {
            Frame::SioOpen => {
                let connect = match (&cursor.pid, &cursor.offset) {
                    (Some(pid), Some(offset)) => format!("40{}", json!({"pid": pid, "offset": offset})),
                    _ => "40".to_owned(),
                };
                ws.send(Message::text(connect)).await.map_err(|e| e.to_string())?;
            }
            Frame::SioConnected { pid } => {
                let recovered = pid.is_some() && pid == cursor.pid;
                cursor.pid = pid;
                if recovered {
                    // The server restored the room and replays what was missed.
                    tally.subscribed.fetch_add(1, Ordering::Relaxed);
                } else {
                    let subscribe = format!("42{}", json!(["subscribe", thread]));
                    ws.send(Message::text(subscribe)).await.map_err(|e| e.to_string())?;
                }
            }
            Frame::SioPing => ws.send(Message::text("3")).await.map_err(|e| e.to_string())?,
            Frame::Subscribed { head_seq } => {
                // agentwire replays from after_seq; the peers have no replay and start at their head.
                if target.kind != Kind::Agentwire {
                    if cursor.last > 0 && head_seq > cursor.last {
                        tally.lost_or_gap.fetch_add(head_seq - cursor.last, Ordering::Relaxed);
                    }
                    cursor.last = cursor.last.max(head_seq);
                }
                tally.subscribed.fetch_add(1, Ordering::Relaxed);
            }
            Frame::Events(events) => record(&events, start, tally, &mut cursor.last),
            Frame::Other => {}
        }
    }
}

/// Checks and times delivered events against the last seq seen.
fn record(events: &[Seen], start: Instant, tally: &Tally, last: &mut u64) {
    let now = start.elapsed();
    let mut lat = Vec::with_capacity(events.len());
    for e in events {
        let seq = e.seq;
        if seq <= *last {
            tally.duplicated.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if seq != *last + 1 {
            tally.lost_or_gap.fetch_add(seq - *last - 1, Ordering::Relaxed);
        }
        *last = seq;
        tally.received.fetch_add(1, Ordering::Relaxed);
        if let Some(sent) = e.data.sent_ns {
            lat.push(now.saturating_sub(Duration::from_nanos(sent)));
        }
    }
    tally.latencies.lock().extend(lat);
}

/// RSS (KiB) and CPU seconds summed over `pids`.
pub fn usage(pids: &[u32]) -> (u64, f64) {
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

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            return Err(format!("{what} did not happen within {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Runs `s` and answers its report (see the module docs).
pub async fn run(s: &Scenario) -> Result<Value, String> {
    for b in s.bases.iter().chain(&s.publish_bases) {
        if !(b.starts_with("http://127.") || b.starts_with("http://localhost")) {
            return Err(format!("{b}: loopback targets only"));
        }
    }
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build().map_err(|e| e.to_string())?;
    let mut targets = Vec::new();
    for b in &s.bases {
        targets.push(Target::connect(s.kind, b, &http).await?);
    }
    let mut publish_targets = Vec::new();
    let refused = Arc::new(AtomicU64::new(0));
    for b in &s.publish_bases {
        let mut target = Target::connect(s.kind, b, &http).await?;
        if s.stream_publish && s.kind == Kind::Agentwire {
            target.stream_publishes(refused.clone()).await?;
        }
        publish_targets.push(target);
    }
    let start = Instant::now();
    let tally = Arc::new(Tally::default());
    // Fresh thread names each run, so a server reused between runs starts them empty.
    let run_tag = format!("{}{}", std::process::id(), start.elapsed().as_nanos() % 1000);
    let names: Vec<String> = (0..s.threads).map(|t| format!("thread_load{run_tag}x{t}")).collect();
    let mut publish_to = Vec::new();
    let mut starts = Vec::new();
    for (t, name) in names.iter().enumerate() {
        let (to, after) = publish_targets[t % publish_targets.len()].prepare(name).await?;
        publish_to.push(to);
        starts.push(after);
    }
    let (rss_idle, _) = usage(&s.pids);
    let (storm_tx, storm_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for (t, name) in names.iter().enumerate() {
        for n in 0..s.subs {
            let i = t * s.subs + n;
            let source = Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(s.sources.max(1))) as u8);
            let target = targets[i % targets.len()].clone();
            let (name, tally, storm) = (name.clone(), tally.clone(), storm_rx.clone());
            tasks.push(tokio::spawn(subscriber(target, name, starts[t], source, start, tally, storm)));
        }
    }
    let want = (s.threads * s.subs) as u64;
    let connect_start = Instant::now();
    wait_until("every subscriber connecting", Duration::from_secs(180), || {
        tally.subscribed.load(Ordering::Relaxed) + tally.failed_connections.load(Ordering::Relaxed) >= want
    })
    .await?;
    let connect_secs = connect_start.elapsed().as_secs_f64();
    let (rss_connected, cpu_before) = usage(&s.pids);
    let own_cpu_before = usage_of(std::process::id()).1;
    let lag_before = lag_counts(&http, s.kind, &s.bases).await;

    // Publish at `rate` events per second, round-robin over threads: over
    // each node's publisher WebSocket, or on 64 keep-alive connections in all.
    let streaming = s.stream_publish && s.kind == Kind::Agentwire;
    let counts = Arc::new(Counts::default());
    let mut http_publishers = Vec::new();
    if !streaming {
        let per_node = (64 / s.publish_bases.len().max(1)).max(8);
        for base in &s.publish_bases {
            let addr = base.trim_start_matches("http://").trim_end_matches('/');
            http_publishers.push(Publisher::connect(addr, per_node, counts.clone()).await?);
        }
    }
    let streamed = AtomicU64::new(0);
    let publish_start = Instant::now();
    let total = if s.mode == Mode::Idle { 0 } else { (s.rate as f64 * s.seconds) as u64 };
    let mut storm_started = None;
    for n in 0..total {
        let due = publish_start + Duration::from_secs_f64(n as f64 / s.rate as f64);
        tokio::time::sleep_until(due.into()).await;
        if s.mode == Mode::Storm && storm_started.is_none() && n >= total / 2 {
            // Every subscriber drops and reconnects at once; a watcher times how
            // long until all of them are subscribed again, while publishing goes on.
            let _ = storm_tx.send(true);
            let (tally, began) = (tally.clone(), Instant::now());
            let again = 2 * want - tally.failed_connections.load(Ordering::Relaxed);
            storm_started = Some(tokio::spawn(async move {
                wait_until("every subscriber reconnecting", Duration::from_secs(60), || {
                    tally.subscribed.load(Ordering::Relaxed) >= again
                })
                .await
                .map(|()| began.elapsed().as_secs_f64())
            }));
        }
        let (t, node) = ((n as usize) % s.threads, (n as usize) % publish_targets.len());
        let sent = start.elapsed().as_nanos() as u64;
        match http_publishers.get_mut(node) {
            Some(publisher) => {
                publisher.send(publish_request(s.kind, &publish_to[t], &names[t], s.shape, sent, n)).await?;
            }
            None => {
                if publish_targets[node].stream(&publish_to[t], s.shape, sent, n) {
                    streamed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    let storm_secs = match storm_started {
        Some(watcher) => Some(watcher.await.map_err(|e| e.to_string())??),
        None => None,
    };
    for publisher in http_publishers {
        publisher.finish().await;
    }
    let published = streamed.load(Ordering::Relaxed) + counts.answered.load(Ordering::Relaxed);
    refused.fetch_add(counts.refused.load(Ordering::Relaxed), Ordering::Relaxed);
    let publish_secs = publish_start.elapsed().as_secs_f64();
    let connected = want - tally.failed_connections.load(Ordering::Relaxed);
    let expected = published * connected / s.threads.max(1) as u64;
    let drain = Instant::now();
    while tally.received.load(Ordering::Relaxed) + tally.lost_or_gap.load(Ordering::Relaxed) < expected
        && drain.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = publish_start.elapsed().as_secs_f64();
    let (rss_end, cpu_after) = usage(&s.pids);
    let own_cpu = usage_of(std::process::id()).1 - own_cpu_before;
    let lag = match (lag_before, lag_counts(&http, s.kind, &s.bases).await) {
        (Some(before), Some(after)) => {
            let counts: Vec<(f64, u64)> =
                after.iter().zip(&before).map(|(&(le, a), &(_, b))| (le, a.saturating_sub(b))).collect();
            json!({"p50": quantile(&counts, 0.5) * 1e3, "p99": quantile(&counts, 0.99) * 1e3, "count": counts.last().map_or(0, |c| c.1)})
        }
        _ => Value::Null,
    };
    for t in tasks {
        t.abort();
    }
    let received = tally.received.load(Ordering::Relaxed);
    let lost_or_gap = tally.lost_or_gap.load(Ordering::Relaxed);
    let mut lat = std::mem::take(&mut *tally.latencies.lock());
    let p = Percentiles::of(&mut lat);
    Ok(json!({
        "target": format!("{:?}", s.kind).to_lowercase(), "mode": format!("{:?}", s.mode).to_lowercase(),
        "nodes": s.bases.len().max(s.publish_bases.len()),
        "threads": s.threads, "subscribers_per_thread": s.subs, "rate": s.rate, "seconds": s.seconds,
        "published": published, "publish_seconds": publish_secs,
        "stream_publish": s.stream_publish, "refused": refused.load(Ordering::Relaxed),
        "deliveries": received, "deliveries_per_s": if total > 0 { received as f64 / elapsed } else { 0.0 },
        "lost": expected.saturating_sub(received + lost_or_gap) + lost_or_gap,
        "duplicated": tally.duplicated.load(Ordering::Relaxed),
        "failed_connections": tally.failed_connections.load(Ordering::Relaxed),
        "connect_seconds": connect_secs,
        "reconnect_seconds": storm_secs,
        "latency_ms": {"p50": ms(p.p50), "p99": ms(p.p99), "p999": ms(p.p999), "max": ms(p.max)},
        "rss_kib": {"before_connections": rss_idle, "connected": rss_connected, "end": rss_end},
        "rss_kib_per_connection": if connected > 0 { (rss_connected.saturating_sub(rss_idle)) as f64 / connected as f64 } else { 0.0 },
        "cpu_seconds": cpu_after - cpu_before,
        "loadgen_cpu_seconds": own_cpu,
        "delivery_lag_ms": lag,
    }))
}

/// The event a publish carries: its name and its `data` as JSON.
fn event_of(shape: Shape, sent_ns: u64, n: u64) -> (&'static str, String) {
    match shape {
        Shape::Thinking => {
            ("agent_thinking", format!(r#"{{"thought":"step {n}: reasoning about the question","sent_ns":{sent_ns}}}"#))
        }
        Shape::Delta => ("agent_message", format!(r#"{{"message_id":"m1","delta":" token","sent_ns":{sent_ns}}}"#)),
    }
}

/// One publish as an HTTP request to `kind`'s publish endpoint.
fn publish_request(kind: Kind, to: &str, thread: &str, shape: Shape, sent_ns: u64, n: u64) -> Publish {
    let (event, data) = event_of(shape, sent_ns, n);
    match kind {
        Kind::Agentwire => {
            Publish { path: format!("/v1/runs/{to}/events"), body: format!(r#"{{"event":"{event}","data":{data}}}"#) }
        }
        Kind::Ws | Kind::SocketIo => Publish {
            path: "/publish".into(),
            body: format!(r#"{{"thread":"{thread}","event":"{event}","data":{data}}}"#),
        },
        Kind::Fastapi => {
            Publish { path: "/publish".into(), body: format!(r#"{{"run_id":"{to}","event":"{event}","data":{data}}}"#) }
        }
    }
}

/// agentwire's `agentwire_delivery_lag_seconds` buckets, summed over `bases`:
/// (upper bound, cumulative count), `+Inf` last. `None` for other systems.
async fn lag_counts(http: &reqwest::Client, kind: Kind, bases: &[String]) -> Option<Vec<(f64, u64)>> {
    if kind != Kind::Agentwire {
        return None;
    }
    let mut sum: Vec<(f64, u64)> = Vec::new();
    for base in bases {
        let text = http.get(format!("{base}/metrics")).send().await.ok()?.text().await.ok()?;
        let buckets = text.lines().filter_map(|line| {
            let rest = line.strip_prefix("agentwire_delivery_lag_seconds_bucket{le=\"")?;
            let (le, count) = rest.split_once("\"}")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, count.trim().parse::<u64>().ok()?))
        });
        for (i, (le, count)) in buckets.enumerate() {
            match sum.get_mut(i) {
                Some(slot) => slot.1 += count,
                None => sum.push((le, count)),
            }
        }
    }
    (!sum.is_empty()).then_some(sum)
}

/// The `q` quantile of cumulative bucket counts, interpolated inside its
/// bucket as Prometheus's `histogram_quantile` does (in the unit of the bounds).
fn quantile(cumulative: &[(f64, u64)], q: f64) -> f64 {
    let Some(&(_, total)) = cumulative.last() else { return 0.0 };
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for &(le, count) in cumulative {
        if count as f64 >= rank {
            if le.is_infinite() {
                return lower.0;
            }
            let inside = (count - lower.1) as f64;
            let share = if inside > 0.0 { (rank - lower.1 as f64) / inside } else { 1.0 };
            return lower.0 + (le - lower.0) * share;
        }
        lower = (le, count);
    }
    lower.0
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn a_quantile_is_interpolated_inside_its_bucket() {
        // 100 observations: 90 under 1 ms, 9 between 1 and 2 ms, 1 past 4 ms.
        let buckets = [(0.001, 90), (0.002, 99), (0.004, 99), (f64::INFINITY, 100)];
        assert!((quantile(&buckets, 0.5) - 0.001 * 50.0 / 90.0).abs() < 1e-9);
        assert!((quantile(&buckets, 0.99) - 0.002).abs() < 1e-9);
        assert_eq!(quantile(&buckets, 1.0), 0.004, "past the last bound: the last bound");
        assert_eq!(quantile(&[], 0.99), 0.0);
    }
}
