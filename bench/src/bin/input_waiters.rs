//! What long polls on input requests cost the runs around them: `runs` short
//! runs (started, then completed) go through an in-process memory log, first
//! with no waiter, then with `waiters` long polls (`Log::wait_input`) held on
//! as many other runs, each waiting for an answer that does not come. Prints
//! the time and the process's CPU for the runs each way, and the ratio: a
//! run's end should cost the same whether or not other runs are waited on.
//!
//! ```sh
//! cargo build --release -p agentwire-bench
//! ./target/release/input_waiters [runs] [waiters]
//! ```
//! Defaults: 4,000 runs, 2,000 waiters. In process, bounded, stops by itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentwire_bench::load::usage;
use agentwire_log::{Log, LogConfig, MemoryStore, NewRun, NoFeed, StoredLog};
use agentwire_protocol::{EventKind, NewEvent, ThreadId, UserId};
use serde_json::{Value, json};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Publishers ending runs at once.
const PUBLISHERS: usize = 16;

fn event(kind: EventKind, data: Value) -> NewEvent {
    NewEvent::new(kind, data.as_object().cloned().unwrap_or_default())
}

/// A started run in a thread of its own.
async fn started(log: &Arc<dyn Log>, thread: &str) -> String {
    let new = NewRun {
        thread_id: ThreadId::parse(thread).expect("thread id"),
        owner: UserId::parse("bench").expect("user id"),
        agent_name: None,
        in_process: false,
        run_id: None,
    };
    let run = log.create_run(new).await.expect("create run").run_id.to_string();
    log.append(&run, vec![event(EventKind::AgentStarted, json!({"agent_name": "bench"}))]).await.expect("start");
    run
}

/// Starts and completes `runs` runs from [`PUBLISHERS`] tasks; answers the
/// time taken and the process's CPU seconds meanwhile.
async fn end_runs(log: &Arc<dyn Log>, runs: usize, round: &str) -> (Duration, f64) {
    let pid = std::process::id();
    let (_, cpu_before) = usage(&[pid]);
    let began = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let log = log.clone();
        let round = round.to_owned();
        tasks.push(tokio::spawn(async move {
            for n in (p..runs).step_by(PUBLISHERS) {
                let run = started(&log, &format!("thread_{round}{n}")).await;
                let done = event(EventKind::AgentCompleted, json!({"result": "done"}));
                log.append(&run, vec![done]).await.expect("complete");
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher");
    }
    let elapsed = began.elapsed();
    let (_, cpu_after) = usage(&[pid]);
    (elapsed, cpu_after - cpu_before)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4_000);
    let waiters: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2_000);
    let config = LogConfig { run_idle_timeout: Duration::from_secs(3600), ..Default::default() };
    let log: Arc<dyn Log> =
        Arc::new(StoredLog::open(MemoryStore::default(), config, Arc::new(NoFeed)).expect("open log"));

    let (alone, alone_cpu) = end_runs(&log, runs, "alone").await;

    let ask = json!({"request_id": "q", "kind": "text", "prompt": "?"});
    let mut polls = Vec::new();
    for w in 0..waiters {
        let run = started(&log, &format!("thread_waits{w}")).await;
        log.append(&run, vec![event(EventKind::InputRequested, ask.clone())]).await.expect("ask");
        let log = log.clone();
        polls.push(tokio::spawn(async move { log.wait_input(&run, "q", Duration::from_secs(60)).await }));
    }
    // Every poll is parked on its notifier before the runs go.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (beside, beside_cpu) = end_runs(&log, runs, "beside").await;
    for p in &polls {
        assert!(!p.is_finished(), "a long poll ended while its request was open");
    }
    for p in polls {
        p.abort();
    }

    println!("| {runs} runs started and completed | time | process CPU |");
    println!("|---|---:|---:|");
    println!("| no long poll | {:.1} ms | {alone_cpu:.2} s |", alone.as_secs_f64() * 1e3);
    println!("| {waiters} long polls on other runs | {:.1} ms | {beside_cpu:.2} s |", beside.as_secs_f64() * 1e3);
    println!(
        "with / without long polls: {:.2}x the time, {:.2}x the CPU",
        beside.as_secs_f64() / alone.as_secs_f64(),
        beside_cpu / alone_cpu.max(1e-9)
    );
}
