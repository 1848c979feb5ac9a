//! The Vercel AI SDK's UI message stream (PROTOCOL §8): `useChat` with
//! `DefaultChatTransport({ api: "…/v1/ui/chat" })` and `resume: true` talks
//! to agentwire directly, with no message store, Redis or endpoints of its own.
//!
//! `POST /v1/ui/chat` takes the chat (`id` is the thread, `messages` its
//! `UIMessage`s), starts a run of the configured agent on the last user
//! message's text (without an agent, it attaches to the run an external
//! publisher is feeding) and streams that run. `GET /v1/ui/chat/{id}/stream`
//! is the SDK's resume: the thread's running run, from its start, so a
//! reloaded page rebuilds the message it lost; `204` when nothing runs (or
//! the thread does not exist yet: a new chat's page asks too). Either
//! run is an ordinary run of the thread: its WebSocket and SSE watchers see it.

use std::convert::Infallible;
use std::net::SocketAddr;

use agentwire_agent::RunInput;
use agentwire_hub::Feed;
use agentwire_protocol::ui_message::{UI_MESSAGE_STREAM_VERSION, UiMessageStream};
use agentwire_protocol::{ErrorCode, ThreadId};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::extract::{Body, Caller};
use crate::limits::ConnectionPermit;
use crate::routes::agui::last_user_text;
use crate::routes::{ConnectionGauge, watched};
use crate::state::AppState;

/// The parts of the AI SDK's chat request agentwire reads; others are ignored.
#[derive(Deserialize)]
struct ChatRequest {
    /// The chat's id: the thread.
    id: String,
    #[serde(default)]
    messages: Vec<Value>,
}

/// The run as the SDK's SSE: one chunk per `data:` line, then `[DONE]`.
fn respond(state: AppState, permit: ConnectionPermit, feed: Feed, run_id: &str) -> Response {
    let encoder = UiMessageStream::new(run_id);
    let first = encoder.started();
    let keep_alive = KeepAlive::new().interval(state.config.sse_keepalive).text("ping");
    let events = async_stream::stream! {
        let _gauge = ConnectionGauge::open(state.hub.metrics(), "ui");
        let _permit = permit;
        yield Ok::<_, Infallible>(Event::default().data(first.to_string()));
        let messages = watched::run_messages(feed, encoder);
        futures_util::pin_mut!(messages);
        while let Some(message) = messages.next().await {
            yield Ok(Event::default().data(message.to_string()));
        }
        yield Ok(Event::default().data("[DONE]"));
    };
    let mut response = Sse::new(events).keep_alive(keep_alive).into_response();
    response.headers_mut().insert("x-vercel-ai-ui-message-stream", HeaderValue::from_static(UI_MESSAGE_STREAM_VERSION));
    response
}

/// `POST /v1/ui/chat`.
#[utoipa::path(post, path = "/v1/ui/chat", tag = "ai-sdk", request_body(content = Object, description = "the AI SDK's chat request: `id` (the thread) and `messages`"),
    responses((status = 200, description = "the AI SDK's UI message stream: one JSON chunk per `data:` line, then `[DONE]`", content_type = "text/event-stream"),
        (status = 400, body = crate::routes::schema::ErrorBody), (status = 401, body = crate::routes::schema::ErrorBody),
        (status = 403, body = crate::routes::schema::ErrorBody), (status = 409, body = crate::routes::schema::ErrorBody),
        (status = 413, body = crate::routes::schema::ErrorBody), (status = 429, body = crate::routes::schema::ErrorBody),
        (status = 501, body = crate::routes::schema::ErrorBody), (status = 503, body = crate::routes::schema::ErrorBody)))]
pub async fn chat(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (user, exp) = caller.user_until()?;
    let user = user.clone();
    state.limits.check_origin(&headers)?;
    let permit = state.limits.open_connection(&user, peer.ip())?;
    let request: ChatRequest = body.json()?;
    let thread = ThreadId::parse(&request.id)?;
    let (feed, run_id) = match state.agent_engine() {
        Ok(_) => {
            let text = last_user_text(&request.messages)
                .ok_or_else(|| ApiError::bad_request("no user message with text in messages"))?;
            let input = RunInput { user_message: Some(text), extra: Value::Null };
            watched::start_run(&state, &user, exp, &thread, None, input).await?
        }
        // No agent here: the chat shows the run an external publisher is feeding.
        Err(no_agent) => {
            state.check_owner(&user, &thread).await?;
            watched::attach_running(&state, exp, &thread).await?.ok_or(no_agent)?
        }
    };
    Ok(respond(state, permit, feed, run_id.as_str()))
}

/// `GET /v1/ui/chat/{thread_id}/stream`: the AI SDK's resume.
#[utoipa::path(get, path = "/v1/ui/chat/{thread_id}/stream", tag = "ai-sdk", params(("thread_id" = String, Path)),
    responses((status = 200, description = "the running run's UI message stream, from its start", content_type = "text/event-stream"),
        (status = 204, description = "no run is going in the thread, or there is no such thread yet"),
        (status = 400, body = crate::routes::schema::ErrorBody), (status = 401, body = crate::routes::schema::ErrorBody),
        (status = 403, body = crate::routes::schema::ErrorBody), (status = 404, body = crate::routes::schema::ErrorBody),
        (status = 429, body = crate::routes::schema::ErrorBody)))]
pub async fn resume(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    caller: Caller,
    Path(thread_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (user, exp) = caller.user_until()?;
    let user = user.clone();
    let thread = ThreadId::parse(&thread_id)?;
    state.limits.check_origin(&headers)?;
    match state.check_owner(&user, &thread).await {
        // A new chat's page asks before its first message made the thread: nothing runs.
        Err(e) if e.code == ErrorCode::NotFound => return Ok(StatusCode::NO_CONTENT.into_response()),
        checked => checked?,
    }
    let permit = state.limits.open_connection(&user, peer.ip())?;
    match watched::attach_running(&state, exp, &thread).await? {
        Some((feed, run_id)) => Ok(respond(state, permit, feed, run_id.as_str())),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}
