//! The crash test: a real `agentwire` process takes concurrent publishes and is
//! killed with SIGKILL mid-stream, several times. After each restart every event
//! that was answered `200` is there exactly once, `seq` has no gap, runs go on
//! publishing, and a subscriber resuming from its last `seq` gets the rest.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "crash-publish-key";
const SECRET: &str = "crash-secret";
const THREADS: [&str; 3] = ["thread_crash0", "thread_crash1", "thread_crash2"];
const PUBLISHERS_PER_THREAD: usize = 4;
const CYCLES: usize = 3;
const WAIT: Duration = Duration::from_secs(20);

struct Node {
    child: Child,
    base: String,
}

async fn start(data_dir: &std::path::Path) -> Node {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentwire"))
        .args(["serve", "--listen", "127.0.0.1:0", "--jwt-secret", SECRET, "--publish-key", KEY])
        .arg("--data-dir")
        .arg(data_dir)
        .env("AGENTWIRE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn agentwire");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let base = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(url) = line.strip_prefix("agentwire is listening on ") {
                return url.trim().to_owned();
            }
        }
        panic!("agentwire exited before listening");
    })
    .await
    .expect("agentwire starts in time");
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Node { child, base }
}

fn token(user: &str) -> String {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    encode(&Header::default(), &json!({"sub": user, "exp": exp}), &EncodingKey::from_secret(SECRET.as_bytes()).unwrap())
        .unwrap()
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> Result<(u16, Value), reqwest::Error> {
    let resp = http.post(url).bearer_auth(KEY).json(&body).send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

/// The whole history of a thread, paged.
async fn history(http: &reqwest::Client, base: &str, thread: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let url = format!("{base}/v1/threads/{thread}/events?after_seq={}&limit=10000", out.len());
        let page: Value = http.get(url).bearer_auth(token("crash")).send().await.unwrap().json().await.unwrap();
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            return out;
        }
        out.extend(events);
    }
}

/// Publishes thinking events until the server goes away; records what was acknowledged.
async fn publish_until_gone(base: String, run: String, tag: String, acked: Arc<Mutex<HashMap<String, (String, u64)>>>) {
    let http = reqwest::Client::new();
    for n in 0.. {
        let event_id = format!("{tag}-{n}");
        let body = json!({"event":"agent_thinking","data":{"thought": format!("step {n}")},"event_id": event_id});
        match post(&http, format!("{base}/v1/runs/{run}/events"), body).await {
            Ok((200, body)) => {
                let seq = body["seqs"][0].as_u64().expect("seq");
                acked.lock().insert(event_id, (run.clone(), seq));
            }
            Ok((status, body)) => panic!("unexpected answer {status} {body}"),
            Err(_) => return,
        }
    }
}

/// Watches a thread and reports the last seq it saw, until the socket drops.
async fn watch(base: String, thread: &'static str, after: u64, last: Arc<Mutex<u64>>) {
    let url = format!("{}/v1/ws?token={}", base.replace("http://", "ws://"), token("crash"));
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else { return };
    let sub = json!({"type":"subscribe","thread_id":thread,"after_seq":after});
    if ws.send(Message::Text(sub.to_string().into())).await.is_err() {
        return;
    }
    while let Some(Ok(Message::Text(text))) = ws.next().await {
        let frame: Value = serde_json::from_str(&text).unwrap();
        let events = match frame["type"].as_str() {
            Some("event") => vec![frame],
            Some("batch") => frame["events"].as_array().unwrap().clone(),
            _ => continue,
        };
        let mut seen = last.lock();
        for e in events {
            let seq = e["seq"].as_u64().unwrap();
            assert_eq!(seq, *seen + 1, "a watcher of {thread} saw a gap or a repeat");
            *seen = seq;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_events_survive_sigkill_exactly_once_and_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let acked: Arc<Mutex<HashMap<String, (String, u64)>>> = Arc::default();
    let watched: Vec<Arc<Mutex<u64>>> = THREADS.iter().map(|_| Arc::default()).collect();

    let mut node = start(dir.path()).await;
    let mut runs = Vec::new();
    for thread in THREADS {
        let (status, body) =
            post(&http, format!("{}/v1/runs", node.base), json!({"thread_id":thread,"user_id":"crash"})).await.unwrap();
        assert_eq!(status, 201, "{body}");
        let run = body["run_id"].as_str().unwrap().to_owned();
        let started = json!({"event":"agent_started","data":{"agent_name":"crash"},"event_id":"start"});
        assert_eq!(post(&http, format!("{}/v1/runs/{run}/events", node.base), started).await.unwrap().0, 200);
        runs.push(run);
    }

    for cycle in 0..CYCLES {
        let mut tasks = Vec::new();
        for (t, thread) in THREADS.iter().enumerate() {
            let after = *watched[t].lock();
            tasks.push(tokio::spawn(watch(node.base.clone(), thread, after, watched[t].clone())));
            for p in 0..PUBLISHERS_PER_THREAD {
                let tag = format!("c{cycle}-t{t}-p{p}");
                tasks.push(tokio::spawn(publish_until_gone(node.base.clone(), runs[t].clone(), tag, acked.clone())));
            }
        }
        // Let publishing get going, then kill the server without warning.
        let before = acked.lock().len();
        tokio::time::timeout(WAIT, async {
            while acked.lock().len() < before + 200 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("publishing makes progress");
        tokio::time::sleep(Duration::from_millis(50 + 70 * cycle as u64)).await;
        node.child.kill().await.expect("SIGKILL");
        for task in tasks {
            task.await.expect("publisher or watcher task");
        }

        node = start(dir.path()).await;
        let acked_now = acked.lock().clone();
        eprintln!("cycle {cycle}: {} acknowledged in all", acked_now.len());
        assert!(acked_now.len() > before, "cycle {cycle} acknowledged nothing");
        for (t, thread) in THREADS.iter().enumerate() {
            let events = history(&http, &node.base, thread).await;
            let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
            eprintln!("  {thread}: head {} watched before the kill {}", seqs.len(), *watched[t].lock());
            assert_eq!(
                seqs,
                (1..=seqs.len() as u64).collect::<Vec<_>>(),
                "{thread}: seq has a gap after cycle {cycle}"
            );
            let mut by_id: HashMap<&str, Vec<u64>> = HashMap::new();
            for e in &events {
                if let Some(id) = e["event_id"].as_str() {
                    by_id.entry(id).or_default().push(e["seq"].as_u64().unwrap());
                }
            }
            for (id, (run, seq)) in acked_now.iter().filter(|(_, (run, _))| run == &runs[t]) {
                assert_eq!(
                    by_id.get(id.as_str()),
                    Some(&vec![*seq]),
                    "{run}: acknowledged {id} must be stored once at {seq}"
                );
            }
            // The watcher resumes from its last seq and catches up to the head with nothing missing.
            let last = watched[t].clone();
            let resumed = tokio::spawn(watch(node.base.clone(), thread, *last.lock(), last.clone()));
            tokio::time::timeout(WAIT, async {
                while *last.lock() < seqs.len() as u64 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("the resumed watcher catches up");
            resumed.abort();
            // And the run goes on publishing after the restart.
            let go_on = json!({"event":"agent_thinking","data":{"thought":"after restart"}});
            let (status, body) = post(&http, format!("{}/v1/runs/{}/events", node.base, runs[t]), go_on).await.unwrap();
            assert_eq!((status, body["seqs"][0].as_u64()), (200, Some(seqs.len() as u64 + 1)));
            *watched[t].lock() += 1;
        }
    }
    node.child.kill().await.ok();
}
