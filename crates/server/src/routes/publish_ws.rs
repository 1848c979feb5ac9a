//! The publisher WebSocket (PROTOCOL §3.1): one connection carries a
//! publisher's events as they happen, with an acknowledgement per frame.
//!
//! A frame is what `POST /v1/runs/{run_id}/events` takes, with the `run_id`
//! and an optional `ref` beside it, and goes through the same checks: publish
//! key, rate, quotas, validation, lifecycle, `event_id` de-duplication. Frames
//! are decided one after another, in the order they arrive, but the
//! connection does not wait for one to be on disk before it decides the next:
//! each waits for its durability in a queue of at most [`IN_FLIGHT`], and the
//! acks leave in frame order as their appends are stored. So a token stream
//! costs one decision per event and shares the log's group commits, not one
//! HTTP request and one commit wait each.
//!
//! A frame may also register a run (`{"ref","register":{…}}`, the body of
//! `POST /v1/runs`), so a publisher needs no HTTP request per run either.
//!
//! Why a WebSocket rather than NDJSON over one long request: an ack per
//! frame needs both directions at once, and common HTTP/1.1 clients (fetch,
//! requests, httpx) read a response only once they have sent the whole body.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use agentwire_log::Queued;
use agentwire_protocol::{ErrorCode, PublishFrame, PublishLimits, parse_publish_frame};
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use futures_util::stream::{FuturesOrdered, StreamExt};
use serde::Serialize;

use crate::error::ApiError;
use crate::extract::Caller;
use crate::routes::ConnectionGauge;
use crate::routes::runs;
use crate::routes::schema::{CreateRun, RunCreated};
use crate::routes::ws::close;
use crate::state::AppState;

/// Frames decided and waiting for the disk, per connection; past it the
/// connection reads no more frames until the oldest is acknowledged.
pub const IN_FLIGHT: usize = 1024;

/// `GET /v1/publish`: checks the publish key (`401`, `403`) at the handshake, then upgrades.
#[utoipa::path(get, path = "/v1/publish", tag = "runs",
    responses((status = 101, description = "WebSocket (PROTOCOL §3.1)"),
        (status = 400, description = "not a WebSocket handshake"),
        (status = 401, body = crate::routes::schema::ErrorBody), (status = 403, body = crate::routes::schema::ErrorBody)))]
pub async fn upgrade(State(state): State<AppState>, caller: Caller, ws: WebSocketUpgrade) -> Response {
    let key = match caller.publisher() {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    let tracker = state.connections.clone();
    let max = state.config.max_body_bytes;
    ws.max_message_size(max).on_upgrade(move |socket| tracker.track_future(serve(socket, state, key)))
}

/// An acknowledgement, as the publisher reads it.
#[derive(Serialize)]
struct Ack<'a> {
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seqs: Option<&'a [u64]>,
    /// A registration's answer: `run_id` and `thread_id`, as `POST /v1/runs` answers.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    registered: Option<&'a RunCreated>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<AckError<'a>>,
}

#[derive(Serialize)]
struct AckError<'a> {
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
}

fn ack(reference: Option<u64>, answer: Result<Vec<u64>, ApiError>) -> String {
    match &answer {
        Ok(seqs) => encode(&Ack { reference, seqs: Some(seqs), registered: None, error: None }),
        Err(e) => refusal(reference, e),
    }
}

fn refusal(reference: Option<u64>, e: &ApiError) -> String {
    let error = AckError { code: e.code.as_str(), message: &e.message, retry_after: e.retry_after };
    encode(&Ack { reference, seqs: None, registered: None, error: Some(error) })
}

fn encode(ack: &Ack<'_>) -> String {
    // Plain strings and numbers: serializing cannot fail.
    serde_json::to_string(ack).unwrap_or_default()
}

/// Registers a run as `POST /v1/runs` does; answered once it is stored, so the
/// frames after it may publish to it.
async fn register<'a>(state: &'a AppState, key: u64, reference: Option<u64>, body: serde_json::Value) -> Pending<'a> {
    let registered = match state.limits.allow_publish(key) {
        Ok(()) => match serde_json::from_value::<CreateRun>(body) {
            Ok(req) => runs::register(state, key, req).await,
            Err(e) => Err(ApiError::new(ErrorCode::BadRequest, format!("register: {e}"))),
        },
        Err(e) => Err(e),
    };
    let answer = match registered {
        Ok(created) => encode(&Ack { reference, seqs: None, registered: Some(&created), error: None }),
        Err(e) => refusal(reference, &e),
    };
    Box::pin(std::future::ready(answer))
}

/// One frame's answer, ready or waiting for the disk.
type Pending<'a> = Pin<Box<dyn Future<Output = String> + Send + 'a>>;

/// Decides one frame: checks, quotas, the log's decision; what it answers
/// once stored (or at once, when refused).
async fn decide<'a>(state: &'a AppState, key: u64, text: &str) -> Pending<'a> {
    let limits = PublishLimits { max_events: state.config.max_events_per_publish };
    let (reference, run_id, events) = match parse_publish_frame(text.as_bytes(), limits) {
        Ok(PublishFrame::Events { reference, run_id, events }) => (reference, run_id, events),
        Ok(PublishFrame::Register { reference, body }) => return register(state, key, reference, body).await,
        Err((reference, e)) => {
            let e = ApiError::from(e);
            state.metrics.record_rejected(e.code, 1);
            return Box::pin(std::future::ready(ack(reference, Err(e))));
        }
    };
    let refused = |e: ApiError, count: u64| -> Pending<'a> {
        state.metrics.record_rejected(e.code, count);
        Box::pin(std::future::ready(ack(reference, Err(e))))
    };
    let count = events.len() as u64;
    if let Err(e) = state.limits.allow_publish(key) {
        return refused(e, count);
    }
    let quotas = &state.quotas;
    let charges = match quotas
        .key_events
        .charge(&key, count)
        .and_then(|events| Ok((events, quotas.key_bytes.charge(&key, text.len() as u64)?)))
    {
        Ok(charges) => charges,
        Err(e) => return refused(e, count),
    };
    let queued: Queued = match state.log.append_queued(&run_id, events).await {
        Ok(queued) => queued,
        Err(e) => return refused(e.into(), count),
    };
    Box::pin(async move {
        match queued.await {
            Ok(appended) => {
                charges.0.keep();
                charges.1.keep();
                ack(reference, Ok(appended.seqs))
            }
            Err(e) => {
                state.metrics.record_rejected(e.code(), count);
                ack(reference, Err(e.into()))
            }
        }
    })
}

/// Reads frames and answers them in order until the publisher closes, the
/// connection fails, or the server shuts down (after answering what it had
/// decided).
async fn serve(mut socket: WebSocket, state: AppState, key: u64) {
    let _gauge = ConnectionGauge::open(state.hub.metrics(), "publish");
    let closing = state.closing.clone();
    let mut waiting: FuturesOrdered<Pending<'_>> = FuturesOrdered::new();
    // Answers ready to go, sent together before the next read.
    let mut ready: VecDeque<String> = VecDeque::new();
    let end: Option<(u16, &'static str)> = loop {
        while let Some(text) = ready.pop_front() {
            if socket.feed(Message::Text(text.into())).await.is_err() {
                return;
            }
        }
        if SinkExt::flush(&mut socket).await.is_err() {
            return;
        }
        tokio::select! {
            biased;
            Some(answer) = waiting.next(), if !waiting.is_empty() => {
                ready.push_back(answer);
                // Whatever else is stored already goes in the same write.
                while let Some(Some(answer)) = futures_util::FutureExt::now_or_never(waiting.next()) {
                    ready.push_back(answer);
                }
            }
            frame = socket.recv(), if waiting.len() < IN_FLIGHT => match frame {
                Some(Ok(Message::Text(text))) => waiting.push_back(decide(&state, key, &text).await),
                Some(Ok(Message::Binary(_))) => break Some((close::POLICY, "frames are JSON text")),
                // A frame over the limit (or not WebSocket at all) ends the reading.
                Some(Err(_)) => break Some((close::TOO_BIG, "message too big or malformed")),
                Some(Ok(Message::Close(_))) | None => break None,
                // Pings are answered by the WebSocket layer.
                Some(Ok(_)) => {}
            },
            _ = closing.cancelled() => break Some((close::GOING_AWAY, "server shutting down")),
        }
    };
    // Every frame decided gets its answer before the connection closes.
    while let Some(answer) = waiting.next().await {
        if socket.feed(Message::Text(answer.into())).await.is_err() {
            return;
        }
    }
    if let Some((code, reason)) = end {
        let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
    } else {
        let _ = SinkExt::flush(&mut socket).await;
    }
}
