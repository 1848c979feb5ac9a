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
//! cargo run --release -p agentwire-bench --bin soak -- [runs] [threads] [events per publish] [kept per thread]
//! ```
//! Defaults: 200,000 runs over 1,000 threads, ten events per publish, everything
//! kept. Data goes under `target/bench-data`.

use agentwire_bench::soak::{PUBLISHERS, SAMPLES, Workload, soak};
use agentwire_bench::timed::{Timing, timed};
use agentwire_log::EmbeddedStore;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let per_publish: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let keep_per_thread: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    let work = Workload { runs, threads, per_publish, keep_per_thread };
    let base = std::path::Path::new("target/bench-data");
    std::fs::create_dir_all(base).expect("bench data directory");
    println!(
        "soak: {runs} runs of 10 events ({per_publish} per publish) over {threads} threads, \
         {PUBLISHERS} publishers, embedded store, {keep_per_thread} events kept per thread (0: all)"
    );
    let mut outcomes = Vec::new();
    for variant in ["evicting", "keeping"] {
        let dir = tempfile::tempdir_in(base).expect("temp dir");
        eprintln!("{variant}:");
        let store = EmbeddedStore::open(dir.path()).expect("open the store");
        let store = timed(store, Timing { forget_runs: variant == "keeping", ..Timing::default() });
        let outcome = soak(store, work, dir.path()).await;
        outcomes.push((variant, outcome));
    }
    println!(
        "| variant | runs/s | RSS after warm-up → end (MB) | growth per ended run after warm-up | runs held in memory at the end | disk per stored event (envelope) | watchdog tick, first → last tenth (µs) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (variant, o) in &outcomes {
        let warm = o.samples[SAMPLES / 5 - 1].1 as f64 / 1e6;
        let end = o.samples.last().map_or(0.0, |s| s.1 as f64 / 1e6);
        println!(
            "| {variant} | {:.0} | {warm:.1} → {end:.1} | {:.1} B | {} | {:.0} B ({:.0} B) | {:.1} → {:.1} |",
            o.runs_per_sec,
            o.slope(),
            o.in_memory,
            o.disk_bytes as f64 / o.stored_events.max(1) as f64,
            o.envelope_bytes,
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
