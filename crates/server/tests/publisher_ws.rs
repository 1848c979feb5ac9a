//! The publisher WebSocket (PROTOCOL §3.1), end to end over real sockets.

mod common;

use common::*;
use serde_json::{Value, json};

/// Reads `n` answers.
async fn answers(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match ws.next().await {
            Seen::Frame(frame) => got.push(frame),
            Seen::Closed(code) => panic!("closed with {code:?} after {} answers", got.len()),
        }
    }
    got
}

#[tokio::test]
async fn frames_sent_without_waiting_are_answered_in_order_and_reach_subscribers() {
    let server = TestServer::start().await;
    let run = server.create_run("thread_pipe", "alice").await;
    let mut watcher = server.ws(&server.token("alice")).await;
    watcher.subscribe("thread_pipe", 0).await;
    let mut publisher = server.publisher_ws(PUBLISH_KEY).await.expect("handshake");
    publisher.send(json!({"ref": 0, "run_id": run, "event": "agent_started", "data": {"agent_name": "a"}})).await;
    // 1,500 deltas, more than a connection keeps waiting for the disk at once, none awaited.
    for n in 1..=1500u64 {
        let delta = json!({"message_id": "m", "delta": format!("t{n}")});
        publisher.send(json!({"ref": n, "run_id": run, "event": "agent_message", "data": delta})).await;
    }
    publisher.send(json!({"ref": 1501, "run_id": run, "events": [{"event": "agent_completed"}]})).await;
    let got = answers(&mut publisher, 1502).await;
    for (n, answer) in got.iter().enumerate() {
        assert_eq!(answer, &json!({"ref": n, "seqs": [n + 1]}), "answer {n}");
    }
    let events = watcher.events_until("thread_pipe", 1502).await;
    assert_eq!(seqs(&events), (1..=1502).collect::<Vec<_>>());
    assert_eq!(events[1]["data"]["delta"], "t1");
    assert_eq!(events[1501]["event"], "agent_completed");
}

#[tokio::test]
async fn a_refused_frame_is_answered_with_its_error_and_the_next_ones_go_on() {
    let server = TestServer::start().await;
    let run = server.create_run("thread_refuse", "alice").await;
    let mut publisher = server.publisher_ws(PUBLISH_KEY).await.expect("handshake");
    let started = json!({"event": "agent_started", "data": {"agent_name": "a"}, "event_id": "s"});
    let frames = [
        json!({"ref": 1, "run_id": run, "event": "agent_thinking", "data": {"thought": "before the start"}}),
        json!({"ref": 2, "event": "agent_started", "data": {"agent_name": "a"}}),
        json!({"ref": 3, "run_id": run, "events": [started.clone()]}),
        json!({"ref": 4, "run_id": run, "events": [started]}),
        json!({"ref": 5, "run_id": "run_thread_nowhere_1", "event": "agent_started", "data": {"agent_name": "a"}}),
        json!({"ref": 6, "run_id": run, "event": "no_such_event"}),
    ];
    for frame in frames {
        publisher.send(frame).await;
    }
    publisher.send_text("{not json").await;
    publisher.send(json!({"ref": 7, "run_id": run, "event": "agent_completed"})).await;
    let got = answers(&mut publisher, 8).await;
    let codes: Vec<Value> = got.iter().map(|a| a["error"]["code"].clone()).collect();
    assert_eq!(
        codes,
        [
            json!("lifecycle_violation"),
            json!("bad_request"),
            Value::Null,
            Value::Null,
            json!("not_found"),
            json!("bad_request"),
            json!("bad_request"),
            Value::Null
        ]
    );
    let refs: Vec<Value> = got.iter().map(|a| a["ref"].clone()).collect();
    assert_eq!(refs, [json!(1), json!(2), json!(3), json!(4), json!(5), json!(6), Value::Null, json!(7)]);
    // The repeat answers its first seq; HTTP and the socket share de-duplication.
    assert_eq!(
        (got[2]["seqs"].clone(), got[3]["seqs"].clone(), got[7]["seqs"].clone()),
        (json!([1]), json!([1]), json!([2]))
    );
    let (status, body) =
        server.publish(&run, json!({"event": "agent_started", "data": {"agent_name": "a"}, "event_id": "s"})).await;
    assert_eq!((status, body["seqs"].clone()), (200, json!([1])));
}

#[tokio::test]
async fn only_a_publish_key_opens_the_publisher_socket() {
    let server = TestServer::start().await;
    let status = |e: tokio_tungstenite::tungstenite::Error| match e {
        tokio_tungstenite::tungstenite::Error::Http(response) => response.status().as_u16(),
        other => panic!("refused at the handshake, not {other}"),
    };
    assert_eq!(status(server.publisher_ws("not-a-key").await.err().expect("refused")), 401);
    let user = server.token("alice");
    assert_eq!(status(server.publisher_ws(&user).await.err().expect("refused")), 403);
}

#[tokio::test]
async fn shutdown_answers_what_was_read_then_closes_with_1001() {
    let server = TestServer::start().await;
    let run = server.create_run("thread_bye", "alice").await;
    let mut publisher = server.publisher_ws(PUBLISH_KEY).await.expect("handshake");
    publisher.send(json!({"ref": 1, "run_id": run, "event": "agent_started", "data": {"agent_name": "a"}})).await;
    assert_eq!(answers(&mut publisher, 1).await[0]["seqs"], json!([1]));
    server.shutdown().await;
    assert_eq!(close_code(publisher.next().await), Some(1001));
}

#[tokio::test]
async fn a_frame_over_the_body_limit_closes_with_1009_after_the_answers_before_it() {
    let mut config = test_config();
    config.max_body_bytes = 4096;
    let server = TestServer::start_with(config).await;
    let run = server.create_run("thread_big", "alice").await;
    let mut publisher = server.publisher_ws(PUBLISH_KEY).await.expect("handshake");
    publisher.send(json!({"ref": 1, "run_id": run, "event": "agent_started", "data": {"agent_name": "a"}})).await;
    let huge = "x".repeat(8192);
    publisher.send(json!({"ref": 2, "run_id": run, "event": "agent_thinking", "data": {"thought": huge}})).await;
    assert_eq!(answers(&mut publisher, 1).await[0]["seqs"], json!([1]));
    assert_eq!(close_code(publisher.next().await), Some(1009));
}

#[tokio::test]
async fn a_register_frame_registers_a_run_as_post_v1_runs_does_and_the_next_frame_may_publish_to_it() {
    let server = TestServer::start().await;
    let mut publisher = server.publisher_ws(PUBLISH_KEY).await.expect("handshake");
    let register = json!({"thread_id": "thread_sockreg", "user_id": "alice", "agent_name": "a"});
    publisher.send(json!({"ref": 1, "register": register})).await;
    let answer = answers(&mut publisher, 1).await.remove(0);
    assert_eq!((answer["ref"].clone(), answer["thread_id"].clone()), (json!(1), json!("thread_sockreg")));
    let run = answer["run_id"].as_str().expect("a run id").to_owned();
    assert!(run.starts_with("run_thread_sockreg_"), "{run}");
    // Decided in order: a frame sent right after a registration, unanswered, may use its run.
    let chosen = json!({"thread_id": "thread_sockreg", "user_id": "alice", "run_id": "run_thread_sockreg_chosen"});
    publisher.send(json!({"ref": 2, "register": chosen})).await;
    publisher.send(json!({"ref": 3, "run_id": "run_thread_sockreg_chosen", "event": "agent_started", "data": {"agent_name": "a"}})).await;
    // The same registration again (as a publisher resends it after a dropped
    // connection) is answered as the first was; the rest are refused as
    // POST /v1/runs refuses: someone else's thread, an id taken in another
    // thread, a bad body, a frame that mixes.
    let frames = [
        json!({"ref": 4, "register": {"thread_id": "thread_sockreg", "user_id": "mallory"}}),
        json!({"ref": 5, "register": chosen}),
        json!({"ref": 6, "register": {"thread_id": "thread_sockreg2", "user_id": "alice", "run_id": "run_thread_sockreg_chosen"}}),
        json!({"ref": 7, "register": {"thread_id": "not a thread", "user_id": "alice"}}),
        json!({"ref": 8, "register": {"user_id": "alice"}}),
        json!({"ref": 9, "run_id": run, "register": {"thread_id": "thread_sockreg", "user_id": "alice"}}),
    ];
    for frame in frames {
        publisher.send(frame).await;
    }
    let got = answers(&mut publisher, 8).await;
    assert_eq!(got[0], json!({"ref": 2, "run_id": "run_thread_sockreg_chosen", "thread_id": "thread_sockreg"}));
    assert_eq!(got[1], json!({"ref": 3, "seqs": [1]}));
    assert_eq!(got[3], json!({"ref": 5, "run_id": "run_thread_sockreg_chosen", "thread_id": "thread_sockreg"}));
    let refused: Vec<&Value> = got[2..].iter().filter(|a| a["ref"] != 5).collect();
    let codes: Vec<Value> = refused.iter().map(|a| a["error"]["code"].clone()).collect();
    assert_eq!(
        codes,
        [json!("forbidden"), json!("conflict"), json!("bad_request"), json!("bad_request"), json!("bad_request")]
    );
    assert!(refused.iter().all(|a| a.get("run_id").is_none()), "a refusal registers nothing");
    // The repeat changed nothing: the run goes on from its first event.
    publisher.send(json!({"ref": 10, "run_id": "run_thread_sockreg_chosen", "event": "agent_thinking", "data": {"thought": "on"}})).await;
    assert_eq!(answers(&mut publisher, 1).await[0], json!({"ref": 10, "seqs": [2]}));
    let (status, body) = server.get(&format!("/v1/runs/{run}"), PUBLISH_KEY).await;
    assert_eq!((status, body["thread_id"].clone()), (200, json!("thread_sockreg")));
}
