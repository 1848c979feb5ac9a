//! The router: every route of PROTOCOL §3 and the transports of §4 and §5.

pub mod admin;
pub mod agui;
pub mod assets;
pub mod inputs;
pub mod openapi;
pub mod ops;
pub mod publish_ws;
pub mod runs;
pub mod schema;
pub mod sse;
pub mod threads;
pub mod ui_chat;
pub(crate) mod watched;
pub mod ws;

use agentwire_hub::{HubMetrics, TransportLabel};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::routing::{delete, get, post};
use prometheus_client::metrics::gauge::Gauge;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::state::AppState;

/// All routes, with the body limit applied.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.max_body_bytes;
    let router = Router::new()
        .route("/v1/threads", post(threads::create))
        .route("/v1/threads/{thread_id}", delete(threads::delete))
        .route("/v1/threads/{thread_id}/messages", post(threads::post_message))
        .route("/v1/threads/{thread_id}/events", get(threads::events))
        .route("/v1/threads/{thread_id}/stream", get(sse::stream))
        .route("/v1/threads/{thread_id}/inputs/{request_id}", post(inputs::answer))
        .route("/v1/runs", post(runs::create))
        .route("/v1/runs/{run_id}", get(runs::get))
        .route("/v1/runs/{run_id}/events", post(runs::publish))
        .route("/v1/runs/{run_id}/cancel", post(runs::cancel))
        .route("/v1/runs/{run_id}/inputs/{request_id}", get(inputs::wait))
        .route("/v1/publish", get(publish_ws::upgrade))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/agui", post(agui::run))
        .route("/v1/ui/chat", post(ui_chat::chat))
        .route("/v1/ui/chat/{thread_id}/stream", get(ui_chat::resume))
        .route("/v1/admin/stats", get(admin::stats))
        .route("/v1/admin/stream", get(admin::stream))
        .route("/", get(assets::chat_page))
        .route("/dashboard", get(assets::dashboard_page))
        .route("/assets/{file}", get(assets::asset))
        .route("/dev/token", get(ops::dev_token))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::spec))
        .fallback(ops::fallback)
        .layer(DefaultBodyLimit::max(body_limit));
    let router = match cors(&state.config.allowed_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.layer(axum::middleware::from_fn_with_state(state.clone(), host_guard)).with_state(state)
}

/// Cross-origin requests from the origins of `AGENTWIRE_ALLOWED_ORIGINS`
/// (`*`: any), so a page served elsewhere (a `useChat` app, a history view)
/// can call the HTTP API with a token in `Authorization`; no cookies are
/// involved, so none are allowed. Without the setting, no CORS at all.
fn cors(allowed: &[String]) -> Option<CorsLayer> {
    if allowed.is_empty() {
        return None;
    }
    let any = allowed.iter().any(|o| o == "*");
    let listed: Vec<String> = allowed.iter().map(|o| o.trim_end_matches('/').to_ascii_lowercase()).collect();
    let origin = AllowOrigin::predicate(move |origin: &HeaderValue, _| {
        any || origin.to_str().is_ok_and(|o| listed.iter().any(|l| l.eq_ignore_ascii_case(o.trim_end_matches('/'))))
    });
    let layer = CorsLayer::new()
        .allow_origin(origin)
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, HeaderName::from_static("last-event-id")])
        .expose_headers([HeaderName::from_static("x-vercel-ai-ui-message-stream")])
        .max_age(std::time::Duration::from_secs(600));
    Some(layer)
}

/// Refuses requests for a host name this server does not answer to (DNS rebinding).
async fn host_guard(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match state.limits.check_host(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => axum::response::IntoResponse::into_response(e),
    }
}

/// Counts an open connection for as long as it lives.
pub(crate) struct ConnectionGauge(Gauge);

impl ConnectionGauge {
    pub(crate) fn open(metrics: &HubMetrics, transport: &'static str) -> Self {
        let gauge = metrics.connections.get_or_create(&TransportLabel { transport }).clone();
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}
