//! Input requests over HTTP (PROTOCOL §2.1): an external agent asks and
//! long-polls, its user answers once; the demo agent asks before its clock.

mod common;

use std::time::Duration;

use common::{PUBLISH_KEY, TestServer, WAIT, kinds};
use serde_json::{Value, json};

/// The events of `thread`, as the owner reads them.
async fn history(server: &TestServer, thread: &str, token: &str) -> Vec<Value> {
    let (status, page) = server.get(&format!("/v1/threads/{thread}/events"), token).await;
    assert_eq!(status, 200, "{page}");
    page["events"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn an_external_agent_asks_and_its_user_answers_once() {
    let server = TestServer::start_without_agent().await;
    let (alice, mallory) = (server.token("alice"), server.token("mallory"));
    let thread = "thread_approve";
    let run = server.create_run(thread, "alice").await;
    let ask = json!({"events": [
        {"event": "agent_started", "data": {"agent_name": "mailer"}},
        {"event": "input_requested", "data": {"request_id": "send1", "kind": "approval", "prompt": "Send it?",
            "tool_name": "send_email", "arguments": {"to": "bob@example.com"}, "timeout_ms": 60000}},
    ]});
    assert_eq!(server.publish(&run, ask).await.0, 200);
    // The server settled when it lapses, and the run shows it waits.
    let (_, view) = server.get(&format!("/v1/runs/{run}"), &alice).await;
    assert_eq!(view["open_inputs"][0]["request_id"], "send1");
    assert_eq!(view["open_inputs"][0]["kind"], "approval");
    let asked = history(&server, thread, &alice).await;
    assert!(asked[1]["data"]["expires_at"].is_string(), "{}", asked[1]);

    // The agent's publisher long-polls while the user decides.
    let poll = {
        let (http, url) = (server.http.clone(), format!("{}/v1/runs/{run}/inputs/send1?wait=20", server.base));
        tokio::spawn(async move {
            let resp = http.get(url).bearer_auth(PUBLISH_KEY).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        })
    };
    let (status, now) = server.get(&format!("/v1/runs/{run}/inputs/send1"), PUBLISH_KEY).await;
    assert_eq!((status, &now["status"]), (200, &json!("open")), "{now}");

    let path = format!("/v1/threads/{thread}/inputs/send1");
    let refusals = [
        (server.post(&path, &mallory, json!({"approved": true})).await, 403, "another user"),
        (server.post(&path, PUBLISH_KEY, json!({"approved": true})).await, 403, "a publisher"),
        (server.post(&path, &alice, json!({"text": "yes"})).await, 400, "the wrong kind"),
        (server.post(&path, &alice, json!(["approved"])).await, 400, "not an object"),
        (
            server.post(&format!("/v1/threads/{thread}/inputs/nope"), &alice, json!({"approved": true})).await,
            404,
            "unknown",
        ),
        (
            server.post("/v1/threads/thread_none/inputs/send1", &alice, json!({"approved": true})).await,
            404,
            "no thread",
        ),
    ];
    for ((status, body), want, what) in refusals {
        assert_eq!(status, want, "{what}: {body}");
    }
    assert_eq!(history(&server, thread, &alice).await.len(), 2, "refusals leave nothing behind");
    let forged = json!({"event": "input_received", "data": {"request_id": "send1", "kind": "approval", "answer": {}}});
    assert_eq!(server.publish(&run, forged).await.0, 400, "only the server appends answers");

    let (status, answered) = server.post(&path, &alice, json!({"approved": true, "message": "go ahead"})).await;
    assert_eq!((status, &answered["seq"]), (200, &json!(3)), "{answered}");
    let (status, polled) = tokio::time::timeout(WAIT, poll).await.unwrap().unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        polled,
        json!({"request_id": "send1", "status": "answered", "answer": {"approved": true, "message": "go ahead"},
            "user_id": "alice"})
    );
    let (status, again) = server.post(&path, &alice, json!({"approved": false, "run_id": run})).await;
    assert_eq!(status, 409, "answered once: {again}");
    let events = history(&server, thread, &alice).await;
    assert_eq!(kinds(&events), ["agent_started", "input_requested", "input_received"]);
    assert_eq!(events[2]["data"]["source"], "user");
    let (_, view) = server.get(&format!("/v1/runs/{run}"), &alice).await;
    assert_eq!(view["open_inputs"], json!([]));

    let (status, _) = server.get(&format!("/v1/runs/{run}/inputs/send1"), &alice).await;
    assert_eq!(status, 403, "the long poll is the publisher's");
    let (status, _) = server.get(&format!("/v1/runs/{run}/inputs/send1?wait=61"), PUBLISH_KEY).await;
    assert_eq!(status, 400);
    let (status, _) = server.get(&format!("/v1/runs/{run}/inputs/other"), PUBLISH_KEY).await;
    assert_eq!(status, 404);
    server.shutdown().await;
}

#[tokio::test]
async fn the_demo_agent_asks_before_its_clock_and_the_answer_lets_it_go_on() {
    let server = TestServer::start().await;
    let alice = server.token("alice");
    let thread = "thread_demoask";
    assert_eq!(server.post("/v1/threads", &alice, json!({"thread_id": thread})).await.0, 201);
    let mut ws = server.ws(&alice).await;
    ws.subscribe(thread, 0).await;
    let (status, _) = server
        .post(&format!("/v1/threads/{thread}/messages"), &alice, json!({"text": "time please, ask me first"}))
        .await;
    assert_eq!(status, 202);
    let mut seen = ws.events_through("input_requested").await;
    let request = seen.iter().find(|e| e["event"] == "input_requested").cloned().expect("asked");
    assert_eq!((&request["data"]["kind"], &request["data"]["tool_name"]), (&json!("approval"), &json!("clock")));
    assert!(!kinds(&seen).contains(&"tool_executing".to_owned()), "nothing runs before the answer");
    let request_id = request["data"]["request_id"].as_str().unwrap();
    let path = format!("/v1/threads/{thread}/inputs/{request_id}");
    let (status, body) = server.post(&path, &alice, json!({"approved": true, "run_id": request["run_id"]})).await;
    assert_eq!(status, 200, "{body}");
    seen.extend(ws.events_through("agent_completed").await);
    let last = seen.iter().find(|e| e["event"] == "agent_completed").cloned().expect("completed");
    let kinds = kinds(&seen);
    let received = kinds.iter().position(|k| k == "input_received").expect("the answer is in the thread");
    let clock = kinds.iter().position(|k| k == "tool_executing").expect("the clock ran");
    assert!(received < clock, "{kinds:?}");
    assert!(last["data"]["result"]["answer"].as_str().unwrap().contains("it is"));
    tokio::time::sleep(Duration::from_millis(10)).await;
    ws.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn an_ag_ui_resume_answers_the_run_that_asked_even_when_another_run_spoke_last() {
    let server = TestServer::start_without_agent().await;
    let alice = server.token("alice");
    let thread = "thread_aguitwo";
    let (first, second) = (server.create_run(thread, "alice").await, server.create_run(thread, "alice").await);
    for (run, request) in [(&first, "first_q"), (&second, "second_q")] {
        let ask = json!({"events": [
            {"event": "agent_started", "data": {"agent_name": "asker"}},
            {"event": "input_requested", "data": {"request_id": request, "kind": "text", "prompt": "Which?"}},
        ]});
        assert_eq!(server.publish(run, ask).await.0, 200);
    }
    let agui = |body: Value| {
        let request = server.http.post(format!("{}/v1/agui", server.base)).bearer_auth(&alice).json(&body);
        async move { request.send().await.unwrap() }
    };
    let input =
        |run_id: &str, resume: Value| json!({"threadId": thread, "runId": run_id, "messages": [], "resume": resume});

    // Nothing new while requests wait, and a resume must name one that waits.
    let refused = agui(
        json!({"threadId": thread, "runId": "agui-new", "messages": [{"id": "m", "role": "user", "content": "hi"}]}),
    );
    let refused = refused.await;
    assert_eq!(refused.status(), 409);
    let message = refused.json::<Value>().await.unwrap()["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("first_q") && message.contains("second_q"), "{message}");
    let unknown =
        agui(input("agui-x", json!([{"interruptId": "nope", "status": "resolved", "payload": {"text": "?"}}])));
    assert_eq!(unknown.await.status(), 409);
    assert_eq!(history(&server, thread, &alice).await.len(), 4, "refusals leave nothing behind");

    // The second run spoke last; the first one's request is answered all the same.
    let resumed =
        agui(input("agui-1", json!([{"interruptId": "first_q", "status": "resolved", "payload": {"text": "one"}}])));
    let resumed = resumed.await;
    assert_eq!(resumed.status(), 200);
    let (status, polled) = server.get(&format!("/v1/runs/{first}/inputs/first_q?wait=10"), PUBLISH_KEY).await;
    assert_eq!((status, &polled["status"], &polled["answer"]), (200, &json!("answered"), &json!({"text": "one"})));
    let (_, view) = server.get(&format!("/v1/runs/{second}"), &alice).await;
    assert_eq!(view["open_inputs"][0]["request_id"], "second_q", "the other run still waits");
    drop(resumed);
    server.shutdown().await;
}
