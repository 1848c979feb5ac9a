//! The soak's workload and measurements, shared by `bin/soak.rs` (by hand, long)
//! and `tests/soak.rs` (in the test suite, short): a steady stream of short runs
//! through agentwire's log, with resident memory sampled as it goes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use agentwire_log::{Log, LogConfig, NewRun, NoFeed, RetentionPolicy, Store, StoredLog};
use agentwire_protocol::{EventKind, NewEvent, ThreadId, Timestamp, UserId};
use serde_json::json;

/// Runs going at once.
pub const PUBLISHERS: usize = 64;
/// RSS samples per soak (one after each tenth of the runs).
pub const SAMPLES: usize = 10;

fn event(kind: EventKind, id: String, data: serde_json::Value) -> NewEvent {
    NewEvent::new(kind, data.as_object().cloned().unwrap_or_default()).with_event_id(id)
}

/// The ten events of one run.
fn run_events() -> Vec<NewEvent> {
    let mut events = vec![event(EventKind::AgentStarted, "e0".into(), json!({"agent_name":"soak"}))];
    for i in 1..=8 {
        let thought = format!("step {i}: reading the results and deciding what to do next");
        events.push(event(EventKind::AgentThinking, format!("e{i}"), json!({"thought": thought, "step": i})));
    }
    events.push(event(EventKind::AgentCompleted, "e9".into(), json!({"result":"ok"})));
    events
}

/// This process's resident memory, in bytes (Linux).
pub fn rss_bytes() -> u64 {
    crate::load::usage(&[std::process::id()]).0 * 1024
}

/// Bytes of the files in `dir`.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// What a soak drives.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    pub runs: usize,
    /// Threads the runs go round (a new one for every run until there are this many).
    pub threads: usize,
    /// Each run's ten events go in publishes of this many (10: one publish).
    pub per_publish: usize,
    /// Events kept per thread (retention; 0 keeps everything).
    pub keep_per_thread: u64,
}

impl Workload {
    /// `runs` runs over `threads` threads, each run's events in one publish, everything kept.
    pub fn new(runs: usize, threads: usize) -> Self {
        Self { runs, threads, per_publish: 10, keep_per_thread: 0 }
    }
}

/// What a soak measured.
pub struct Outcome {
    /// (runs done, RSS) after each tenth.
    pub samples: Vec<(usize, u64)>,
    pub runs_per_sec: f64,
    pub disk_bytes: u64,
    /// Events the store holds at the end.
    pub stored_events: u64,
    /// The mean size of a stored event's JSON envelope, as clients receive it.
    pub envelope_bytes: f64,
    pub in_memory: usize,
    /// The watchdog tick's duration after each tenth, in µs.
    pub ticks: Vec<f64>,
}

impl Outcome {
    /// Bytes of RSS per ended run after the warm-up.
    pub fn slope(&self) -> f64 {
        slope(&self.samples)
    }
}

/// The growth of the second number per unit of the first, (runs, bytes) after
/// the warm-up (the first fifth of the samples): a least-squares slope.
pub fn slope(samples: &[(usize, u64)]) -> f64 {
    let points: Vec<(f64, f64)> =
        samples.iter().skip(samples.len() / 5).map(|&(runs, rss)| (runs as f64, rss as f64)).collect();
    let n = points.len().max(1) as f64;
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let num: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    if den == 0.0 { 0.0 } else { num / den }
}

/// Drives `work` through a log over `store` (whose files are in `dir`),
/// sampling as it goes.
pub async fn soak<S: Store>(store: S, work: Workload, dir: &std::path::Path) -> Outcome {
    let Workload { runs, threads, per_publish, keep_per_thread } = work;
    let retention = RetentionPolicy { max_events_per_thread: keep_per_thread, ..RetentionPolicy::default() };
    let config = LogConfig { retention, ..LogConfig::default() };
    let log = Arc::new(StoredLog::open(store, config, Arc::new(NoFeed)).expect("open the log"));
    let owner = UserId::parse("soak").expect("user id");
    let next = Arc::new(AtomicUsize::new(0));
    let mut samples = Vec::new();
    let mut ticks = Vec::new();
    let began = Instant::now();
    for tenth in 1..=SAMPLES {
        let until = runs * tenth / SAMPLES;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..PUBLISHERS {
            let (log, next, owner) = (log.clone(), next.clone(), owner.clone());
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= until {
                        next.fetch_min(until, Ordering::Relaxed);
                        break;
                    }
                    let thread = ThreadId::parse(&format!("thread_soak{}", i % threads)).expect("thread id");
                    let new = NewRun {
                        thread_id: thread,
                        owner: owner.clone(),
                        agent_name: None,
                        in_process: false,
                        run_id: None,
                    };
                    let run = log.create_run(new).await.expect("create run").run_id;
                    let mut events = run_events();
                    while !events.is_empty() {
                        let rest = events.split_off(per_publish.clamp(1, events.len()));
                        log.append(run.as_str(), events).await.expect("append");
                        events = rest;
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        samples.push((until, rss_bytes()));
        // One watchdog tick, as the server makes once a second: its cost must not grow with history.
        let tick = Instant::now();
        log.expire_idle_runs(Timestamp::now()).await.expect("watchdog tick");
        let tick_us = tick.elapsed().as_secs_f64() * 1e6;
        ticks.push(tick_us);
        eprintln!("  {until:>9} runs  RSS {:>7.1} MB  watchdog tick {tick_us:>8.1} µs", rss_bytes() as f64 / 1e6);
    }
    let runs_per_sec = runs as f64 / began.elapsed().as_secs_f64();
    let in_memory = log.runs_in_memory();
    let stored_events = log.store().event_count().expect("event count");
    let sample = ThreadId::parse("thread_soak0").expect("thread id");
    let page = log.read(&sample, 0, 1000).await.expect("read a thread").events;
    let envelope_bytes = page.iter().map(|e| e.json.len()).sum::<usize>() as f64 / page.len().max(1) as f64;
    assert_eq!(log.idle_index_len(), 0, "no run is running: the watchdog has nothing to watch");
    log.close().await;
    drop(log);
    Outcome { samples, runs_per_sec, disk_bytes: dir_bytes(dir), stored_events, envelope_bytes, in_memory, ticks }
}
