//! Appends through agentwire's log (the same `StoredLog` the server runs) over
//! each store, as concurrent publishers would, and prints throughput and latency
//! side by side: the embedded redb store (agentwire's default), fjall (the peer
//! it was chosen against) and the memory store (no disk, the ceiling).
//!
//! ```sh
//! cargo run --release -p agentwire-bench --bin log_append -- [seconds] [publishers] [rate]
//! ```
//! Defaults: 3 s per measurement, 64 publishers, 10,000 events/s for the latency run.
//! Data goes under `target/bench-data` (a real disk, so fsync costs what it costs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentwire_bench::fjall_store::FjallStore;
use agentwire_bench::stats::{Percentiles, ms};
use agentwire_bench::timed::{CommitLog, Timing, timed};
use agentwire_log::{EmbeddedStore, Log, LogConfig, MemoryStore, NewRun, NoFeed, Store, StoredLog};
use agentwire_protocol::{EventKind, NewEvent, ThreadId, UserId};
use serde_json::json;
use tokio::sync::Mutex;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const THREADS: usize = 16;
const RUNS_PER_THREAD: usize = 4;

fn thinking(n: u64) -> NewEvent {
    let data =
        json!({"thought": format!("step {n}: looking at the search results and deciding what to do next"), "step": n});
    NewEvent::new(EventKind::AgentThinking, data.as_object().cloned().unwrap_or_default())
}

async fn setup(log: &Arc<dyn Log>) -> Vec<String> {
    let owner = UserId::parse("bench").expect("user id");
    let mut runs = Vec::new();
    for t in 0..THREADS {
        let thread = ThreadId::parse(&format!("thread_bench{t}")).expect("thread id");
        for _ in 0..RUNS_PER_THREAD {
            let new = NewRun {
                thread_id: thread.clone(),
                owner: owner.clone(),
                agent_name: None,
                in_process: false,
                run_id: None,
            };
            let run = log.create_run(new).await.expect("create run").run_id.to_string();
            let started = NewEvent::new(
                EventKind::AgentStarted,
                json!({"agent_name":"bench"}).as_object().cloned().unwrap_or_default(),
            );
            log.append(&run, vec![started]).await.expect("start run");
            runs.push(run);
        }
    }
    runs
}

/// Events appended per second by `publishers` closed-loop publishers, `batch` events per append.
async fn throughput(log: &Arc<dyn Log>, runs: &[String], publishers: usize, batch: usize, seconds: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let (log, run) = (log.clone(), runs[p % runs.len()].clone());
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            while Instant::now() < deadline {
                let events = (0..batch as u64).map(|i| thinking(sent + i)).collect();
                log.append(&run, events).await.expect("append");
                sent += batch as u64;
            }
            sent
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("publisher");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Per-append latency with appends of one event arriving at `rate` per second (open loop).
async fn latency_at(log: &Arc<dyn Log>, runs: &[String], rate: u64, seconds: f64) -> (Percentiles, usize) {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let per_tick = (rate / 1000).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    let mut n = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        for _ in 0..per_tick {
            let (log, run, samples) = (log.clone(), runs[n as usize % runs.len()].clone(), samples.clone());
            n += 1;
            tasks.push(tokio::spawn(async move {
                let began = Instant::now();
                log.append(&run, vec![thinking(n)]).await.expect("append");
                samples.lock().await.push(began.elapsed());
            }));
        }
    }
    for t in tasks {
        t.await.expect("appender");
    }
    let mut samples = samples.lock().await;
    let count = samples.len();
    (Percentiles::of(&mut samples), count)
}

struct Row {
    name: &'static str,
    single: f64,
    batched: f64,
    latency: Percentiles,
    sent: usize,
    /// Commits, mean events per commit and commit time during the latency run.
    commits: (usize, f64, Percentiles),
    /// The same during the run of one event per append.
    single_commits: (usize, f64, Percentiles),
}

async fn measure(name: &'static str, log: Arc<dyn Log>, commits: Arc<CommitLog>, args: &Args) -> Row {
    let runs = setup(&log).await;
    let mut single = 0.0;
    let mut batched = 0.0;
    let mut single_commits = (0, 0.0, Percentiles::default());
    let mut throughputs = async || {
        commits.reset();
        single = throughput(&log, &runs, args.publishers, 1, args.seconds).await;
        single_commits = commits.summary();
        batched = throughput(&log, &runs, args.publishers, 10, args.seconds).await;
    };
    if args.grown {
        // The throughput runs first: latency is then measured on a store that has grown.
        throughputs().await;
    }
    commits.reset();
    let (latency, sent) = latency_at(&log, &runs, args.rate, args.seconds).await;
    let commit_summary = commits.summary();
    if !args.grown {
        throughputs().await;
    }
    log.close().await;
    Row { name, single, batched, latency, sent, commits: commit_summary, single_commits }
}

struct Args {
    seconds: f64,
    publishers: usize,
    rate: u64,
    /// Measure latency after the throughput runs (on a grown store) rather than before.
    grown: bool,
}

/// A log over `store`, its commits timed.
fn timed_log<S: Store>(store: S, config: &LogConfig) -> (Arc<dyn Log>, Arc<CommitLog>) {
    let commits = Arc::new(CommitLog::default());
    let store = timed(store, Timing { commits: commits.clone(), forget_runs: false });
    let log = StoredLog::open(store, config.clone(), Arc::new(NoFeed)).expect("open log");
    (Arc::new(log), commits)
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = Args {
        seconds: argv.first().and_then(|s| s.parse().ok()).unwrap_or(3.0),
        publishers: argv.get(1).and_then(|s| s.parse().ok()).unwrap_or(64),
        rate: argv.get(2).and_then(|s| s.parse().ok()).unwrap_or(10_000),
        grown: argv.get(4).is_some_and(|s| s == "grown"),
    };
    let only = argv.get(3).cloned().unwrap_or_else(|| "all".into());
    let wanted = |name: &str| only == "all" || name.starts_with(only.as_str());
    let Args { seconds, publishers, rate, grown } = args;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data");
    std::fs::create_dir_all(&base).expect("bench data dir");
    let config = LogConfig { run_idle_timeout: Duration::from_secs(3600), ..Default::default() };

    let rows = runtime.block_on(async {
        let redb_dir = tempfile::tempdir_in(&base).expect("temp dir");
        let fjall_dir = tempfile::tempdir_in(&base).expect("temp dir");
        let mut rows = Vec::new();
        if wanted("redb") {
            let (log, commits) = timed_log(EmbeddedStore::open(redb_dir.path()).expect("redb"), &config);
            rows.push(measure("redb", log, commits, &args).await);
        }
        if wanted("fjall") {
            let (log, commits) = timed_log(FjallStore::open(fjall_dir.path()).expect("fjall"), &config);
            rows.push(measure("fjall", log, commits, &args).await);
        }
        if wanted("memory") {
            let (log, commits) = timed_log(MemoryStore::default(), &config);
            rows.push(measure("memory (no disk)", log, commits, &args).await);
        }
        rows
    });

    let when = if grown { "after the throughput runs" } else { "on a young store, before the throughput runs" };
    println!(
        "log append, {publishers} concurrent publishers, {seconds} s per figure, {THREADS} threads x {RUNS_PER_THREAD} runs"
    );
    println!("latency measured {when}");
    println!(
        "| store | events/s, 1 per append | events/s, 10 per append | latency at {rate}/s p50 / p99 / p999 / max (ms) | appends timed | commits, events per commit, commit p50 / p99 / max (ms) | the same, 1 per append |"
    );
    println!("|---|---:|---:|---|---:|---|---|");
    for r in &rows {
        let (l, (n, per, c), (sn, sper, sc)) = (r.latency, r.commits, r.single_commits);
        println!(
            "| {} | {:.0} | {:.0} | {} / {} / {} / {} | {} | {n}, {per:.1}, {} / {} / {} | {sn}, {sper:.1}, {} / {} / {} |",
            r.name,
            r.single,
            r.batched,
            ms(l.p50),
            ms(l.p99),
            ms(l.p999),
            ms(l.max),
            r.sent,
            ms(c.p50),
            ms(c.p99),
            ms(c.max),
            ms(sc.p50),
            ms(sc.p99),
            ms(sc.max)
        );
    }
    let (Some(redb), Some(fjall)) = (rows.iter().find(|r| r.name == "redb"), rows.iter().find(|r| r.name == "fjall"))
    else {
        return;
    };
    println!(
        "\nredb / fjall: {:.2}x events/s (1 per append), {:.2}x (10 per append), p99 {:.2}x",
        redb.single / fjall.single,
        redb.batched / fjall.batched,
        redb.latency.p99.as_secs_f64() / fjall.latency.p99.as_secs_f64().max(1e-9)
    );
}
