//! Backbone outages: the engine under two nodes dies mid-publishing and comes
//! back. Publishes during the outage are answered `503` (never `200` for
//! something not stored), `/readyz` turns unready, the nodes recover by
//! themselves, and every event answered `200` is there afterwards, once, with
//! no gap in `seq`.
//!
//! Each test runs its own Redis or NATS server (the machine's binaries) on a
//! free loopback port with a data directory of its own, so stopping it disturbs
//! nothing else. Redis runs with `appendfsync always`, as the README asks of a
//! Redis that must not lose what it acknowledged.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use parking_lot::Mutex;
use serde_json::json;
use tokio::process::{Child, Command};

const THREAD: &str = "thread_outage0";

#[derive(Clone, Copy)]
enum Engine {
    Redis,
    Nats,
}

impl Engine {
    fn url(self, port: u16) -> String {
        match self {
            Engine::Redis => format!("redis://127.0.0.1:{port}"),
            Engine::Nats => format!("nats://127.0.0.1:{port}"),
        }
    }

    /// Starts the engine's real server on `port` over `dir` and waits until it listens.
    async fn start(self, port: u16, dir: &std::path::Path) -> Child {
        let port_arg = port.to_string();
        let mut command = match self {
            Engine::Redis => {
                let mut c = Command::new("redis-server");
                c.args(["--bind", "127.0.0.1", "--port", &port_arg, "--save", ""])
                    .args([
                        "--appendonly",
                        "yes",
                        "--appendfsync",
                        "always",
                        "--enable-debug-command",
                        "local",
                        "--dir",
                    ])
                    .arg(dir);
                c
            }
            Engine::Nats => {
                let mut c = Command::new("nats-server");
                c.args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"]).arg(dir);
                c
            }
        };
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the engine's server binary (redis-server / nats-server) is installed");
        tokio::time::timeout(WAIT, async {
            while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the engine listens");
        child
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[derive(Default)]
struct Tally {
    acked: Mutex<HashMap<String, u64>>,
    refused: AtomicUsize,
}

/// Publishes thoughts to `base` until `stop`; a `503` is retried with the same
/// `event_id`, as a client should. Anything but `200` or `503` fails the test.
async fn publish(base: String, run: String, tag: &'static str, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    // A write cut off by the outage is settled before it is answered, which can take a few seconds.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let event_id = format!("{tag}-{n}");
        let body = json!({"event":"agent_thinking","data":{"thought":format!("step {n}")},"event_id":event_id});
        match post(&http, format!("{base}/v1/runs/{run}/events"), body).await {
            Ok((200, answer)) => {
                tally.acked.lock().insert(event_id, answer["seqs"][0].as_u64().expect("seq"));
                n += 1;
            }
            Ok((503, _)) => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok((status, answer)) => panic!("{base}: unexpected {status} {answer}"),
            Err(e) => panic!("{base}: the node itself must stay up through the outage: {e}"),
        }
    }
}

async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while !done().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

async fn ready(http: &reqwest::Client, base: &str) -> u16 {
    http.get(format!("{base}/readyz")).send().await.map(|r| r.status().as_u16()).unwrap_or(0)
}

async fn survive_an_outage(engine: Engine) {
    let engine_dir = tempfile::tempdir().unwrap();
    let node_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = engine.start(port, engine_dir.path()).await;
    let url = engine.url(port);
    let prefix = format!("outage{}", std::process::id());
    // The Redis here syncs every write; a single JetStream server is one replica.
    let args = [
        "--backbone",
        url.as_str(),
        "--backbone-prefix",
        prefix.as_str(),
        "--node-ttl",
        "30s",
        "--allow-weak-durability",
    ];
    let nodes = [start_with(node_dir.path(), &args).await, start_with(node_dir.path(), &args).await];
    let bases: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();
    // A write cut off by the outage is settled before it is answered, which can take a few seconds.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();

    let (status, body) =
        post(&http, format!("{}/v1/runs", bases[0]), json!({"thread_id":THREAD,"user_id":"crash"})).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let run = body["run_id"].as_str().unwrap().to_owned();
    let started = json!({"event":"agent_started","data":{"agent_name":"outage"},"event_id":"start"});
    assert_eq!(post(&http, format!("{}/v1/runs/{run}/events", bases[1]), started).await.unwrap().0, 200);

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let publishers = [
        tokio::spawn(publish(bases[0].clone(), run.clone(), "a", tally.clone(), stop.clone())),
        tokio::spawn(publish(bases[1].clone(), run.clone(), "b", tally.clone(), stop.clone())),
    ];
    until("publishing is under way", async || tally.acked.lock().len() >= 50).await;

    server.kill().await.expect("stop the engine");
    until("both nodes report unready", async || {
        ready(&http, &bases[0]).await == 503 && ready(&http, &bases[1]).await == 503
    })
    .await;
    until("publishes are refused", async || tally.refused.load(Ordering::Relaxed) > 0).await;
    let acked_in_outage = tally.acked.lock().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(tally.acked.lock().len(), acked_in_outage, "a publish was acknowledged while the engine was down");

    let _server = engine.start(port, engine_dir.path()).await;
    until("both nodes are ready again", async || {
        ready(&http, &bases[0]).await == 200 && ready(&http, &bases[1]).await == 200
    })
    .await;
    until("publishing resumes on both nodes", async || {
        let acked = tally.acked.lock();
        ["a", "b"].iter().all(|tag| acked.keys().filter(|id| id.starts_with(tag)).count() > acked_in_outage / 2 + 20)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.await.expect("publisher");
    }

    let acked = tally.acked.lock().clone();
    for base in &bases {
        let events = history(&http, base, THREAD).await;
        let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{base}: seq has a gap");
        let mut stored: HashMap<&str, u64> = HashMap::new();
        for e in &events {
            let id = e["event_id"].as_str().unwrap();
            assert!(stored.insert(id, e["seq"].as_u64().unwrap()).is_none(), "{id} is stored twice");
        }
        for (id, seq) in &acked {
            assert_eq!(stored.get(id.as_str()), Some(seq), "{base}: {id} was answered 200 and is missing or moved");
        }
    }
    eprintln!(
        "{} acknowledged, {} refused with 503 during the outage",
        acked.len(),
        tally.refused.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_outage_answers_503_and_loses_nothing_acknowledged() {
    survive_an_outage(Engine::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_outage_answers_503_and_loses_nothing_acknowledged() {
    survive_an_outage(Engine::Nats).await;
}

/// One node on a fresh engine of its own, with a run started in [`THREAD`].
struct Held {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    engine: Child,
    port: u16,
    node: Node,
    http: reqwest::Client,
    /// Where the run's events are published.
    events: String,
}

impl Held {
    async fn start(engine: Engine) -> Self {
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let port = free_port();
        let server = engine.start(port, dirs.0.path()).await;
        let url = engine.url(port);
        let args = ["--backbone", url.as_str(), "--backbone-prefix", "held", "--allow-weak-durability"];
        let node = start_with(dirs.1.path(), &args).await;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        let (status, body) =
            post(&http, format!("{}/v1/runs", node.base), json!({"thread_id":THREAD,"user_id":"crash"})).await.unwrap();
        assert_eq!(status, 201, "{body}");
        let events = format!("{}/v1/runs/{}/events", node.base, body["run_id"].as_str().unwrap());
        let started = json!({"event":"agent_started","data":{"agent_name":"held"}});
        assert_eq!(post(&http, events.clone(), started).await.unwrap().0, 200);
        Self { _dirs: dirs, engine: server, port, node, http, events }
    }

    /// Two thoughts, with an `event_id` and without.
    fn bodies() -> [serde_json::Value; 2] {
        [
            json!({"event":"agent_thinking","data":{"thought":"with an id"},"event_id":"held-1"}),
            json!({"event":"agent_thinking","data":{"thought":"without an id"}}),
        ]
    }

    /// Publishes `body` and checks it is answered `200` with `seq`.
    async fn publish(&self, body: serde_json::Value, seq: u64) {
        let (status, answer) = post(&self.http, self.events.clone(), body).await.unwrap();
        assert_eq!((status, answer["seqs"][0].as_u64()), (200, Some(seq)), "{answer}");
    }

    /// Both thoughts are in the thread, once each.
    async fn stored_once(&self) {
        let thoughts: Vec<String> = history(&self.http, &self.node.base, THREAD)
            .await
            .iter()
            .filter_map(|e| e["data"]["thought"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(thoughts, ["with an id", "without an id"], "each stored once");
    }
}

/// Issue 15: a write whose answer was lost was answered `503` ("not stored")
/// though Redis went on to run it, so a publisher retrying without an
/// `event_id` stored the event twice. A Redis that holds writes back for longer
/// than a node waits for an answer (`CLIENT PAUSE … WRITE`) still runs them
/// afterwards: the node finds out what happened before it answers, so both
/// publishes, with an `event_id` and without, get `200` with their seq, and
/// each event is stored once.
#[tokio::test]
async fn redis_a_publish_whose_answer_is_held_back_is_answered_with_what_happened() {
    let held = Held::start(Engine::Redis).await;
    for (n, body) in Held::bodies().into_iter().enumerate() {
        // Longer than the node's 2 s wait for an answer.
        let paused = Command::new("redis-cli")
            .args(["-p", &held.port.to_string(), "CLIENT", "PAUSE", "3500", "WRITE"])
            .output()
            .await
            .expect("redis-cli runs");
        assert!(paused.status.success(), "{paused:?}");
        held.publish(body, n as u64 + 2).await;
    }
    held.stored_once().await;
}

/// The same on NATS: a JetStream server frozen (SIGSTOP) for longer than a
/// node waits for an acknowledgement takes the message when it wakes; the node
/// has sent it again under the same `Nats-Msg-Id`, which JetStream stores at
/// most once, so both publishes get `200` and each event is stored once.
#[tokio::test]
async fn nats_a_publish_whose_acknowledgement_is_held_back_is_answered_with_what_happened() {
    let held = Held::start(Engine::Nats).await;
    let pid = held.engine.id().expect("nats pid").to_string();
    let signal = |sig: &'static str| Command::new("kill").args([sig, pid.as_str()]).status();
    for (n, body) in Held::bodies().into_iter().enumerate() {
        assert!(signal("-STOP").await.expect("kill runs").success());
        // Longer than the node's 2 s wait for an acknowledgement.
        let (publish, wake) = tokio::join!(held.publish(body, n as u64 + 2), async {
            tokio::time::sleep(Duration::from_millis(3500)).await;
            signal("-CONT").await.expect("kill runs")
        });
        let () = publish;
        assert!(wake.success());
    }
    held.stored_once().await;
}

/// Issue 15, item 1: nodes found live peers with a `SCAN` over the whole
/// keyspace, which slowed with every key until a healthy node's heartbeat
/// lapsed before its next one and its runs were ended with `worker_lost`.
/// Here Redis holds a million unrelated keys under the deployment's prefix,
/// nodes declare a peer lost after 2 s of silence, and a demo run on one node
/// stays in flight for 20 s: nobody is declared lost.
#[tokio::test]
async fn redis_a_million_keys_under_the_prefix_do_not_make_a_live_node_look_dead() {
    let (engine_dir, node_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let port = free_port();
    let _redis = Engine::Redis.start(port, engine_dir.path()).await;
    let populated = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "DEBUG", "POPULATE", "1000000", "many:junk", "16"])
        .output()
        .await
        .expect("redis-cli runs");
    assert!(populated.status.success() && String::from_utf8_lossy(&populated.stdout).contains("OK"), "{populated:?}");
    let url = Engine::Redis.url(port);
    let args = ["--backbone", url.as_str(), "--backbone-prefix", "many", "--node-ttl", "2s", "--allow-weak-durability"];
    let nodes = [start_with(node_dir.path(), &args).await, start_with(node_dir.path(), &args).await];
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    // The demo agent's first step takes 30 s here (`--demo-step-delay 30s`): the run stays in flight.
    let run = ask_demo(&http, &nodes[0].base, "thread_many0").await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let info: serde_json::Value = http
        .get(format!("{}/v1/runs/{run}", nodes[1].base))
        .bearer_auth(token("crash"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["status"], "running", "{info}");
    let lost = history(&http, &nodes[1].base, "thread_many0").await.into_iter().find(|e| e["event"] == "agent_error");
    assert!(lost.is_none(), "a live node was declared lost: {lost:?}");
}
