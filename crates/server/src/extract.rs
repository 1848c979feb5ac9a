//! Request extractors: credentials and bodies, with errors in the protocol's shape.

use agentwire_protocol::{ErrorCode, UserId};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

/// The bearer token of a request: `Authorization: Bearer …`, else `?token=…` on
/// the two streaming routes a browser cannot set headers for (`GET /v1/ws` and
/// `GET /v1/threads/{id}/stream`). Nowhere else: a token in a URL ends up in
/// logs and history, and a query token on a `POST` would let another site's
/// form (`text/plain`, no preflight) act with it.
#[derive(Debug, Clone, Default)]
pub struct Token(pub Option<String>);

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Whether a request may carry its token in the query (see [`Token`]).
fn takes_query_token(method: &axum::http::Method, path: &str) -> bool {
    let stream = path.strip_prefix("/v1/threads/").is_some_and(|rest| {
        rest.strip_suffix("/stream").is_some_and(|thread| !thread.is_empty() && !thread.contains('/'))
    });
    method == axum::http::Method::GET && (path == "/v1/ws" || stream)
}

fn query_token(uri: &axum::http::Uri) -> Option<String> {
    axum::extract::Query::<TokenQuery>::try_from_uri(uri).ok().and_then(|q| q.0.token)
}

impl<S: Send + Sync> FromRequestParts<S> for Token {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let from_header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(|v| v.trim().to_owned());
        let from_query = || query_token(&parts.uri).filter(|_| takes_query_token(&parts.method, parts.uri.path()));
        Ok(Self(from_header.or_else(from_query)))
    }
}

/// An authenticated caller; a request without valid credentials is answered `401`.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl Caller {
    /// The user, or `403` for a publish or admin key where a user token belongs.
    pub fn user(&self) -> Result<&UserId, ApiError> {
        match &self.0 {
            Principal::User { id, .. } => Ok(id),
            _ => Err(ApiError::forbidden()),
        }
    }

    /// The user and their token's expiry (seconds since the epoch), for
    /// streams that must end when the token does.
    pub fn user_until(&self) -> Result<(&UserId, u64), ApiError> {
        match &self.0 {
            Principal::User { id, exp } => Ok((id, *exp)),
            _ => Err(ApiError::forbidden()),
        }
    }

    /// The publisher's key id, or `403` for anyone else.
    pub fn publisher(&self) -> Result<u64, ApiError> {
        match self.0 {
            Principal::Publisher { key } => Ok(key),
            _ => Err(ApiError::forbidden()),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Ok(Token(token)) = Token::from_request_parts(parts, state).await;
        Ok(Self(state.auth.authenticate(token.as_deref())?))
    }
}

/// A request body within the size limit (`413 too_large` beyond it) and the
/// body timeout (`408 timeout` past it: a client that stops sending does not
/// hold its connection).
pub struct Body(pub Bytes);

impl FromRequest<AppState> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let deadline = state.config.http_body_timeout;
        let read = tokio::time::timeout(deadline, Bytes::from_request(req, state)).await.map_err(|_| {
            ApiError::new(
                ErrorCode::Timeout,
                format!("the request body did not arrive within {} s", deadline.as_secs_f64()),
            )
        })?;
        match read {
            Ok(bytes) => Ok(Self(bytes)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(ErrorCode::TooLarge, "the request body is larger than the limit"))
            }
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

impl Body {
    /// Parses the body as JSON; an empty body reads as `{}`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let bytes: &[u8] = if self.0.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &self.0 };
        serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_streaming_routes_take_a_query_token() {
        use axum::http::Method;
        assert!(takes_query_token(&Method::GET, "/v1/ws"));
        assert!(takes_query_token(&Method::GET, "/v1/threads/thread_a/stream"));
        for (method, path) in [
            (Method::POST, "/v1/ws"),
            (Method::POST, "/v1/threads/thread_a/messages"),
            (Method::GET, "/v1/threads/thread_a/events"),
            (Method::GET, "/v1/admin/stream"),
            (Method::GET, "/v1/admin/stats"),
            (Method::POST, "/v1/agui"),
            (Method::GET, "/v1/threads//stream"),
            (Method::GET, "/v1/threads/a/b/stream"),
        ] {
            assert!(!takes_query_token(&method, path), "{method} {path}");
        }
    }

    #[test]
    fn tokens_come_from_the_query_when_there_is_no_header() {
        let uri = |s: &str| s.parse::<axum::http::Uri>().unwrap();
        assert_eq!(query_token(&uri("/v1/ws?after_seq=1&token=abc.def")).as_deref(), Some("abc.def"));
        assert_eq!(query_token(&uri("/v1/ws?token=a%2Eb")).as_deref(), Some("a.b"));
        assert_eq!(query_token(&uri("/v1/ws?format=legacy")), None);
    }
}
