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
//! | `agent_error` | `TEXT_MESSAGE_END` for open messages, `RUN_ERROR` (`cancelled`: `RUN_FINISHED` with the cancelled outcome) |
//! | `input_requested` | after the batch it came in: `TEXT_MESSAGE_END` for open messages, `RUN_FINISHED` with the interrupt outcome |
//! | `input_received` | `CUSTOM` (`name` `input_received`, `value` its data) |
//!
//! AG-UI has no channel from the client during a run, so a run that asks ends
//! its AG-UI view with AG-UI's interrupt outcome (its "Interrupts and Resume"
//! pattern) while the agentwire run waits; the client's next `RunAgentInput`
//! answers with `resume`, and [`AguiStream::resuming`] shows the same agentwire
//! run going on under the AG-UI run id of that request.

use serde_json::{Value, json};

use crate::envelope::Envelope;
use crate::event::EventKind;
use crate::open_ids::{OpenIds, Opened};

/// One run's AG-UI stream: remembers which text messages are open.
#[derive(Debug, Clone)]
pub struct AguiStream {
    thread_id: String,
    /// The agentwire run whose events this stream shows.
    run_id: String,
    /// The run id AG-UI sees: the agentwire run's, or the resuming request's.
    agui_run_id: String,
    open_messages: OpenIds,
    /// Input requests of the current batch: they end the stream once it is encoded.
    interrupts: Vec<Value>,
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
        let run_id = run_id.into();
        Self::resuming(thread_id, run_id.clone(), run_id)
    }

    /// The stream of agentwire run `run_id` going on after a resume, shown to
    /// AG-UI as the run `agui_run_id` (the resuming request's `runId`).
    pub fn resuming(thread_id: impl Into<String>, run_id: impl Into<String>, agui_run_id: impl Into<String>) -> Self {
        Self {
            thread_id: thread_id.into(),
            run_id: run_id.into(),
            agui_run_id: agui_run_id.into(),
            open_messages: OpenIds::default(),
            interrupts: Vec::new(),
            ended: false,
        }
    }

    /// `RUN_STARTED`, the stream's first event.
    pub fn started(&self) -> Value {
        json!({ "type": "RUN_STARTED", "threadId": self.thread_id, "runId": self.agui_run_id })
    }

    /// After a batch of events: a run that asked ends its AG-UI view with the
    /// interrupt outcome, every request of the batch in it.
    pub fn batch_end(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        if self.ended || self.interrupts.is_empty() {
            return out;
        }
        self.close_messages(&mut out);
        let interrupts = std::mem::take(&mut self.interrupts);
        out.push(json!({
            "type": "RUN_FINISHED",
            "threadId": self.thread_id,
            "runId": self.agui_run_id,
            "outcome": { "type": "interrupt", "interrupts": interrupts },
        }));
        self.ended = true;
        out
    }

    /// Whether `RUN_FINISHED` or `RUN_ERROR` has been produced.
    pub fn ended(&self) -> bool {
        self.ended
    }

    fn close_messages(&mut self, out: &mut Vec<Value>) {
        for id in self.open_messages.close_all() {
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
                if let Opened::New { closed } = self.open_messages.open(&id) {
                    if let Some(oldest) = closed {
                        out.push(json!({ "type": "TEXT_MESSAGE_END", "messageId": oldest }));
                    }
                    out.push(json!({ "type": "TEXT_MESSAGE_START", "messageId": id, "role": "assistant" }));
                }
                if !delta.is_empty() {
                    out.push(json!({ "type": "TEXT_MESSAGE_CONTENT", "messageId": id, "delta": delta }));
                }
            }
            EventKind::AgentCompleted => {
                self.close_messages(&mut out);
                let mut finished =
                    json!({ "type": "RUN_FINISHED", "threadId": self.thread_id, "runId": self.agui_run_id });
                if let Some(result) = d.get("result").filter(|r| !r.is_null()) {
                    finished["result"] = result.clone();
                }
                out.push(finished);
                self.ended = true;
            }
            // A run stopped because it was told to is AG-UI's cancelled outcome, not an error.
            EventKind::AgentError if str_of("code") == "cancelled" => {
                self.close_messages(&mut out);
                out.push(json!({
                    "type": "RUN_FINISHED",
                    "threadId": self.thread_id,
                    "runId": self.agui_run_id,
                    "outcome": { "type": "cancelled" },
                }));
                self.ended = true;
            }
            EventKind::AgentError => {
                self.close_messages(&mut out);
                out.push(json!({ "type": "RUN_ERROR", "message": str_of("message"), "code": str_of("code") }));
                self.ended = true;
            }
            EventKind::InputRequested => self.interrupts.push(interrupt(d, &self.run_id)),
            EventKind::InputReceived => {
                // Answered in the same batch it was asked in: nothing to interrupt for.
                let id = d.get("request_id");
                self.interrupts.retain(|i| i.get("id") != id);
                out.push(json!({ "type": "CUSTOM", "name": e.event.as_str(), "value": d }));
            }
            EventKind::AgentStarted | EventKind::UserMessage => {}
        }
        out
    }
}

/// An input request as an AG-UI `Interrupt`: its id the request's, a reason
/// from AG-UI's core values, the prompt, a JSON Schema of the answer (which is
/// what the resume's `payload` carries), when it lapses, and what agentwire
/// knows of it in `metadata`.
fn interrupt(d: &serde_json::Map<String, Value>, run_id: &str) -> Value {
    let kind = d.get("kind").and_then(Value::as_str).unwrap_or_default();
    let message = json!({ "type": "string" });
    // The reason, and the answer's field with its schema.
    let (reason, required, field) = match kind {
        "approval" => ("confirmation", "approved", json!({ "type": "boolean" })),
        "choice" => {
            let options = d.get("options").cloned().unwrap_or_else(|| json!([]));
            ("input_required", "choice", json!({ "type": "string", "enum": options }))
        }
        _ => ("input_required", "text", json!({ "type": "string" })),
    };
    let answer = json!({ required: field, "message": message });
    let mut metadata = json!({ "kind": kind, "runId": run_id });
    for (from, to) in
        [("tool_name", "toolName"), ("arguments", "arguments"), ("options", "options"), ("default", "default")]
    {
        if let Some(value) = d.get(from).filter(|v| !v.is_null()) {
            metadata[to] = value.clone();
        }
    }
    let mut out = json!({
        "id": d.get("request_id").cloned().unwrap_or(Value::Null),
        "reason": reason,
        "message": d.get("prompt").cloned().unwrap_or(Value::Null),
        "responseSchema": { "type": "object", "properties": answer, "required": [required] },
        "metadata": metadata,
    });
    if let Some(expires) = d.get("expires_at").filter(|v| v.is_string()) {
        out["expiresAt"] = expires.clone();
    }
    out
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
    fn a_message_past_the_open_bound_ends_the_oldest_first() {
        let mut s = AguiStream::new("thread_ag", "r1");
        for n in 0..crate::open_ids::MOST_OPEN {
            s.encode(&env(1, "r1", EventKind::AgentMessage, json!({"message_id": format!("m{n}"), "delta":"x"})));
        }
        let more = s.encode(&env(2, "r1", EventKind::AgentMessage, json!({"message_id":"last","delta":"y"})));
        assert_eq!(types(&more), ["TEXT_MESSAGE_END", "TEXT_MESSAGE_START", "TEXT_MESSAGE_CONTENT"]);
        assert_eq!((&more[0]["messageId"], &more[1]["messageId"]), (&json!("m0"), &json!("last")));
    }

    #[test]
    fn an_error_closes_open_messages_then_ends_the_run() {
        let mut s = AguiStream::new("thread_ag", "r1");
        s.encode(&env(1, "r1", EventKind::AgentMessage, json!({"message_id":"m","delta":"par"})));
        let end = s.encode(&env(2, "r1", EventKind::AgentError, json!({"code":"failed","message":"boom"})));
        assert_eq!(types(&end), ["TEXT_MESSAGE_END", "RUN_ERROR"]);
        assert_eq!(end[1]["message"], "boom");
        let mut told = AguiStream::new("thread_ag", "r1");
        let stop = told.encode(&env(1, "r1", EventKind::AgentError, json!({"code":"cancelled","message":"stop"})));
        assert_eq!((&stop[0]["type"], &stop[0]["outcome"]), (&json!("RUN_FINISHED"), &json!({"type":"cancelled"})));
        assert!(told.ended());
    }

    #[test]
    fn a_run_that_asks_ends_its_view_with_the_interrupt_outcome_and_a_resume_goes_on() {
        let mut s = AguiStream::new("thread_ag", "r1");
        let approval = json!({"request_id":"q1","kind":"approval","prompt":"Send?","tool_name":"send_email",
            "arguments":{"to":"bob"},"expires_at":"2026-12-07T10:00:00.000Z"});
        let choice = json!({"request_id":"q2","kind":"choice","prompt":"Which?","options":["a","b"]});
        let mut out = s.encode(&env(1, "r1", EventKind::AgentMessage, json!({"message_id":"m","delta":"hm"})));
        out.extend(s.encode(&env(2, "r1", EventKind::InputRequested, approval)));
        out.extend(s.encode(&env(3, "r1", EventKind::InputRequested, choice)));
        assert!(!s.ended(), "the batch may still answer them");
        out.extend(s.batch_end());
        assert_eq!(types(&out), ["TEXT_MESSAGE_START", "TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_END", "RUN_FINISHED"]);
        let interrupts = &out[3]["outcome"]["interrupts"];
        assert_eq!(out[3]["outcome"]["type"], "interrupt");
        assert_eq!(
            interrupts[0],
            json!({"id":"q1","reason":"confirmation","message":"Send?","expiresAt":"2026-12-07T10:00:00.000Z",
                "responseSchema":{"type":"object","properties":{"approved":{"type":"boolean"},"message":{"type":"string"}},
                    "required":["approved"]},
                "metadata":{"kind":"approval","runId":"r1","toolName":"send_email","arguments":{"to":"bob"}}})
        );
        assert_eq!(interrupts[1]["responseSchema"]["properties"]["choice"]["enum"], json!(["a", "b"]));
        assert!(s.ended() && s.batch_end().is_empty());

        // The resuming request's stream: the same agentwire run, under its own AG-UI run id.
        let mut resumed = AguiStream::resuming("thread_ag", "r1", "agui-2");
        assert_eq!(resumed.started()["runId"], "agui-2");
        let answer = json!({"request_id":"q1","kind":"approval","answer":{"approved":true},"source":"user"});
        let mut out = resumed.encode(&env(4, "r1", EventKind::InputReceived, answer));
        out.extend(resumed.encode(&env(5, "r1", EventKind::AgentCompleted, json!({}))));
        out.extend(resumed.batch_end());
        assert_eq!(types(&out), ["CUSTOM", "RUN_FINISHED"]);
        assert_eq!((&out[0]["name"], &out[1]["runId"]), (&json!("input_received"), &json!("agui-2")));
        // Asked and answered in one batch: no interrupt.
        let mut quick = AguiStream::new("thread_ag", "r1");
        quick.encode(&env(1, "r1", EventKind::InputRequested, json!({"request_id":"q","kind":"text","prompt":"?"})));
        quick.encode(&env(2, "r1", EventKind::InputReceived, json!({"request_id":"q","kind":"text","answer":null})));
        assert!(quick.batch_end().is_empty() && !quick.ended());
    }
}
