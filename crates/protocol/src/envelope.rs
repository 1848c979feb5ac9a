//! The event envelope: how every stored event looks on every transport.
//!
//! ```json
//! {"type":"event","thread_id":"thread_abc123","run_id":"run_thread_abc123_1f2e3d4c",
//!  "seq":17,"event":"tool_executing","event_id":"e-42","ts":"2026-11-25T10:00:00.123Z",
//!  "data":{"tool_call_id":"call_1","tool_name":"search","args":{"q":"rust"}}}
//! ```

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::event::EventKind;
use crate::ids::{RunId, ThreadId};

/// Server time of an append, in milliseconds since the Unix epoch; on the wire
/// RFC 3339 with milliseconds, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Self(Utc::now().timestamp_millis())
    }

    /// Milliseconds since the Unix epoch.
    pub fn millis(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match DateTime::<Utc>::from_timestamp_millis(self.0) {
            Some(t) => f.write_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true)),
            None => write!(f, "invalid-timestamp({})", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s).map(|t| Self(t.timestamp_millis())).map_err(serde::de::Error::custom)
    }
}

/// The literal `"event"` in an envelope's `type` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvelopeType {
    #[default]
    Event,
}

/// A numbered event of a thread, exactly as clients receive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(rename = "type", default)]
    pub frame_type: EnvelopeType,
    pub thread_id: ThreadId,
    pub run_id: RunId,
    pub seq: u64,
    pub event: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub ts: Timestamp,
    pub data: Map<String, Value>,
}

impl Envelope {
    /// An envelope for the format encoders' tests: `data` must be an object.
    #[cfg(test)]
    pub(crate) fn sample(thread: &str, run: &str, seq: u64, event: EventKind, data: Value) -> Self {
        Self {
            frame_type: EnvelopeType::Event,
            thread_id: ThreadId::parse(thread).expect("a thread id"),
            run_id: RunId::parse(run).expect("a run id"),
            seq,
            event,
            event_id: None,
            ts: Timestamp(0),
            data: data.as_object().cloned().expect("an object"),
        }
    }

    /// The envelope as one line of JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain maps, strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| unreachable!("envelope serialization failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn envelope_round_trips_in_the_documented_shape() {
        let env = Envelope {
            frame_type: EnvelopeType::Event,
            thread_id: ThreadId::parse("thread_abc123").unwrap(),
            run_id: RunId::parse("run_thread_abc123_1f2e3d4c").unwrap(),
            seq: 17,
            event: EventKind::ToolExecuting,
            event_id: Some("e-42".into()),
            ts: Timestamp(1_795_600_800_123),
            data: json!({"tool_call_id":"call_1","tool_name":"search","args":{"q":"rust"}})
                .as_object()
                .cloned()
                .unwrap(),
        };
        let v: Value = serde_json::from_str(&env.to_json()).unwrap();
        assert_eq!(
            v,
            json!({"type":"event","thread_id":"thread_abc123","run_id":"run_thread_abc123_1f2e3d4c",
                "seq":17,"event":"tool_executing","event_id":"e-42","ts":"2026-11-25T10:00:00.123Z",
                "data":{"tool_call_id":"call_1","tool_name":"search","args":{"q":"rust"}}})
        );
        let back: Envelope = serde_json::from_value(v).unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn timestamps_always_have_milliseconds() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000Z");
    }
}
