//! The bodies of the HTTP API as types: what the handlers read and answer, and
//! what `/openapi.json` describes (the same types, so the two cannot drift).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// `POST /v1/threads`.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct CreateThread {
    /// The id to use (`^thread_[A-Za-z0-9]{1,64}$`); a fresh one when absent.
    #[serde(default)]
    #[schema(pattern = "^thread_[A-Za-z0-9]{1,64}$")]
    pub thread_id: Option<String>,
}

/// A thread that was created.
#[derive(Debug, Serialize, ToSchema)]
pub struct ThreadCreated {
    pub thread_id: String,
}

/// A thread that was deleted, and its runs that were running (each ended with
/// `agent_error {code:"cancelled"}` before the delete).
#[derive(Debug, Serialize, ToSchema)]
pub struct ThreadDeleted {
    pub thread_id: String,
    pub cancelled: Vec<String>,
}

/// `POST /v1/runs`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateRun {
    #[schema(pattern = "^thread_[A-Za-z0-9]{1,64}$")]
    pub thread_id: String,
    /// The thread's owner; the thread is created for them if new.
    #[schema(min_length = 1, max_length = 256)]
    pub user_id: String,
    #[serde(default)]
    pub agent_name: Option<String>,
    /// An extension: a run id chosen by the publisher (`409` if taken, unless
    /// by this thread and user: the same registration again, answered as the first).
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,200}$")]
    pub run_id: Option<String>,
}

/// A run that was registered.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunCreated {
    pub run_id: String,
    pub thread_id: String,
}

/// One published event (PROTOCOL §2).
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct PublishedEvent {
    /// `agent_started`, `agent_thinking`, `tool_executing`, `tool_completed`,
    /// `agent_message`, `agent_completed`, `agent_error` or `input_requested`.
    pub event: String,
    /// The event's fields; required ones depend on `event`.
    #[serde(default)]
    pub data: Option<Value>,
    /// The publisher's de-duplication id.
    #[serde(default)]
    pub event_id: Option<String>,
}

/// `POST /v1/runs/{run_id}/events`: one event, or `{"events": [...]}`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum PublishBody {
    One(PublishedEvent),
    Many { events: Vec<PublishedEvent> },
}

/// Each published event's `seq` (a repeated `event_id` answers its first seq).
#[derive(Debug, Serialize, ToSchema)]
pub struct Seqs {
    pub seqs: Vec<u64>,
}

/// A run as the registry knows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    pub run_id: String,
    pub thread_id: String,
    /// `running`, `completed` or `error`.
    pub status: String,
    pub cancel_requested: bool,
    pub agent_name: Option<String>,
    /// The input requests the run waits on (PROTOCOL §2.1).
    pub open_inputs: Vec<OpenInputView>,
    /// Waiting behind its thread's runs, not started yet (double-texting's `enqueue`).
    pub queued: bool,
}

/// An input request still open.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenInputView {
    pub request_id: String,
    /// `approval`, `text` or `choice`.
    pub kind: String,
    /// When the request's default answers it (RFC 3339).
    pub expires_at: String,
}

/// `POST /v1/threads/{thread_id}/inputs/{request_id}`: the answer's fields,
/// by the request's kind: `approved` (approval), `text` (text) or `choice`
/// (one of the options); `message` may go with any.
#[derive(Debug, Deserialize, ToSchema)]
pub struct InputAnswerBody {
    #[serde(default)]
    pub approved: Option<bool>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub choice: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    /// The run that asked; without it, the thread's running runs are searched.
    #[serde(default)]
    pub run_id: Option<String>,
}

/// An answer appended as `input_received` at `seq`.
#[derive(Debug, Serialize, ToSchema)]
pub struct InputAnswered {
    pub thread_id: String,
    pub request_id: String,
    pub seq: u64,
}

/// Where an input request stands.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct InputView {
    pub request_id: String,
    /// `open`, `answered`, `timed_out` (its default answered it) or `closed` (its run ended first).
    pub status: String,
    /// The answer, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<Value>,
    /// Who answered (`answered` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// A cancelled run and the seq of its `agent_error`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Cancelled {
    pub run_id: String,
    pub seq: Option<u64>,
}

/// `POST /v1/threads/{thread_id}/messages`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PostMessage {
    /// What the user wrote; it starts the configured agent.
    #[schema(value_type = String, min_length = 1)]
    pub text: Value,
    /// What happens if a run of the thread is going; the server's
    /// `AGENTWIRE_DOUBLE_TEXTING` when absent.
    #[serde(default)]
    pub double_texting: Option<crate::config::DoubleTexting>,
}

/// The run a message started, or queued.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageAccepted {
    pub run_id: String,
    /// Whether it waits for the runs going in its thread (`enqueue`).
    pub queued: bool,
}

/// An event as stored and delivered (PROTOCOL §2).
#[derive(Debug, Serialize, ToSchema)]
pub struct EnvelopeSchema {
    /// Always `event`.
    #[serde(rename = "type")]
    pub frame_type: String,
    pub thread_id: String,
    pub run_id: String,
    pub seq: u64,
    pub event: String,
    pub event_id: Option<String>,
    /// RFC 3339 with milliseconds, UTC.
    pub ts: String,
    pub data: Value,
}

/// A page of a thread's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPage {
    pub events: Vec<EnvelopeSchema>,
    pub head_seq: u64,
}

/// `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// An error's code (PROTOCOL §3) and a human message.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// A dev-mode token.
#[derive(Debug, Serialize, ToSchema)]
pub struct DevToken {
    pub token: String,
    pub user: String,
    pub exp: u64,
}

/// A health or readiness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    pub status: String,
    /// `/readyz` on a shared engine started with `--allow-weak-durability`:
    /// how an acknowledged event could still be lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weak_durability: Option<Vec<String>>,
}
