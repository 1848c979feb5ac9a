//! The web pages: the chat at `/`, the dashboard at `/dashboard`, and their
//! assets, compiled into the binary so one file is the whole product.
//!
//! The pages live in `web/pages`, the scripts are built from `web/src` (TypeScript)
//! into `web/dist`, which is committed so a Rust toolchain alone builds the server.

use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

macro_rules! web_file {
    ($path:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../web/", $path))
    };
}

/// `(name, content type, body)` of every asset under `/assets/`.
const ASSETS: &[(&str, &str, &str)] = &[
    ("style.css", "text/css; charset=utf-8", web_file!("pages/style.css")),
    ("agentwire.js", "text/javascript; charset=utf-8", web_file!("dist/agentwire.js")),
    ("chat.js", "text/javascript; charset=utf-8", web_file!("dist/chat.js")),
    ("dashboard.js", "text/javascript; charset=utf-8", web_file!("dist/dashboard.js")),
    ("dialog.js", "text/javascript; charset=utf-8", web_file!("dist/dialog.js")),
];

fn html(body: &'static str) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    resp
}

/// `GET /`: the chat page.
pub async fn chat_page() -> Response {
    html(web_file!("pages/index.html"))
}

/// `GET /dashboard`: the live health dashboard.
pub async fn dashboard_page() -> Response {
    html(web_file!("pages/dashboard.html"))
}

/// `GET /assets/{file}`.
pub async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let (_, content_type, body) =
        ASSETS.iter().find(|(name, _, _)| *name == file).ok_or_else(|| ApiError::not_found(format!("asset {file}")))?;
    let mut resp = body.into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}
