//! The Vercel AI SDK's UI message stream (PROTOCOL §8): what `useChat` reads.
//!
//! One run becomes one assistant message: `start` (its `messageId` is the run
//! id), then for each of the run's events the chunks the SDK folds into the
//! message's parts, then `finish` (or `error`). The transport sends each
//! chunk as one SSE `data:` line and ends with `data: [DONE]`.
//!
//! | event | chunks |
//! |---|---|
//! | `agent_thinking` | `reasoning-start`, `reasoning-delta`, `reasoning-end` |
//! | `agent_message` | `text-start` (first delta of a `message_id`), `text-delta` |
//! | `tool_executing` | `tool-input-available` (a dynamic tool: the page need not know it) |
//! | `tool_completed` | `tool-output-available`, or `tool-output-error` with its `error` |
//! | `agent_completed` | `text-end` for open texts, `finish` |
//! | `agent_error` | `text-end` for open texts, `error` with its message |

use serde_json::{Value, json};

use crate::agui::text_of;
use crate::envelope::Envelope;
use crate::event::EventKind;
use crate::open_ids::{OpenIds, Opened};

/// The value of the `x-vercel-ai-ui-message-stream` header.
pub const UI_MESSAGE_STREAM_VERSION: &str = "v1";

/// One run's UI message stream: remembers which texts are open.
#[derive(Debug, Clone)]
pub struct UiMessageStream {
    run_id: String,
    open_texts: OpenIds,
    ended: bool,
}

impl UiMessageStream {
    /// The stream of `run_id`.
    pub fn new(run_id: impl Into<String>) -> Self {
        Self { run_id: run_id.into(), open_texts: OpenIds::default(), ended: false }
    }

    /// `start`, the stream's first chunk: the assistant message is the run.
    pub fn started(&self) -> Value {
        json!({ "type": "start", "messageId": self.run_id })
    }

    /// Whether `finish` or `error` has been produced.
    pub fn ended(&self) -> bool {
        self.ended
    }

    fn close_texts(&mut self, out: &mut Vec<Value>) {
        for id in self.open_texts.close_all() {
            out.push(json!({ "type": "text-end", "id": id }));
        }
    }

    /// The chunks for one of the run's events (none for events of other runs).
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
                out.push(json!({ "type": "reasoning-start", "id": id }));
                out.push(json!({ "type": "reasoning-delta", "id": id, "delta": str_of("thought") }));
                out.push(json!({ "type": "reasoning-end", "id": id }));
            }
            EventKind::AgentMessage => {
                let id = str_of("message_id");
                if let Opened::New { closed } = self.open_texts.open(&id) {
                    if let Some(oldest) = closed {
                        out.push(json!({ "type": "text-end", "id": oldest }));
                    }
                    out.push(json!({ "type": "text-start", "id": id }));
                }
                out.push(json!({ "type": "text-delta", "id": id, "delta": str_of("delta") }));
            }
            EventKind::ToolExecuting => {
                let input = d.get("args").filter(|a| !a.is_null()).cloned().unwrap_or_else(|| json!({}));
                out.push(json!({
                    "type": "tool-input-available",
                    "toolCallId": str_of("tool_call_id"),
                    "toolName": str_of("tool_name"),
                    "input": input,
                    "dynamic": true,
                }));
            }
            EventKind::ToolCompleted => {
                let id = str_of("tool_call_id");
                match d.get("error").filter(|v| !v.is_null()) {
                    Some(error) => {
                        out.push(json!({ "type": "tool-output-error", "toolCallId": id, "errorText": text_of(error), "dynamic": true }));
                    }
                    None => {
                        let output = d.get("result").cloned().unwrap_or(Value::Null);
                        out.push(json!({ "type": "tool-output-available", "toolCallId": id, "output": output, "dynamic": true }));
                    }
                }
            }
            EventKind::AgentCompleted => {
                self.close_texts(&mut out);
                out.push(json!({ "type": "finish" }));
                self.ended = true;
            }
            EventKind::AgentError => {
                self.close_texts(&mut out);
                let message = str_of("message");
                let text = if message.is_empty() { str_of("code") } else { message };
                out.push(json!({ "type": "error", "errorText": text }));
                self.ended = true;
            }
            // A data part per request, its `id` the request's: the answer replaces the question.
            EventKind::InputRequested => {
                let mut data = d.clone();
                data.insert("status".into(), Value::from("open"));
                out.push(json!({ "type": "data-input", "id": str_of("request_id"), "data": data }));
            }
            EventKind::InputReceived => {
                let mut data = d.clone();
                let status = if str_of("source") == "timeout" { "timed_out" } else { "answered" };
                data.insert("status".into(), Value::from(status));
                out.push(json!({ "type": "data-input", "id": str_of("request_id"), "data": data }));
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
        Envelope::sample("thread_ui", run, seq, event, data)
    }

    fn types(chunks: &[Value]) -> Vec<&str> {
        chunks.iter().map(|c| c["type"].as_str().unwrap()).collect()
    }

    #[test]
    fn a_run_becomes_one_assistant_message_in_the_sdk_chunks() {
        let mut s = UiMessageStream::new("run_a");
        assert_eq!(s.started(), json!({"type":"start","messageId":"run_a"}));
        let run = [
            env(1, "run_a", EventKind::AgentStarted, json!({"agent_name":"demo"})),
            env(2, "run_a", EventKind::AgentThinking, json!({"thought":"adding"})),
            env(3, "run_a", EventKind::ToolExecuting, json!({"tool_call_id":"c1","tool_name":"calc","args":{"x":1}})),
            env(4, "run_b", EventKind::AgentMessage, json!({"message_id":"m9","delta":"another run"})),
            env(5, "run_a", EventKind::ToolCompleted, json!({"tool_call_id":"c1","result":2})),
            env(6, "run_a", EventKind::ToolExecuting, json!({"tool_call_id":"c2","tool_name":"web"})),
            env(7, "run_a", EventKind::ToolCompleted, json!({"tool_call_id":"c2","error":"offline"})),
            env(8, "run_a", EventKind::AgentMessage, json!({"message_id":"m1","delta":"It is "})),
            env(9, "run_a", EventKind::AgentMessage, json!({"message_id":"m1","delta":"2."})),
            env(10, "run_a", EventKind::AgentCompleted, json!({"result":2})),
            env(11, "run_a", EventKind::AgentMessage, json!({"message_id":"m1","delta":"after the end"})),
        ];
        let chunks: Vec<Value> = run.iter().flat_map(|e| s.encode(e)).collect();
        assert_eq!(
            types(&chunks),
            [
                "reasoning-start",
                "reasoning-delta",
                "reasoning-end",
                "tool-input-available",
                "tool-output-available",
                "tool-input-available",
                "tool-output-error",
                "text-start",
                "text-delta",
                "text-delta",
                "text-end",
                "finish"
            ]
        );
        assert_eq!(chunks[1], json!({"type":"reasoning-delta","id":"reasoning_2","delta":"adding"}));
        assert_eq!(
            chunks[3],
            json!({"type":"tool-input-available","toolCallId":"c1","toolName":"calc","input":{"x":1},"dynamic":true})
        );
        assert_eq!(chunks[5]["input"], json!({}), "a tool without args has empty input");
        assert_eq!(chunks[6]["errorText"], "offline");
        assert_eq!(chunks[8], json!({"type":"text-delta","id":"m1","delta":"It is "}));
        assert!(s.ended());
    }

    #[test]
    fn a_text_past_the_open_bound_ends_the_oldest_first() {
        let mut s = UiMessageStream::new("run_a");
        for n in 0..crate::open_ids::MOST_OPEN {
            s.encode(&env(1, "run_a", EventKind::AgentMessage, json!({"message_id": format!("m{n}"), "delta":"x"})));
        }
        let more = s.encode(&env(2, "run_a", EventKind::AgentMessage, json!({"message_id":"last","delta":"y"})));
        assert_eq!(types(&more), ["text-end", "text-start", "text-delta"]);
        assert_eq!((&more[0]["id"], &more[1]["id"]), (&json!("m0"), &json!("last")));
    }

    #[test]
    fn an_error_closes_open_texts_and_ends_the_stream() {
        let mut s = UiMessageStream::new("run_a");
        let mut chunks = s.encode(&env(1, "run_a", EventKind::AgentMessage, json!({"message_id":"m1","delta":"half"})));
        chunks.extend(s.encode(&env(
            2,
            "run_a",
            EventKind::AgentError,
            json!({"code":"cancelled","message":"stopped"}),
        )));
        assert_eq!(types(&chunks), ["text-start", "text-delta", "text-end", "error"]);
        assert_eq!(chunks[3]["errorText"], "stopped");
        assert!(s.ended());
    }
}
