//! The WebSocket transport (PROTOCOL §4): a thin loop around a hub [`Feed`].
//!
//! One task per connection waits on whichever comes first: a client frame, the
//! next step of its feed (replay, live events, a deleted thread, or the end:
//! shutdown `1001`, slow consumer `4008`, token expired `4001`), or the ping
//! timer. Events that are ready together leave as one `batch` frame.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agentwire_hub::{End as FeedEnd, Feed, Next};
use agentwire_log::StoredEvent;
use agentwire_protocol::legacy::{self, LegacyContext};
use agentwire_protocol::{
    ClientFrame, Envelope, ErrorCode, EventKind, RunId, ServerFrame, ThreadId, UserId, encode_events,
};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

use crate::auth::{Principal, remaining};
use crate::error::ApiError;
use crate::extract::Token;
use crate::limits::TokenBucket;
use crate::routes::ConnectionGauge;
use crate::state::AppState;

/// Read buffer per WebSocket (see `upgrade`). Clients send small frames
/// (subscribe, unsubscribe, ping); a larger one grows the buffer for itself.
/// 1 KiB rather than 4 KiB took an idle connection from 9.9 to 6.9 KiB of RSS.
const WS_READ_BUFFER: usize = 1024;

/// Close codes of PROTOCOL §4.
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const UNAUTHORIZED: u16 = 4001;
    pub const SLOW_CONSUMER: u16 = 4008;
}

#[derive(serde::Deserialize, Default, utoipa::IntoParams)]
pub struct WsQuery {
    /// `legacy`: events in the seed system's shape (PROTOCOL §8).
    #[serde(default)]
    format: Option<String>,
}

/// What a legacy-format connection remembers to fill in names the envelope leaves out.
#[derive(Default)]
struct LegacyNames {
    agents: HashMap<RunId, Option<String>>,
    tools: HashMap<(RunId, String), String>,
}

/// How long a closing connection may take to flush what is queued and say goodbye.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// Entries a connection keeps before it starts over (the log can always answer again).
const LEGACY_MEMORY: usize = 10_000;

/// `GET /v1/ws`: checks the token (`401` when bad), the origin and the
/// connection limits (`403`, `429`) at the handshake, then upgrades.
#[utoipa::path(get, path = "/v1/ws", tag = "subscribers", params(WsQuery),
    responses((status = 101, description = "WebSocket (PROTOCOL §4)"), (status = 400, body = crate::routes::schema::ErrorBody),
        (status = 401, body = crate::routes::schema::ErrorBody), (status = 403, body = crate::routes::schema::ErrorBody),
        (status = 429, body = crate::routes::schema::ErrorBody)))]
pub async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Token(token): Token,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let legacy = match query.format.as_deref() {
        None | Some("native") => false,
        Some("legacy") => true,
        Some(other) => return ApiError::bad_request(format!("unknown format {other:?}")).into_response(),
    };
    let (user, exp) = match state.auth.authenticate(token.as_deref()) {
        Ok(Principal::User { id, exp }) => (id, exp),
        Ok(_) => return ApiError::forbidden().into_response(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    if let Err(e) = state.limits.check_origin(&headers) {
        return e.into_response();
    }
    let permit = match state.limits.open_connection(&user, peer.ip()) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let tracker = state.connections.clone();
    // Client frames are small. tungstenite zero-fills its read buffer up to this size
    // on every read attempt, and every connection keeps one: the 128 KiB default cost
    // a quarter of the server's CPU under fan-out load, and 128 KiB per connection.
    // Larger frames (up to the limit) still arrive; the buffer grows for them.
    ws.read_buffer_size(WS_READ_BUFFER).max_message_size(state.config.max_frame_bytes).on_upgrade(move |socket| {
        tracker.track_future(async move {
            serve(socket, state, user, exp, legacy).await;
            drop(permit);
        })
    })
}

/// Why the loop ended: with a close frame to send, or because the peer is gone.
type End = Option<(u16, &'static str)>;

struct Client {
    socket: WebSocket,
    state: AppState,
    user: UserId,
    /// `Some` when the connection asked for the seed format.
    legacy: Option<LegacyNames>,
}

impl Client {
    async fn send(&mut self, text: String) -> Result<(), End> {
        self.socket.send(Message::Text(text.into())).await.map_err(|_| None)
    }

    async fn send_frame(&mut self, frame: ServerFrame) -> Result<(), End> {
        self.send(frame.to_json()).await
    }

    async fn send_error(
        &mut self,
        code: ErrorCode,
        message: impl Into<String>,
        thread: Option<&str>,
    ) -> Result<(), End> {
        self.send_frame(ServerFrame::error(code, message, thread)).await
    }

    /// Sends events in frames of at most `max_batch` (one frame each in the seed
    /// format, which has no batches), and counts them.
    async fn send_events(&mut self, events: &[Arc<StoredEvent>], live: bool) -> Result<(), End> {
        if self.legacy.is_some() {
            for event in events {
                let frame = self.legacy_frame(event.envelope()).await;
                self.send(frame.to_string()).await?;
            }
            self.state.hub.metrics().record_sent(events, live);
            return Ok(());
        }
        for chunk in events.chunks(self.state.hub.config().max_batch.max(1)) {
            let encoded: Vec<&str> = chunk.iter().map(|e| &*e.json).collect();
            self.send(encode_events(&encoded)).await?;
            self.state.hub.metrics().record_sent(chunk, live);
        }
        Ok(())
    }

    /// One event in the seed format, with the agent's and the tool's names filled in.
    async fn legacy_frame(&mut self, envelope: &Envelope) -> serde_json::Value {
        let run = envelope.run_id.clone();
        let known = self.legacy.as_ref().and_then(|n| n.agents.get(&run).cloned());
        let agent_name = match known {
            Some(name) => name,
            None => self.state.log.run(run.as_str()).await.ok().flatten().and_then(|r| r.agent_name),
        };
        let names = self.legacy.get_or_insert_with(LegacyNames::default);
        if names.agents.len() > LEGACY_MEMORY || names.tools.len() > LEGACY_MEMORY {
            *names = LegacyNames::default();
        }
        let agent_name = match envelope.event {
            EventKind::AgentStarted => envelope.data.get("agent_name").and_then(|v| v.as_str()).map(str::to_owned),
            _ => agent_name,
        };
        names.agents.insert(run.clone(), agent_name.clone());
        let call = envelope.data.get("tool_call_id").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        if envelope.event == EventKind::ToolExecuting
            && let Some(tool) = envelope.data.get("tool_name").and_then(|v| v.as_str())
        {
            names.tools.insert((run.clone(), call.clone()), tool.to_owned());
        }
        let tool_name = names.tools.get(&(run, call)).map(String::as_str);
        legacy::encode(envelope, LegacyContext { agent_name: agent_name.as_deref(), tool_name })
    }

    /// Starts a subscription; its replay follows from the feed.
    async fn subscribe(&mut self, feed: &mut Feed, thread_id: String, after_seq: u64) -> Result<(), End> {
        let thread = match ThreadId::parse(&thread_id) {
            Ok(t) => t,
            Err(e) => return self.send_error(ErrorCode::BadRequest, e.to_string(), Some(&thread_id)).await,
        };
        let limit = self.state.config.max_subscriptions_per_connection;
        if !feed.is_subscribed(&thread) && feed.subscription_count() >= limit {
            let message = format!("at most {limit} subscriptions per connection");
            return self.send_error(ErrorCode::TooLarge, message, Some(&thread_id)).await;
        }
        if let Err(e) = self.state.check_owner(&self.user, &thread).await {
            return self.send_error(e.code, e.message, Some(&thread_id)).await;
        }
        let started = match feed.subscribe(&thread, after_seq).await {
            Ok(s) => s,
            Err(e) => return self.send_error(e.code(), e.to_string(), Some(&thread_id)).await,
        };
        self.send_frame(ServerFrame::Subscribed { thread_id: thread_id.clone(), head_seq: started.head_seq }).await?;
        if let Some(oldest_seq) = started.reset {
            self.send_frame(ServerFrame::Reset { thread_id, oldest_seq }).await?;
        }
        Ok(())
    }

    /// Sends one step of the feed; `Err` when the connection is to close.
    async fn step(&mut self, step: Next) -> Result<(), End> {
        match step {
            Next::Replay(events) => self.send_events(&events, false).await,
            Next::Live(events) => self.send_events(&events, true).await,
            Next::Reset { thread, oldest_seq } => {
                self.send_frame(ServerFrame::Reset { thread_id: thread.to_string(), oldest_seq }).await
            }
            Next::Deleted(thread) => {
                self.send_error(ErrorCode::NotFound, "the thread was deleted", Some(thread.as_str())).await
            }
            Next::End(FeedEnd::Shutdown(events)) => {
                // What was appended before shutdown still goes out before the close,
                // unless the peer does not read: then shutdown does not wait for it.
                let flush = self.send_events(&events, true);
                if tokio::time::timeout(SHUTDOWN_FLUSH, flush).await.is_err() {
                    return Err(None);
                }
                Err(Some((close::GOING_AWAY, "server shutting down")))
            }
            Next::End(FeedEnd::SlowConsumer) => {
                Err(Some((close::SLOW_CONSUMER, "slow consumer: reconnect and resume with after_seq")))
            }
            Next::End(FeedEnd::TokenExpired) => Err(Some((close::UNAUTHORIZED, "token expired"))),
            Next::End(FeedEnd::ReadFailed(e)) => {
                tracing::warn!(error = %e, "could not read the log for a subscriber");
                Err(Some((close::INTERNAL, "could not read the log; resume with after_seq")))
            }
            Next::End(FeedEnd::Gone) => Err(None),
        }
    }

    /// Handles one client frame; returns the token's new expiry when it was refreshed.
    async fn handle(&mut self, feed: &mut Feed, text: &str) -> Result<Option<u64>, End> {
        let frame = match ClientFrame::parse(text) {
            Ok(f) => f,
            Err(message) => return self.send_error(ErrorCode::BadRequest, message, None).await.map(|()| None),
        };
        match frame {
            ClientFrame::Subscribe { thread_id, after_seq } => self.subscribe(feed, thread_id, after_seq).await?,
            ClientFrame::Unsubscribe { thread_id } => {
                if let Ok(thread) = ThreadId::parse(&thread_id) {
                    feed.unsubscribe(&thread);
                }
                self.send_frame(ServerFrame::Unsubscribed { thread_id }).await?;
            }
            ClientFrame::Ping => self.send_frame(ServerFrame::Pong).await?,
            ClientFrame::Auth { token } => match self.state.auth.authenticate(Some(&token)) {
                Ok(Principal::User { id, exp }) if id == self.user => {
                    self.send_frame(ServerFrame::Authed { exp }).await?;
                    return Ok(Some(exp));
                }
                Ok(_) => self.send_error(ErrorCode::Forbidden, "the new token must be for the same user", None).await?,
                Err(e) => self.send_error(ErrorCode::Unauthorized, e.to_string(), None).await?,
            },
        }
        Ok(None)
    }
}

async fn serve(socket: WebSocket, state: AppState, user: UserId, exp: u64, legacy: bool) {
    let _gauge = ConnectionGauge::open(state.hub.metrics(), "ws");
    let (conn, outbox) = state.hub.connect();
    let (log, page, closing) = (state.log.clone(), state.config.replay_page, state.closing.clone());
    let mut feed = Feed::new(conn, outbox, log, page, closing, remaining(exp));
    let ping_every = state.config.ws_ping_interval.max(Duration::from_millis(10));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let legacy = legacy.then(LegacyNames::default);
    let mut client = Client { socket, state, user, legacy };
    let mut last_heard = Instant::now();
    let mut rate = TokenBucket::new(client.state.config.ws_message_rate);
    // One `rate_limited` error per burst of ignored messages, not one each.
    let mut told_rate_limited = false;

    let end: End = loop {
        tokio::select! {
            msg = client.socket.recv() => {
                let msg = match msg {
                    Some(Ok(msg)) => msg,
                    // A message over the size limit (or broken framing): say so, then close.
                    Some(Err(_)) => break Some((close::TOO_BIG, "message too big or malformed")),
                    None => break None,
                };
                last_heard = Instant::now();
                // Pings count too: each one makes the server write a pong.
                let counted = matches!(msg, Message::Text(_) | Message::Binary(_) | Message::Ping(_));
                if counted && !rate.try_take() {
                    if matches!(msg, Message::Ping(_)) {
                        break Some((close::POLICY, "too many pings"));
                    }
                    if !told_rate_limited {
                        told_rate_limited = true;
                        let limit = format!("more than {} messages per second; ignored", client.state.config.ws_message_rate);
                        if let Err(end) = client.send_error(ErrorCode::RateLimited, limit, None).await {
                            break end;
                        }
                    }
                    continue;
                }
                told_rate_limited &= !counted;
                let handled = match msg {
                    // Boxed, like the feed's step below: an idle connection's task is sized for
                    // its largest await, and these bodies are most of it.
                    Message::Text(text) => Box::pin(client.handle(&mut feed, text.as_str())).await,
                    Message::Binary(_) => {
                        client.send_error(ErrorCode::BadRequest, "frames are JSON text", None).await.map(|()| None)
                    }
                    Message::Close(_) => break None,
                    Message::Ping(_) | Message::Pong(_) => Ok(None),
                };
                match handled {
                    Ok(Some(new_exp)) => feed.renew(remaining(new_exp)),
                    Ok(None) => {}
                    Err(end) => break end,
                }
            }
            step = Box::pin(feed.next()) => {
                if let Err(end) = Box::pin(client.step(step)).await {
                    break end;
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > ping_every * 2 {
                    tracing::debug!(user = %client.user, "dropping a WebSocket that stopped answering pings");
                    break None;
                }
                if client.socket.send(Message::Ping(Default::default())).await.is_err() {
                    break None;
                }
            }
        }
    };
    if let Some((code, reason)) = end {
        let frame = CloseFrame { code, reason: reason.into() };
        // A peer that stopped reading cannot take a close frame; do not wait for it.
        let _ = tokio::time::timeout(SHUTDOWN_FLUSH, client.socket.send(Message::Close(Some(frame)))).await;
    }
}
