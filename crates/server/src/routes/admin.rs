//! Operator routes: the live figures behind the dashboard.
//!
//! `GET /v1/admin/stats` answers one snapshot; `GET /v1/admin/stream` pushes one
//! every second over SSE, with the delivery-lag percentiles of that second.
//! Both need the admin key in `Authorization: Bearer` (never in the URL), except in dev mode.

use std::convert::Infallible;
use std::time::Duration;

use agentwire_hub::{LAG_BUCKETS, TransportLabel, lag_quantile};
use agentwire_protocol::Timestamp;
use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::extract::Token;
use crate::state::AppState;

/// How often the stream sends a snapshot.
const STREAM_EVERY: Duration = Duration::from_secs(1);

/// `401` without valid credentials, `403` with credentials that are not the operator's.
fn require_operator(state: &AppState, token: Option<&str>) -> Result<(), ApiError> {
    if state.auth.dev_mode() {
        return Ok(());
    }
    let principal = state.auth.authenticate(token)?;
    if state.auth.is_operator(Some(&principal)) { Ok(()) } else { Err(ApiError::forbidden()) }
}

fn by_kind(counts: impl Iterator<Item = (&'static str, u64)>) -> Value {
    Value::Object(counts.map(|(k, n)| (k.to_owned(), Value::from(n))).collect::<Map<_, _>>())
}

/// This node's figures, as one JSON object.
pub fn snapshot(state: &AppState) -> Value {
    let hub = state.hub.metrics();
    let stats = state.log.stats();
    let connections = |transport| hub.connections.get_or_create(&TransportLabel { transport }).get();
    let now = Timestamp::now();
    json!({
        "node": {
            "id": state.node.id,
            "started_at": state.node.started_at,
            "uptime_s": (now.millis() - state.node.started_at.millis()) / 1000,
            "ready": !state.closing.is_cancelled(),
        },
        "ts": now,
        "connections": { "ws": connections("ws"), "sse": connections("sse") },
        "subscriptions": hub.subscriptions.get(),
        "watched_threads": state.hub.watched_threads(),
        "threads": stats.threads,
        "runs_in_flight": stats.runs_in_flight,
        "agent_runs": state.agent_runs(),
        "totals": {
            "appended": hub.appended.total(),
            "delivered": hub.delivered.total(),
            "rejected": state.metrics.rejected_total.get(),
            "unroutable": state.metrics.unroutable_total.get(),
            "slow_consumer_disconnects": hub.slow_consumer_disconnects.get(),
            "dropped_slow_consumer": hub.dropped_slow_consumer.get(),
            "resumes": hub.resumes.get(),
            "resets": hub.resets.get(),
        },
        "appended_by_event": by_kind(hub.appended.by_kind()),
        "delivered_by_event": by_kind(hub.delivered.by_kind()),
    })
}

/// `GET /v1/admin/stats`.
#[utoipa::path(get, path = "/v1/admin/stats", tag = "operations",
    responses((status = 200, description = "`{\"nodes\": [...]}`: this node's figures", body = Object),
        (status = 401, body = crate::routes::schema::ErrorBody), (status = 403, body = crate::routes::schema::ErrorBody)))]
pub async fn stats(State(state): State<AppState>, Token(token): Token) -> Result<impl IntoResponse, ApiError> {
    require_operator(&state, token.as_deref())?;
    Ok(Json(json!({ "nodes": [snapshot(&state)] })))
}

/// `GET /v1/admin/stream`: a snapshot every second, with the lag percentiles of that second.
#[utoipa::path(get, path = "/v1/admin/stream", tag = "operations",
    responses((status = 200, description = "`stats` events, one a second", content_type = "text/event-stream"),
        (status = 401, body = crate::routes::schema::ErrorBody), (status = 403, body = crate::routes::schema::ErrorBody)))]
pub async fn stream(
    State(state): State<AppState>,
    Token(token): Token,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    require_operator(&state, token.as_deref())?;
    let keep_alive = KeepAlive::new().interval(state.config.sse_keepalive).text("ping");
    let events = async_stream::stream! {
        let lag = state.hub.metrics().lag_counts.clone();
        let mut before = lag.read();
        let mut tick = tokio::time::interval(STREAM_EVERY);
        loop {
            tokio::select! {
                _ = state.closing.cancelled() => break,
                _ = tick.tick() => {}
            }
            let after = lag.read();
            let quantile = |q| lag_quantile(&before, &after, q).map(|s| s * 1000.0);
            let mut node = snapshot(&state);
            node["lag_ms"] = json!({ "p50": quantile(0.5), "p90": quantile(0.9), "p99": quantile(0.99), "max_bucket_ms": LAG_BUCKETS.last().map(|s| s * 1000.0) });
            before = after;
            let frame = json!({ "nodes": [node], "interval_ms": STREAM_EVERY.as_millis() as u64 });
            yield Ok(Event::default().event("stats").data(frame.to_string()));
        }
    };
    Ok(Sse::new(events).keep_alive(keep_alive))
}
