//! WebSocket frames (PROTOCOL §4): what clients send, what the server answers.
//!
//! Events are serialized once, when they are appended, and fanned out as text;
//! [`encode_events`] joins already-encoded envelopes into an `event` or a
//! `batch` frame without parsing them again.

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;

/// A frame from a client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Subscribe {
        thread_id: String,
        #[serde(default)]
        after_seq: u64,
    },
    Unsubscribe {
        thread_id: String,
    },
    Ping,
    Auth {
        token: String,
    },
}

impl ClientFrame {
    /// Parses one text frame; the error message is fit to send back.
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("bad frame: {e}"))
    }
}

/// A control frame from the server (events travel as pre-encoded text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Subscribed {
        thread_id: String,
        head_seq: u64,
    },
    Unsubscribed {
        thread_id: String,
    },
    Pong,
    Authed {
        exp: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread_id: Option<String>,
    },
    Reset {
        thread_id: String,
        oldest_seq: u64,
    },
}

impl ServerFrame {
    /// An `error` frame.
    pub fn error(code: ErrorCode, message: impl Into<String>, thread_id: Option<&str>) -> Self {
        Self::Error { code, message: message.into(), thread_id: thread_id.map(str::to_owned) }
    }

    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| unreachable!("control frame serialization failed: {e}"))
    }
}

/// Joins already-encoded JSON values into a JSON array, `[a,b,…]`.
pub fn json_array<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::from("[");
    for (i, json) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(json);
    }
    out.push(']');
    out
}

/// Joins encoded envelopes into one frame: the envelope itself when there is
/// one, `{"type":"batch","events":[…]}` when there are several.
pub fn encode_events(encoded: &[&str]) -> String {
    match encoded {
        [one] => (*one).to_owned(),
        many => format!(r#"{{"type":"batch","events":{}}}"#, json_array(many.iter().copied())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn client_frames_parse() {
        assert_eq!(
            ClientFrame::parse(r#"{"type":"subscribe","thread_id":"thread_a","after_seq":3}"#).unwrap(),
            ClientFrame::Subscribe { thread_id: "thread_a".into(), after_seq: 3 }
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"subscribe","thread_id":"thread_a"}"#).unwrap(),
            ClientFrame::Subscribe { thread_id: "thread_a".into(), after_seq: 0 }
        );
        assert_eq!(ClientFrame::parse(r#"{"type":"ping"}"#).unwrap(), ClientFrame::Ping);
        for bad in [
            "",
            "null",
            "{}",
            r#"{"type":"dance"}"#,
            r#"{"type":"subscribe"}"#,
            r#"{"type":"subscribe","thread_id":"t","after_seq":-1}"#,
        ] {
            assert!(ClientFrame::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn server_frames_have_the_documented_shape() {
        let v: Value =
            serde_json::from_str(&ServerFrame::error(ErrorCode::Forbidden, "no", Some("thread_a")).to_json()).unwrap();
        assert_eq!(v, json!({"type":"error","code":"forbidden","message":"no","thread_id":"thread_a"}));
        let v: Value =
            serde_json::from_str(&ServerFrame::Reset { thread_id: "thread_a".into(), oldest_seq: 5 }.to_json())
                .unwrap();
        assert_eq!(v, json!({"type":"reset","thread_id":"thread_a","oldest_seq":5}));
        assert_eq!(ServerFrame::Pong.to_json(), r#"{"type":"pong"}"#);
    }

    #[test]
    fn batches_join_encoded_envelopes() {
        assert_eq!(encode_events(&[r#"{"seq":1}"#]), r#"{"seq":1}"#);
        assert_eq!(json_array([]), "[]");
        let v: Value = serde_json::from_str(&encode_events(&[r#"{"seq":1}"#, r#"{"seq":2}"#])).unwrap();
        assert_eq!(v, json!({"type":"batch","events":[{"seq":1},{"seq":2}]}));
    }
}
