//! The AI SDK's UI message stream (PROTOCOL §8) on a server without an agent of
//! its own: a chat attaches to the run an external publisher is feeding, the
//! resume finds it from its start, and nothing running is `204`. (With an
//! agent, `clients/typescript/tests/ui-chat.test.mjs` drives it with the SDK.)

mod common;

use common::*;
use serde_json::{Value, json};

/// The chunks of a UI message stream body, and whether it ended with `[DONE]`.
fn chunks(body: &str) -> (Vec<Value>, bool) {
    let data: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    let done = data.last() == Some(&"[DONE]");
    let chunks =
        data.iter().filter(|d| **d != "[DONE]").map(|d| serde_json::from_str(d).expect("a JSON chunk")).collect();
    (chunks, done)
}

fn types(chunks: &[Value]) -> Vec<&str> {
    chunks.iter().map(|c| c["type"].as_str().unwrap_or_default()).collect()
}

#[tokio::test]
async fn a_chat_attaches_to_an_external_run_and_the_resume_replays_it_from_its_start() {
    let server = TestServer::start_without_agent().await;
    let token = server.token("alice");
    let chat = json!({"id": "thread_uichat", "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}]});
    // Nothing runs yet: there is no agent to start and no run to show.
    let run = server.create_run("thread_uichat", "alice").await;
    let (status, body) = server.post("/v1/ui/chat", &token, chat.clone()).await;
    assert_eq!((status, body["error"]["code"].clone()), (501, json!("unsupported")));
    let resume = format!("{}/v1/ui/chat/thread_uichat/stream", server.base);
    let nothing = server.http.get(&resume).bearer_auth(&token).send().await.unwrap();
    assert_eq!(nothing.status(), 204);

    let (status, _) = server
        .publish(
            &run,
            json!({"events": [
                {"event": "agent_started", "data": {"agent_name": "external"}},
                {"event": "agent_thinking", "data": {"thought": "looking"}},
                {"event": "agent_message", "data": {"message_id": "m1", "delta": "Hel"}},
            ]}),
        )
        .await;
    assert_eq!(status, 200);
    // Both streams are open (their headers are in) before the run goes on and ends.
    let url = format!("{}/v1/ui/chat", server.base);
    let posted = server.http.post(url).bearer_auth(&token).json(&chat).send().await.unwrap();
    assert_eq!(posted.status(), 200);
    let resumed = server.http.get(&resume).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resumed.status(), 200);
    assert_eq!(resumed.headers()["x-vercel-ai-ui-message-stream"], "v1");
    let (status, _) = server
        .publish(
            &run,
            json!({"events": [
                {"event": "agent_message", "data": {"message_id": "m1", "delta": "lo"}},
                {"event": "tool_executing", "data": {"tool_call_id": "c1", "tool_name": "clock", "args": {}}},
                {"event": "tool_completed", "data": {"tool_call_id": "c1", "error": "no clock"}},
                {"event": "agent_completed", "data": {}},
            ]}),
        )
        .await;
    assert_eq!(status, 200);

    let want = [
        "start",
        "reasoning-start",
        "reasoning-delta",
        "reasoning-end",
        "text-start",
        "text-delta",
        "text-delta",
        "tool-input-available",
        "tool-output-error",
        "text-end",
        "finish",
    ];
    for response in [resumed, posted] {
        let (chunks, done) = chunks(&response.text().await.unwrap());
        assert!(done, "the stream ends with [DONE]");
        assert_eq!(types(&chunks), want, "the whole run, from its start, each event once");
        assert_eq!(chunks[0]["messageId"], json!(run));
        assert_eq!(chunks[8]["errorText"], "no clock");
    }
    // Over: nothing to resume.
    let over = server.http.get(&resume).bearer_auth(&token).send().await.unwrap();
    assert_eq!(over.status(), 204);
}

#[tokio::test]
async fn only_the_owner_may_chat_or_resume_and_a_chat_needs_a_thread_id() {
    let server = TestServer::start().await;
    server.create_run("thread_uiowner", "alice").await;
    let mallory = server.token("mallory");
    let chat =
        json!({"id": "thread_uiowner", "messages": [{"role": "user", "parts": [{"type": "text", "text": "hi"}]}]});
    let (status, _) = server.post("/v1/ui/chat", &mallory, chat).await;
    assert_eq!(status, 403);
    let resume = format!("{}/v1/ui/chat/thread_uiowner/stream", server.base);
    assert_eq!(server.http.get(&resume).bearer_auth(&mallory).send().await.unwrap().status(), 403);
    let alice = server.token("alice");
    let (status, _) = server.post("/v1/ui/chat", &alice, json!({"id": "not a thread", "messages": []})).await;
    assert_eq!(status, 400);
    let (status, _) = server.post("/v1/ui/chat", &alice, json!({"id": "thread_uiowner", "messages": []})).await;
    assert_eq!(status, 400, "no user message to answer");
}

#[tokio::test]
async fn pages_on_an_allowed_origin_may_call_the_api_across_origins_and_others_may_not() {
    let mut config = test_config();
    config.allowed_origins = vec!["http://app.example:3000".into()];
    let server = TestServer::start_with(config).await;
    let preflight = |origin: &'static str| {
        server
            .http
            .request(reqwest::Method::OPTIONS, format!("{}/v1/ui/chat", server.base))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
            .send()
    };
    let allowed = preflight("http://app.example:3000").await.unwrap();
    assert_eq!(allowed.headers()["access-control-allow-origin"], "http://app.example:3000");
    let methods = allowed.headers()["access-control-allow-methods"].to_str().unwrap().to_ascii_uppercase();
    assert!(methods.contains("POST"), "{methods}");
    let other = preflight("http://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    // A plain request from the allowed origin carries the header too; the body is the API's own.
    let resume = format!("{}/v1/ui/chat/thread_nothing/stream", server.base);
    let response = server
        .http
        .get(&resume)
        .bearer_auth(server.token("alice"))
        .header("origin", "http://app.example:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204, "a thread that does not exist yet has nothing to resume");
    assert_eq!(response.headers()["access-control-allow-origin"], "http://app.example:3000");
}

#[tokio::test]
async fn without_allowed_origins_there_is_no_cors() {
    let server = TestServer::start().await;
    let response = server
        .http
        .request(reqwest::Method::OPTIONS, format!("{}/v1/ui/chat", server.base))
        .header("origin", "http://app.example:3000")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("access-control-allow-origin").is_none());
}
