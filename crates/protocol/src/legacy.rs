//! The seed system's wire format (PROTOCOL §8, `?format=legacy`), for frontends
//! written before agentwire: `{type, run_id, agent_name, timestamp, thread_id,
//! seq, payload}` with the payload field names that frontend reads.
//!
//! The envelope does not repeat the agent's name or a completed tool's name, so
//! the caller passes what it remembers of the run (`agent_name`) and of the
//! call (`tool_name`).

use serde_json::{Map, Value, json};

use crate::envelope::Envelope;
use crate::event::EventKind;

/// What the seed format needs beyond the envelope.
#[derive(Debug, Clone, Copy, Default)]
pub struct LegacyContext<'a> {
    pub agent_name: Option<&'a str>,
    /// For `tool_completed`: the name its `tool_executing` gave.
    pub tool_name: Option<&'a str>,
}

fn get<'a>(data: &'a Map<String, Value>, key: &str) -> &'a Value {
    data.get(key).unwrap_or(&Value::Null)
}

/// The event in the seed format.
pub fn encode(envelope: &Envelope, cx: LegacyContext<'_>) -> Value {
    let d = &envelope.data;
    let agent = cx.agent_name.unwrap_or("agent");
    let text = |key: &str| get(d, key).as_str().unwrap_or_default().to_owned();
    let (status, message, mut payload) = match envelope.event {
        EventKind::AgentStarted => ("started", format!("{agent} started"), json!({ "context": get(d, "input") })),
        EventKind::AgentThinking => (
            "thinking",
            format!("{agent} is thinking"),
            json!({
                "reasoning": get(d, "thought"),
                "step_number": get(d, "step"),
                "progress_percentage": get(d, "progress_percentage"),
            }),
        ),
        EventKind::ToolExecuting => {
            let tool = text("tool_name");
            (
                "executing",
                format!("{agent} is using {tool}"),
                json!({ "tool_name": tool, "parameters": get(d, "args") }),
            )
        }
        EventKind::ToolCompleted => {
            let tool = cx.tool_name.unwrap_or("tool");
            let failed = !get(d, "error").is_null();
            let mut p = json!({
                "tool_name": tool,
                "result": get(d, "result"),
                "execution_time_ms": get(d, "duration_ms"),
            });
            if failed {
                p["error_message"] = get(d, "error").clone();
            }
            let (status, message) =
                if failed { ("failed", format!("{tool} failed")) } else { ("completed", format!("{tool} finished")) };
            (status, message, p)
        }
        EventKind::AgentMessage => {
            ("streaming", text("delta"), json!({ "message_id": get(d, "message_id"), "delta": get(d, "delta") }))
        }
        EventKind::AgentCompleted => (
            "completed",
            format!("{agent} completed"),
            json!({ "result": get(d, "result"), "execution_time_ms": get(d, "duration_ms") }),
        ),
        EventKind::AgentError => (
            "error",
            format!("{agent} failed: {}", text("message")),
            json!({
                "error_message": get(d, "message"),
                "error_code": get(d, "code"),
                // The seed's frontend reads `error_context.error_type`; `{}` when none was given, as the seed sent.
                "error_context": d.get("error_context").filter(|c| c.is_object()).cloned().unwrap_or_else(|| json!({})),
            }),
        ),
        EventKind::UserMessage => ("received", text("text"), json!({ "text": get(d, "text") })),
        EventKind::InputRequested => (
            "waiting",
            text("prompt"),
            json!({
                "request_id": get(d, "request_id"),
                "input_type": get(d, "kind"),
                "prompt": get(d, "prompt"),
                "tool_name": get(d, "tool_name"),
                "parameters": get(d, "arguments"),
                "options": get(d, "options"),
                "timeout_ms": get(d, "timeout_ms"),
                "expires_at": get(d, "expires_at"),
            }),
        ),
        EventKind::InputReceived => {
            let timed_out = get(d, "source") == "timeout";
            let status = if timed_out { "timed_out" } else { "answered" };
            let message = if timed_out { "no answer in time" } else { "answered" };
            let p = json!({
                "request_id": get(d, "request_id"),
                "input_type": get(d, "kind"),
                "answer": get(d, "answer"),
                "user_id": get(d, "user_id"),
            });
            (status, message.to_owned(), p)
        }
    };
    payload["status"] = Value::from(status);
    payload["message"] = Value::from(message);
    json!({
        "type": envelope.event,
        "run_id": envelope.run_id,
        "agent_name": cx.agent_name,
        "timestamp": envelope.ts,
        "thread_id": envelope.thread_id,
        "seq": envelope.seq,
        "payload": payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EnvelopeType, RunId, ThreadId, Timestamp};

    fn envelope(event: EventKind, data: Value) -> Envelope {
        Envelope {
            frame_type: EnvelopeType::Event,
            thread_id: ThreadId::parse("thread_old").unwrap(),
            run_id: RunId::parse("run_thread_old_1").unwrap(),
            seq: 4,
            event,
            event_id: None,
            ts: Timestamp(0),
            data: data.as_object().cloned().unwrap(),
        }
    }

    #[test]
    fn events_take_the_seed_shape() {
        let cx = LegacyContext { agent_name: Some("triage"), tool_name: Some("search") };
        let thinking = encode(&envelope(EventKind::AgentThinking, json!({"thought":"hm","step":2})), cx);
        assert_eq!(
            thinking,
            json!({"type":"agent_thinking","run_id":"run_thread_old_1","agent_name":"triage",
                "timestamp":"1970-01-01T00:00:00.000Z","thread_id":"thread_old","seq":4,
                "payload":{"reasoning":"hm","step_number":2,"progress_percentage":null,"status":"thinking",
                    "message":"triage is thinking"}})
        );
        let done =
            encode(&envelope(EventKind::ToolCompleted, json!({"tool_call_id":"c","result":[1],"duration_ms":7})), cx);
        assert_eq!(
            done["payload"],
            json!({"tool_name":"search","result":[1],"execution_time_ms":7,"status":"completed","message":"search finished"})
        );
        let failed = encode(&envelope(EventKind::AgentError, json!({"code":"failed","message":"boom"})), cx);
        assert_eq!(failed["payload"]["error_message"], "boom");
        assert_eq!(failed["payload"]["error_context"], json!({}));
        let typed = json!({"code":"failed","message":"boom","error_context":{"error_type":"Timeout"}});
        assert_eq!(
            encode(&envelope(EventKind::AgentError, typed), cx)["payload"]["error_context"]["error_type"],
            "Timeout"
        );
        let progress = json!({"thought":"hm","progress_percentage":40});
        assert_eq!(encode(&envelope(EventKind::AgentThinking, progress), cx)["payload"]["progress_percentage"], 40);
        let exec = encode(
            &envelope(EventKind::ToolExecuting, json!({"tool_call_id":"c","tool_name":"search","args":{"q":1}})),
            cx,
        );
        assert_eq!(exec["payload"]["parameters"], json!({"q":1}));
        let asked = json!({"request_id":"r1","kind":"approval","prompt":"Send it?","tool_name":"send_email",
            "arguments":{"to":"bob"},"timeout_ms":60000,"expires_at":"1970-01-01T00:01:00.000Z"});
        let asked = encode(&envelope(EventKind::InputRequested, asked), cx);
        assert_eq!(asked["type"], "input_requested");
        assert_eq!(
            asked["payload"],
            json!({"request_id":"r1","input_type":"approval","prompt":"Send it?","tool_name":"send_email",
                "parameters":{"to":"bob"},"options":null,"timeout_ms":60000,"expires_at":"1970-01-01T00:01:00.000Z",
                "status":"waiting","message":"Send it?"})
        );
        let lapsed = json!({"request_id":"r1","kind":"approval","answer":{"approved":false},"source":"timeout"});
        let lapsed = encode(&envelope(EventKind::InputReceived, lapsed), cx);
        assert_eq!(
            (&lapsed["payload"]["status"], &lapsed["payload"]["answer"]),
            (&json!("timed_out"), &json!({"approved":false}))
        );
    }
}
