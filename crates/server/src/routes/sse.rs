//! The Server-Sent Events transport (PROTOCOL §5): one thread per stream.
//!
//! Ownership is checked and the subscription started before the response
//! begins, so refusals are ordinary HTTP errors. Resumes from `Last-Event-ID`
//! (which wins) or `?after_seq=`. What is sent is the hub [`Feed`]'s steps, one
//! SSE event per stored event.

use std::convert::Infallible;
use std::net::SocketAddr;

use agentwire_hub::{End, Feed, Next};
use agentwire_log::StoredEvent;
use agentwire_protocol::{ErrorCode, ServerFrame, ThreadId};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;

use crate::auth::remaining;
use crate::error::ApiError;
use crate::extract::Caller;
use crate::routes::ConnectionGauge;
use crate::state::AppState;

#[derive(Deserialize, utoipa::IntoParams)]
pub struct StreamQuery {
    /// Events with a greater seq (`Last-Event-ID` wins when both are given).
    #[serde(default)]
    after_seq: u64,
}

fn sse_event(e: &StoredEvent) -> Event {
    Event::default().id(e.seq().to_string()).event(e.kind().as_str()).data(&*e.json)
}

/// `GET /v1/threads/{thread_id}/stream`.
#[utoipa::path(get, path = "/v1/threads/{thread_id}/stream", tag = "threads", params(("thread_id" = String, Path), StreamQuery),
    responses((status = 200, description = "Server-Sent Events: one event per stored event, `id` its seq", content_type = "text/event-stream"),
        (status = 400, body = crate::routes::schema::ErrorBody), (status = 401, body = crate::routes::schema::ErrorBody),
        (status = 403, body = crate::routes::schema::ErrorBody), (status = 404, body = crate::routes::schema::ErrorBody),
        (status = 429, body = crate::routes::schema::ErrorBody)))]
pub async fn stream(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    caller: Caller,
    Path(thread_id): Path<String>,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let (user, exp) = caller.user_until()?;
    let thread = ThreadId::parse(&thread_id)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let after_seq = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be a seq"))?,
        None => q.after_seq,
    };
    state.limits.check_origin(&headers)?;
    state.check_owner(user, &thread).await?;
    let permit = state.limits.open_connection(user, peer.ip())?;
    let (conn, outbox) = state.hub.connect();
    let (log, page, closing) = (state.log.clone(), state.config.replay_page, state.closing.clone());
    let mut feed = Feed::new(conn, outbox, log, page, closing, remaining(exp));
    let started = feed.subscribe(&thread, after_seq).await?;
    let keep_alive = KeepAlive::new().interval(state.config.sse_keepalive).text("ping");

    let events = async_stream::stream! {
        let _gauge = ConnectionGauge::open(state.hub.metrics(), "sse");
        let _permit = permit;
        let metrics = state.hub.metrics().clone();
        if let Some(oldest_seq) = started.reset {
            let frame = ServerFrame::Reset { thread_id: thread.to_string(), oldest_seq };
            yield Ok(Event::default().event("reset").data(frame.to_json()));
        }
        loop {
            let (events, live) = match feed.next().await {
                Next::Replay(events) => (events, false),
                Next::Live(events) => (events, true),
                // What was appended before shutdown still goes out before the stream ends.
                Next::End(End::Shutdown(events)) => {
                    for e in &events {
                        yield Ok(sse_event(e));
                    }
                    break;
                }
                Next::Reset { oldest_seq, .. } => {
                    let frame = ServerFrame::Reset { thread_id: thread.to_string(), oldest_seq };
                    yield Ok(Event::default().event("reset").data(frame.to_json()));
                    continue;
                }
                Next::Deleted(_) => {
                    let frame = ServerFrame::error(ErrorCode::NotFound, "the thread was deleted", Some(thread.as_str()));
                    yield Ok(Event::default().event("error").data(frame.to_json()));
                    break;
                }
                // Like a WebSocket's 4001: the client reconnects with a fresh token.
                Next::End(End::TokenExpired) => {
                    let frame = ServerFrame::error(ErrorCode::Unauthorized, "token expired", Some(thread.as_str()));
                    yield Ok(Event::default().event("error").data(frame.to_json()));
                    break;
                }
                Next::End(End::ReadFailed(e)) => {
                    tracing::warn!(%thread, error = %e, "SSE read failed; the client will resume");
                    break;
                }
                Next::End(End::SlowConsumer | End::Gone) => break,
            };
            for e in &events {
                yield Ok(sse_event(e));
            }
            metrics.record_sent(&events, live);
        }
    };
    Ok(Sse::new(events).keep_alive(keep_alive))
}
