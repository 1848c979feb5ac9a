//! Input requests (PROTOCOL §2.1): the thread's owner answers what an agent
//! asked, and an external agent's publisher waits for the answer.
//!
//! The rules (who holds the request, whether it is still open, which answers
//! fit) are the log's; these handlers check the caller and translate.

use std::time::Duration;

use agentwire_log::input::{self, InputAnswer, InputOutcome};
use agentwire_protocol::ThreadId;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::extract::{Body, Caller};
use crate::routes::schema::{ErrorBody, InputAnswerBody, InputAnswered, InputView};
use crate::state::AppState;

/// Longest a publisher's `GET` waits for an answer, in seconds.
pub const MAX_WAIT_SECS: f64 = 60.0;

/// `POST /v1/threads/{thread_id}/inputs/{request_id}`: the owner's answer,
/// appended as `input_received`.
#[utoipa::path(post, path = "/v1/threads/{thread_id}/inputs/{request_id}", tag = "threads",
    request_body = InputAnswerBody,
    params(("thread_id" = String, Path), ("request_id" = String, Path, description = "the request's id")),
    responses((status = 200, body = InputAnswered), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn answer(
    State(state): State<AppState>,
    caller: Caller,
    Path((thread_id, request_id)): Path<(String, String)>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let user = caller.user()?;
    let thread = ThreadId::parse(&thread_id)?;
    let body: Value = body.json()?;
    if !body.is_object() {
        return Err(ApiError::bad_request("the answer is a JSON object"));
    }
    let run_id = match body.get("run_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(run)) => Some(run.clone()),
        Some(_) => return Err(ApiError::bad_request("run_id must be a string")),
    };
    state.check_owner(user, &thread).await?;
    let answer = InputAnswer { request_id: request_id.clone(), run_id, answer: body, user: user.clone() };
    let appended = state.log.answer_input(&thread, answer).await?;
    let seq = appended.seqs.first().copied().unwrap_or_default();
    Ok(Json(InputAnswered { thread_id: thread.to_string(), request_id, seq }))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct WaitQuery {
    /// Seconds to wait while the request is open (0 to 60; default 0: answer at once).
    #[serde(default)]
    wait: Option<f64>,
}

/// `GET /v1/runs/{run_id}/inputs/{request_id}`: where the request stands; with
/// `wait`, a long poll that answers as soon as it closes.
#[utoipa::path(get, path = "/v1/runs/{run_id}/inputs/{request_id}", tag = "runs",
    params(("run_id" = String, Path), ("request_id" = String, Path), WaitQuery),
    responses((status = 200, body = InputView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn wait(
    State(state): State<AppState>,
    caller: Caller,
    Path((run_id, request_id)): Path<(String, String)>,
    query: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let key = caller.publisher()?;
    state.limits.allow_publish(key)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let wait = q.wait.unwrap_or(0.0);
    if !(0.0..=MAX_WAIT_SECS).contains(&wait) {
        return Err(ApiError::bad_request(format!("wait is 0 to {MAX_WAIT_SECS} seconds")));
    }
    let run = state.log.run(&run_id).await?.ok_or_else(|| ApiError::not_found(format!("run {run_id}")))?;
    let (log, thread) = (&*state.log, &run.thread_id);
    let waited = input::await_input(log, &run.run_id, thread, &request_id, Duration::from_secs_f64(wait));
    // A server shutting down answers where the request stands rather than hold the poll.
    let outcome = tokio::select! {
        outcome = waited => outcome?,
        () = state.closing.cancelled() => input::await_input(log, &run.run_id, thread, &request_id, Duration::ZERO).await?,
    };
    Ok(Json(view(request_id, outcome)))
}

fn view(request_id: String, outcome: InputOutcome) -> InputView {
    let field = |data: &serde_json::Map<String, Value>, key: &str| data.get(key).cloned().filter(|v| !v.is_null());
    match outcome {
        InputOutcome::Waiting => InputView { request_id, status: "open".into(), ..InputView::default() },
        InputOutcome::Closed => InputView { request_id, status: "closed".into(), ..InputView::default() },
        InputOutcome::Received(data) => {
            let timed_out = data.get("source").and_then(Value::as_str) == Some("timeout");
            InputView {
                request_id,
                status: if timed_out { "timed_out" } else { "answered" }.into(),
                answer: field(&data, "answer"),
                user_id: field(&data, "user_id").and_then(|v| v.as_str().map(str::to_owned)),
            }
        }
    }
}
