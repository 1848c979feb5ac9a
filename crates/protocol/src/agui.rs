//! A run as AG-UI events (PROTOCOL §8): the mapping from agentwire's envelope
//! to the event stream AG-UI clients expect, kept pure so it is tested without
//! a server.
//!
//! | agentwire | AG-UI |
//! |---|---|
//! | (the run begins) | `RUN_STARTED` |
//! | `agent_thinking` | `REASONING_START`, `REASONING_MESSAGE_START`/`CONTENT`/`END`, `REASONING_END` |
//! | `tool_executing` | `TOOL_CALL_START`, `TOOL_CALL_ARGS` (the arguments as JSON), `TOOL_CALL_END` |
//! | `tool_completed` | `TOOL_CALL_RESULT` |
//! | `agent_message` | `TEXT_MESSAGE_START` (first delta of a message), `TEXT_MESSAGE_CONTENT` |
//! | `agent_completed` | `TEXT_MESSAGE_END` for open messages, `RUN_FINISHED` |
//! | `agent_error` | `TEXT_MESSAGE_END` for open messages, `RUN_ERROR` |

use serde_json::{Value, json};

use crate::envelope::Envelope;
use crate::event::EventKind;

/// One run's AG-UI stream: remembers which text messages are open.
#[derive(Debug, Clone)]
pub struct AguiStream {
    thread_id: String,
    run_id: String,
    open_messages: Vec<String>,
    ended: bool,
}

/// A value as text: strings as they are, `null` as nothing, anything else as JSON.
pub(crate) fn text_of(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl AguiStream {
    /// The stream of `run_id` in `thread_id`.
    pub fn new(thread_id: impl Into<String>, run_id: impl Into<String>) -> Self {
        Self { thread_id: thread_id.into(), run_id: run_id.into(), open_messages: Vec::new(), ended: false }
    }

    /// `RUN_STARTED`, the stream's first event.
    pub fn started(&self) -> Value {
        json!({ "type": "RUN_STARTED", "threadId": self.thread_id, "runId": self.run_id })
    }

    /// Whether `RUN_FINISHED` or `RUN_ERROR` has been produced.
    pub fn ended(&self) -> bool {
        self.ended
    }

    fn close_messages(&mut self, out: &mut Vec<Value>) {
        for id in self.open_messages.drain(..) {
            out.push(json!({ "type": "TEXT_MESSAGE_END", "messageId": id }));
        }
    }

    /// The AG-UI events for one of the run's events (none for events of other runs).
    pub fn encode(&mut self, e: &Envelope) -> Vec<Value> {
        let mut out = Vec::new();
        if self.ended || e.run_id.as_str() != self.run_id {
            return out;
        }
        let d = &e.data;
        let str_of = |key: &str| d.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
        match e.event {
            EventKind::AgentThinking => {
                let id = format!("reasoning_{}", e.seq);
                let thought = str_of("thought");
                out.push(json!({ "type": "REASONING_START", "messageId": id }));
                out.push(json!({ "type": "REASONING_MESSAGE_START", "messageId": id, "role": "reasoning" }));
                if !thought.is_empty() {
                    out.push(json!({ "type": "REASONING_MESSAGE_CONTENT", "messageId": id, "delta": thought }));
                }
                out.push(json!({ "type": "REASONING_MESSAGE_END", "messageId": id }));
                out.push(json!({ "type": "REASONING_END", "messageId": id }));
            }
            EventKind::ToolExecuting => {
                let id = str_of("tool_call_id");
                let args = d.get("args").filter(|a| !a.is_null()).map_or_else(|| "{}".to_owned(), Value::to_string);
                out.push(json!({ "type": "TOOL_CALL_START", "toolCallId": id, "toolCallName": str_of("tool_name") }));
                out.push(json!({ "type": "TOOL_CALL_ARGS", "toolCallId": id, "delta": args }));
                out.push(json!({ "type": "TOOL_CALL_END", "toolCallId": id }));
            }
            EventKind::ToolCompleted => {
                let id = str_of("tool_call_id");
                let content = match d.get("error").filter(|v| !v.is_null()) {
                    Some(error) => format!("error: {}", text_of(error)),
                    None => text_of(d.get("result").unwrap_or(&Value::Null)),
                };
                out.push(json!({
                    "type": "TOOL_CALL_RESULT",
                    "messageId": format!("result_{id}"),
                    "toolCallId": id,
                    "content": content,
                    "role": "tool",
                }));
            }
            EventKind::AgentMessage => {
                let id = str_of("message_id");
                let delta = str_of("delta");
                if !self.open_messages.contains(&id) {
                    out.push(json!({ "type": "TEXT_MESSAGE_START", "messageId": id, "role": "assistant" }));
                    self.open_messages.push(id.clone());
                }
                if !delta.is_empty() {
                    out.push(json!({ "type": "TEXT_MESSAGE_CONTENT", "messageId": id, "delta": delta }));
                }
            }
            EventKind::AgentCompleted => {
                self.close_messages(&mut out);
                let mut finished = json!({ "type": "RUN_FINISHED", "threadId": self.thread_id, "runId": self.run_id });
                if let Some(result) = d.get("result").filter(|r| !r.is_null()) {
                    finished["result"] = result.clone();
                }
                out.push(finished);
                self.ended = true;
            }
            EventKind::AgentError => {
                self.close_messages(&mut out);
                out.push(json!({ "type": "RUN_ERROR", "message": str_of("message"), "code": str_of("code") }));
                self.ended = true;
            }
            // Until the interrupt outcome maps them (issue 18), requests and answers
            // reach AG-UI clients as custom events, under their agentwire names.
            EventKind::InputRequested | EventKind::InputReceived => {
                out.push(json!({ "type": "CUSTOM", "name": e.event.as_str(), "value": d }));
            }
            EventKind::AgentStarted | EventKind::UserMessage => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(seq: u64, run: &str, event: EventKind, data: Value) -> Envelope {
        Envelope::sample("thread_ag", run, seq, event, data)
    }

    fn types(events: &[Value]) -> Vec<&str> {
        events.iter().map(|e| e["type"].as_str().unwrap()).collect()
    }

    #[test]
    fn a_run_maps_to_a_well_formed_ag_ui_stream() {
        let mut s = AguiStream::new("thread_ag", "r1");
        let mut all = vec![s.started()];
        for e in [
            env(1, "r1", EventKind::AgentStarted, json!({"agent_name":"demo"})),
            env(2, "r1", EventKind::AgentThinking, json!({"thought":"hm"})),
            env(3, "r1", EventKind::ToolExecuting, json!({"tool_call_id":"c1","tool_name":"calc","args":{"x":1}})),
            env(4, "other", EventKind::AgentThinking, json!({"thought":"not ours"})),
            env(5, "r1", EventKind::ToolCompleted, json!({"tool_call_id":"c1","result":2})),
            env(6, "r1", EventKind::AgentMessage, json!({"message_id":"m","delta":"two"})),
            env(7, "r1", EventKind::AgentMessage, json!({"message_id":"m","delta":"!"})),
            env(8, "r1", EventKind::AgentCompleted, json!({"result":{"answer":2}})),
        ] {
            all.extend(s.encode(&e));
        }
        assert_eq!(
            types(&all),
            [
                "RUN_STARTED",
                "REASONING_START",
                "REASONING_MESSAGE_START",
                "REASONING_MESSAGE_CONTENT",
                "REASONING_MESSAGE_END",
                "REASONING_END",
                "TOOL_CALL_START",
                "TOOL_CALL_ARGS",
                "TOOL_CALL_END",
                "TOOL_CALL_RESULT",
                "TEXT_MESSAGE_START",
                "TEXT_MESSAGE_CONTENT",
                "TEXT_MESSAGE_CONTENT",
                "TEXT_MESSAGE_END",
                "RUN_FINISHED"
            ]
        );
        assert_eq!(all[7]["delta"], r#"{"x":1}"#);
        assert_eq!(all[9]["content"], "2");
        assert_eq!(all[14]["result"], json!({"answer":2}));
        assert!(s.ended());
        assert!(s.encode(&env(9, "r1", EventKind::AgentThinking, json!({"thought":"late"}))).is_empty());
    }

    #[test]
    fn an_error_closes_open_messages_then_ends_the_run() {
        let mut s = AguiStream::new("thread_ag", "r1");
        s.encode(&env(1, "r1", EventKind::AgentMessage, json!({"message_id":"m","delta":"par"})));
        let end = s.encode(&env(2, "r1", EventKind::AgentError, json!({"code":"failed","message":"boom"})));
        assert_eq!(types(&end), ["TEXT_MESSAGE_END", "RUN_ERROR"]);
        assert_eq!(end[1]["message"], "boom");
    }
}
