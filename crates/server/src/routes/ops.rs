//! Housekeeping routes: health, readiness, metrics, dev tokens.

use agentwire_protocol::{ErrorCode, UserId};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::routes::schema::{DevToken, ErrorBody, Status};
use crate::state::AppState;

/// `GET /healthz`: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()), responses((status = 200, body = Status)))]
pub async fn healthz() -> impl IntoResponse {
    Json(Status { status: "ok".into(), weak_durability: None })
}

/// `GET /readyz`: the log takes appends and the server is not shutting down.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()), responses((status = 200, body = Status), (status = 503, body = Status)))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.closing.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "shutting_down" })));
    }
    match state.log.ready().await {
        Ok(()) => {
            let weak = state.log.durability_warnings();
            if weak.is_empty() {
                (StatusCode::OK, Json(json!({ "status": "ready" })))
            } else {
                // Ready (the operator accepted it at start), and saying what could be lost.
                (StatusCode::OK, Json(json!({ "status": "ready", "weak_durability": weak })))
            }
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "unavailable", "error": e.to_string() }))),
    }
}

/// Sets the gauges that are read from the log and the engine rather than counted.
pub(crate) fn refresh_gauges(state: &AppState) {
    let stats = state.log.stats();
    state.metrics.threads.set(i64::try_from(stats.threads).unwrap_or(i64::MAX));
    state.metrics.runs_in_flight.set(i64::try_from(stats.runs_in_flight).unwrap_or(i64::MAX));
    state.metrics.agent_runs.set(i64::try_from(state.agent_runs()).unwrap_or(i64::MAX));
}

/// `GET /metrics`: Prometheus (OpenMetrics) text.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    refresh_gauges(&state);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &state.registry)
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("could not encode metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct DevTokenQuery {
    /// The user the token is for.
    user: String,
}

/// `GET /dev/token?user=NAME`: a token for NAME, in dev mode only.
#[utoipa::path(get, path = "/dev/token", tag = "operations", security(()), params(DevTokenQuery),
    responses((status = 200, body = DevToken), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
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
    Ok(Json(DevToken { token, user: user.to_string(), exp }))
}

/// Anything else: `404` in the protocol's error shape.
pub async fn fallback() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}
