//! The load generator's command line: one [`Scenario`] against one system,
//! printed as one JSON line (see `agentwire_bench::load`).
//!
//! ```sh
//! loadgen --target agentwire --url http://127.0.0.1:8080 --threads 10 --subs 100 --rate 2000 --seconds 5 --pid 1234
//! loadgen --target socketio --url http://127.0.0.1:3000 --mode storm --threads 50 --subs 100 --rate 500
//! ```
//! `--target` agentwire | ws | fastapi | socketio; `--mode` stream | idle | storm;
//! `--shape` thinking | delta. Several nodes of one agentwire cluster: `--url`
//! takes a comma-separated list (subscribers spread over it), `--publish-url`
//! another (publishes spread over it; default: `--url`), and `--pid` one process
//! id per node (figures summed). `--stream-publish` (agentwire): publishes go
//! over one publisher WebSocket per node, not a request each.

use agentwire_bench::load::{Mode, Scenario, Shape, run};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let list = |name: &str, default: &str| -> Vec<String> {
        arg(&args, name, default.to_owned()).split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()
    };
    let bases = list("--url", "http://127.0.0.1:8080");
    let mut scenario = Scenario::new(arg(&args, "--target", agentwire_bench::load::Kind::Agentwire), &bases[0]);
    scenario.publish_bases = list("--publish-url", &bases.join(","));
    scenario.bases = bases;
    scenario.pids = list("--pid", "").iter().filter_map(|p| p.parse().ok()).collect();
    scenario.threads = arg(&args, "--threads", scenario.threads);
    scenario.subs = arg(&args, "--subs", scenario.subs);
    scenario.rate = arg(&args, "--rate", scenario.rate);
    scenario.seconds = arg(&args, "--seconds", scenario.seconds);
    scenario.sources = arg(&args, "--sources", scenario.sources);
    scenario.mode = arg(&args, "--mode", Mode::Stream);
    scenario.shape = if arg(&args, "--shape", String::new()) == "delta" { Shape::Delta } else { Shape::Thinking };
    scenario.stream_publish = args.iter().any(|a| a == "--stream-publish");
    match run(&scenario).await {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(1);
        }
    }
}
