//! A real `agentwire` process on a loopback port, and small clients for it.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

pub const KEY: &str = "crash-publish-key";
pub const SECRET: &str = "crash-secret-that-is-32-bytes-long";
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Node {
    pub child: Child,
    pub base: String,
}

/// Starts `agentwire serve` on a free loopback port over `data_dir`.
pub async fn start(data_dir: &std::path::Path) -> Node {
    start_with(data_dir, &[]).await
}

/// Starts `agentwire serve` on a free loopback port over `data_dir`, with `extra` arguments.
pub async fn start_with(data_dir: &std::path::Path, extra: &[&str]) -> Node {
    spawn(data_dir, extra, Stdio::inherit()).await
}

/// Like [`start`], with the server's log (stderr) piped to `node.child.stderr`.
pub async fn start_logging(data_dir: &std::path::Path) -> Node {
    spawn(data_dir, &[], Stdio::piped()).await
}

async fn spawn(data_dir: &std::path::Path, extra: &[&str], stderr: Stdio) -> Node {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentwire"))
        .args(["serve", "--listen", "127.0.0.1:0", "--jwt-secret", SECRET, "--publish-key", KEY])
        // A demo run stays in flight long enough to be cut by a kill, unless the test says.
        .args(if extra.contains(&"--demo-step-delay") { &[][..] } else { &["--demo-step-delay", "30s"][..] })
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env("AGENTWIRE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(stderr)
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

/// A JWT for `user`, signed with [`SECRET`].
pub fn token(user: &str) -> String {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    encode(&Header::default(), &json!({"sub": user, "exp": exp}), &EncodingKey::from_secret(SECRET.as_bytes()).unwrap())
        .unwrap()
}

/// POSTs `body` with the publish key.
pub async fn post(http: &reqwest::Client, url: String, body: Value) -> Result<(u16, Value), reqwest::Error> {
    let resp = http.post(url).bearer_auth(KEY).json(&body).send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

/// The whole history of a thread, paged.
pub async fn history(http: &reqwest::Client, base: &str, thread: &str) -> Vec<Value> {
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

/// Subscribes to `thread` on `base` after `after` (as user `crash`) and hands
/// each event to `on_event` in arrival order, until the socket drops or
/// `on_event` answers `false`. A `reset` frame fails the test.
pub async fn follow(base: &str, thread: &str, after: u64, mut on_event: impl FnMut(&Value) -> bool) {
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
            Some("reset") => panic!("unexpected reset on {base}: {frame}"),
            _ => continue,
        };
        for e in &events {
            if !on_event(e) {
                return;
            }
        }
    }
}

/// Asks the demo agent on `base` a question in `thread`; answers the run it started.
pub async fn ask_demo(http: &reqwest::Client, base: &str, thread: &str) -> String {
    let asked = http
        .post(format!("{base}/v1/threads/{thread}/messages"))
        .bearer_auth(token("crash"))
        .json(&json!({"text":"what is 1 + 1?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), 202);
    asked.json::<Value>().await.unwrap()["run_id"].as_str().unwrap().to_owned()
}
