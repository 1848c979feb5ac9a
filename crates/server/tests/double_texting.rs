//! A message posted while its thread has a run going (PROTOCOL §3,
//! `double_texting`): rejected, queued, interrupting, or beside it. The demo
//! agent asked to "ask me first" holds its run open until it is answered.

mod common;

use std::time::Duration;

use common::{TestServer, WAIT, test_config};
use serde_json::{Value, json};

struct Chat<'a> {
    server: &'a TestServer,
    token: String,
    thread: &'static str,
}

impl Chat<'_> {
    async fn new<'a>(server: &'a TestServer, thread: &'static str) -> Chat<'a> {
        let token = server.token("alice");
        assert_eq!(server.post("/v1/threads", &token, json!({"thread_id": thread})).await.0, 201);
        Chat { server, token, thread }
    }

    async fn say(&self, body: Value) -> (u16, Value) {
        self.server.post(&format!("/v1/threads/{}/messages", self.thread), &self.token, body).await
    }

    async fn events(&self) -> Vec<Value> {
        let (_, page) = self.server.get(&format!("/v1/threads/{}/events", self.thread), &self.token).await;
        page["events"].as_array().cloned().unwrap_or_default()
    }

    /// A run that waits for its user's approval (the demo agent asked to ask first).
    async fn waiting_run(&self) -> String {
        let (status, body) = self.say(json!({"text": "ask me first"})).await;
        assert_eq!(status, 202, "{body}");
        let run = body["run_id"].as_str().unwrap().to_owned();
        self.until(|events| events.iter().any(|e| e["run_id"] == run.as_str() && e["event"] == "input_requested"))
            .await;
        run
    }

    async fn approve(&self, run: &str) {
        let events = self.events().await;
        let asked = events.iter().find(|e| e["run_id"] == run && e["event"] == "input_requested").unwrap();
        let path = format!("/v1/threads/{}/inputs/{}", self.thread, asked["data"]["request_id"].as_str().unwrap());
        let (status, body) = self.server.post(&path, &self.token, json!({"approved": true, "run_id": run})).await;
        assert_eq!(status, 200, "{body}");
    }

    async fn until(&self, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        tokio::time::timeout(WAIT, async {
            loop {
                let events = self.events().await;
                if done(&events) {
                    return events;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the thread got there in time")
    }

    async fn ended(&self, run: &str) -> Vec<Value> {
        self.until(|events| {
            events
                .iter()
                .any(|e| e["run_id"] == run && matches!(e["event"].as_str(), Some("agent_completed" | "agent_error")))
        })
        .await
    }
}

fn seq_of(events: &[Value], run: &str, event: &str) -> u64 {
    events
        .iter()
        .find(|e| e["run_id"] == run && e["event"] == event)
        .and_then(|e| e["seq"].as_u64())
        .unwrap_or_else(|| panic!("no {event} of {run}"))
}

#[tokio::test]
async fn each_strategy_does_what_it_says_with_a_run_going() {
    let server = TestServer::start().await;
    let chat = Chat::new(&server, "thread_dt1").await;

    // reject: 409 naming the run going, and nothing written.
    let first = chat.waiting_run().await;
    let before = chat.events().await.len();
    let (status, body) = chat.say(json!({"text": "and now?", "double_texting": "reject"})).await;
    assert_eq!((status, &body["error"]["run_id"]), (409, &json!(first)), "{body}");
    assert_eq!(chat.events().await.len(), before, "a refusal leaves nothing behind");

    // enqueue: the message shows at once, its run starts when the first ends.
    let (status, body) = chat.say(json!({"text": "what is 2 + 2?", "double_texting": "enqueue"})).await;
    assert_eq!((status, &body["queued"]), (202, &json!(true)), "{body}");
    let queued = body["run_id"].as_str().unwrap().to_owned();
    let events = chat.until(|events| events.iter().any(|e| e["run_id"] == queued.as_str())).await;
    let said = events.iter().find(|e| e["run_id"] == queued.as_str()).unwrap();
    assert_eq!((&said["event"], &said["data"]["queued"]), (&json!("user_message"), &json!(true)));
    let (_, view) = server.get(&format!("/v1/runs/{queued}"), &chat.token).await;
    assert_eq!((&view["status"], &view["queued"]), (&json!("running"), &json!(true)), "{view}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !chat.events().await.iter().any(|e| e["run_id"] == queued.as_str() && e["event"] == "agent_started"),
        "it waits"
    );
    chat.approve(&first).await;
    let events = chat.ended(&queued).await;
    assert!(
        seq_of(&events, &first, "agent_completed") < seq_of(&events, &queued, "agent_started"),
        "one after the other"
    );
    assert_eq!(events.iter().filter(|e| e["run_id"] == queued.as_str() && e["event"] == "user_message").count(), 1);
    assert_eq!(events.last().unwrap()["event"], "agent_completed");
    let (_, view) = server.get(&format!("/v1/runs/{queued}"), &chat.token).await;
    assert_eq!(view["queued"], false, "no longer once it started");

    // interrupt: the run going ends cancelled, then the new one runs.
    let going = chat.waiting_run().await;
    let (status, body) = chat.say(json!({"text": "never mind, what is 3 * 3?", "double_texting": "interrupt"})).await;
    assert_eq!((status, &body["queued"]), (202, &json!(false)), "{body}");
    let next = body["run_id"].as_str().unwrap().to_owned();
    let events = chat.ended(&next).await;
    let cancelled = events.iter().find(|e| e["run_id"] == going.as_str() && e["event"] == "agent_error").unwrap();
    assert_eq!(cancelled["data"]["code"], "cancelled");
    assert!(cancelled["seq"].as_u64() < Some(seq_of(&events, &next, "user_message")));

    // concurrent: beside the run going, which still waits.
    let waiting = chat.waiting_run().await;
    let (status, body) = chat.say(json!({"text": "hello", "double_texting": "concurrent"})).await;
    assert_eq!(status, 202, "{body}");
    chat.ended(body["run_id"].as_str().unwrap()).await;
    let (_, view) = server.get(&format!("/v1/runs/{waiting}"), &chat.token).await;
    assert_eq!((&view["status"], view["open_inputs"].as_array().map(Vec::len)), (&json!("running"), Some(1)));

    let (status, _) = chat.say(json!({"text": "x", "double_texting": "sometimes"})).await;
    assert_eq!(status, 400);
    server.shutdown().await;
}

#[tokio::test]
async fn the_server_setting_applies_when_the_request_says_nothing() {
    let mut config = test_config();
    config.double_texting = agentwire_server::DoubleTexting::Reject;
    let server = TestServer::start_with(config).await;
    let chat = Chat::new(&server, "thread_dt2").await;
    let first = chat.waiting_run().await;
    let (status, body) = chat.say(json!({"text": "again"})).await;
    assert_eq!((status, &body["error"]["run_id"]), (409, &json!(first)));
    let (status, _) = chat.say(json!({"text": "again", "double_texting": "concurrent"})).await;
    assert_eq!(status, 202, "the request's own choice wins");
    server.shutdown().await;
}
