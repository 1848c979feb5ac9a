//! # agentwire-protocol
//!
//! The contract of PROTOCOL.md as types and pure functions: ids and the thread
//! extraction fallback ([`ids`]), event kinds and publish-body validation
//! ([`event`]), the envelope every transport carries ([`envelope`]), WebSocket
//! frames ([`frame`]), the run lifecycle rules ([`lifecycle`]), input requests
//! ([`input`]) and the
//! redaction every stored event goes through ([`redact`]).
//!
//! Nothing here does I/O; every other crate builds on it.

pub mod agui;
pub mod envelope;
pub mod error;
pub mod event;
pub mod frame;
pub mod ids;
pub mod input;
pub mod legacy;
pub mod lifecycle;
mod open_ids;
pub mod redact;
pub mod ui_message;

pub use envelope::{Envelope, EnvelopeType, Timestamp};
pub use error::{ErrorCode, EventError, IdError, LifecycleError};
pub use event::{EventKind, NAME_MAX, NewEvent, PublishFrame, PublishLimits, parse_publish_body, parse_publish_frame};
pub use frame::{ClientFrame, ServerFrame, encode_events, json_array};
pub use ids::{RunId, ThreadId, UserId, extract_thread_id};
pub use input::{AnswerError, ClosedInput, InputKind, InputTimeouts, OpenInput};
pub use lifecycle::{RunInputs, RunLifecycle, RunStatus};
