//! The soak over HTTP: a release `agentwire` server driven the way publishers
//! and watchers use it, run after run, to see whether its resident memory and
//! its disk follow what is live (`../shared/ENDURANCE.md`). The workload and
//! the measurements are `agentwire_bench::soak_http`; this starts the server
//! and prints the table.
//!
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

use std::path::Path;

use agentwire_bench::soak::SAMPLES;
use agentwire_bench::soak_http::{PUBLISHERS, Plan, SERVE_ARGS, Target, drive, start_release_server};
use serde_json::Value;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEY: &str = "soak-publish-key";

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000).max(1);
    let watched: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000).min(threads);
    let base_dir = Path::new("target/bench-data");
    std::fs::create_dir_all(base_dir).expect("bench data directory");
    let data = tempfile::tempdir_in(base_dir).expect("data directory");
    let (mut server, base) = start_release_server(data.path(), KEY, &SERVE_ARGS).await;
    let pid = server.id().expect("server pid");
    let token: Value = reqwest::get(format!("{base}/dev/token?user=soak")).await.unwrap().json().await.unwrap();
    let token = token["token"].as_str().expect("a dev token").to_owned();
    println!(
        "soak over HTTP: {runs} runs of 10 events over {threads} threads, {watched} watched, {PUBLISHERS} publishers"
    );
    println!(
        "| runs | server RSS (MB) | disk per event (B) | publish p50 / p99 (ms) | server CPU (s) | load generator CPU (s) |"
    );
    println!("|---|---|---|---|---|---|");
    let target = Target { base: &base, pid, data_dir: data.path(), publish_key: KEY, token: &token, user: "soak" };
    let outcome = drive(&target, Plan { runs, threads, watched }, |t| {
        println!(
            "| {} | {:.1} | {:.0} | {:.1} / {:.1} | {:.1} | {:.1} |",
            t.runs,
            t.server_rss as f64 / 1e6,
            t.disk_per_event,
            t.publish.p50.as_secs_f64() * 1e3,
            t.publish.p99.as_secs_f64() * 1e3,
            t.server_cpu,
            t.own_cpu
        );
    })
    .await;
    let warm = outcome.tenths[SAMPLES / 5 - 1].server_rss as f64;
    let end = outcome.tenths.last().map_or(0.0, |t| t.server_rss as f64);
    let done = outcome.runs();
    let elapsed = outcome.elapsed.as_secs_f64();
    println!(
        "{done} runs in {elapsed:.1} s ({:.0} runs/s); server RSS after warm-up {:.1} → {:.1} MB, {:.1} B per ended run; \
         watchers received {} events of {} published to watched threads",
        done as f64 / elapsed,
        warm / 1e6,
        end / 1e6,
        outcome.slope(),
        outcome.seen,
        outcome.published_to_watched
    );
    let _ = server.kill().await;
}
