//! The soak over HTTP against three nodes sharing one engine: does each node's
//! resident memory follow what is live, run after run (`../shared/ENDURANCE.md`,
//! issue 15 item 2)? The workload is `agentwire_bench::soak_http`, driven
//! through the first node; the other two follow the same feed (every append
//! reaches them) and serve nothing else, so their growth is what following a
//! busy deployment costs.
//!
//! ```sh
//! cargo build --release -p agentwire -p agentwire-bench
//! ./target/release/soak_cluster redis://127.0.0.1:6379 [runs] [threads] [watched] [node settings…]
//! ./target/release/soak_cluster nats://127.0.0.1:4222 [runs] [threads] [watched] [node settings…]
//! ```
//! Settings after the numbers go to every node (e.g. `--thread-cache 500`,
//! which bounds a node's thread views and the records it caches).
//! Defaults: 100,000 runs, 100,000 threads, 1,000 watched. Give it a Redis or
//! NATS on loopback that holds nothing you need: the nodes write under a
//! prefix of their own and leave it there. They start with
//! `--allow-weak-durability`, since a Redis or NATS set up for a benchmark
//! seldom passes the durability check.

use std::path::Path;

use agentwire_bench::load::usage;
use agentwire_bench::soak::{SAMPLES, slope};
use agentwire_bench::soak_http::{PUBLISHERS, Plan, SERVE_ARGS, Target, drive, start_release_server};
use serde_json::Value;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEY: &str = "soak-publish-key";
const NODES: usize = 3;

fn rss(pid: u32) -> u64 {
    usage(&[pid]).0 * 1024
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let engine = args.next().unwrap_or_else(|| {
        eprintln!("usage: soak_cluster <redis://…|nats://…> [runs] [threads] [watched]");
        std::process::exit(2);
    });
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000).max(1);
    let watched: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000).min(threads);
    let settings: Vec<String> = args.collect();
    let base_dir = Path::new("target/bench-data");
    std::fs::create_dir_all(base_dir).expect("bench data directory");
    let data = tempfile::tempdir_in(base_dir).expect("data directory");
    let prefix = format!("soak{}", std::process::id());
    let mut extra = SERVE_ARGS.to_vec();
    extra.extend(["--backbone", &engine, "--backbone-prefix", &prefix, "--allow-weak-durability"]);
    extra.extend(settings.iter().map(String::as_str));
    let mut nodes = Vec::new();
    for n in 0..NODES {
        let id = format!("soak-node-{n}");
        let mut node_args = extra.clone();
        node_args.extend(["--node-id", &id]);
        nodes.push(start_release_server(&data.path().join(&id), KEY, &node_args).await);
    }
    let pids: Vec<u32> = nodes.iter().map(|(child, _)| child.id().expect("node pid")).collect();
    let base = nodes[0].1.clone();
    let token: Value = reqwest::get(format!("{base}/dev/token?user=soak")).await.unwrap().json().await.unwrap();
    let token = token["token"].as_str().expect("a dev token").to_owned();
    println!(
        "soak over HTTP, {NODES} nodes on {engine} ({}): {runs} runs of 10 events over {threads} threads, \
         {watched} watched, {PUBLISHERS} publishers, all through the first node",
        settings.join(" ")
    );
    println!("| runs | RSS node 1 / 2 / 3 (MB) | publish p50 / p99 (ms) | node 1 CPU (s) |");
    println!("|---|---|---|---|");
    let target =
        Target { base: &base, pid: pids[0], data_dir: data.path(), publish_key: KEY, token: &token, user: "soak" };
    let mut followers: Vec<Vec<(usize, u64)>> = vec![Vec::new(); NODES - 1];
    let outcome = drive(&target, Plan { runs, threads, watched }, |t| {
        let others: Vec<u64> = pids[1..].iter().map(|&pid| rss(pid)).collect();
        for (samples, &bytes) in followers.iter_mut().zip(&others) {
            samples.push((t.runs, bytes));
        }
        println!(
            "| {} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} | {:.1} |",
            t.runs,
            t.server_rss as f64 / 1e6,
            others[0] as f64 / 1e6,
            others[1] as f64 / 1e6,
            t.publish.p50.as_secs_f64() * 1e3,
            t.publish.p99.as_secs_f64() * 1e3,
            t.server_cpu
        );
    })
    .await;
    let done = outcome.runs();
    let elapsed = outcome.elapsed.as_secs_f64();
    let warm = outcome.tenths[SAMPLES / 5 - 1].server_rss as f64;
    let end = outcome.tenths.last().map_or(0.0, |t| t.server_rss as f64);
    println!(
        "{done} runs in {elapsed:.1} s ({:.0} runs/s); node 1 RSS after warm-up {:.1} → {:.1} MB, {:.1} B per ended run; \
         nodes 2 and 3 (following): {:.1} and {:.1} B per ended run; watchers received {} events of {} published to watched threads",
        done as f64 / elapsed,
        warm / 1e6,
        end / 1e6,
        outcome.slope(),
        slope(&followers[0]),
        slope(&followers[1]),
        outcome.seen,
        outcome.published_to_watched
    );
    for (mut child, _) in nodes {
        let _ = child.kill().await;
    }
}
