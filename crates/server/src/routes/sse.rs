//! The Server-Sent Events transport (PROTOCOL §5): one thread per stream.
//!
//! Ownership is checked and the subscription started before the response
//! begins, so refusals are ordinary HTTP errors. Resumes from `Last-Event-ID`
//! (which wins) or `?after_seq=`.

use std::convert::Infallible;
use std::net::SocketAddr;

use agentwire_hub::Session;
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
    Event::default().id(e.seq().to_string()).event(e.envelope.event.as_str()).data(&*e.json)
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
    let (conn, mut outbox) = state.hub.connect();
    let mut session = Session::new(conn, state.log.clone(), state.config.replay_page);
    let started = session.subscribe(&thread, after_seq).await?;
    let keep_alive = KeepAlive::new().interval(state.config.sse_keepalive).text("ping");

    let events = async_stream::stream! {
        let _gauge = ConnectionGauge::open(state.hub.metrics(), "sse");
        let expiry = tokio::time::sleep(remaining(exp));
        tokio::pin!(expiry);
        let _permit = permit;
        let metrics = state.hub.metrics().clone();
        if let Some(oldest_seq) = started.reset {
            let frame = ServerFrame::Reset { thread_id: thread.to_string(), oldest_seq };
            yield Ok(Event::default().event("reset").data(frame.to_json()));
        }
        loop {
            match session.replay(&thread).await {
                Ok(page) if page.is_empty() => break,
                Ok(page) => {
                    for e in &page {
                        yield Ok(sse_event(e));
                    }
                    metrics.record_sent(&page, false);
                }
                Err(e) => {
                    tracing::warn!(%thread, error = %e, "SSE replay failed; the client will resume");
                    return;
                }
            }
        }
        loop {
            let batch = tokio::select! {
                // What was appended before shutdown still goes out before the stream ends.
                _ = state.closing.cancelled() => {
                    if let Ok(live) = session.live(outbox.ready_batch()).await {
                        for e in &live {
                            yield Ok(sse_event(e));
                        }
                    }
                    break;
                }
                _ = session.connection().overflowed() => break,
                // Like a WebSocket's 4001: the client reconnects with a fresh token.
                _ = &mut expiry => {
                    let frame = ServerFrame::error(ErrorCode::Unauthorized, "token expired", Some(thread.as_str()));
                    yield Ok(Event::default().event("error").data(frame.to_json()));
                    break;
                }
                batch = outbox.next_batch() => batch,
            };
            if batch.is_empty() {
                break;
            }
            match session.live(batch).await {
                Ok(live) => {
                    for e in &live {
                        yield Ok(sse_event(e));
                    }
                    metrics.record_sent(&live, true);
                }
                Err(e) => {
                    tracing::warn!(%thread, error = %e, "SSE gap fill failed; the client will resume");
                    break;
                }
            }
        }
    };
    Ok(Sse::new(events).keep_alive(keep_alive))
}
