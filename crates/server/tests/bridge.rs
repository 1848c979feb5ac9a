//! The bridge's guarantees, end to end over real sockets (PROTOCOL §6).

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};

#[tokio::test]
async fn critical_events_reach_every_subscriber_of_the_thread_and_no_one_else() {
    let server = TestServer::start().await;
    let (alice, bob) = (server.token("alice"), server.token("bob"));
    let run = server.create_run("thread_alice", "alice").await;
    server.create_run("thread_bob", "bob").await;

    let mut tabs = vec![server.ws(&alice).await, server.ws(&alice).await];
    for tab in &mut tabs {
        assert_eq!(tab.subscribe("thread_alice", 0).await, 0);
    }
    let mut stranger = server.ws(&bob).await;
    stranger.subscribe("thread_bob", 0).await;

    assert_eq!(server.publish(&run, json!({"events": full_run("x")})).await.0, 200);
    let failing = server.create_run("thread_alice", "alice").await;
    let (status, body) = server
        .publish(
            &failing,
            json!({"events":[
                {"event":"agent_started","data":{"agent_name":"tester"}},
                {"event":"agent_error","data":{"code":"failed","message":"boom"}}
            ]}),
        )
        .await;
    assert_eq!((status, body["seqs"].clone()), (200, json!([7, 8])));

    let want = [
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "agent_message",
        "agent_completed",
        "agent_started",
        "agent_error",
    ];
    for tab in &mut tabs {
        let events = tab.events_until("thread_alice", 8).await;
        assert_eq!(kinds(&events), want);
        assert_eq!(seqs(&events), (1..=8).collect::<Vec<_>>());
        assert!(events.iter().all(|e| e["thread_id"] == "thread_alice"));
    }
    // An SSE watcher of the same thread gets the same history.
    let resp =
        server.http.get(format!("{}/v1/threads/thread_alice/stream?token={alice}", server.base)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    while text.matches("\n\n").count() < 8 {
        let chunk = tokio::time::timeout(WAIT, body.next()).await.unwrap().unwrap().unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.starts_with("id: 1\nevent: agent_started\ndata: {"), "{text}");
    assert!(text.contains("id: 8\nevent: agent_error\n"), "{text}");
    // Bob's connection saw nothing of it.
    assert!(stranger.frames_before_pong().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_runs_on_ten_threads_arrive_complete_and_in_order() {
    let server = std::sync::Arc::new(TestServer::start().await);
    let token = server.token("carol");
    let threads: Vec<String> = (0..10).map(|t| format!("thread_load{t}")).collect();
    let mut runs = Vec::new();
    for i in 0..50 {
        runs.push((threads[i % 10].clone(), server.create_run(&threads[i % 10], "carol").await, i));
    }
    // One connection watches all ten threads, as a dashboard tab would.
    let mut watch_all = server.ws(&token).await;
    for thread in &threads {
        watch_all.subscribe(thread, 0).await;
    }
    let mut subscribers = Vec::new();
    for thread in &threads {
        for _ in 0..3 {
            let mut ws = server.ws(&token).await;
            ws.subscribe(thread, 0).await;
            subscribers.push((thread.clone(), ws));
        }
    }
    // Every run publishes its events one request at a time, all runs at once.
    let mut publishers = Vec::new();
    for (_, run, i) in &runs {
        let (server, run, i) = (server.clone(), run.clone(), *i);
        publishers.push(tokio::spawn(async move {
            for event in full_run(&format!("run{i}")) {
                let (status, body) = server.publish(&run, event).await;
                assert_eq!(status, 200, "{body}");
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    let per_thread = 5 * 6;
    let mut everything = Vec::new();
    while everything.len() < 10 * per_thread as usize {
        everything.extend(watch_all.next_events().await);
    }
    for thread in &threads {
        let of_thread: Vec<Value> = everything.iter().filter(|e| e["thread_id"] == thread.as_str()).cloned().collect();
        assert_eq!(seqs(&of_thread), (1..=per_thread).collect::<Vec<_>>(), "{thread} on the shared connection");
    }
    for (thread, ws) in &mut subscribers {
        let events = ws.events_until(thread, per_thread).await;
        assert_eq!(seqs(&events), (1..=per_thread).collect::<Vec<_>>(), "{thread}");
        for (_, run, _) in runs.iter().filter(|(t, _, _)| t == thread) {
            let of_run: Vec<Value> = events.iter().filter(|e| e["run_id"] == run.as_str()).cloned().collect();
            assert_eq!(
                kinds(&of_run),
                [
                    "agent_started",
                    "agent_thinking",
                    "tool_executing",
                    "tool_completed",
                    "agent_message",
                    "agent_completed"
                ],
                "{run}"
            );
        }
    }
}

#[tokio::test]
async fn a_subscriber_that_drops_mid_run_resumes_with_the_exact_sequence() {
    let server = TestServer::start().await;
    let token = server.token("dave");
    let run = server.create_run("thread_resume", "dave").await;
    let events = full_run("resume");

    let mut ws = server.ws(&token).await;
    ws.subscribe("thread_resume", 0).await;
    server.publish(&run, json!({"events": events[..3]})).await;
    let first = ws.events_until("thread_resume", 3).await;
    let last_seen = seqs(&first).last().copied().unwrap();
    ws.close().await;

    // While it is away the run goes on.
    for e in &events[3..] {
        assert_eq!(server.publish(&run, e.clone()).await.0, 200);
    }
    let mut back = server.ws(&token).await;
    assert_eq!(back.subscribe("thread_resume", last_seen).await, 6);
    let rest = back.events_until("thread_resume", 6).await;
    let mut all = first;
    all.extend(rest);
    assert_eq!(seqs(&all), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(kinds(&all), kinds(&events.iter().map(|e| json!({"event": e["event"]})).collect::<Vec<_>>()));

    // SSE resumes the same way from Last-Event-ID (which wins over after_seq).
    let resp = server
        .http
        .get(format!("{}/v1/threads/thread_resume/stream?after_seq=0", server.base))
        .bearer_auth(&token)
        .header("Last-Event-ID", "4")
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    while text.matches("\n\n").count() < 2 {
        text.push_str(
            std::str::from_utf8(&tokio::time::timeout(WAIT, body.next()).await.unwrap().unwrap().unwrap()).unwrap(),
        );
    }
    assert!(text.starts_with("id: 5\n"), "{text}");
}

#[tokio::test]
async fn nobody_reads_another_users_thread() {
    let server = TestServer::start().await;
    server.create_run("thread_private", "erin").await;
    let mallory = server.token("mallory");
    let mut ws = server.ws(&mallory).await;
    ws.send(json!({"type":"subscribe","thread_id":"thread_private","after_seq":0})).await;
    let frame = ws.next_frame().await;
    assert_eq!((frame["type"].as_str(), frame["code"].as_str()), (Some("error"), Some("forbidden")));
    ws.send(json!({"type":"subscribe","thread_id":"thread_nothere","after_seq":0})).await;
    assert_eq!(ws.next_frame().await["code"], "not_found");
    assert!(ws.frames_before_pong().await.is_empty(), "the connection carries on");

    assert_eq!(server.get("/v1/threads/thread_private/events", &mallory).await.0, 403);
    assert_eq!(server.get("/v1/threads/thread_private/stream", &mallory).await.0, 403);
    let (status, body) = server.post("/v1/threads/thread_private/messages", &mallory, json!({"text":"hi"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")));
    // A publish key is not a user token, and a user token is not a publish key.
    assert_eq!(server.get("/v1/threads/thread_private/events", PUBLISH_KEY).await.0, 403);
    assert_eq!(server.post("/v1/runs", &mallory, json!({"thread_id":"thread_x","user_id":"mallory"})).await.0, 403);
    // No token, or a forged one, is refused at the WebSocket handshake.
    for url in [format!("{}/v1/ws", server.ws_base), format!("{}/v1/ws?token=not.a.jwt", server.ws_base)] {
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
            other => panic!("handshake should be refused, got {:?}", other.map(|_| ())),
        }
    }
}

#[tokio::test]
async fn malformed_frames_and_bodies_get_errors_and_everything_carries_on() {
    let server = TestServer::start().await;
    let token = server.token("frank");
    let run = server.create_run("thread_bad", "frank").await;
    let mut ws = server.ws(&token).await;
    ws.subscribe("thread_bad", 0).await;
    for bad in
        ["not json", "{}", r#"{"type":"dance"}"#, r#"{"type":"subscribe","thread_id":"no spaces allowed"}"#, "[1,2]"]
    {
        ws.send_text(bad).await;
        let frame = ws.next_frame().await;
        assert_eq!((frame["type"].as_str(), frame["code"].as_str()), (Some("error"), Some("bad_request")), "{bad}");
    }
    ws.stream.send(tokio_tungstenite::tungstenite::Message::Binary(vec![0, 159, 146, 150].into())).await.unwrap();
    assert_eq!(ws.next_frame().await["code"], "bad_request");

    for (body, code) in [
        ("{not json", "bad_request"),
        (r#"{"event":"agent_exploded"}"#, "bad_request"),
        (r#"{"event":"user_message","data":{"text":"sneaky"}}"#, "bad_request"),
        (r#"{"events":[]}"#, "bad_request"),
        (r#"{"event":"agent_started","data":{"agent_name":42}}"#, "bad_request"),
        (r#"{"event":"agent_thinking","data":{"thought":"before start"}}"#, "lifecycle_violation"),
    ] {
        let (status, resp) = server.post_raw(&format!("/v1/runs/{run}/events"), PUBLISH_KEY, body).await;
        assert_eq!(resp["error"]["code"], code, "{body} → {status} {resp}");
    }
    let huge = format!(r#"{{"event":"agent_thinking","data":{{"thought":"{}"}}}}"#, "x".repeat(2 << 20));
    assert_eq!(server.post_raw(&format!("/v1/runs/{run}/events"), PUBLISH_KEY, huge).await.0, 413);

    // Nothing was appended, the subscriber is still served, and the server is healthy.
    assert!(ws.frames_before_pong().await.is_empty());
    assert_eq!(server.publish(&run, full_run("ok")[0].clone()).await, (200, json!({"seqs":[1]})));
    assert_eq!(ws.events_until("thread_bad", 1).await.len(), 1);
    assert_eq!(server.get("/healthz", "").await.0, 200);
}

#[tokio::test]
async fn event_ids_deduplicate_and_unroutable_runs_are_refused_and_counted() {
    let server = TestServer::start().await;
    let run = server.create_run("thread_dedup", "gina").await;
    let started = json!({"event":"agent_started","data":{"agent_name":"t"},"event_id":"e-1"});
    assert_eq!(server.publish(&run, started.clone()).await, (200, json!({"seqs":[1]})));
    assert_eq!(server.publish(&run, started).await, (200, json!({"seqs":[1]})));

    // Run ids minted elsewhere still route by their thread (PROTOCOL §1).
    let (status, body) = server
        .publish("user_123_thread_dedup_session", json!({"event":"agent_started","data":{"agent_name":"legacy"}}))
        .await;
    assert_eq!((status, body), (200, json!({"seqs":[2]})));
    let (status, body) =
        server.publish("4f1c0f3e-5b7a-4d0e", json!({"event":"agent_started","data":{"agent_name":"lost"}})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
    let metrics = server.http.get(format!("{}/metrics", server.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"agentwire_events_rejected_total{reason="unroutable"} 1"#), "{metrics}");
}

#[tokio::test]
async fn secret_tool_arguments_are_redacted_before_anyone_sees_them() {
    let server = TestServer::start().await;
    let token = server.token("hank");
    let run = server.create_run("thread_secret", "hank").await;
    let mut ws = server.ws(&token).await;
    ws.subscribe("thread_secret", 0).await;
    server
        .publish(&run, json!({"events":[
            {"event":"agent_started","data":{"agent_name":"t"}},
            {"event":"tool_executing","data":{"tool_call_id":"c","tool_name":"login","args":{"user":"h","api_key":"sk-123"}}}
        ]}))
        .await;
    let events = ws.events_until("thread_secret", 2).await;
    assert_eq!(events[1]["data"]["args"], json!({"user":"h","api_key":"[REDACTED]"}));
}

#[tokio::test]
async fn posting_a_message_runs_the_demo_agent_for_every_watcher() {
    let server = TestServer::start().await;
    let token = server.token("ivy");
    let (status, _) = server.post("/v1/threads", &token, json!({"thread_id":"thread_chat"})).await;
    assert_eq!(status, 201);
    assert_eq!(server.post("/v1/threads", &token, json!({"thread_id":"thread_chat"})).await.0, 409);
    let mut ws = server.ws(&token).await;
    ws.subscribe("thread_chat", 0).await;
    let (status, body) =
        server.post("/v1/threads/thread_chat/messages", &token, json!({"text":"what is 2 + 3?"})).await;
    assert_eq!(status, 202, "{body}");
    let run_id = body["run_id"].as_str().unwrap().to_owned();
    assert!(run_id.starts_with("run_thread_chat_"));
    let mut events = Vec::new();
    while !events.iter().any(|e: &Value| e["event"] == "agent_completed") {
        events.extend(ws.events_until("thread_chat", events.len() as u64 + 1).await);
    }
    let ks = kinds(&events);
    assert_eq!(&ks[..2], ["user_message", "agent_started"]);
    for k in ["agent_thinking", "tool_executing", "tool_completed", "agent_message"] {
        assert!(ks.iter().any(|x| x == k), "{k} in {ks:?}");
    }
    let (status, run) = server.get(&format!("/v1/runs/{run_id}"), &token).await;
    assert_eq!((status, run["status"].as_str()), (200, Some("completed")));
    assert_eq!(server.get(&format!("/v1/runs/{run_id}"), &server.token("other")).await.0, 403);
}

#[tokio::test]
async fn cancel_ends_the_run_and_the_next_publish_is_refused() {
    let server = TestServer::start().await;
    let token = server.token("jack");
    let run = server.create_run("thread_cancel", "jack").await;
    server.publish(&run, full_run("c")[0].clone()).await;
    let mut ws = server.ws(&token).await;
    ws.subscribe("thread_cancel", 0).await;
    let (status, _) = server.post(&format!("/v1/runs/{run}/cancel"), &token, json!({})).await;
    assert_eq!(status, 202);
    let events = ws.events_until("thread_cancel", 2).await;
    assert_eq!(events[1]["data"]["code"], "cancelled");
    let (status, body) = server.publish(&run, full_run("c")[1].clone()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("lifecycle_violation")));
    let (_, info) = server.get(&format!("/v1/runs/{run}"), PUBLISH_KEY).await;
    assert_eq!((info["status"].as_str(), info["cancel_requested"].as_bool()), (Some("error"), Some(true)));
}

#[tokio::test]
async fn a_silent_run_is_ended_by_the_watchdog() {
    let mut config = test_config();
    config.run_idle_timeout = Duration::from_millis(300);
    let server = TestServer::start_with(config).await;
    let token = server.token("kim");
    let run = server.create_run("thread_idle", "kim").await;
    server.publish(&run, full_run("idle")[0].clone()).await;
    let mut ws = server.ws(&token).await;
    ws.subscribe("thread_idle", 0).await;
    let events = ws.events_until("thread_idle", 2).await;
    assert_eq!(
        (events[1]["event"].as_str(), events[1]["data"]["code"].as_str()),
        (Some("agent_error"), Some("timeout"))
    );
}

#[tokio::test]
async fn a_subscriber_that_cannot_keep_up_is_closed_with_4008_and_resumes() {
    let mut config = test_config();
    config.send_queue = 8;
    config.max_batch = 1;
    let server = TestServer::start_with(config).await;
    let token = server.token("lee");
    let run = server.create_run("thread_flood", "lee").await;
    server.publish(&run, full_run("f")[0].clone()).await;
    let mut slow = server.ws(&token).await;
    slow.subscribe("thread_flood", 1).await;
    let mut fast = server.ws(&token).await;
    fast.subscribe("thread_flood", 1).await;
    // Big events fill the socket buffers of a reader that does not read.
    let thought = "x".repeat(64 << 10);
    let total = 1 + 300;
    // Publishes of 5 fit the queue of 8, so a reader that keeps up is never closed.
    for chunk in 0..60 {
        let events: Vec<Value> = (0..5)
            .map(|i| json!({"event":"agent_thinking","data":{"thought":format!("{chunk}-{i}-{thought}")}}))
            .collect();
        assert_eq!(server.publish(&run, json!({ "events": events })).await.0, 200);
        // The fast one keeps reading as it goes.
        fast.events_until("thread_flood", 1 + (chunk + 1) * 5).await;
    }
    let mut code = None;
    for _ in 0..=total {
        if let Seen::Closed(c) = slow.next().await {
            code = c;
            break;
        }
    }
    assert_eq!(code, Some(4008));
    let mut back = server.ws(&token).await;
    back.subscribe("thread_flood", 250).await;
    assert_eq!(seqs(&back.events_until("thread_flood", total as u64).await), (251..=total as u64).collect::<Vec<_>>());
    let metrics = server.http.get(format!("{}/metrics", server.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("agentwire_slow_consumer_disconnects_total 1"), "{metrics}");
}

#[tokio::test]
async fn shutdown_closes_websockets_with_1001_and_ends_agent_runs() {
    let mut config = test_config();
    config.demo_step_delay = Duration::from_secs(30);
    let server = TestServer::start_with(config).await;
    let token = server.token("max");
    let (status, _) = server.post("/v1/threads/thread_bye/messages", &token, json!({"text":"slow please"})).await;
    assert_eq!(status, 202);
    let mut ws = server.ws(&token).await;
    ws.subscribe("thread_bye", 0).await;
    ws.events_until("thread_bye", 3).await;
    let log = server.state.log.clone();
    server.shutdown().await;
    // The run's end was published to the watcher before the close.
    let mut last = None;
    loop {
        match ws.next().await {
            Seen::Frame(f) => last = Some(f),
            Seen::Closed(code) => {
                assert_eq!(code, Some(1001));
                break;
            }
        }
    }
    let last = last.expect("worker_lost was delivered");
    assert_eq!(last["data"]["code"], "worker_lost", "{last}");
    let thread = agentwire_protocol::ThreadId::parse("thread_bye").unwrap();
    let stored = log.read(&thread, 0, 100).await.unwrap().events;
    assert_eq!(stored.last().unwrap().envelope().data["code"], "worker_lost");
}

#[tokio::test]
async fn dev_mode_hands_out_tokens_only_on_loopback_without_a_secret() {
    let mut config = test_config();
    config.jwt_secret = None;
    let dev = TestServer::start_with(config).await;
    let (status, body) = dev.get("/dev/token?user=nora", "").await;
    assert_eq!(status, 200);
    let token = body["token"].as_str().unwrap();
    assert_eq!(dev.post("/v1/threads", token, json!({})).await.0, 201);
    assert_eq!(dev.get("/v1/admin/stats", "").await.0, 200);

    let secure = TestServer::start().await;
    assert_eq!(secure.get("/dev/token?user=nora", "").await.0, 404);
    assert_eq!(secure.get("/v1/admin/stats", "").await.0, 401);
    assert_eq!(secure.get("/v1/admin/stats", "test-admin").await.0, 200);

    let mut open = test_config();
    open.jwt_secret = None;
    open.listen = "0.0.0.0:0".parse().unwrap();
    let hub = agentwire_hub::Hub::new(open.hub_config(), agentwire_hub::HubMetrics::new());
    let log = std::sync::Arc::new(agentwire_log::MemoryLog::new(open.log_config(), hub.clone()).unwrap());
    let refused = agentwire_server::Server::new(open, log, hub, None).await;
    assert!(refused.is_err(), "no secret outside loopback must refuse to start");
}

#[tokio::test]
async fn an_expiring_token_closes_the_socket_with_4001_unless_refreshed() {
    let server = TestServer::start().await;
    let user = agentwire_protocol::UserId::parse("olga").unwrap();
    let short = server.state.auth.issue(&user, Duration::from_secs(2)).unwrap().0;
    server.create_run("thread_exp", "olga").await;
    let mut lapsing = server.ws(&short).await;
    let mut refreshed = server.ws(&short).await;
    refreshed.subscribe("thread_exp", 0).await;
    refreshed.send(json!({"type":"auth","token": server.token("olga")})).await;
    let authed = refreshed.next_frame().await;
    assert_eq!(authed["type"], "authed", "{authed}");
    // Another user's token cannot take over the connection.
    refreshed.send(json!({"type":"auth","token": server.token("someone_else")})).await;
    assert_eq!(refreshed.next_frame().await["code"], "forbidden");
    assert_eq!(close_code(lapsing.next().await), Some(4001));
    assert!(refreshed.frames_before_pong().await.is_empty(), "the refreshed connection stays open");
}

#[tokio::test]
async fn a_subscriber_asking_for_removed_history_gets_reset_then_what_is_retained() {
    let mut config = test_config();
    config.retention_thread_events = 3;
    config.retention_interval = Duration::from_millis(50);
    let server = TestServer::start_with(config).await;
    let token = server.token("pia");
    let run = server.create_run("thread_short", "pia").await;
    assert_eq!(server.publish(&run, json!({"events": full_run("r")})).await.0, 200);
    // Wait for the sweep to leave the newest three of six.
    let thread = agentwire_protocol::ThreadId::parse("thread_short").unwrap();
    tokio::time::timeout(WAIT, async {
        while server.state.log.read(&thread, 0, 10).await.unwrap().oldest_seq < 4 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("retention ran");
    let mut ws = server.ws(&token).await;
    assert_eq!(ws.subscribe("thread_short", 1).await, 6);
    let reset = ws.next_frame().await;
    assert_eq!(reset, json!({"type":"reset","thread_id":"thread_short","oldest_seq":4}));
    assert_eq!(seqs(&ws.events_until("thread_short", 6).await), vec![4, 5, 6]);
}

#[tokio::test]
async fn the_legacy_format_speaks_the_seed_frontends_language() {
    let server = TestServer::start().await;
    let token = server.token("xena");
    let run = server.create_run("thread_seed", "xena").await;
    let (stream, _) = tokio_tungstenite::connect_async(format!("{}/v1/ws?format=legacy&token={token}", server.ws_base))
        .await
        .unwrap();
    let mut ws = Ws { stream };
    // Joining after agent_started: the agent's name comes from the run registry.
    server.publish(&run, full_run("seed")[0].clone()).await;
    ws.subscribe("thread_seed", 1).await;
    let mut events = full_run("seed")[1..].to_vec();
    events[1]["data"]["args"] = json!({"q":"seed","password":"hunter2"});
    server.publish(&run, json!({ "events": events })).await;
    let mut frames = Vec::new();
    while frames.len() < 5 {
        frames.push(ws.next_frame().await);
    }
    assert_eq!(
        frames.iter().map(|f| f["type"].as_str().unwrap()).collect::<Vec<_>>(),
        ["agent_thinking", "tool_executing", "tool_completed", "agent_message", "agent_completed"]
    );
    assert!(frames.iter().all(|f| f["agent_name"] == "tester" && f["thread_id"] == "thread_seed"));
    assert_eq!(frames[0]["payload"]["reasoning"], "thinking about seed");
    assert_eq!(frames[1]["payload"]["parameters"], json!({"q":"seed","password":"[REDACTED]"}));
    assert_eq!(frames[2]["payload"]["tool_name"], "search", "the completed tool is named from its start");
    assert_eq!(frames[2]["payload"]["status"], "completed");
    assert_eq!(frames[4]["payload"]["result"], "ok");
    assert!(frames.iter().all(|f| f["payload"]["message"].is_string() && f["timestamp"].is_string()));
}

#[tokio::test]
async fn deleting_a_thread_ends_its_runs_closes_its_streams_and_frees_its_id() {
    let server = TestServer::start().await;
    let (alice, bob) = (server.token("alice"), server.token("bob"));
    let run = server.create_run("thread_gone", "alice").await;
    let ended = server.create_run("thread_gone", "alice").await;
    server.publish(&run, full_run("d")[0].clone()).await;
    server.publish(&ended, json!({"events": full_run("e")})).await;
    let mut ws = server.ws(&alice).await;
    ws.subscribe("thread_gone", 0).await;
    ws.events_until("thread_gone", 7).await;
    let sse = server
        .http
        .get(format!("{}/v1/threads/thread_gone/stream", server.base))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);

    // Only the owner or an operator.
    assert_eq!(server.delete("/v1/threads/thread_gone", &bob).await.0, 403);
    assert_eq!(server.delete("/v1/threads/thread_gone", PUBLISH_KEY).await.0, 403);
    assert_eq!(server.delete("/v1/threads/thread_nothing", &alice).await.0, 404);
    assert_eq!(server.get("/v1/threads/thread_gone/events", &alice).await.1["head_seq"], 7, "refusals change nothing");

    let (status, body) = server.delete("/v1/threads/thread_gone", &alice).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"thread_id": "thread_gone", "cancelled": [run]}));

    // The running run ended as cancelled, then the subscription closed with a clear frame.
    let events = ws.events_until("thread_gone", 8).await;
    let last = &events[events.len() - 1];
    assert_eq!((last["event"].as_str(), last["data"]["code"].as_str()), (Some("agent_error"), Some("cancelled")));
    let frame = ws.next_frame().await;
    assert_eq!(
        (frame["type"].as_str(), frame["code"].as_str(), frame["thread_id"].as_str()),
        (Some("error"), Some("not_found"), Some("thread_gone")),
        "{frame}"
    );
    let sse_text = tokio::time::timeout(WAIT, sse.text()).await.expect("the SSE stream ends").unwrap();
    assert!(sse_text.contains("event: error") && sse_text.contains("the thread was deleted"), "{sse_text}");
    assert!(sse_text.contains("\"code\":\"cancelled\""), "the cancel came first: {sse_text}");

    // Nothing of it is left: not the thread, its runs, nor their event ids.
    assert_eq!(server.get("/v1/threads/thread_gone/events", &alice).await.0, 404);
    for old in [&run, &ended] {
        assert_eq!(server.get(&format!("/v1/runs/{old}"), PUBLISH_KEY).await.0, 404);
    }
    assert_eq!(server.publish(&run, full_run("d")[1].clone()).await.0, 404);
    ws.send(json!({"type":"subscribe","thread_id":"thread_gone","after_seq":0})).await;
    assert_eq!(ws.next_frame().await["code"], "not_found");

    // The id can be claimed again, by anyone, and shows nothing of the old thread.
    let (status, _) = server.post("/v1/threads", &bob, json!({"thread_id": "thread_gone"})).await;
    assert_eq!(status, 201);
    let (status, page) = server.get("/v1/threads/thread_gone/events", &bob).await;
    assert_eq!((status, page["head_seq"].as_u64(), page["events"].as_array().map(Vec::len)), (200, Some(0), Some(0)));
    assert_eq!(server.get("/v1/threads/thread_gone/events", &alice).await.0, 403);
    // The old run id is free too: a publisher may register it in the new thread.
    let (status, _) = server
        .post("/v1/runs", PUBLISH_KEY, json!({"thread_id": "thread_gone", "user_id": "bob", "run_id": ended}))
        .await;
    assert_eq!(status, 201);
    // An operator may delete any thread.
    assert_eq!(server.delete("/v1/threads/thread_gone", "test-admin").await.0, 200);
}
