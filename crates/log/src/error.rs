//! What a log answers when it cannot do what was asked.

use agentwire_protocol::{AnswerError, ErrorCode, LifecycleError, ThreadId};

/// A log operation's failure; [`LogError::code`] is what the client sees.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    #[error("thread {0} does not exist")]
    ThreadNotFound(ThreadId),
    /// The run is neither registered nor extractable to an existing thread.
    #[error("run {0:?} is unknown and names no existing thread")]
    RunNotFound(String),
    #[error("the thread belongs to another user")]
    Forbidden,
    #[error("thread {0} already exists")]
    ThreadExists(ThreadId),
    #[error("run id {0} is already taken")]
    RunExists(String),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// The store could not be reached or did not confirm: nothing was stored.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store refuses something this large, on every retry: nothing was stored.
    #[error("{0}")]
    TooLarge(String),
    /// This log does not do that (on every retry): nothing changed.
    #[error("{0}")]
    Unsupported(String),
    /// The thread has a run going and the caller wanted it idle.
    #[error("run {0} is still going in this thread")]
    RunInFlight(agentwire_protocol::RunId),
    #[error("input request {0:?} is unknown")]
    InputNotFound(String),
    #[error("input request {0:?} is closed: it was answered, lapsed, or its run ended")]
    InputClosed(String),
    #[error(transparent)]
    BadAnswer(#[from] AnswerError),
}

impl LogError {
    /// The client-facing error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::ThreadNotFound(_) | Self::RunNotFound(_) | Self::InputNotFound(_) => ErrorCode::NotFound,
            Self::InputClosed(_) | Self::RunInFlight(_) => ErrorCode::Conflict,
            Self::BadAnswer(_) => ErrorCode::BadRequest,
            Self::Forbidden => ErrorCode::Forbidden,
            Self::ThreadExists(_) | Self::RunExists(_) => ErrorCode::Conflict,
            Self::Lifecycle(_) => ErrorCode::LifecycleViolation,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::TooLarge(_) => ErrorCode::TooLarge,
            Self::Unsupported(_) => ErrorCode::Unsupported,
        }
    }
}
