//! Soak: a steady stream of short runs through agentwire's log on its default
//! durable store, measuring whether resident memory and disk follow what is
//! live or grow with history (`../shared/ENDURANCE.md`).
//!
//! Each run is registered, gets ten events with `event_id`s in one publish
//! (`agent_started`, eight `agent_thinking`, `agent_completed`) and ends; 64
//! publishers run at once over a fixed set of threads. Two variants run one
//! after the other on fresh stores, in the same process:
//!
//! - `evicting`: the log as the server runs it (ended runs leave memory once durable);
//! - `keeping`: the same log over a store that says it cannot answer for ended
//!   runs, so they stay in memory: how the log behaved before eviction.
//!
//! RSS is sampled after every tenth of the runs; the slope is taken after the
//! first fifth (warm-up: the store's page cache and the allocator fill up).
//!
//! ```sh
//! cargo run --release -p agentwire-bench --bin soak -- [runs] [threads]
//! ```
//! Defaults: 200,000 runs over 1,000 threads. Data goes under `target/bench-data`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use agentwire_bench::timed::Timed;
use agentwire_log::{EmbeddedStore, Log, LogConfig, NewRun, NoFeed, Store, StoredLog};
use agentwire_protocol::{EventKind, NewEvent, ThreadId, Timestamp, UserId};
use serde_json::json;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PUBLISHERS: usize = 64;
const SAMPLES: usize = 10;

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

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

struct Outcome {
    /// (runs done, RSS) after each tenth.
    samples: Vec<(usize, u64)>,
    runs_per_sec: f64,
    disk_bytes: u64,
    in_memory: usize,
    /// The watchdog tick's duration after each tenth, in µs.
    ticks: Vec<f64>,
}

impl Outcome {
    /// Bytes of RSS per ended run after the warm-up (least squares over the samples past it).
    fn slope(&self) -> f64 {
        let points: Vec<(f64, f64)> =
            self.samples.iter().skip(SAMPLES / 5).map(|&(runs, rss)| (runs as f64, rss as f64)).collect();
        let n = points.len() as f64;
        let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
        let num: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
        let den: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
        if den == 0.0 { 0.0 } else { num / den }
    }
}

async fn soak<S: Store>(store: S, runs: usize, threads: usize, dir: &std::path::Path) -> Outcome {
    let log = Arc::new(StoredLog::open(store, LogConfig::default(), Arc::new(NoFeed)).expect("open the log"));
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
                    log.append(run.as_str(), run_events()).await.expect("append");
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
    assert_eq!(log.idle_index_len(), 0, "no run is running: the watchdog has nothing to watch");
    log.close().await;
    drop(log);
    Outcome { samples, runs_per_sec, disk_bytes: dir_bytes(dir), in_memory, ticks }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let base = std::path::Path::new("target/bench-data");
    std::fs::create_dir_all(base).expect("bench data directory");
    println!("soak: {runs} runs of 10 events over {threads} threads, {PUBLISHERS} publishers, embedded store");
    let mut outcomes = Vec::new();
    for variant in ["evicting", "keeping"] {
        let dir = tempfile::tempdir_in(base).expect("temp dir");
        eprintln!("{variant}:");
        let store = EmbeddedStore::open(dir.path()).expect("open the store");
        let store = Timed { forget_runs: variant == "keeping", ..Timed::new(store) };
        let outcome = soak(store, runs, threads, dir.path()).await;
        outcomes.push((variant, outcome));
    }
    println!(
        "| variant | runs/s | RSS after warm-up → end (MB) | growth per ended run after warm-up | runs held in memory at the end | disk per event | watchdog tick, first → last tenth (µs) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (variant, o) in &outcomes {
        let warm = o.samples[SAMPLES / 5 - 1].1 as f64 / 1e6;
        let end = o.samples.last().map_or(0.0, |s| s.1 as f64 / 1e6);
        println!(
            "| {variant} | {:.0} | {warm:.1} → {end:.1} | {:.1} B | {} | {:.0} B | {:.1} → {:.1} |",
            o.runs_per_sec,
            o.slope(),
            o.in_memory,
            o.disk_bytes as f64 / (runs * 10) as f64,
            o.ticks.first().copied().unwrap_or(0.0),
            o.ticks.last().copied().unwrap_or(0.0),
        );
    }
    let (evicting, keeping) = (&outcomes[0].1, &outcomes[1].1);
    println!(
        "growth per ended run: evicting {:.1} B, keeping {:.1} B ({:.0}× less)",
        evicting.slope(),
        keeping.slope(),
        keeping.slope() / evicting.slope().max(1.0)
    );
}
