//! Hostile callers: every route with the wrong credentials, foreign token
//! formats, limits, origins, random bytes and floods (SECURITY.md).

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn hs256(secret: &str, claims: Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(secret.as_bytes()).unwrap(), None, claims)
}

async fn status(
    server: &TestServer,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (u16, String) {
    let url = format!("{}{path}", server.base);
    let mut req = match method {
        "GET" => server.http.get(url),
        _ => server.http.post(url),
    };
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap_or_default())
}

async fn ws_handshake(server: &TestServer, token: Option<&str>) -> Result<Ws, u16> {
    let url = match token {
        Some(t) => format!("{}/v1/ws?token={t}", server.ws_base),
        None => format!("{}/v1/ws", server.ws_base),
    };
    match tokio_tungstenite::connect_async(url).await {
        Ok((stream, _)) => Ok(Ws { stream }),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("handshake failed oddly: {e}"),
    }
}

#[tokio::test]
async fn every_route_refuses_the_wrong_credentials_and_leaks_nothing() {
    let server = TestServer::start().await;
    let alice = server.token("alice");
    let bob = server.token("bob");
    let forged = hs256("not-the-secret", json!({"sub":"alice","exp": now() + 600}));
    let expired = hs256("test-secret-that-is-32-bytes-long", json!({"sub":"alice","exp": now() - 600}));
    let run = server.create_run("thread_secret1", "alice").await;
    server.publish(&run, json!({"event":"agent_started","data":{"agent_name":"private-agent"}})).await;

    // (method, path, body, who may call it)
    let thread = "/v1/threads/thread_secret1";
    let routes: Vec<(&str, String, Option<Value>, &str)> = vec![
        ("POST", "/v1/threads".into(), Some(json!({})), "user"),
        ("POST", format!("{thread}/messages"), Some(json!({"text":"hi"})), "owner"),
        ("GET", format!("{thread}/events"), None, "owner"),
        ("GET", format!("{thread}/stream"), None, "owner"),
        ("POST", "/v1/runs".into(), Some(json!({"thread_id":"thread_x1","user_id":"mallory"})), "publisher"),
        (
            "POST",
            format!("/v1/runs/{run}/events"),
            Some(json!({"event":"agent_thinking","data":{"thought":"t"}})),
            "publisher",
        ),
        ("GET", format!("/v1/runs/{run}"), None, "owner or publisher"),
        ("POST", format!("/v1/runs/{run}/cancel"), Some(json!({})), "owner or publisher"),
        ("GET", "/v1/admin/stats".into(), None, "operator"),
        ("GET", "/v1/admin/stream".into(), None, "operator"),
    ];
    for (method, path, body, who) in &routes {
        for (label, bearer) in [("none", None), ("forged", Some(forged.as_str())), ("expired", Some(expired.as_str()))]
        {
            let (code, text) = status(&server, method, path, bearer, body.clone()).await;
            assert_eq!(code, 401, "{method} {path} with {label} credentials: {text}");
            assert!(text.contains(r#""code":"unauthorized""#), "{text}");
        }
        let wrong: Vec<(&str, &str)> = match *who {
            "user" => vec![("a publish key", PUBLISH_KEY)],
            "owner" => vec![("another user", bob.as_str()), ("a publish key", PUBLISH_KEY)],
            "publisher" => vec![("a user token", alice.as_str())],
            "owner or publisher" => vec![("another user", bob.as_str())],
            _ => vec![("a user token", alice.as_str()), ("a publish key", PUBLISH_KEY)],
        };
        for (label, bearer) in wrong {
            let (code, text) = status(&server, method, path, Some(bearer), body.clone()).await;
            assert_eq!(code, 403, "{method} {path} with {label}: {text}");
            for secret in ["alice", "private-agent", "agent_started", "\"seq\""] {
                assert!(!text.contains(secret), "{method} {path} with {label} leaked {secret:?}: {text}");
            }
        }
    }
    // The WebSocket: refused at the handshake without a valid user token.
    for token in [None, Some(forged.as_str()), Some(expired.as_str())] {
        assert_eq!(ws_handshake(&server, token).await.err(), Some(401));
    }
    assert_eq!(ws_handshake(&server, Some(PUBLISH_KEY)).await.err(), Some(403));
    // And inside it: another user's thread, and tokens that may not take over.
    let mut ws = ws_handshake(&server, Some(&bob)).await.unwrap();
    ws.send(json!({"type":"subscribe","thread_id":"thread_secret1","after_seq":0})).await;
    let refused = ws.next_frame().await;
    assert_eq!(refused["code"], "forbidden");
    assert!(!refused.to_string().contains("alice"));
    for (token, code) in [
        (forged.as_str(), "unauthorized"),
        (expired.as_str(), "unauthorized"),
        (alice.as_str(), "forbidden"),
        (PUBLISH_KEY, "forbidden"),
    ] {
        ws.send(json!({"type":"auth","token": token})).await;
        assert_eq!(ws.next_frame().await["code"], code);
    }
    assert!(ws.frames_before_pong().await.is_empty(), "nothing of alice's thread reached bob");
}

#[tokio::test]
async fn rs256_es256_and_jwks_tokens_with_issuer_and_audience() {
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-private.pem")).unwrap()).unwrap();
    let ec = EncodingKey::from_ec_pem(&std::fs::read(fixture("ec-private.pem")).unwrap()).unwrap();
    let claims = |sub: &str| json!({"sub": sub, "exp": now() + 600, "iss": "https://issuer.test", "aud": "agentwire"});
    let cases = [
        ("jwt_public_key", "rsa-public.pem", Algorithm::RS256, &rsa, None),
        ("jwt_public_key", "ec-public.pem", Algorithm::ES256, &ec, None),
        ("jwt_jwks", "jwks.json", Algorithm::RS256, &rsa, Some("test-rsa-1")),
    ];
    for (setting, file, alg, key, kid) in cases {
        let mut config = test_config();
        config.jwt_secret = None;
        match setting {
            "jwt_jwks" => config.jwt_jwks = Some(fixture(file)),
            _ => config.jwt_public_key = Some(fixture(file)),
        }
        config.jwt_issuer = Some("https://issuer.test".into());
        config.jwt_audience = Some("agentwire".into());
        let server = TestServer::start_with(config).await;
        let good = sign(alg, key, kid, claims("quinn"));
        assert_eq!(status(&server, "POST", "/v1/threads", Some(&good), Some(json!({}))).await.0, 201, "{file}");
        assert!(ws_handshake(&server, Some(&good)).await.is_ok(), "{file}");
        let mut wrong_iss = claims("quinn");
        wrong_iss["iss"] = json!("https://elsewhere.test");
        let mut wrong_aud = claims("quinn");
        wrong_aud["aud"] = json!("someone-else");
        let mut not_yet = claims("quinn");
        not_yet["nbf"] = json!(now() + 600);
        for bad in [wrong_iss, wrong_aud, not_yet] {
            let token = sign(alg, key, kid, bad.clone());
            assert_eq!(
                status(&server, "POST", "/v1/threads", Some(&token), Some(json!({}))).await.0,
                401,
                "{file} {bad}"
            );
        }
        // An HS256 token made with the public key as its secret (the classic confusion) is refused.
        let confused = hs256(&std::fs::read_to_string(fixture(file)).unwrap(), claims("quinn"));
        assert_eq!(status(&server, "POST", "/v1/threads", Some(&confused), Some(json!({}))).await.0, 401);
    }
}

#[tokio::test]
async fn limits_stop_the_greedy_client_and_no_one_else() {
    let mut config = test_config();
    config.publish_rate = 5;
    config.publish_keys = vec![PUBLISH_KEY.into(), "second-key".into()];
    config.max_connections_per_user = 2;
    config.ws_message_rate = 5;
    config.max_subscriptions_per_connection = 2;
    let server = TestServer::start_with(config).await;

    // Publishes: a burst of twice the rate, then 429 for that key only.
    let run = server.create_run("thread_lim", "rita").await;
    server.create_run("thread_lim2", "rita").await;
    server.create_run("thread_lim3", "rita").await;
    let mut codes = Vec::new();
    for i in 0..12 {
        codes.push(server.publish(&run, json!({"event":"agent_thinking","data":{"thought": format!("{i}")}})).await.0);
    }
    assert!(codes.contains(&429), "{codes:?}");
    let (other, body) = server
        .post(
            &format!("/v1/runs/{run}/events"),
            "second-key",
            json!({"event":"agent_started","data":{"agent_name":"a"}}),
        )
        .await;
    assert_eq!(other, 200, "another key is not affected: {body}");
    let too_many: Vec<Value> =
        (0..1001).map(|i| json!({"event":"agent_thinking","data":{"thought": format!("{i}")}})).collect();
    let (code, body) =
        server.post(&format!("/v1/runs/{run}/events"), "second-key", json!({ "events": too_many })).await;
    assert_eq!((code, body["error"]["code"].as_str()), (413, Some("too_large")), "events per publish");

    // Connections per user.
    let rita = server.token("rita");
    let _one = server.ws(&rita).await;
    let mut two = server.ws(&rita).await;
    assert_eq!(ws_handshake(&server, Some(&rita)).await.err(), Some(429));
    assert!(ws_handshake(&server, Some(&server.token("sam"))).await.is_ok(), "another user is not affected");

    // Subscriptions per connection.
    two.subscribe("thread_lim2", 0).await;
    two.subscribe("thread_lim3", 0).await;
    two.send(json!({"type":"subscribe","thread_id":"thread_lim","after_seq":0})).await;
    let refused = two.next_frame().await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("too_large")));

    // Messages per connection: past the burst they are ignored, with one error frame.
    for _ in 0..30 {
        two.send(json!({"type":"ping"})).await;
    }
    let mut pongs = 0;
    let mut limited = 0;
    let deadline = Instant::now() + Duration::from_millis(800);
    while Instant::now() < deadline {
        if let Ok(Some(Ok(Message::Text(t)))) =
            tokio::time::timeout(Duration::from_millis(200), two.stream.next()).await
        {
            let f: Value = serde_json::from_str(&t).unwrap();
            match f["type"].as_str() {
                Some("pong") => pongs += 1,
                Some("error") if f["code"] == "rate_limited" => limited += 1,
                _ => {}
            }
        }
    }
    // The bucket holds twice the rate (10); three subscribes above already spent three.
    assert!((5..=12).contains(&pongs), "what is left of the burst gets through, the rest is ignored: {pongs}");
    assert_eq!(limited, 1, "one error frame for the whole burst");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(two.frames_before_pong().await.is_empty(), "the connection recovers once it slows down");
}

#[tokio::test]
async fn browsers_from_other_origins_are_refused() {
    let server = TestServer::start().await;
    let token = server.token("tess");
    let host = server.base.trim_start_matches("http://").to_owned();
    let request = |origin: &str| {
        let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "{}/v1/ws?token={token}",
            server.ws_base
        ))
        .unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        req
    };
    match tokio_tungstenite::connect_async(request("https://evil.example")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("a foreign origin must be refused: {:?}", other.map(|_| ())),
    }
    assert!(tokio_tungstenite::connect_async(request(&format!("http://{host}"))).await.is_ok());
}

#[tokio::test]
async fn an_oversized_frame_closes_that_socket_only() {
    let mut config = test_config();
    config.max_frame_bytes = 4096;
    let server = TestServer::start_with(config).await;
    let token = server.token("uma");
    let run = server.create_run("thread_big", "uma").await;
    let mut good = server.ws(&token).await;
    good.subscribe("thread_big", 0).await;
    let mut bad = server.ws(&token).await;
    bad.send_text(&format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(10_000))).await;
    assert_eq!(close_code(bad.next().await), Some(1009));
    server.publish(&run, json!({"event":"agent_started","data":{"agent_name":"a"}})).await;
    assert_eq!(good.events_until("thread_big", 1).await.len(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever bytes a client sends, the server answers with errors or closes
    /// that one socket, and everyone else keeps receiving.
    #[test]
    fn random_frames_never_disturb_other_connections(frames in prop::collection::vec(
        prop_oneof![
            any::<String>().prop_map(Message::text),
            prop::collection::vec(any::<u8>(), 0..512).prop_map(|b| Message::Binary(b.into())),
            "\\{\"type\":\"(subscribe|unsubscribe|auth|ping)\"[ -~]{0,60}\\}".prop_map(Message::text),
        ],
        1..12,
    )) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let server = TestServer::start().await;
            let token = server.token("vera");
            let run = server.create_run("thread_fuzz", "vera").await;
            let mut watcher = server.ws(&token).await;
            watcher.subscribe("thread_fuzz", 0).await;
            let mut noisy = server.ws(&token).await;
            for frame in frames {
                if noisy.stream.send(frame).await.is_err() {
                    break;
                }
            }
            server.publish(&run, json!({"event":"agent_started","data":{"agent_name":"a"}})).await;
            assert_eq!(watcher.events_until("thread_fuzz", 1).await.len(), 1);
            assert_eq!(server.get("/healthz", "").await.0, 200);
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_bad_input_does_not_slow_a_good_subscriber() {
    let mut config = test_config();
    config.ws_message_rate = 1000;
    let server = std::sync::Arc::new(TestServer::start_with(config).await);
    let token = server.token("wes");
    let run = server.create_run("thread_flood1", "wes").await;
    server.publish(&run, json!({"event":"agent_started","data":{"agent_name":"a"}})).await;
    let mut good = server.ws(&token).await;
    good.subscribe("thread_flood1", 1).await;

    let mut attackers = Vec::new();
    for a in 0..4 {
        let (server, token) = (server.clone(), server.token(&format!("mallory{a}")));
        attackers.push(tokio::spawn(async move {
            let mut ws = server.ws(&token).await;
            for i in 0..1500 {
                let junk = match i % 4 {
                    0 => "not json".to_owned(),
                    1 => r#"{"type":"subscribe","thread_id":"thread_flood1","after_seq":0}"#.to_owned(),
                    2 => r#"{"type":"subscribe","thread_id":"bad id"}"#.to_owned(),
                    _ => format!(r#"{{"type":"auth","token":"{i}"}}"#),
                };
                if ws.stream.send(Message::text(junk)).await.is_err() {
                    break;
                }
            }
            // Oversized and truncated bodies; the server may close these connections
            // early, so the attacker has a connection pool of its own.
            let http = reqwest::Client::new();
            let huge = "x".repeat(2 << 20);
            for _ in 0..5 {
                let url = format!("{}/v1/runs/nope/events", server.base);
                let _ = http.post(url).bearer_auth(PUBLISH_KEY).body(huge.clone()).send().await;
                let url = format!("{}/v1/threads", server.base);
                let _ = http.post(url).bearer_auth(&token).body("{\"thread_id\":").send().await;
            }
        }));
    }
    // Meanwhile a steady stream for the good subscriber, timed publish → receipt.
    let mut worst = Duration::ZERO;
    for i in 0..100u64 {
        let sent = Instant::now();
        let (code, _) =
            server.publish(&run, json!({"event":"agent_thinking","data":{"thought": format!("{i}")}})).await;
        assert_eq!(code, 200);
        let got = good.events_until("thread_flood1", i + 2).await;
        assert_eq!(got.last().unwrap()["seq"].as_u64(), Some(i + 2), "in order, nothing lost");
        worst = worst.max(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for a in attackers {
        a.await.unwrap();
    }
    assert!(worst < Duration::from_secs(2), "the good subscriber waited {worst:?} at worst");
}

/// Waits until `run` has ended and answers its status.
async fn ended_status(server: &TestServer, run: &str, token: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, info) = server.get(&format!("/v1/runs/{run}"), token).await;
        assert_eq!(status, 200, "{info}");
        let run_status = info["status"].as_str().unwrap_or_default().to_owned();
        if run_status != "running" {
            return run_status;
        }
        assert!(Instant::now() < deadline, "run {run} still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn expressions_that_overflowed_the_stack_are_answered_and_the_server_stays_up() {
    // Issue 14: each of these bodies aborted the whole process through the demo
    // agent's recursive calculator.
    let server = TestServer::start().await;
    let token = server.token("mallory");
    let nested = |depth: usize| format!("{}1+1{}", "(".repeat(depth), ")".repeat(depth));
    let bodies = [nested(20_000), vec!["1"; 30_000].join("+"), vec!["2"; 30_000].join("^")];
    for (i, text) in bodies.iter().enumerate() {
        let thread = format!("thread_deep{i}");
        let (status, body) =
            server.post(&format!("/v1/threads/{thread}/messages"), &token, json!({"text": text})).await;
        assert_eq!(status, 202, "{body}");
        let run = body["run_id"].as_str().unwrap().to_owned();
        assert_eq!(ended_status(&server, &run, &token).await, "completed");
    }
    let input = json!({
        "threadId": "thread_deepagui", "runId": "run_deepagui_1",
        "messages": [{"id": "1", "role": "user", "content": nested(15_000)}],
    });
    let resp =
        server.http.post(format!("{}/v1/agui", server.base)).bearer_auth(&token).json(&input).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let stream = resp.text().await.unwrap();
    assert!(stream.contains("RUN_FINISHED"), "{stream}");
    assert_eq!(status(&server, "GET", "/healthz", None, None).await.0, 200);
    let (_, page) = server.get("/v1/threads/thread_deep0/events", &token).await;
    let events = page["events"].as_array().unwrap();
    assert!(events.len() > 5, "{page}");
    for event in events.iter().filter(|e| !["user_message", "agent_started"].contains(&e["event"].as_str().unwrap())) {
        // The message itself is the run's input; nothing the agent says repeats it whole.
        assert!(event.to_string().len() < 2_000, "an agent event quotes the whole message: {}", event["event"]);
    }
}

/// A TCP connection to `server` from `from` (another loopback address than the
/// test's own requests, so per-IP caps bind the attacker only).
async fn raw_connection(server: &TestServer, from: &str) -> tokio::net::TcpStream {
    let addr: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::new(from.parse().unwrap(), 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Whether the server closes `stream` within `within` (whatever it answers first).
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut sink = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut sink)).await.is_ok()
}

/// Request beginnings that never finish: the request line, the headers, the body.
fn stalled_request(i: usize, token: &str) -> String {
    match i % 4 {
        0 => "GET /healthz HTT".to_owned(),
        1 => "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n".to_owned(),
        2 => format!(
            "POST /v1/threads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n{{"
        ),
        // A finished request, then an idle keep-alive connection.
        _ => "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
    }
}

/// `count` connections from 127.0.0.2, each left in one of the stalls of [`stalled_request`].
async fn stalled_requests(server: &TestServer, count: usize) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let token = server.token("slowpoke");
    let mut held = Vec::new();
    for i in 0..count {
        let mut stream = raw_connection(server, "127.0.0.2").await;
        let _ = stream.write_all(stalled_request(i, &token).as_bytes()).await;
        held.push(stream);
    }
    held
}

#[tokio::test]
async fn slow_clients_cannot_hold_the_server() {
    use tokio::io::AsyncWriteExt;
    // Issue 14: unfinished requests, slow headers, missing bodies and idle
    // keep-alives stayed open for good, and one address could take every descriptor.
    let mut config = test_config();
    config.max_http_connections_per_ip = 40;
    config.http_header_timeout = Duration::from_secs(60);
    let server = TestServer::start_with(config).await;
    let mut held = stalled_requests(&server, 100).await;
    // The first 40 are held; every one past the cap is closed at once.
    let mut closed = 0;
    for stream in &mut held[40..] {
        closed += usize::from(closed_within(stream, WAIT).await);
    }
    assert_eq!(closed, 60);
    // Others are served meanwhile.
    assert_eq!(status(&server, "GET", "/healthz", None, None).await.0, 200);
    drop(held);
    server.shutdown().await;

    // With short timeouts every kind of stall is closed by the server.
    let mut config = test_config();
    config.http_header_timeout = Duration::from_millis(500);
    config.http_body_timeout = Duration::from_millis(500);
    let server = TestServer::start_with(config).await;
    let mut held = stalled_requests(&server, 200).await;
    assert_eq!(status(&server, "GET", "/healthz", None, None).await.0, 200);
    for (i, stream) in held.iter_mut().enumerate() {
        assert!(closed_within(stream, WAIT).await, "stall kind {} stayed open", i % 4);
    }
    // Headers sent one by one, each in time, still must end within the deadline.
    let mut trickle = raw_connection(&server, "127.0.0.2").await;
    trickle.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    while trickle.write_all(b"X-Slow: 1\r\n").await.is_ok() && started.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() < WAIT, "a trickle of headers kept the connection open");
}

/// A raw HTTP request from a socket with a small receive buffer that is then never read.
async fn stalled_reader(server: &TestServer, request: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// A WebSocket upgrade request, written by hand for clients that never read.
fn ws_upgrade(token: &str) -> String {
    format!(
        "GET /v1/ws?token={token} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// A masked text frame subscribing to `thread` from its first event.
fn subscribe_frame(thread: &str) -> Vec<u8> {
    let payload = format!(r#"{{"type":"subscribe","thread_id":"{thread}","after_seq":0}}"#);
    assert!(payload.len() < 126, "one-byte payload length");
    let mut frame = vec![0x81, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(payload.as_bytes());
    frame
}

fn slow_consumers(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("agentwire_slow_consumer_disconnects_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_closed_and_its_slot_freed() {
    // Issue 13: writes had no deadline, so a peer that kept its connection open
    // but never read held its slot and a full queue for good.
    let mut config = test_config();
    config.write_timeout = Duration::from_millis(500);
    config.max_connections_per_user = 1;
    let server = TestServer::start_with(config).await;
    let token = server.token("stalled");
    let run = server.create_run("thread_stall", "stalled").await;
    server.publish(&run, json!({"event":"agent_started","data":{"agent_name":"a"}})).await;
    let thought = "x".repeat(60_000);
    let requests =
        [ws_upgrade(&token), format!("GET /v1/threads/thread_stall/stream?token={token} HTTP/1.1\r\nHost: x\r\n\r\n")];
    for (i, request) in requests.iter().enumerate() {
        let mut stalled = stalled_reader(&server, request).await;
        if i == 0 {
            use tokio::io::AsyncWriteExt;
            stalled.write_all(&subscribe_frame("thread_stall")).await.unwrap();
        }
        let before = slow_consumers(&server.get_text("/metrics").await);
        // The user's one connection slot is taken while the stalled reader lives...
        let sse = |t: &str| format!("{}/v1/threads/thread_stall/stream?token={t}", server.base);
        let deadline = Instant::now() + WAIT;
        while server.http.get(sse(&token)).send().await.unwrap().status() != 429 {
            assert!(Instant::now() < deadline, "the stalled connection never took its slot");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // ...and given back once its writes stall past the deadline.
        let mut freed = false;
        for _ in 0..400 {
            server.publish(&run, json!({"event":"agent_thinking","data":{"thought": thought}})).await;
            let resp = server.http.get(sse(&token)).send().await.unwrap();
            if resp.status() == 200 {
                freed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(freed, "transport {i}: the stalled reader kept its slot");
        assert!(slow_consumers(&server.get_text("/metrics").await) > before, "transport {i}: not counted");
        drop(stalled);
        // Let the SSE probe that succeeded go, so the next transport starts with a free slot.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Shutdown does not wait for a reader that stopped.
    let mut stalled = stalled_reader(&server, &requests[1]).await;
    for _ in 0..50 {
        server.publish(&run, json!({"event":"agent_thinking","data":{"thought": thought}})).await;
    }
    let started = Instant::now();
    server.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(4), "shutdown waited {:?}", started.elapsed());
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut stalled).await;
}

#[tokio::test]
async fn agui_streams_obey_the_connection_caps_and_the_origin_check_and_every_stream_ends_with_its_token() {
    // Issue 14: a user at 64/64 WebSockets opened 100 AG-UI streams, from any origin.
    let mut config = test_config();
    config.max_connections_per_user = 2;
    let server = TestServer::start_with(config).await;
    let token = server.token("capped");
    let input = |n: usize| {
        json!({"threadId": "thread_capped", "runId": format!("agui-cap-{n}"),
               "messages": [{"id": "1", "role": "user", "content": "hello"}]})
    };
    let agui = |n: usize, origin: Option<&str>| {
        let mut req = server.http.post(format!("{}/v1/agui", server.base)).bearer_auth(&token).json(&input(n));
        if let Some(origin) = origin {
            req = req.header("origin", origin);
        }
        req.send()
    };
    assert_eq!(agui(0, Some("https://attacker.example")).await.unwrap().status(), 403);
    let _a = server.ws(&token).await;
    let _b = server.ws(&token).await;
    assert_eq!(agui(1, None).await.unwrap().status(), 429);
    drop((_a, _b));

    // An SSE stream ends, with an `error` event, when its token expires.
    let short = hs256("test-secret-that-is-32-bytes-long", json!({"sub": "capped", "exp": now() + 2}));
    server.create_run("thread_expiring", "capped").await;
    let url = format!("{}/v1/threads/thread_expiring/stream?token={short}", server.base);
    let resp = server.http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(10), resp.text()).await.expect("the stream ended").unwrap();
    assert!(body.contains("event: error") && body.contains("unauthorized"), "{body}");
}

#[tokio::test]
async fn dev_mode_answers_only_loopback_hosts_and_origins_are_checked_by_list() {
    // Issue 14: with Host and Origin both `attacker.example:PORT` (DNS rebinding),
    // dev mode handed out tokens and served threads and the operator routes.
    let mut config = test_config();
    config.jwt_secret = None;
    let server = TestServer::start_with(config).await;
    let port = server.base.rsplit(':').next().unwrap().to_owned();
    let attacker = format!("attacker.example:{port}");
    let get = |path: &str, host: &str, origin: Option<String>| {
        let mut req = server.http.get(format!("{}{path}", server.base)).header("host", host);
        if let Some(origin) = origin {
            req = req.header("origin", origin);
        }
        req.send()
    };
    for path in ["/dev/token?user=eve", "/v1/admin/stats", "/v1/threads/thread_x1/events", "/"] {
        let resp = get(path, &attacker, Some(format!("http://{attacker}"))).await.unwrap();
        assert_eq!(resp.status(), 403, "{path}");
    }
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}")] {
        assert_eq!(get("/dev/token?user=eve", &host, None).await.unwrap().status(), 200, "{host}");
    }
    let (_, token) = server.get("/dev/token?user=eve", "").await;
    let token = token["token"].as_str().unwrap().to_owned();
    server.create_run("thread_eve1", "eve").await;
    let stream = format!("/v1/threads/thread_eve1/stream?token={token}");
    let own = format!("127.0.0.1:{port}");
    // The origin is checked against a list, scheme included; not against Host.
    for (origin, want) in [
        (format!("http://127.0.0.1:{port}"), 200),
        (format!("http://localhost:{port}"), 200),
        (format!("chrome-extension://127.0.0.1:{port}"), 403),
        (format!("http://127.0.0.1:{}", port.parse::<u16>().unwrap() + 1), 403),
    ] {
        assert_eq!(get(&stream, &own, Some(origin.clone())).await.unwrap().status(), want, "{origin}");
    }
}

#[tokio::test]
async fn names_in_events_and_runs_have_a_length_limit() {
    // Issue 14: a publisher's agent_name of 500 KB was stored and served whole.
    let server = TestServer::start().await;
    let run = server.create_run("thread_names", "nell").await;
    let long = "n".repeat(agentwire_protocol::NAME_MAX + 1);
    for event in [
        json!({"event":"agent_started","data":{"agent_name": long}}),
        json!({"event":"tool_executing","data":{"tool_call_id":"c1","tool_name": long}}),
    ] {
        let (status, body) = server.publish(&run, event).await;
        assert_eq!((status, body["error"]["code"].as_str()), (413, Some("too_large")), "{body}");
    }
    let body = json!({"thread_id":"thread_names2","user_id":"nell","agent_name": long});
    assert_eq!(server.post("/v1/runs", PUBLISH_KEY, body).await.0, 413);
    let fits = "n".repeat(agentwire_protocol::NAME_MAX);
    assert_eq!(server.publish(&run, json!({"event":"agent_started","data":{"agent_name": fits}})).await.0, 200);
}

#[tokio::test]
async fn secrets_are_redacted_for_every_source_and_in_every_format() {
    // Issue 14: only keys inside tool_executing.args were redacted; everything
    // below reached watchers in clear.
    let server = TestServer::start().await;
    let token = server.token("sam");
    let secrets =
        ["Zq9pw1", "Zq9pw2", "Zq9pw3x", "Zq9pw4", "Zq9pw5", "Zq9pw6", "Zq9pw7", "Zq9pw8", "Zq9pw9", "Zq9pwA", "Zq9pwB"];
    let run = server.create_run("thread_leaky", "sam").await;
    let mut legacy = {
        let url = format!("{}/v1/ws?format=legacy&token={token}", server.ws_base);
        Ws { stream: tokio_tungstenite::connect_async(url).await.unwrap().0 }
    };
    legacy.subscribe("thread_leaky", 0).await;
    let body = json!({"events": [
        {"event":"agent_started","data":{"agent_name":"t","input":"connect to postgres://app:Zq9pw1@db/x"}},
        {"event":"tool_executing","data":{"tool_call_id":"c1","tool_name":"http",
            "args":"{\"url\":\"https://h/cb?access_token=Zq9pw2\",\"passwd\":\"Zq9pw3x\"}"}},
        {"event":"tool_completed","data":{"tool_call_id":"c1",
            "result":{"headers":[["Authorization","Bearer Zq9pw4"],["Cookie","sid=Zq9pw5"]],"session_id":"Zq9pw6"}}},
        {"event":"tool_executing","data":{"tool_call_id":"c2","tool_name":"sh","args":{"cmd":"export PGPASSWORD=Zq9pw7"}}},
        {"event":"tool_completed","data":{"tool_call_id":"c2","error":"denied for sk-proj-Zq9pw8aaaaaaaaaaaaaaaa"}},
    ]});
    assert_eq!(server.publish(&run, body).await.0, 200);
    // In-process agents and AG-UI: the user's own message carries the secret into
    // user_message, agent_started.input and the demo agent's reply.
    let (status, _) = server
        .post("/v1/threads/thread_leaky2/messages", &token, json!({"text": "use ghp_Zq9pw9aaaaaaaaaaaaaaaaaa please"}))
        .await;
    assert_eq!(status, 202);
    let input = json!({"threadId": "thread_leaky3", "runId": "run_leaky3_1",
        "messages": [{"id": "1", "role": "user", "content": "my jwt is eyJhbGciOi.eyJzdWIiOiJ4Zq9pwA.c2ln and AKIAZQ9PWBAAAAAAAAAA"}]});
    let resp =
        server.http.post(format!("{}/v1/agui", server.base)).bearer_auth(&token).json(&input).send().await.unwrap();
    let agui = resp.text().await.unwrap();
    let mut frames = Vec::new();
    while frames.len() < 5 {
        frames.push(legacy.next_frame().await.to_string());
    }
    let mut seen = vec![agui, frames.join("\n")];
    for thread in ["thread_leaky", "thread_leaky2", "thread_leaky3"] {
        let (_, page) = server.get(&format!("/v1/threads/{thread}/events"), &token).await;
        assert!(page["events"].as_array().is_some_and(|e| !e.is_empty()), "{page}");
        seen.push(page.to_string());
    }
    let seen = seen.join("\n");
    for secret in secrets.iter().copied().chain(["ZQ9PWB"]) {
        assert!(!seen.contains(secret), "{secret} reached a watcher: {seen}");
    }
    assert!(seen.contains("[REDACTED]"));
}

/// This process's resident memory, in bytes (Linux).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The highest resident memory seen while `work` runs, sampled every 5 ms.
async fn peak_rss_during<T>(work: impl std::future::Future<Output = T>) -> (T, u64) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = rss_bytes();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_bytes());
                std::thread::sleep(Duration::from_millis(5));
            }
            peak.max(rss_bytes())
        })
    };
    let out = work.await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    (out, sampler.join().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_of_large_events_cannot_take_the_servers_memory() {
    // Issue 14: 100 publishes of 1 MB, then history pages of 10,000 events and
    // WebSockets that replay from seq 0 and never read, took RSS past 4 GB: pages,
    // replays and send queues were bounded by event count only.
    const MB: u64 = 1 << 20;
    let mut config = test_config();
    config.write_timeout = Duration::from_secs(60); // the stalled readers stay for the whole test
    let server = TestServer::start_with(config).await;
    let token = server.token("greedy");
    let run = server.create_run("thread_huge", "greedy").await;
    server.publish(&run, json!({"event":"agent_started","data":{"agent_name":"a"}})).await;
    let thought = "x".repeat(1_000_000);
    for _ in 0..100 {
        let (status, body) = server.publish(&run, json!({"event":"agent_thinking","data":{"thought": thought}})).await;
        assert_eq!(status, 200, "{body}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let base = rss_bytes();
    let (pages, peak) = peak_rss_during(async {
        let url = format!("{}/v1/threads/thread_huge/events?limit=10000", server.base);
        let reads = (0..4).map(|_| async {
            let resp = server.http.get(&url).bearer_auth(&token).send().await.unwrap();
            resp.json::<Value>().await.unwrap()
        });
        let pages = futures_util::future::join_all(reads).await;
        let mut stalled = Vec::new();
        for _ in 0..8 {
            use tokio::io::AsyncWriteExt;
            let mut reader = stalled_reader(&server, &ws_upgrade(&token)).await;
            reader.write_all(&subscribe_frame("thread_huge")).await.unwrap();
            stalled.push(reader);
        }
        // Long enough for every stalled replay to fill what the server lets it hold.
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(stalled);
        pages
    })
    .await;
    for page in &pages {
        let n = page["events"].as_array().map_or(0, Vec::len);
        assert!((1..=5).contains(&n), "a page of {n} MB-sized events");
        assert_eq!(page["head_seq"], 101);
    }
    // Without the byte budgets the same scenario grew by gigabytes (issue 14).
    let grown = peak.saturating_sub(base);
    eprintln!("RSS grew by {} MB (base {} MB)", grown / MB, base / MB);
    assert!(grown < 256 * MB, "RSS grew by {} MB", grown / MB);
    assert_eq!(status(&server, "GET", "/healthz", None, None).await.0, 200);
}

#[tokio::test]
async fn quotas_answer_429_with_retry_after_and_leave_nothing_behind() {
    // Issue 14: 2,000 threads from one user in 0.8 s, and 100 messages that kept
    // the demo agent busy at 4,600 events/s; nothing counted per user or per key.
    let mut config = test_config();
    config.quota_user_threads = 5;
    config.quota_user_runs = 3;
    config.max_runs_per_user = 2;
    config.quota_key_events = 10;
    config.demo_step_delay = Duration::from_secs(30);
    let server = TestServer::start_with(config).await;
    let token = server.token("quincy");
    let threads_before = server.state.log.stats().threads;

    let mut created = 0;
    let mut refused = None;
    for i in 0..20 {
        let resp = server
            .http
            .post(format!("{}/v1/threads", server.base))
            .bearer_auth(&token)
            .json(&json!({"thread_id": format!("thread_q{i}")}))
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            201 => created += 1,
            429 => refused = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok()),
            other => panic!("thread {i}: {other}"),
        }
    }
    assert_eq!(created, 5);
    assert!(refused.is_some_and(|s| (1..=60).contains(&s)), "Retry-After: {refused:?}");
    assert_eq!(server.state.log.stats().threads, threads_before + 5, "refused threads left nothing");
    // A refusal for another reason does not use the quota up: another user's
    // thread id is 403 and costs nothing.
    let other = server.token("rita");
    assert_eq!(server.post("/v1/threads", &other, json!({"thread_id":"thread_r1"})).await.0, 201);
    for _ in 0..10 {
        assert_eq!(server.post("/v1/threads", &other, json!({"thread_id":"thread_r1"})).await.0, 409);
    }
    assert_eq!(server.post("/v1/threads", &other, json!({"thread_id":"thread_r2"})).await.0, 201);

    // Runs: two at once (the demo agent is slow here), then 429 with nothing registered.
    let post = |text: &str| server.post("/v1/threads/thread_q0/messages", &token, json!({"text": text}));
    assert_eq!(post("one").await.0, 202);
    assert_eq!(post("two").await.0, 202);
    let (status, body) = post("three").await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("rate_limited")), "{body}");
    let user_messages = || async {
        let (_, page) = server.get("/v1/threads/thread_q0/events", &token).await;
        page["events"].as_array().unwrap().iter().filter(|e| e["event"] == "user_message").count()
    };
    let deadline = Instant::now() + WAIT;
    while user_messages().await < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(user_messages().await, 2, "the refused message was not appended");

    // A publish key past its events per minute: 429, and the events are not stored.
    let run = server.create_run("thread_keyq", "quincy").await;
    let batch = |n: usize| json!({"events": vec![json!({"event":"agent_thinking","data":{"thought":"t"}}); n]});
    server.publish(&run, json!({"event":"agent_started","data":{"agent_name":"a"}})).await;
    assert_eq!(server.publish(&run, batch(9)).await.0, 200);
    let (status, body) = server.publish(&run, batch(2)).await;
    assert_eq!(status, 429, "{body}");
    let (_, page) = server.get("/v1/threads/thread_keyq/events", &token).await;
    assert_eq!(page["head_seq"], 10);
}

#[tokio::test]
async fn tokens_in_urls_only_open_streams_and_ping_floods_close_the_socket() {
    // Issue 14, lower items: `?token=` worked on POST and operator routes (so a
    // cross-origin text/plain form could post as the user), and pings were free.
    let mut config = test_config();
    config.ws_message_rate = 5;
    let server = TestServer::start_with(config).await;
    let token = server.token("tess");
    let post = server
        .http
        .post(format!("{}/v1/threads/thread_form/messages?token={token}", server.base))
        .header("content-type", "text/plain")
        .header("origin", "https://evil.example")
        .body(r#"{"text":"posted by another site"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 401);
    assert_eq!(server.state.log.thread_owner(&"thread_form".parse().unwrap()).await.unwrap(), None);
    let admin = server.http.get(format!("{}/v1/admin/stats?token=test-admin", server.base)).send().await.unwrap();
    assert_eq!(admin.status(), 401);
    let events = format!("{}/v1/threads/thread_form/events?token={token}", server.base);
    assert_eq!(server.http.get(events).send().await.unwrap().status(), 401);
    // The streaming routes still take it: browsers cannot set headers there.
    let mut ws = server.ws(&token).await;
    for _ in 0..50 {
        ws.stream.send(Message::Ping(Default::default())).await.unwrap();
    }
    // `next` passes over the pongs answered before the limit.
    assert_eq!(close_code(ws.next().await), Some(1008), "a ping flood closes the socket");
}
