//! `POST /v1/agui`: run the configured agent for an AG-UI client (PROTOCOL §8).
//!
//! The body is AG-UI's `RunAgentInput`; the answer is the run as AG-UI events
//! over SSE. The run is an ordinary run of the thread: the route watches the
//! thread through the hub like any subscriber (before starting the agent, so
//! nothing is missed), keeps this run's events, and translates them with
//! [`AguiStream`]. Other watchers of the thread see the same run.
//!
//! A run that asks its user ends its AG-UI view with the interrupt outcome
//! while the agentwire run waits. The next `RunAgentInput` carries `resume`:
//! each entry answers its request (`resolved`: the payload is the answer;
//! `cancelled`: declined), and the answer streams the same agentwire run going
//! on, under the AG-UI run id of that request. The run resumed is the one that
//! asked, whichever of the thread's running runs that is. A thread that waits
//! takes no new input without a `resume` that covers every open request of
//! the run it resumes (AG-UI's rules 3 and 4).

use std::convert::Infallible;
use std::net::SocketAddr;

use agentwire_agent::RunInput;
use agentwire_log::RunInfo;
use agentwire_log::input::{self, InputAnswer};
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
    #[serde(default)]
    resume: Vec<ResumeEntry>,
}

/// An answer to an interrupt (AG-UI 1.0).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResumeEntry {
    interrupt_id: String,
    status: ResumeStatus,
    #[serde(default)]
    payload: Value,
}

#[derive(Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum ResumeStatus {
    Resolved,
    Cancelled,
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
    // Someone else's thread is refused before anything about it is looked at.
    let (waiting, head) = match state.check_owner(&user, &thread).await {
        Ok(()) => watched::waiting_runs(&state, &thread).await?,
        Err(e) if e.code == agentwire_protocol::ErrorCode::NotFound => (Vec::new(), 0),
        Err(e) => return Err(e),
    };
    if let Some(run) = addressed(waiting, &input.resume)? {
        let (feed, run) = resume(&state, &user, exp, &thread, run, head, input.resume).await?;
        let agui = AguiStream::resuming(thread.as_str(), run.as_str(), run_id.as_str());
        return Ok(Sse::new(stream(&state, permit, feed, agui)).keep_alive(keep_alive(&state)));
    }
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
    let agui = AguiStream::new(thread.as_str(), run_id.as_str());
    Ok(Sse::new(stream(&state, permit, feed, agui)).keep_alive(keep_alive(&state)))
}

fn keep_alive(state: &AppState) -> KeepAlive {
    KeepAlive::new().interval(state.config.sse_keepalive).text("ping")
}

/// `RUN_STARTED`, then the run's AG-UI events until its view ends.
fn stream<P: Send + 'static>(
    state: &AppState,
    permit: P,
    feed: agentwire_hub::Feed,
    agui: AguiStream,
) -> impl Stream<Item = Result<Event, Infallible>> + use<P> {
    let metrics = state.hub.metrics().clone();
    let first = agui.started();
    async_stream::stream! {
        let _gauge = ConnectionGauge::open(&metrics, "agui");
        let _permit = permit;
        yield sse(&first);
        let messages = watched::run_messages(feed, agui);
        futures_util::pin_mut!(messages);
        while let Some(message) = messages.next().await {
            yield sse(&message);
        }
    }
}

/// The waiting run a `RunAgentInput` resumes: the one that asked its first
/// `resume` entry's request. `None` when nothing waits and nothing is resumed
/// (a new run starts). A thread that waits takes no new run before its
/// requests are answered (AG-UI's rule), and a resume must name a request
/// that waits: both are `409`.
fn addressed(waiting: Vec<RunInfo>, resume: &[ResumeEntry]) -> Result<Option<RunInfo>, ApiError> {
    let conflict = |message: String| ApiError::new(agentwire_protocol::ErrorCode::Conflict, message);
    let Some(first) = resume.first() else {
        if waiting.is_empty() {
            return Ok(None);
        }
        let open: Vec<&str> = waiting.iter().flat_map(|r| r.inputs.open.keys()).map(String::as_str).collect();
        return Err(conflict(format!("the thread waits on {}: resume every one of them", open.join(", "))));
    };
    let run = waiting.into_iter().find(|r| r.inputs.open.contains_key(&first.interrupt_id));
    run.map(Some)
        .ok_or_else(|| conflict(format!("no request {} of this thread waits for an answer", first.interrupt_id)))
}

/// Answers the waiting `run`'s open requests with `entries`, which must cover
/// them all; answers the feed of the run going on from the answers. Every
/// answer is checked before any is appended, so a refusal leaves nothing behind.
async fn resume(
    state: &AppState,
    user: &agentwire_protocol::UserId,
    exp: u64,
    thread: &ThreadId,
    run: RunInfo,
    head: u64,
    entries: Vec<ResumeEntry>,
) -> Result<(agentwire_hub::Feed, RunId), ApiError> {
    let answered = |id: &str| entries.iter().any(|e| e.interrupt_id == id);
    let missing: Vec<&str> = run.inputs.open.keys().map(String::as_str).filter(|id| !answered(id)).collect();
    if !missing.is_empty() {
        let message = format!("the thread waits on {}: resume every one of them", missing.join(", "));
        return Err(ApiError::new(agentwire_protocol::ErrorCode::Conflict, message));
    }
    let answers: Vec<InputAnswer> = entries
        .into_iter()
        .map(|e| InputAnswer {
            request_id: e.interrupt_id,
            run_id: Some(run.run_id.to_string()),
            answer: if e.status == ResumeStatus::Cancelled { Value::Null } else { e.payload },
            user: user.clone(),
        })
        .collect();
    for answer in &answers {
        input::answer_event(&run.inputs, answer)?;
    }
    let feed = watched::watch(state, exp, thread, head).await?;
    for answer in answers {
        state.log.answer_input(thread, answer).await?;
    }
    Ok((feed, run.run_id))
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
