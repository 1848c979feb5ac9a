//! A real server on a loopback port, and small clients to drive it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use agentwire_agent::DemoAgent;
use agentwire_hub::{Hub, HubMetrics};
use agentwire_log::{EmbeddedLog, EmbeddedStore};
use agentwire_protocol::UserId;
use agentwire_server::{AppState, Server, ServerConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub const PUBLISH_KEY: &str = "test-publish-key";
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    /// The embedded store's directory, removed when the server is dropped.
    pub data_dir: tempfile::TempDir,
    pub base: String,
    pub ws_base: String,
    pub state: AppState,
    pub http: reqwest::Client,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// Settings for tests: loopback on a free port, a known secret and publish key, no demo
/// delay. `start_with` opens the embedded log in a directory of its own.
pub fn test_config() -> ServerConfig {
    let mut config = ServerConfig::from_env().expect("default settings");
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.jwt_secret = Some("test-secret-that-is-32-bytes-long".into());
    config.publish_keys = vec![PUBLISH_KEY.into()];
    config.admin_key = Some("test-admin".into());
    config.demo_step_delay = Duration::ZERO;
    config.shutdown_grace = Duration::from_secs(5);
    config
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(test_config()).await
    }

    pub async fn start_with(config: ServerConfig) -> Self {
        let agent = Arc::new(DemoAgent { step_delay: config.demo_step_delay });
        Self::start_serving(config, Some(agent)).await
    }

    /// A server with no in-process agent: only external publishers speak.
    pub async fn start_without_agent() -> Self {
        Self::start_serving(test_config(), None).await
    }

    async fn start_serving(config: ServerConfig, agent: Option<Arc<dyn agentwire_agent::Agent>>) -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let hub = Hub::new(config.hub_config(), HubMetrics::new());
        let store = EmbeddedStore::open(data_dir.path()).expect("store");
        let log = Arc::new(EmbeddedLog::open(store, config.log_config(), hub.clone()).expect("log"));
        let server = Server::new(config, log, hub, agent).await.expect("server");
        let listener = server.bind().await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let state = server.state().clone();
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let task = tokio::spawn(async move {
            server.serve(listener, signal.cancelled_owned()).await.expect("serve");
        });
        Self {
            data_dir,
            base: format!("http://{addr}"),
            ws_base: format!("ws://{addr}"),
            state,
            http: reqwest::Client::new(),
            stop,
            task: Some(task),
        }
    }

    /// Shuts the server down and waits until it has stopped.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task).await.expect("server stops in time").expect("server task");
        }
    }

    pub fn token(&self, user: &str) -> String {
        self.state.auth.issue(&UserId::parse(user).unwrap(), Duration::from_secs(3600)).unwrap().0
    }

    pub async fn post(&self, path: &str, bearer: &str, body: Value) -> (u16, Value) {
        let resp = self.http.post(format!("{}{path}", self.base)).bearer_auth(bearer).json(&body).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_raw(&self, path: &str, bearer: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(bearer)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A GET without credentials, as text (e.g. `/metrics`).
    pub async fn get_text(&self, path: &str) -> String {
        self.http.get(format!("{}{path}", self.base)).send().await.unwrap().text().await.unwrap()
    }

    pub async fn get(&self, path: &str, bearer: &str) -> (u16, Value) {
        let resp = self.http.get(format!("{}{path}", self.base)).bearer_auth(bearer).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str, bearer: &str) -> (u16, Value) {
        let resp = self.http.delete(format!("{}{path}", self.base)).bearer_auth(bearer).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Registers a run for `user` on `thread` and answers its id.
    pub async fn create_run(&self, thread: &str, user: &str) -> String {
        let (status, body) = self
            .post("/v1/runs", PUBLISH_KEY, json!({"thread_id": thread, "user_id": user, "agent_name": "tester"}))
            .await;
        assert_eq!(status, 201, "{body}");
        body["run_id"].as_str().unwrap().to_owned()
    }

    /// Publishes one event or a batch; answers the status and body.
    pub async fn publish(&self, run: &str, body: Value) -> (u16, Value) {
        self.post(&format!("/v1/runs/{run}/events"), PUBLISH_KEY, body).await
    }

    /// The publisher WebSocket (PROTOCOL §3.1) with `key` as its bearer.
    pub async fn publisher_ws(&self, key: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("{}/v1/publish", self.ws_base).into_client_request()?;
        request.headers_mut().insert("authorization", format!("Bearer {key}").parse().expect("a header value"));
        let (stream, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Ws { stream })
    }

    pub async fn ws(&self, token: &str) -> Ws {
        let (stream, _) = tokio_tungstenite::connect_async(format!("{}/v1/ws?token={token}", self.ws_base))
            .await
            .expect("ws connect");
        Ws { stream }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The events a run of the five critical events and a message consists of.
pub fn full_run(tag: &str) -> Vec<Value> {
    vec![
        json!({"event":"agent_started","data":{"agent_name":"tester"}}),
        json!({"event":"agent_thinking","data":{"thought": format!("thinking about {tag}")}}),
        json!({"event":"tool_executing","data":{"tool_call_id":"c1","tool_name":"search","args":{"q": tag}}}),
        json!({"event":"tool_completed","data":{"tool_call_id":"c1","result":{"hits":1}}}),
        json!({"event":"agent_message","data":{"message_id":"m1","delta": tag}}),
        json!({"event":"agent_completed","data":{"result":"ok"}}),
    ]
}

pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What a subscriber saw.
#[derive(Debug)]
pub enum Seen {
    Frame(Value),
    Closed(Option<u16>),
}

impl Ws {
    pub async fn send(&mut self, frame: Value) {
        self.stream.send(Message::Text(frame.to_string().into())).await.expect("ws send");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream.send(Message::Text(text.into())).await.expect("ws send");
    }

    /// The next text frame as JSON, or the close.
    pub async fn next(&mut self) -> Seen {
        loop {
            let msg = tokio::time::timeout(WAIT, self.stream.next()).await.expect("a frame in time");
            match msg {
                Some(Ok(Message::Text(t))) => return Seen::Frame(serde_json::from_str(&t).expect("JSON frame")),
                Some(Ok(Message::Close(frame))) => return Seen::Closed(frame.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Seen::Closed(None),
            }
        }
    }

    pub async fn next_frame(&mut self) -> Value {
        match self.next().await {
            Seen::Frame(v) => v,
            Seen::Closed(code) => panic!("expected a frame, the socket closed with {code:?}"),
        }
    }

    /// Subscribes and waits for `subscribed`, answering its `head_seq`.
    pub async fn subscribe(&mut self, thread: &str, after_seq: u64) -> u64 {
        self.send(json!({"type":"subscribe","thread_id":thread,"after_seq":after_seq})).await;
        let frame = self.next_frame().await;
        assert_eq!(frame["type"], "subscribed", "{frame}");
        frame["head_seq"].as_u64().unwrap()
    }

    /// The envelopes of the next frame, which must be an `event` or a `batch`.
    pub async fn next_events(&mut self) -> Vec<Value> {
        let frame = self.next_frame().await;
        match frame["type"].as_str() {
            Some("event") => vec![frame],
            Some("batch") => frame["events"].as_array().unwrap().clone(),
            _ => panic!("unexpected frame while waiting for events: {frame}"),
        }
    }

    /// Collects event envelopes (unpacking batches) until `thread` reaches `last_seq`.
    pub async fn events_until(&mut self, thread: &str, last_seq: u64) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        while !out.iter().any(|e| e["thread_id"] == thread && e["seq"].as_u64() >= Some(last_seq)) {
            out.extend(self.next_events().await);
        }
        out
    }

    /// Collects event envelopes (unpacking batches) until one of kind `event`
    /// arrives, each frame within [`WAIT`]: the whole batch it came in, too.
    pub async fn events_through(&mut self, event: &str) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        while !out.iter().any(|e| e["event"] == event) {
            out.extend(tokio::time::timeout(WAIT, self.next_events()).await.expect("events"));
        }
        out
    }

    /// Sends a ping and returns every frame that arrived before the pong.
    pub async fn frames_before_pong(&mut self) -> Vec<Value> {
        self.send(json!({"type":"ping"})).await;
        let mut before = Vec::new();
        loop {
            let frame = self.next_frame().await;
            if frame["type"] == "pong" {
                return before;
            }
            before.push(frame);
        }
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}

pub fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

pub fn kinds(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["event"].as_str().unwrap().to_owned()).collect()
}

/// The close code a frame-less `Seen` carries, for asserting.
pub fn close_code(seen: Seen) -> Option<u16> {
    match seen {
        Seen::Closed(code) => code,
        Seen::Frame(f) => panic!("expected a close, got {f}"),
    }
}

pub fn normal_close() -> u16 {
    u16::from(CloseCode::Normal)
}
