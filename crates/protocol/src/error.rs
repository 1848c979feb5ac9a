//! Errors of the pure protocol layer, and the error codes every client sees.

use serde::{Deserialize, Serialize};

/// The error codes of PROTOCOL §3/§4, shared by HTTP answers and WebSocket `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    LifecycleViolation,
    TooLarge,
    RateLimited,
    Unavailable,
    /// A thread or run id that is already taken (`409`, like a lifecycle violation).
    Conflict,
    /// A request body that did not arrive in time (`408`).
    Timeout,
    Internal,
    /// What this deployment's log cannot do (`501`).
    Unsupported,
}

impl ErrorCode {
    /// The wire name, e.g. `not_found`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::LifecycleViolation => "lifecycle_violation",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Conflict => "conflict",
            Self::Timeout => "timeout",
            Self::Internal => "internal",
            Self::Unsupported => "unsupported",
        }
    }

    /// The HTTP status that carries this code.
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::LifecycleViolation | Self::Conflict => 409,
            Self::Timeout => 408,
            Self::TooLarge => 413,
            Self::RateLimited => 429,
            Self::Unavailable => 503,
            Self::Internal => 500,
            Self::Unsupported => 501,
        }
    }
}

/// An id that does not have the documented shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("thread_id must match ^thread_[A-Za-z0-9]{{1,64}}$")]
    Thread,
    #[error("run_id must be 1 to 200 characters of [A-Za-z0-9_.:-]")]
    Run,
    #[error("user id must be 1 to 256 characters without control characters")]
    User,
}

/// A published event that breaks the rules of PROTOCOL §2 before any state is looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("unknown event {0:?}")]
    UnknownEvent(String),
    #[error("{0} cannot be published; the server appends it")]
    ServerOnly(&'static str),
    #[error("{event}: required field {field:?} is missing or not {expected}")]
    Field { event: &'static str, field: &'static str, expected: &'static str },
    #[error("{event}: code must be one of failed, cancelled, timeout, worker_lost")]
    ErrorCode { event: &'static str },
    #[error("{event}: field {field:?} is longer than {max} bytes")]
    TooLong { event: &'static str, field: &'static str, max: usize },
    #[error("data must be a JSON object")]
    DataNotObject,
    #[error("event_id must be 1 to 128 characters")]
    EventId,
    #[error("events must not be empty")]
    Empty,
    #[error("a body has either \"event\" or \"events\", not both and not neither")]
    Shape,
    #[error("too many events in one publish: {got} > {max}")]
    TooMany { got: usize, max: usize },
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("a publish frame names its run: \"run_id\" is missing")]
    MissingRunId,
    #[error("a \"register\" frame carries only its \"ref\" beside it")]
    RegisterAlone,
    #[error("event {index}: {source}")]
    At { index: usize, source: Box<EventError> },
}

impl EventError {
    /// The client-facing code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooMany { .. } | Self::TooLong { .. } => ErrorCode::TooLarge,
            Self::At { source, .. } => source.code(),
            _ => ErrorCode::BadRequest,
        }
    }
}

/// A publish that the run's lifecycle forbids (PROTOCOL §2): answered `409`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error("agent_started must be the run's first event")]
    NotStarted,
    #[error("agent_started was already published for this run")]
    AlreadyStarted,
    #[error("the run has ended; nothing may follow its terminal event")]
    Ended,
    #[error("tool_call_id {0:?} is not open in this run")]
    UnknownToolCall(String),
    #[error("tool_call_id {0:?} is already open in this run")]
    ToolCallAlreadyOpen(String),
    #[error("agent_completed while tool calls are open: {0}")]
    ToolCallsOpen(String),
    #[error("request_id {0:?} was already asked in this run")]
    InputAlreadyRequested(String),
    #[error("a run may wait on at most {0} input requests at once")]
    TooManyOpenInputs(usize),
    #[error("request_id {0:?} is not an input request of this run")]
    UnknownInput(String),
    #[error("input request {0:?} is closed: it was answered, lapsed, or its run ended")]
    InputClosed(String),
}
