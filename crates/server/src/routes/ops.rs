//! Operator and housekeeping routes: health, readiness, metrics, live figures, dev tokens.

use agentwire_protocol::{ErrorCode, UserId};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::extract::Token;
use crate::state::AppState;

/// `GET /healthz`: the process is up.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the log takes appends and the server is not shutting down.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.closing.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "shutting_down" })));
    }
    match state.log.ready().await {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "unavailable", "error": e.to_string() }))),
    }
}

fn refresh_gauges(state: &AppState) {
    let stats = state.log.stats();
    state.metrics.threads.set(i64::try_from(stats.threads).unwrap_or(i64::MAX));
    state.metrics.runs_in_flight.set(i64::try_from(stats.runs_in_flight).unwrap_or(i64::MAX));
    state.metrics.agent_runs.set(i64::try_from(state.engine.running()).unwrap_or(i64::MAX));
}

/// `GET /metrics`: Prometheus (OpenMetrics) text.
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    refresh_gauges(&state);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &state.registry)
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("could not encode metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text))
}

/// `GET /v1/admin/stats`: live figures for operators (open in dev mode).
pub async fn stats(State(state): State<AppState>, Token(token): Token) -> Result<impl IntoResponse, ApiError> {
    let principal = state.auth.authenticate(token.as_deref()).ok();
    if !state.auth.is_operator(principal.as_ref()) {
        return Err(if token.is_none() {
            ApiError::new(ErrorCode::Unauthorized, "missing credentials")
        } else {
            ApiError::forbidden()
        });
    }
    refresh_gauges(&state);
    let hub = state.hub.metrics();
    let stats = state.log.stats();
    Ok(Json(json!({
        "connections": {
            "ws": hub.connections.get_or_create(&agentwire_hub::TransportLabel { transport: "ws" }).get(),
            "sse": hub.connections.get_or_create(&agentwire_hub::TransportLabel { transport: "sse" }).get(),
        },
        "subscriptions": hub.subscriptions.get(),
        "watched_threads": state.hub.watched_threads(),
        "threads": stats.threads,
        "runs_in_flight": stats.runs_in_flight,
        "agent_runs": state.engine.running(),
        "slow_consumer_disconnects": hub.slow_consumer_disconnects.get(),
        "resumes": hub.resumes.get(),
        "resets": hub.resets.get(),
    })))
}

#[derive(Deserialize)]
pub struct DevTokenQuery {
    user: String,
}

/// `GET /dev/token?user=NAME`: a token for NAME, in dev mode only.
pub async fn dev_token(
    State(state): State<AppState>,
    query: Result<Query<DevTokenQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    if !state.auth.dev_mode() {
        return Err(ApiError::not_found("/dev/token outside dev mode"));
    }
    let Query(q) = query.map_err(|_| ApiError::bad_request("give ?user=NAME"))?;
    let user = UserId::parse(&q.user)?;
    let (token, exp) = state
        .auth
        .issue(&user, state.config.dev_token_ttl)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    Ok(Json(json!({ "token": token, "user": user, "exp": exp })))
}

/// Anything else: `404` in the protocol's error shape.
pub async fn fallback() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}
