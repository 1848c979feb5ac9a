//! Input requests: an agent asks its user and waits for the answer (PROTOCOL §2.1).
//!
//! An agent publishes `input_requested` (an approval of a tool call, a line of
//! text, or one of a few choices); the thread's owner answers once, and the
//! server appends the answer as `input_received` (publishers cannot). A request
//! that nobody answers in time is answered by the server with the request's
//! default, and a run's terminal event closes the requests still open.
//!
//! Everything here is pure: the shape of a request, the answer each kind
//! accepts, and the `input_received` events the log appends. The log keeps the
//! open requests in the run's [`crate::RunLifecycle`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::envelope::Timestamp;
use crate::error::EventError;
use crate::event::{EventKind, NAME_MAX, NewEvent};
use crate::ids::UserId;

/// Most options one `choice` request offers.
pub const MAX_OPTIONS: usize = 32;
/// Longest default answer of a `text` request, in bytes.
pub const MAX_TEXT_DEFAULT: usize = 4096;
/// Requests one run may have open at once.
pub const MAX_OPEN_INPUTS: usize = 16;
/// Closed requests a run remembers (for `409` on a second answer, and for a
/// publisher that asks for an answer it missed): the newest.
pub const CLOSED_INPUTS_KEPT: usize = 64;

/// What the user is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// Yes or no to a tool call: `{"approved": bool, "message"?: string}`.
    Approval,
    /// A line of text: `{"text": string}`.
    Text,
    /// One of the request's options: `{"choice": string}`.
    Choice,
}

impl InputKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approval => "approval",
            Self::Text => "text",
            Self::Choice => "choice",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Self::Approval, Self::Text, Self::Choice].into_iter().find(|k| k.as_str() == name)
    }
}

/// How long requests wait by default and at most, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputTimeouts {
    pub default_ms: u64,
    pub max_ms: u64,
}

impl Default for InputTimeouts {
    fn default() -> Self {
        Self { default_ms: 10 * 60 * 1000, max_ms: 24 * 3600 * 1000 }
    }
}

/// An answer that does not fit its request: `400`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("an approval is answered with {{\"approved\": true|false}}")]
    Approval,
    #[error("a text request is answered with {{\"text\": \"…\"}}")]
    Text,
    #[error("a choice is answered with {{\"choice\": …}}, one of {0:?}")]
    Choice(Vec<String>),
    #[error("\"message\" must be a string")]
    Message,
}

/// What the rules keep of an open request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenInput {
    pub kind: InputKind,
    /// When the server answers it with `default` (milliseconds since the epoch).
    pub expires_ms: i64,
    /// A `choice`'s options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// The answer taken on the timeout; `null` when the request has none.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub default: Value,
}

/// A request no longer open, remembered for a while.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedInput {
    pub request_id: String,
    /// The `seq` of its `input_received`; `None` when the run ended first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_seq: Option<u64>,
}

fn field_error(field: &'static str, expected: &'static str) -> EventError {
    EventError::Field { event: EventKind::InputRequested.as_str(), field, expected }
}

/// Checks the data of an `input_requested` beyond its required strings.
pub(crate) fn check_request(data: &Map<String, Value>) -> Result<(), EventError> {
    let kind = data.get("kind").and_then(Value::as_str).and_then(InputKind::from_name);
    let Some(kind) = kind else { return Err(field_error("kind", "one of approval, text, choice")) };
    if let Some(timeout) = data.get("timeout_ms")
        && timeout.as_u64().is_none_or(|t| t == 0)
    {
        return Err(field_error("timeout_ms", "a positive integer"));
    }
    let default = data.get("default").filter(|v| !v.is_null());
    match kind {
        InputKind::Approval => {
            if !data.get("tool_name").is_some_and(Value::is_string) {
                return Err(field_error("tool_name", "a string"));
            }
            if default.is_some_and(|v| !v.is_boolean()) {
                return Err(field_error("default", "true or false"));
            }
        }
        InputKind::Text => {
            if let Some(text) = default {
                let text = text.as_str().ok_or_else(|| field_error("default", "a string"))?;
                if text.len() > MAX_TEXT_DEFAULT {
                    let event = EventKind::InputRequested.as_str();
                    return Err(EventError::TooLong { event, field: "default", max: MAX_TEXT_DEFAULT });
                }
            }
        }
        InputKind::Choice => {
            let options = options(data).ok_or_else(|| field_error("options", "1 to 32 distinct strings"))?;
            let listed = |v: &Value| v.as_str().is_some_and(|c| options.iter().any(|o| o == c));
            if default.is_some_and(|v| !listed(v)) {
                return Err(field_error("default", "one of the options"));
            }
        }
    }
    Ok(())
}

/// A `choice`'s options, when they are 1 to [`MAX_OPTIONS`] distinct names.
fn options(data: &Map<String, Value>) -> Option<Vec<String>> {
    let list = data.get("options")?.as_array()?;
    if list.is_empty() || list.len() > MAX_OPTIONS {
        return None;
    }
    let mut options: Vec<String> = Vec::with_capacity(list.len());
    for option in list {
        let option = option.as_str().filter(|o| o.len() <= NAME_MAX)?;
        if options.iter().any(|o| o == option) {
            return None;
        }
        options.push(option.to_owned());
    }
    Some(options)
}

/// Settles a request's timeout as it is stored: `timeout_ms` within `timeouts`
/// (the default when absent) and `expires_at`, `now` plus that. The server
/// stamps every `input_requested` this way, so whoever watches can show when it
/// lapses and every node agrees when that is.
pub fn stamp_expiry(data: &mut Map<String, Value>, now: Timestamp, timeouts: InputTimeouts) {
    let asked = data.get("timeout_ms").and_then(Value::as_u64).unwrap_or(timeouts.default_ms);
    let timeout = asked.clamp(1, timeouts.max_ms.max(1));
    let expires = Timestamp(now.millis().saturating_add(i64::try_from(timeout).unwrap_or(i64::MAX)));
    data.insert("timeout_ms".into(), Value::from(timeout));
    data.insert("expires_at".into(), Value::from(expires.to_string()));
}

impl OpenInput {
    /// What the rules keep of a checked `input_requested`'s data. A request
    /// stored without `expires_at` (never by this server) does not lapse.
    pub fn from_request(data: &Map<String, Value>) -> Self {
        let kind = data.get("kind").and_then(Value::as_str).and_then(InputKind::from_name).unwrap_or(InputKind::Text);
        let expires_ms = data
            .get("expires_at")
            .and_then(|v| serde_json::from_value::<Timestamp>(v.clone()).ok())
            .map_or(i64::MAX, |t| t.millis());
        let default = data.get("default").cloned().unwrap_or(Value::Null);
        let default = match kind {
            InputKind::Approval => json!({ "approved": default.as_bool().unwrap_or(false) }),
            InputKind::Text if default.is_string() => json!({ "text": default }),
            InputKind::Choice if default.is_string() => json!({ "choice": default }),
            InputKind::Text | InputKind::Choice => Value::Null,
        };
        let options = if kind == InputKind::Choice { options(data).unwrap_or_default() } else { Vec::new() };
        Self { kind, expires_ms, options, default }
    }

    /// The user's `answer`, checked against the request and kept to the fields
    /// its kind defines.
    pub fn check_answer(&self, answer: &Value) -> Result<Value, AnswerError> {
        let message = match answer.get("message") {
            None | Some(Value::Null) => None,
            Some(Value::String(m)) => Some(m.clone()),
            Some(_) => return Err(AnswerError::Message),
        };
        let mut checked = match self.kind {
            InputKind::Approval => {
                let approved = answer.get("approved").and_then(Value::as_bool).ok_or(AnswerError::Approval)?;
                json!({ "approved": approved })
            }
            InputKind::Text => {
                let text = answer.get("text").and_then(Value::as_str).ok_or(AnswerError::Text)?;
                json!({ "text": text })
            }
            InputKind::Choice => {
                let choice = answer.get("choice").and_then(Value::as_str);
                match choice.filter(|c| self.options.iter().any(|o| o == c)) {
                    Some(choice) => json!({ "choice": choice }),
                    None => return Err(AnswerError::Choice(self.options.clone())),
                }
            }
        };
        if let Some(message) = message {
            checked["message"] = Value::String(message);
        }
        Ok(checked)
    }

    fn received(&self, request_id: &str, answer: Value, source: &str) -> NewEvent {
        let data = json!({
            "request_id": request_id,
            "kind": self.kind.as_str(),
            "answer": answer,
            "source": source,
        });
        NewEvent::new(EventKind::InputReceived, data.as_object().cloned().unwrap_or_default())
    }

    /// The `input_received` that answers the request with `user`'s checked answer.
    pub fn answered(&self, request_id: &str, answer: &Value, user: &UserId) -> Result<NewEvent, AnswerError> {
        let mut event = self.received(request_id, self.check_answer(answer)?, "user");
        event.data.insert("user_id".into(), Value::from(user.as_str()));
        Ok(event)
    }

    /// The `input_received` for `user` declining to answer (AG-UI's `cancelled`
    /// resume): an approval is denied, a text or a choice takes its default.
    pub fn declined(&self, request_id: &str, user: &UserId) -> NewEvent {
        let answer = match self.kind {
            InputKind::Approval => json!({ "approved": false }),
            InputKind::Text | InputKind::Choice => self.default.clone(),
        };
        let mut event = self.received(request_id, answer, "user");
        event.data.insert("user_id".into(), Value::from(user.as_str()));
        event.data.insert("declined".into(), Value::Bool(true));
        event
    }

    /// The `input_received` the server appends when the request lapses: its default.
    pub fn timed_out(&self, request_id: &str) -> NewEvent {
        self.received(request_id, self.default.clone(), "timeout")
    }

    /// Whether the request has lapsed at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_ms <= now_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn requests_are_checked_by_kind() {
        let ok = [
            json!({"request_id":"r","kind":"approval","prompt":"send?","tool_name":"send_email","arguments":{"to":"x"}}),
            json!({"request_id":"r","kind":"approval","prompt":"p","tool_name":"t","default":true,"timeout_ms":5}),
            json!({"request_id":"r","kind":"text","prompt":"which city?","default":"Paris"}),
            json!({"request_id":"r","kind":"choice","prompt":"p","options":["a","b"],"default":"b"}),
        ];
        for v in ok {
            assert_eq!(check_request(&data(v.clone())), Ok(()), "{v}");
        }
        let bad = [
            json!({"request_id":"r","kind":"vote","prompt":"p"}),
            json!({"request_id":"r","kind":"approval","prompt":"p"}),
            json!({"request_id":"r","kind":"approval","prompt":"p","tool_name":"t","default":"yes"}),
            json!({"request_id":"r","kind":"text","prompt":"p","default":7}),
            json!({"request_id":"r","kind":"text","prompt":"p","timeout_ms":0}),
            json!({"request_id":"r","kind":"text","prompt":"p","timeout_ms":"5"}),
            json!({"request_id":"r","kind":"choice","prompt":"p"}),
            json!({"request_id":"r","kind":"choice","prompt":"p","options":[]}),
            json!({"request_id":"r","kind":"choice","prompt":"p","options":["a","a"]}),
            json!({"request_id":"r","kind":"choice","prompt":"p","options":["a",1]}),
            json!({"request_id":"r","kind":"choice","prompt":"p","options":["a"],"default":"c"}),
            json!({"request_id":"r","kind":"text","prompt":"p","default":"x".repeat(MAX_TEXT_DEFAULT + 1)}),
        ];
        for v in bad {
            assert!(check_request(&data(v.clone())).is_err(), "{v}");
        }
        let many: Vec<String> = (0..=MAX_OPTIONS).map(|i| i.to_string()).collect();
        assert!(check_request(&data(json!({"kind":"choice","options":many}))).is_err());
    }

    #[test]
    fn the_server_settles_the_timeout_within_its_bounds() {
        let timeouts = InputTimeouts { default_ms: 1000, max_ms: 5000 };
        let mut asked = data(json!({"timeout_ms": 999_999}));
        stamp_expiry(&mut asked, Timestamp(10_000), timeouts);
        assert_eq!(asked["timeout_ms"], json!(5000));
        assert_eq!(asked["expires_at"], json!(Timestamp(15_000).to_string()));
        let mut unsaid = Map::new();
        stamp_expiry(&mut unsaid, Timestamp(10_000), timeouts);
        assert_eq!(OpenInput::from_request(&unsaid).expires_ms, 11_000);
    }

    #[test]
    fn answers_fit_their_kind_and_defaults_answer_on_the_timeout() {
        let approval = OpenInput::from_request(&data(json!({"kind":"approval","tool_name":"t"})));
        assert_eq!(approval.check_answer(&json!({"approved":true,"extra":1})), Ok(json!({"approved":true})));
        assert_eq!(approval.check_answer(&json!({"approved":"yes"})), Err(AnswerError::Approval));
        assert_eq!(approval.check_answer(&json!({"approved":false,"message":3})), Err(AnswerError::Message));
        assert_eq!(approval.timed_out("r").data["answer"], json!({"approved": false}), "approval defaults to deny");

        let choice = OpenInput::from_request(&data(json!({"kind":"choice","options":["a","b"],"default":"a"})));
        assert_eq!(
            choice.check_answer(&json!({"choice":"b","message":"why"})),
            Ok(json!({"choice":"b","message":"why"}))
        );
        assert!(matches!(choice.check_answer(&json!({"choice":"c"})), Err(AnswerError::Choice(_))));
        assert!(choice.check_answer(&json!({"text":"a"})).is_err());
        assert_eq!(choice.timed_out("r").data["answer"], json!({"choice":"a"}));

        let text = OpenInput::from_request(&data(json!({"kind":"text"})));
        assert!(text.check_answer(&json!({"approved":true})).is_err());
        let user = UserId::parse("alice").unwrap();
        let answered = text.answered("r1", &json!({"text":"Paris"}), &user).unwrap();
        assert_eq!(answered.kind, EventKind::InputReceived);
        assert_eq!(
            Value::Object(answered.data),
            json!({"request_id":"r1","kind":"text","answer":{"text":"Paris"},"source":"user","user_id":"alice"})
        );
        let declined = approval.declined("r1", &user);
        assert_eq!((&declined.data["answer"], &declined.data["declined"]), (&json!({"approved": false}), &json!(true)));
        assert_eq!(choice.declined("r2", &user).data["answer"], json!({"choice": "a"}));
        let lapsed = text.timed_out("r1");
        assert_eq!((&lapsed.data["answer"], &lapsed.data["source"]), (&Value::Null, &json!("timeout")));
        assert!(!text.expired(0) && text.expires_ms == i64::MAX);
    }
}
