//! `GET /openapi.json`: the HTTP API described as OpenAPI 3, generated from the
//! handlers' annotations and the body types in [`crate::routes::schema`].

use axum::Json;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::schema;
use crate::routes::{admin, agui, inputs, ops, publish_ws, runs, sse, threads, ui_chat, ws};

/// Every route and body of the HTTP API.
#[derive(OpenApi)]
#[openapi(
    info(title = "agentwire", description = "The real-time bridge between AI agents and the people watching them (PROTOCOL.md)."),
    paths(
        threads::create, threads::delete, threads::post_message, threads::events, sse::stream,
        runs::create, runs::publish, runs::get, runs::cancel, publish_ws::upgrade, inputs::answer, inputs::wait,
        agui::run, ui_chat::chat, ui_chat::resume, ws::upgrade,
        ops::healthz, ops::readyz, ops::metrics, ops::dev_token,
        admin::stats, admin::stream,
    ),
    components(schemas(
        schema::CreateThread, schema::ThreadCreated, schema::ThreadDeleted, schema::CreateRun, schema::RunCreated,
        schema::PublishedEvent, schema::PublishBody, schema::Seqs, schema::RunView, schema::Cancelled,
        schema::PostMessage, schema::MessageAccepted, schema::EnvelopeSchema, schema::HistoryPage,
        schema::ErrorBody, schema::ErrorDetail, schema::DevToken, schema::Status, schema::OpenInputView,
        schema::InputAnswerBody, schema::InputAnswered, schema::InputView,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

/// Every route takes `Authorization: Bearer …`: a user's JWT, a publish key or the admin key.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `GET /openapi.json`.
pub async fn spec() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}
