//! Asking the user mid-run (PROTOCOL §2.1): [`RunContext::ask`] publishes an
//! `input_requested` and waits for its `input_received`, whether the user
//! answered or the request's timeout did; [`RunContext::approve`] asks for a
//! yes or no to a tool call.
//!
//! The wait is the log's ([`agentwire_log::Log::wait_input`]), so an answer
//! given through any node reaches the agent, and a run stopped from outside
//! stops waiting at once.

use std::time::Duration;

use agentwire_log::LogError;
use agentwire_log::input::{InputOutcome, await_input};
use agentwire_protocol::{EventKind, NewEvent};
use serde_json::{Map, Value};

use crate::context::{EmitError, RunContext};

/// How long one look at the log waits before it looks again (the run may be
/// stopped meanwhile, which ends the wait anyway).
const WAIT_STEP: Duration = Duration::from_secs(30);
/// How long to wait before looking again when the log is unavailable.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What to ask the user.
#[derive(Debug, Clone)]
pub struct Question {
    data: Map<String, Value>,
}

impl Question {
    fn new(kind: &str, prompt: String) -> Self {
        let mut data = Map::new();
        data.insert("kind".into(), Value::from(kind));
        data.insert("prompt".into(), Value::from(prompt));
        Self { data }
    }

    /// A line of text.
    pub fn text(prompt: impl Into<String>) -> Self {
        Self::new("text", prompt.into())
    }

    /// One of `options`.
    pub fn choice<O: Into<String>>(prompt: impl Into<String>, options: impl IntoIterator<Item = O>) -> Self {
        let mut question = Self::new("choice", prompt.into());
        let options: Vec<Value> = options.into_iter().map(|o| Value::from(o.into())).collect();
        question.data.insert("options".into(), Value::Array(options));
        question
    }

    /// Yes or no to running `tool_name` with `arguments`.
    pub fn approval(prompt: impl Into<String>, tool_name: &str, arguments: Value) -> Self {
        let mut question = Self::new("approval", prompt.into());
        question.data.insert("tool_name".into(), Value::from(tool_name));
        question.data.insert("arguments".into(), arguments);
        question
    }

    /// The answer taken when nobody answers in time: a text, one of the
    /// options, or `true`/`false` for an approval (deny unless set).
    pub fn default_answer(mut self, value: impl Into<Value>) -> Self {
        self.data.insert("default".into(), value.into());
        self
    }

    /// How long to wait for the user (the server bounds it; its default when unset).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX).max(1);
        self.data.insert("timeout_ms".into(), Value::from(ms));
        self
    }
}

/// The answer to a [`Question`]: the user's, or the default's once the request lapsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// `{"approved": …}`, `{"text": …}` or `{"choice": …}`, with `message`
    /// when the user added one; `null` when the request lapsed without a default.
    pub value: Value,
    /// The timeout answered, not the user.
    pub timed_out: bool,
    /// Who answered.
    pub user_id: Option<String>,
}

impl Answer {
    fn from_received(data: &Map<String, Value>) -> Self {
        Self {
            value: data.get("answer").cloned().unwrap_or(Value::Null),
            timed_out: data.get("source").and_then(Value::as_str) == Some("timeout"),
            user_id: data.get("user_id").and_then(Value::as_str).map(str::to_owned),
        }
    }

    fn field(&self, key: &str) -> Option<&str> {
        self.value.get(key).and_then(Value::as_str)
    }

    /// Whether an approval was given (never for a lapsed one without a default).
    pub fn approved(&self) -> bool {
        self.value.get("approved").and_then(Value::as_bool).unwrap_or(false)
    }

    /// A text request's answer.
    pub fn text(&self) -> Option<&str> {
        self.field("text")
    }

    /// A choice request's answer.
    pub fn choice(&self) -> Option<&str> {
        self.field("choice")
    }

    /// What the user added to their answer.
    pub fn message(&self) -> Option<&str> {
        self.field("message")
    }
}

impl RunContext {
    /// Asks the user and waits for the answer (or the default, once the
    /// request lapses). [`EmitError::RunEnded`] if the run ends first.
    pub async fn ask(&self, question: Question) -> Result<Answer, EmitError> {
        let request_id = self.next_id("input");
        let mut data = question.data;
        data.insert("request_id".into(), Value::from(request_id.as_str()));
        self.emit_all(vec![NewEvent::new(EventKind::InputRequested, data)]).await?;
        loop {
            let waited = await_input(self.log(), self.run_id(), self.thread_id(), &request_id, WAIT_STEP);
            let outcome = tokio::select! {
                outcome = waited => outcome,
                _ = self.stopped() => return Err(EmitError::RunEnded),
            };
            let outcome = match outcome {
                // The store or engine is away for a moment: the request waits there, so does the agent.
                Err(LogError::Unavailable(why)) => {
                    tracing::debug!(run_id = %self.run_id(), %why, "waiting for an answer: the log is unavailable");
                    tokio::time::sleep(RETRY_AFTER).await;
                    continue;
                }
                outcome => outcome?,
            };
            match outcome {
                InputOutcome::Waiting => continue,
                InputOutcome::Received(data) => return Ok(Answer::from_received(&data)),
                InputOutcome::Closed => return Err(EmitError::RunEnded),
            }
        }
    }

    /// Asks the user whether to run `tool_name` with `arguments`; `true` when
    /// they approve (a lapsed request is a denial).
    pub async fn approve(&self, tool_name: &str, arguments: Value) -> Result<bool, EmitError> {
        let question = Question::approval(format!("May I run {tool_name}?"), tool_name, arguments);
        Ok(self.ask(question).await?.approved())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn questions_carry_what_the_protocol_asks_for() {
        let q = Question::choice("Which?", ["a", "b"]).default_answer("b").timeout(Duration::from_secs(5));
        assert_eq!(
            Value::Object(q.data),
            json!({"kind":"choice","prompt":"Which?","options":["a","b"],"default":"b","timeout_ms":5000})
        );
        let q = Question::approval("Send?", "send_email", json!({"to":"bob"}));
        assert_eq!(q.data["tool_name"], "send_email");
        let answer = Answer::from_received(
            json!({"answer":{"approved":true,"message":"ok"},"source":"user","user_id":"u"}).as_object().unwrap(),
        );
        assert!(answer.approved() && !answer.timed_out);
        assert_eq!((answer.message(), answer.user_id.as_deref()), (Some("ok"), Some("u")));
        let lapsed = Answer::from_received(json!({"answer":null,"source":"timeout"}).as_object().unwrap());
        assert!(!lapsed.approved() && lapsed.timed_out && lapsed.text().is_none());
    }
}
