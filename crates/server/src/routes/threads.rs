//! User routes on threads: create one, post a message to the agent, read history, delete.

use agentwire_agent::RunInput;
use agentwire_log::{LogError, NewRun, RunInfo};
use agentwire_protocol::{ThreadId, json_array};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::Value;

use crate::auth::Principal;
use crate::config::DoubleTexting;
use crate::error::ApiError;
use crate::extract::{Body, Caller};
use crate::routes::schema::{
    CreateThread, ErrorBody, HistoryPage, MessageAccepted, PostMessage, ThreadCreated, ThreadDeleted,
};
use crate::state::AppState;

/// Most events one history page may hold.
pub const MAX_PAGE: usize = 10_000;
/// Events per history page when no `limit` is given.
pub const DEFAULT_PAGE: usize = 1_000;

/// `POST /v1/threads`: a new thread owned by the caller.
#[utoipa::path(post, path = "/v1/threads", tag = "threads", request_body = CreateThread,
    responses((status = 201, body = ThreadCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub async fn create(State(state): State<AppState>, caller: Caller, body: Body) -> Result<impl IntoResponse, ApiError> {
    let user = caller.user()?;
    let req: CreateThread = body.json()?;
    let wanted = req.thread_id.as_deref().map(ThreadId::parse).transpose()?;
    let charge = state.quotas.user_threads.charge(user, 1)?;
    let thread = state.log.create_thread(wanted, user).await?;
    charge.keep();
    Ok((StatusCode::CREATED, Json(ThreadCreated { thread_id: thread.to_string() })))
}

/// `DELETE /v1/threads/{thread_id}`: the owner (or an operator) deletes a
/// thread. Its running runs end with `agent_error {code:"cancelled"}` first (and
/// in-process ones stop); then its events, runs and event ids are removed and
/// its subscriptions end. The id may be claimed again.
#[utoipa::path(delete, path = "/v1/threads/{thread_id}", tag = "threads", params(("thread_id" = String, Path)),
    responses((status = 200, body = ThreadDeleted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 501, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(thread_id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let thread = ThreadId::parse(&thread_id)?;
    let owner = match &caller.0 {
        Principal::User { id, .. } => Some(id),
        Principal::Operator => None,
        Principal::Publisher { .. } => return Err(ApiError::forbidden()),
    };
    let cancelled = state.log.delete_thread(&thread, owner).await?;
    for run in &cancelled {
        state.stop_agent_run(run.as_str());
    }
    let cancelled = cancelled.iter().map(ToString::to_string).collect();
    Ok(Json(ThreadDeleted { thread_id: thread.to_string(), cancelled }))
}

/// `POST /v1/threads/{thread_id}/messages`: appends `user_message` and starts the agent.
#[utoipa::path(post, path = "/v1/threads/{thread_id}/messages", tag = "threads", request_body = PostMessage,
    params(("thread_id" = String, Path, description = "the thread; created for the caller if new")),
    responses((status = 202, body = MessageAccepted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn post_message(
    State(state): State<AppState>,
    caller: Caller,
    Path(thread_id): Path<String>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let user = caller.user()?;
    let thread = ThreadId::parse(&thread_id)?;
    let req: PostMessage = body.json()?;
    let text = req
        .text
        .as_str()
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("text must be a non-empty string"))?;
    let strategy = req.double_texting.unwrap_or(state.config.double_texting);
    // Every quota and the engine's place first: a refusal leaves nothing behind.
    let engine = state.agent_engine()?;
    let (runs, threads) = state.user_run_charges(user, &thread).await?;
    let slot = engine.reserve(user)?;
    state.log.ensure_thread(&thread, user).await?;
    let new = NewRun {
        thread_id: thread,
        owner: user.clone(),
        agent_name: Some(engine.agent_name().to_owned()),
        in_process: true,
        run_id: None,
    };
    let (run, queued) = register(&state, new, strategy).await?;
    let run_id = run.run_id.clone();
    let input = RunInput { user_message: Some(text.to_owned()), extra: Value::Null };
    start(engine, slot, run, input, queued)?;
    runs.keep();
    threads.keep();
    Ok((StatusCode::ACCEPTED, Json(MessageAccepted { run_id: run_id.to_string(), queued })))
}

/// Starts `run` on the engine now, or queues it behind its thread.
pub(crate) fn start(
    engine: &agentwire_agent::Engine,
    slot: agentwire_agent::RunSlot,
    run: RunInfo,
    input: RunInput,
    queued: bool,
) -> Result<(), ApiError> {
    let started = if queued { engine.enqueue(slot, run, input) } else { engine.start(slot, run, input) };
    if started { Ok(()) } else { Err(ApiError::unavailable("the server is shutting down")) }
}

/// Times an interrupt looks again for runs that started meanwhile.
const INTERRUPT_ATTEMPTS: usize = 3;

/// Registers the message's run as `strategy` says for a thread with a run
/// going; answers it and whether it is to be queued.
pub(crate) async fn register(
    state: &AppState,
    new: NewRun,
    strategy: DoubleTexting,
) -> Result<(RunInfo, bool), ApiError> {
    match strategy {
        DoubleTexting::Concurrent => Ok((state.log.create_run(new).await?, false)),
        DoubleTexting::Reject => Ok((state.log.create_run_if_idle(new).await?, false)),
        DoubleTexting::Enqueue => match state.log.create_run_if_idle(new.clone()).await {
            Ok(run) => Ok((run, false)),
            Err(LogError::RunInFlight(_)) => Ok((state.log.create_run(new).await?, true)),
            Err(e) => Err(e.into()),
        },
        DoubleTexting::Interrupt => {
            for _ in 0..INTERRUPT_ATTEMPTS {
                for going in state.log.running_runs(&new.thread_id).await? {
                    match state.log.cancel(going.as_str()).await {
                        // Ended or gone meanwhile: nothing left to interrupt.
                        Ok(_) | Err(LogError::Lifecycle(_) | LogError::RunNotFound(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                    state.stop_agent_run(going.as_str());
                }
                match state.log.create_run_if_idle(new.clone()).await {
                    Err(LogError::RunInFlight(_)) => continue,
                    created => return Ok((created?, false)),
                }
            }
            Ok((state.log.create_run_if_idle(new).await?, false))
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct HistoryQuery {
    /// Events with a greater seq.
    #[serde(default)]
    after_seq: u64,
    /// At most this many (default 1000, at most 10000).
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /v1/threads/{thread_id}/events`: a page of history, events as stored.
#[utoipa::path(get, path = "/v1/threads/{thread_id}/events", tag = "threads",
    params(("thread_id" = String, Path), HistoryQuery),
    responses((status = 200, body = HistoryPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(thread_id): Path<String>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let user = caller.user()?;
    let thread = ThreadId::parse(&thread_id)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    state.check_owner(user, &thread).await?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).min(MAX_PAGE);
    let page = state.log.read(&thread, q.after_seq, limit).await?;
    // The events are already encoded: splice them in rather than parse and re-encode.
    let events = json_array(page.events.iter().map(|e| &*e.json));
    let body = format!(r#"{{"events":{events},"head_seq":{}}}"#, page.head_seq);
    Ok(([(header::CONTENT_TYPE, "application/json")], body))
}
