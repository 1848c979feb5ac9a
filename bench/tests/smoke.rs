//! The benchmark's smallest scenarios, run as tests against a real in-process
//! agentwire server: they check what the benchmark reports beside its timings
//! (every delivery arrives, none twice, none out of order, every connection
//! made), not how fast. Timings belong to `bench/run.sh`.

use std::sync::Arc;
use std::time::Duration;

use agentwire_agent::DemoAgent;
use agentwire_bench::load::{Kind, Mode, Scenario, Shape, run};
use agentwire_hub::{Hub, HubMetrics};
use agentwire_log::MemoryLog;
use agentwire_server::{Server, ServerConfig};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// A dev-mode server with the memory store on a free loopback port.
async fn server() -> (String, CancellationToken) {
    let mut config = ServerConfig::from_env().expect("default settings");
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.publish_rate = 0;
    (config.max_connections_per_user, config.max_connections_per_ip) = (100_000, 100_000);
    let hub = Hub::new(config.hub_config(), HubMetrics::new());
    let log = Arc::new(MemoryLog::new(config.log_config(), hub.clone()).expect("log"));
    let agent = Arc::new(DemoAgent { step_delay: Duration::ZERO });
    let server = Server::new(config, log, hub, Some(agent)).await.expect("server");
    let listener = server.bind().await.expect("bind");
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move { server.serve(listener, signal.cancelled_owned()).await.expect("serve") });
    (base, stop)
}

fn assert_complete(report: &Value, expected_deliveries: u64) {
    assert_eq!(report["failed_connections"], 0, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicated"], 0, "{report}");
    assert_eq!(report["deliveries"], expected_deliveries, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smallest_fan_out_and_token_stream_lose_nothing() {
    let (base, stop) = server().await;
    let mut scenario = Scenario::new(Kind::Agentwire, &base);
    (scenario.threads, scenario.subs, scenario.rate, scenario.seconds) = (2, 5, 100, 1.0);
    let report = run(&scenario).await.expect("fan-out runs");
    assert_complete(&report, 100 * 5);

    scenario.shape = Shape::Delta;
    (scenario.threads, scenario.subs) = (5, 1);
    let report = run(&scenario).await.expect("token stream runs");
    assert_complete(&report, 100);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_reconnect_storm_resumes_without_loss() {
    let (base, stop) = server().await;
    let mut scenario = Scenario::new(Kind::Agentwire, &base);
    (scenario.threads, scenario.subs, scenario.rate, scenario.seconds) = (4, 25, 200, 1.0);
    scenario.mode = Mode::Storm;
    let report = run(&scenario).await.expect("storm runs");
    assert_complete(&report, 200 * 25);
    assert!(report["reconnect_seconds"].as_f64().is_some(), "{report}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_counted_and_measured() {
    let (base, stop) = server().await;
    let mut scenario = Scenario::new(Kind::Agentwire, &base);
    (scenario.threads, scenario.subs, scenario.seconds) = (10, 20, 0.5);
    scenario.mode = Mode::Idle;
    scenario.pids = vec![std::process::id()];
    let report = run(&scenario).await.expect("idle runs");
    assert_complete(&report, 0);
    assert!(report["rss_kib"]["connected"].as_u64().unwrap_or(0) > 0, "{report}");
    stop.cancel();
}
