//! Publisher routes: register runs, append their events, look them up, cancel them.

use agentwire_log::{LogError, NewRun, RunInfo};
use agentwire_protocol::{PublishLimits, RunId, ThreadId, UserId, parse_publish_body};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{Body, Caller};
use crate::routes::schema::{Cancelled, CreateRun, ErrorBody, OpenInputView, PublishBody, RunCreated, RunView, Seqs};
use crate::state::AppState;

/// `POST /v1/runs`: registers a run, creating its thread for `user_id` if new.
#[utoipa::path(post, path = "/v1/runs", tag = "runs", request_body = CreateRun,
    responses((status = 201, body = RunCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub async fn create(State(state): State<AppState>, caller: Caller, body: Body) -> Result<impl IntoResponse, ApiError> {
    let key = caller.publisher()?;
    state.limits.allow_publish(key)?;
    let created = register(&state, key, body.json()?).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Registers a run for publish key `key` (rate already allowed): what
/// `POST /v1/runs` and a `register` frame of the publisher WebSocket do.
pub async fn register(state: &AppState, key: u64, req: CreateRun) -> Result<RunCreated, ApiError> {
    if req.agent_name.as_ref().is_some_and(|n| n.len() > agentwire_protocol::NAME_MAX) {
        let message = format!("agent_name is longer than {} bytes", agentwire_protocol::NAME_MAX);
        return Err(ApiError::new(agentwire_protocol::ErrorCode::TooLarge, message));
    }
    let (thread_id, owner) = (ThreadId::parse(&req.thread_id)?, UserId::parse(&req.user_id)?);
    let new = NewRun {
        thread_id: thread_id.clone(),
        owner: owner.clone(),
        agent_name: req.agent_name,
        in_process: false,
        run_id: req.run_id.as_deref().map(RunId::parse).transpose()?,
    };
    let charge = state.quotas.key_runs.charge(&key, 1)?;
    let run = match state.log.create_run(new).await {
        Ok(run) => {
            charge.keep();
            run
        }
        // The same registration again (its answer lost with a connection or a
        // timeout): answered as the first was, charged once, nothing changed.
        Err(LogError::RunExists(id)) => match state.log.run(&id).await? {
            Some(run) if run.thread_id == thread_id && run.owner == owner => run,
            _ => return Err(LogError::RunExists(id).into()),
        },
        Err(e) => return Err(e.into()),
    };
    Ok(RunCreated { run_id: run.run_id.to_string(), thread_id: run.thread_id.to_string() })
}

/// `POST /v1/runs/{run_id}/events`: one event or a batch, all or nothing.
#[utoipa::path(post, path = "/v1/runs/{run_id}/events", tag = "runs", request_body = PublishBody,
    params(("run_id" = String, Path, description = "a registered run, or one whose id names an existing thread")),
    responses((status = 200, body = Seqs), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    Path(run_id): Path<String>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let key = caller.publisher()?;
    state.limits.allow_publish(key).inspect_err(|e| state.metrics.record_rejected(e.code, 1))?;
    let limits = PublishLimits { max_events: state.config.max_events_per_publish };
    let events = parse_publish_body(&body.0, limits).inspect_err(|e| state.metrics.record_rejected(e.code(), 1))?;
    let count = events.len() as u64;
    let quotas = &state.quotas;
    let charges = quotas
        .key_events
        .charge(&key, count)
        .and_then(|events| Ok((events, quotas.key_bytes.charge(&key, body.0.len() as u64)?)))
        .inspect_err(|e| state.metrics.record_rejected(e.code, count))?;
    match state.log.append(&run_id, events).await {
        Ok(appended) => {
            charges.0.keep();
            charges.1.keep();
            Ok(Json(Seqs { seqs: appended.seqs }))
        }
        Err(e) => {
            state.metrics.record_rejected(e.code(), count);
            if e.code() == agentwire_protocol::ErrorCode::NotFound {
                // Debug-formatted: the id is the caller's raw path segment, and a
                // newline or escape sequence in it must not forge log lines.
                tracing::warn!(run_id = ?run_id, "rejected events of an unroutable run");
            }
            Err(e.into())
        }
    }
}

/// The run, if `caller` may see it: any publisher, or the owner of its thread.
async fn visible_run(state: &AppState, caller: &Caller, run_id: &str) -> Result<RunInfo, ApiError> {
    if !matches!(caller.0, Principal::User { .. }) {
        state.limits.allow_publish(caller.publisher()?)?;
    }
    let run = state.log.run(run_id).await?.ok_or_else(|| ApiError::not_found(format!("run {run_id}")))?;
    if let Principal::User { id, .. } = &caller.0
        && id != &run.owner
    {
        return Err(ApiError::forbidden());
    }
    Ok(run)
}

fn run_view(run: RunInfo) -> RunView {
    RunView {
        run_id: run.run_id.to_string(),
        thread_id: run.thread_id.to_string(),
        status: run.status.as_str().to_owned(),
        cancel_requested: run.cancel_requested,
        queued: run.queued,
        agent_name: run.agent_name,
        open_inputs: run
            .inputs
            .open
            .iter()
            .map(|(id, open)| OpenInputView {
                request_id: id.clone(),
                kind: open.kind.as_str().to_owned(),
                expires_at: agentwire_protocol::Timestamp(open.expires_ms).to_string(),
            })
            .collect(),
    }
}

/// `GET /v1/runs/{run_id}`.
#[utoipa::path(get, path = "/v1/runs/{run_id}", tag = "runs", params(("run_id" = String, Path)),
    responses((status = 200, body = RunView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(run_id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let run = visible_run(&state, &caller, &run_id).await?;
    Ok(Json(run_view(run)))
}

/// `POST /v1/runs/{run_id}/cancel`: ends the run with `agent_error {code:"cancelled"}`
/// and stops it if it runs in this node's engine.
#[utoipa::path(post, path = "/v1/runs/{run_id}/cancel", tag = "runs", params(("run_id" = String, Path)),
    responses((status = 202, body = Cancelled), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(run_id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let run = visible_run(&state, &caller, &run_id).await?;
    let appended = state.log.cancel(run.run_id.as_str()).await?;
    state.stop_agent_run(run.run_id.as_str());
    Ok((StatusCode::ACCEPTED, Json(Cancelled { run_id: run.run_id.to_string(), seq: appended.seqs.first().copied() })))
}
