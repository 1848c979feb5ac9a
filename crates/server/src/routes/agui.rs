//! `POST /v1/agui`: run the configured agent for an AG-UI client (PROTOCOL §8).
//!
//! The body is AG-UI's `RunAgentInput`; the answer is the run as AG-UI events
//! over SSE. The run is an ordinary run of the thread: the route watches the
//! thread through the hub like any subscriber (before starting the agent, so
//! nothing is missed), keeps this run's events, and translates them with
//! [`AguiStream`]. Other watchers of the thread see the same run.

use std::convert::Infallible;
use std::net::SocketAddr;

use agentwire_agent::RunInput;
use agentwire_protocol::agui::AguiStream;
use agentwire_protocol::{RunId, ThreadId};
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::extract::{Body, Caller};
use crate::routes::{ConnectionGauge, watched};
use crate::state::AppState;

/// The parts of AG-UI's `RunAgentInput` agentwire reads; others are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunAgentInput {
    thread_id: String,
    run_id: String,
    #[serde(default)]
    messages: Vec<Value>,
    #[serde(default)]
    tools: Value,
    #[serde(default)]
    context: Value,
    #[serde(default)]
    state: Value,
    #[serde(default)]
    forwarded_props: Value,
}

/// The text of the last user message: string content, or the text parts of a
/// list (AG-UI's `content`, the AI SDK's `parts`).
pub(crate) fn last_user_text(messages: &[Value]) -> Option<String> {
    let message = messages.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user"))?;
    match message.get("content").or_else(|| message.get("parts"))? {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let text: Vec<&str> = parts
                .iter()
                .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            Some(text.join(""))
        }
        _ => None,
    }
    .filter(|t| !t.trim().is_empty())
}

fn sse(event: &Value) -> Result<Event, Infallible> {
    Ok(Event::default().data(event.to_string()))
}

/// `POST /v1/agui`.
#[utoipa::path(post, path = "/v1/agui", tag = "ag-ui", request_body(content = Object, description = "AG-UI RunAgentInput"),
    responses((status = 200, description = "AG-UI events, one JSON object per `data:` line", content_type = "text/event-stream"),
        (status = 400, body = crate::routes::schema::ErrorBody), (status = 401, body = crate::routes::schema::ErrorBody),
        (status = 403, body = crate::routes::schema::ErrorBody), (status = 409, body = crate::routes::schema::ErrorBody),
        (status = 413, body = crate::routes::schema::ErrorBody), (status = 429, body = crate::routes::schema::ErrorBody),
        (status = 503, body = crate::routes::schema::ErrorBody)))]
pub async fn run(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let (user, exp) = caller.user_until()?;
    let user = user.clone();
    // A stream like any other: the same origin check and connection caps.
    state.limits.check_origin(&headers)?;
    let permit = state.limits.open_connection(&user, peer.ip())?;
    let input: RunAgentInput = body.json()?;
    let thread = ThreadId::parse(&input.thread_id)?;
    let run_id = RunId::parse(&input.run_id)?;
    let text = last_user_text(&input.messages)
        .ok_or_else(|| ApiError::bad_request("no user message with text in messages"))?;
    let extra = json!({
        "tools": input.tools,
        "context": input.context,
        "state": input.state,
        "forwardedProps": input.forwarded_props,
    });
    let input = RunInput { user_message: Some(text), extra };
    let (feed, run_id) = watched::start_run(&state, &user, exp, &thread, Some(run_id), input).await?;

    let keep_alive = KeepAlive::new().interval(state.config.sse_keepalive).text("ping");
    let agui = AguiStream::new(thread.as_str(), run_id.as_str());
    let first = agui.started();
    let events = async_stream::stream! {
        let _gauge = ConnectionGauge::open(state.hub.metrics(), "agui");
        let _permit = permit;
        yield sse(&first);
        let messages = watched::run_messages(feed, agui);
        futures_util::pin_mut!(messages);
        while let Some(message) = messages.next().await {
            yield sse(&message);
        }
    };
    Ok(Sse::new(events).keep_alive(keep_alive))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_user_message_is_the_prompt() {
        let messages = vec![
            json!({"id":"1","role":"user","content":"first"}),
            json!({"id":"2","role":"assistant","content":"hi"}),
            json!({"id":"3","role":"user","content":[{"type":"text","text":"what is "},{"type":"text","text":"2 + 2?"}]}),
        ];
        assert_eq!(last_user_text(&messages).as_deref(), Some("what is 2 + 2?"));
        assert_eq!(last_user_text(&messages[1..2]), None);
        assert_eq!(last_user_text(&[json!({"role":"user","content":"  "})]), None);
    }
}
