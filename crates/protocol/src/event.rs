//! Event kinds and the validation of what publishers send (PROTOCOL §2).
//!
//! A publish body is parsed and checked here, before any state is touched:
//! an unknown event, a missing or mistyped required field, `user_message` from
//! a publisher or an empty list is a `400` and nothing is appended.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::EventError;

/// Longest `event_id` accepted.
pub const EVENT_ID_MAX: usize = 128;
/// Longest name or id inside an event's data (`agent_name`, `tool_name`,
/// `tool_call_id`, `message_id`, `code`), in bytes. Names are repeated in every
/// legacy frame, run view and dashboard row; free text is bounded by the body limit.
pub const NAME_MAX: usize = 256;
/// The data fields that hold names or ids, bounded by [`NAME_MAX`].
pub(crate) const NAME_FIELDS: [&str; 6] =
    ["agent_name", "tool_name", "tool_call_id", "message_id", "code", "request_id"];

/// What happened in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    AgentStarted,
    AgentThinking,
    ToolExecuting,
    ToolCompleted,
    AgentMessage,
    AgentCompleted,
    AgentError,
    UserMessage,
    InputRequested,
    InputReceived,
}

/// The codes an `agent_error` may carry.
pub const AGENT_ERROR_CODES: [&str; 4] = ["failed", "cancelled", "timeout", "worker_lost"];

impl EventKind {
    /// Every kind, in the order of PROTOCOL §2.
    pub const ALL: [EventKind; 10] = [
        Self::AgentStarted,
        Self::AgentThinking,
        Self::ToolExecuting,
        Self::ToolCompleted,
        Self::AgentMessage,
        Self::AgentCompleted,
        Self::AgentError,
        Self::UserMessage,
        Self::InputRequested,
        Self::InputReceived,
    ];

    /// The wire name, e.g. `tool_executing`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AgentStarted => "agent_started",
            Self::AgentThinking => "agent_thinking",
            Self::ToolExecuting => "tool_executing",
            Self::ToolCompleted => "tool_completed",
            Self::AgentMessage => "agent_message",
            Self::AgentCompleted => "agent_completed",
            Self::AgentError => "agent_error",
            Self::UserMessage => "user_message",
            Self::InputRequested => "input_requested",
            Self::InputReceived => "input_received",
        }
    }

    /// Looks a wire name up.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Events only the server appends (a user's words, a user's answers).
    pub fn is_server_only(self) -> bool {
        matches!(self, Self::UserMessage | Self::InputReceived)
    }

    /// `agent_completed` and `agent_error` end a run.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::AgentCompleted | Self::AgentError)
    }

    /// Required `data` fields; in every kind they are strings.
    fn required(self) -> &'static [&'static str] {
        match self {
            Self::AgentStarted => &["agent_name"],
            Self::AgentThinking => &["thought"],
            Self::ToolExecuting => &["tool_call_id", "tool_name"],
            Self::ToolCompleted => &["tool_call_id"],
            Self::AgentMessage => &["message_id", "delta"],
            Self::AgentCompleted => &[],
            Self::AgentError => &["code", "message"],
            Self::UserMessage => &["text"],
            Self::InputRequested => &["request_id", "kind", "prompt"],
            Self::InputReceived => &["request_id", "kind"],
        }
    }

    /// Checks the required fields of `data` for this kind.
    pub fn check_data(self, data: &Map<String, Value>) -> Result<(), EventError> {
        for &field in self.required() {
            if !data.get(field).is_some_and(Value::is_string) {
                return Err(EventError::Field { event: self.as_str(), field, expected: "a string" });
            }
        }
        for field in NAME_FIELDS {
            if data.get(field).and_then(Value::as_str).is_some_and(|v| v.len() > NAME_MAX) {
                return Err(EventError::TooLong { event: self.as_str(), field, max: NAME_MAX });
            }
        }
        if self == Self::AgentError
            && !data.get("code").and_then(Value::as_str).is_some_and(|c| AGENT_ERROR_CODES.contains(&c))
        {
            return Err(EventError::ErrorCode { event: self.as_str() });
        }
        if self == Self::InputRequested {
            crate::input::check_request(data)?;
        }
        Ok(())
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated event that is not yet numbered: what gets appended to a thread's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    pub kind: EventKind,
    pub data: Map<String, Value>,
    pub event_id: Option<String>,
}

impl NewEvent {
    /// An event built by the server or the in-process SDK. The caller vouches for
    /// the shape; [`NewEvent::validate`] is still what guards the append path.
    pub fn new(kind: EventKind, data: Map<String, Value>) -> Self {
        Self { kind, data, event_id: None }
    }

    /// `agent_error {code, message}`; `code` is one of [`AGENT_ERROR_CODES`].
    pub fn agent_error(code: &'static str, message: impl Into<String>) -> Self {
        let mut data = Map::new();
        data.insert("code".into(), Value::from(code));
        data.insert("message".into(), Value::from(message.into()));
        Self::new(EventKind::AgentError, data)
    }

    /// Sets the publisher's de-duplication id.
    pub fn with_event_id(mut self, event_id: impl Into<String>) -> Self {
        self.event_id = Some(event_id.into());
        self
    }

    /// Checks kind-specific required fields and the `event_id`. Redaction is the
    /// log's, so that every source gets it ([`crate::redact`]).
    pub fn validate(self) -> Result<Self, EventError> {
        if let Some(id) = &self.event_id
            && !(1..=EVENT_ID_MAX).contains(&id.len())
        {
            return Err(EventError::EventId);
        }
        self.kind.check_data(&self.data)?;
        Ok(self)
    }
}

/// How one event looks in a publish body.
#[derive(Debug, Deserialize)]
struct RawEvent {
    event: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    event_id: Option<String>,
}

/// A publish body: one event, or `{"events":[…]}`; on the publisher
/// WebSocket, with the run's id and the frame's `ref` beside it (ignored in a
/// request body).
#[derive(Debug, Deserialize)]
struct RawBody {
    #[serde(default, rename = "ref")]
    reference: Option<u64>,
    #[serde(default)]
    run_id: Option<String>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    event_id: Option<String>,
    #[serde(default)]
    events: Option<Vec<RawEvent>>,
    /// On the publisher WebSocket: a run to register, the body of `POST /v1/runs`.
    #[serde(default)]
    register: Option<Value>,
}

/// Options for [`parse_publish_body`].
#[derive(Debug, Clone, Copy)]
pub struct PublishLimits {
    /// Most events one body may carry.
    pub max_events: usize,
}

impl RawEvent {
    fn into_new_event(self) -> Result<NewEvent, EventError> {
        let kind = EventKind::from_name(&self.event).ok_or_else(|| EventError::UnknownEvent(self.event.clone()))?;
        if kind.is_server_only() {
            return Err(EventError::ServerOnly(kind.as_str()));
        }
        let data = match self.data {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map,
            Some(_) => return Err(EventError::DataNotObject),
        };
        NewEvent { kind, data, event_id: self.event_id }.validate()
    }
}

/// Parses and validates a publisher's body (PROTOCOL §3, `POST /v1/runs/{id}/events`).
pub fn parse_publish_body(body: &[u8], limits: PublishLimits) -> Result<Vec<NewEvent>, EventError> {
    let raw: RawBody = serde_json::from_slice(body).map_err(|e| EventError::Json(e.to_string()))?;
    body_events(raw, limits)
}

/// A frame of the publisher WebSocket (PROTOCOL §3.1).
#[derive(Debug)]
pub enum PublishFrame {
    /// Events of a run: a publish body with its `run_id`.
    Events { reference: Option<u64>, run_id: String, events: Vec<NewEvent> },
    /// A run to register: the body of `POST /v1/runs`, checked by whoever registers it.
    Register { reference: Option<u64>, body: Value },
}

/// Parses and validates a frame of the publisher WebSocket (PROTOCOL §3.1):
/// a publish body with `run_id` and an optional `ref` beside it, or
/// `{"ref","register":{…}}`. A refusal carries the frame's `ref` when it could
/// be read.
pub fn parse_publish_frame(frame: &[u8], limits: PublishLimits) -> Result<PublishFrame, (Option<u64>, EventError)> {
    let mut raw: RawBody = serde_json::from_slice(frame).map_err(|e| (None, EventError::Json(e.to_string())))?;
    let reference = raw.reference;
    if let Some(body) = raw.register.take() {
        let alone = raw.run_id.is_none() && raw.event.is_none() && raw.events.is_none() && raw.data.is_none();
        return if alone && raw.event_id.is_none() {
            Ok(PublishFrame::Register { reference, body })
        } else {
            Err((reference, EventError::RegisterAlone))
        };
    }
    let Some(run_id) = raw.run_id.take() else { return Err((reference, EventError::MissingRunId)) };
    let events = body_events(raw, limits).map_err(|e| (reference, e))?;
    Ok(PublishFrame::Events { reference, run_id, events })
}

/// The events of a publish body, checked.
fn body_events(raw: RawBody, limits: PublishLimits) -> Result<Vec<NewEvent>, EventError> {
    let raws = match (raw.event, raw.events) {
        (Some(event), None) => vec![RawEvent { event, data: raw.data, event_id: raw.event_id }],
        (None, Some(events)) if raw.data.is_none() && raw.event_id.is_none() => events,
        _ => return Err(EventError::Shape),
    };
    if raws.is_empty() {
        return Err(EventError::Empty);
    }
    if raws.len() > limits.max_events {
        return Err(EventError::TooMany { got: raws.len(), max: limits.max_events });
    }
    let single = raws.len() == 1;
    raws.into_iter()
        .enumerate()
        .map(|(index, raw)| {
            raw.into_new_event().map_err(|e| if single { e } else { EventError::At { index, source: Box::new(e) } })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: PublishLimits = PublishLimits { max_events: 10 };

    fn parse(v: Value) -> Result<Vec<NewEvent>, EventError> {
        parse_publish_body(v.to_string().as_bytes(), LIMITS)
    }

    #[test]
    fn a_publish_frame_is_a_body_with_its_run_and_ref() {
        let frame = json!({"ref": 7, "run_id": "run_a", "event": "agent_started", "data": {"agent_name": "a"}});
        let frames = |v: Value| parse_publish_frame(v.to_string().as_bytes(), LIMITS);
        let Ok(PublishFrame::Events { reference, run_id, events }) = frames(frame) else { panic!("events") };
        assert_eq!((reference, run_id.as_str(), events.len()), (Some(7), "run_a", 1));
        let batch = json!({"run_id": "run_a", "events": [{"event": "agent_thinking", "data": {"thought": "t"}}]});
        assert!(matches!(frames(batch), Ok(PublishFrame::Events { reference: None, .. })));
        // A registration is the body of POST /v1/runs, alone beside its ref.
        let register = json!({"ref": 3, "register": {"thread_id": "thread_a", "user_id": "u"}});
        let Ok(PublishFrame::Register { reference, body }) = frames(register) else { panic!("register") };
        assert_eq!((reference, &body["thread_id"]), (Some(3), &json!("thread_a")));
        let mixed = json!({"ref": 4, "run_id": "run_a", "register": {"thread_id": "thread_a", "user_id": "u"}});
        assert_eq!(frames(mixed).unwrap_err(), (Some(4), EventError::RegisterAlone));
        // Refusals keep the ref, so the publisher knows which frame it was.
        let no_run = json!({"ref": 8, "event": "agent_started", "data": {"agent_name": "a"}});
        let refused = parse_publish_frame(no_run.to_string().as_bytes(), LIMITS).unwrap_err();
        assert_eq!((refused.0, refused.1), (Some(8), EventError::MissingRunId));
        let bad = json!({"ref": 9, "run_id": "run_a", "event": "no_such_event"});
        assert_eq!(parse_publish_frame(bad.to_string().as_bytes(), LIMITS).unwrap_err().0, Some(9));
        assert_eq!(parse_publish_frame(b"{not json", LIMITS).unwrap_err().0, None);
    }

    #[test]
    fn single_and_batch_bodies() {
        let one = parse(json!({"event":"agent_started","data":{"agent_name":"a"},"event_id":"e1"})).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].event_id.as_deref(), Some("e1"));
        let many = parse(json!({"events":[
            {"event":"agent_thinking","data":{"thought":"hm"}},
            {"event":"agent_completed"}
        ]}))
        .unwrap();
        assert_eq!(
            many.iter().map(|e| e.kind).collect::<Vec<_>>(),
            [EventKind::AgentThinking, EventKind::AgentCompleted]
        );
        assert!(many[1].data.is_empty());
    }

    #[test]
    fn rejects_what_protocol_section_2_rejects() {
        let bad = [
            json!({"event":"agent_exploded","data":{}}),
            json!({"event":"user_message","data":{"text":"hi"}}),
            json!({"event":"input_received","data":{"request_id":"r","kind":"text","answer":{"text":"x"}}}),
            json!({"event":"input_requested","data":{"request_id":"r","kind":"text"}}),
            json!({"events":[]}),
            json!({"event":"agent_started","data":{}}),
            json!({"event":"agent_started","data":{"agent_name":7}}),
            json!({"event":"tool_executing","data":{"tool_name":"x"}}),
            json!({"event":"agent_message","data":{"message_id":"m","delta":1}}),
            json!({"event":"agent_error","data":{"code":"boom","message":"m"}}),
            json!({"event":"agent_thinking","data":"not an object"}),
            json!({"event":"agent_thinking","data":{"thought":"t"},"events":[]}),
            json!({"data":{}}),
            json!({"event":"agent_completed","event_id":""}),
            json!([1, 2]),
        ];
        for body in bad {
            let err = parse(body.clone()).expect_err(&body.to_string());
            assert_eq!(err.code(), crate::ErrorCode::BadRequest, "{body}: {err}");
        }
        let too_many = json!({"events": vec![json!({"event":"agent_completed"}); 11]});
        assert_eq!(parse(too_many).unwrap_err().code(), crate::ErrorCode::TooLarge);
        assert!(parse_publish_body(b"{not json", LIMITS).is_err());
    }

    #[test]
    fn batch_errors_name_the_index() {
        let err = parse(json!({"events":[{"event":"agent_completed"},{"event":"nope"}]})).unwrap_err();
        assert!(err.to_string().starts_with("event 1:"), "{err}");
    }
}
