//! The run lifecycle rules of PROTOCOL §2, as a pure state machine.
//!
//! Every log implementation keeps one [`RunLifecycle`] per run and checks a
//! whole publish with [`RunLifecycle::check_batch`] before appending anything:
//! the batch is all or nothing.
//!
//! The lifecycle also keeps the run's input requests ([`RunInputs`]): the open
//! ones, with what answers them, and the newest closed ones. Being part of the
//! run's state, they are stored, replayed and checkpointed with it by every log.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::LifecycleError;
use crate::event::{EventKind, NewEvent};
use crate::input::{CLOSED_INPUTS_KEPT, ClosedInput, MAX_OPEN_INPUTS, OpenInput};

/// Where a run is: `running` until a terminal event, then `completed` or `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    #[default]
    Running,
    Completed,
    Error,
}

impl RunStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Error => "error",
        }
    }
}

/// A run's input requests: those open, and the newest closed ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInputs {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub open: BTreeMap<String, OpenInput>,
    /// Oldest first, at most [`CLOSED_INPUTS_KEPT`].
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub closed: VecDeque<ClosedInput>,
}

impl RunInputs {
    /// No request was ever made (or remembered).
    pub fn is_empty(&self) -> bool {
        self.open.is_empty() && self.closed.is_empty()
    }

    /// The closed request `request_id`, if it is remembered.
    pub fn closed(&self, request_id: &str) -> Option<&ClosedInput> {
        self.closed.iter().find(|c| c.request_id == request_id)
    }

    /// When the first open request lapses (milliseconds since the epoch).
    pub fn next_expiry(&self) -> Option<i64> {
        self.open.values().map(|o| o.expires_ms).min()
    }

    fn close(&mut self, request_id: String, answer_seq: Option<u64>) {
        if self.closed.len() >= CLOSED_INPUTS_KEPT {
            self.closed.pop_front();
        }
        self.closed.push_back(ClosedInput { request_id, answer_seq });
    }

    /// Every open request closes with the run.
    fn close_all(&mut self) {
        for request_id in std::mem::take(&mut self.open).into_keys() {
            self.close(request_id, None);
        }
    }
}

/// What the rules need to know about a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunLifecycle {
    started: bool,
    status: RunStatus,
    open_tool_calls: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "RunInputs::is_empty")]
    inputs: RunInputs,
    /// Queued behind its thread's runs: its `user_message` said so, and it has not started.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    queued: bool,
}

/// Whether a `user_message` says its run waits its turn.
fn says_queued(data: &Map<String, Value>) -> bool {
    data.get("queued").and_then(Value::as_bool).unwrap_or(false)
}

fn tool_call_id(data: &Map<String, Value>) -> String {
    data.get("tool_call_id").and_then(Value::as_str).unwrap_or_default().to_owned()
}

fn request_id(data: &Map<String, Value>) -> String {
    data.get("request_id").and_then(Value::as_str).unwrap_or_default().to_owned()
}

impl RunLifecycle {
    /// The run's status.
    pub fn status(&self) -> RunStatus {
        self.status
    }

    /// Whether `agent_started` has been appended.
    pub fn started(&self) -> bool {
        self.started
    }

    /// Whether a terminal event has been appended.
    pub fn ended(&self) -> bool {
        self.status != RunStatus::Running
    }

    /// Tool calls begun and not yet completed.
    pub fn open_tool_calls(&self) -> impl Iterator<Item = &str> {
        self.open_tool_calls.iter().map(String::as_str)
    }

    /// The run's input requests.
    pub fn inputs(&self) -> &RunInputs {
        &self.inputs
    }

    /// Whether the run waits behind its thread's runs (double-texting's `enqueue`).
    pub fn queued(&self) -> bool {
        self.queued
    }

    /// Applies one event, to be stored at `seq`, or says why it may not be
    /// appended. `user_message` stands outside the rules.
    pub fn apply(&mut self, kind: EventKind, data: &Map<String, Value>, seq: u64) -> Result<(), LifecycleError> {
        if kind == EventKind::UserMessage {
            self.queued |= !self.started && says_queued(data);
            return Ok(());
        }
        if self.ended() {
            return Err(LifecycleError::Ended);
        }
        match kind {
            EventKind::AgentStarted if self.started => return Err(LifecycleError::AlreadyStarted),
            EventKind::AgentStarted => {
                self.started = true;
                self.queued = false;
            }
            // A run may fail before it starts (a worker that never came up, the idle watchdog).
            EventKind::AgentError => {
                self.status = RunStatus::Error;
                self.queued = false;
                self.inputs.close_all();
            }
            _ if !self.started => return Err(LifecycleError::NotStarted),
            EventKind::ToolExecuting => {
                let id = tool_call_id(data);
                if self.open_tool_calls.contains(&id) {
                    return Err(LifecycleError::ToolCallAlreadyOpen(id));
                }
                self.open_tool_calls.insert(id);
            }
            EventKind::ToolCompleted => {
                let id = tool_call_id(data);
                if !self.open_tool_calls.remove(&id) {
                    return Err(LifecycleError::UnknownToolCall(id));
                }
            }
            EventKind::AgentCompleted => {
                if !self.open_tool_calls.is_empty() {
                    let open: Vec<&str> = self.open_tool_calls().collect();
                    return Err(LifecycleError::ToolCallsOpen(open.join(", ")));
                }
                self.status = RunStatus::Completed;
                self.inputs.close_all();
            }
            EventKind::InputRequested => {
                let id = request_id(data);
                if self.inputs.open.contains_key(&id) || self.inputs.closed(&id).is_some() {
                    return Err(LifecycleError::InputAlreadyRequested(id));
                }
                if self.inputs.open.len() >= MAX_OPEN_INPUTS {
                    return Err(LifecycleError::TooManyOpenInputs(MAX_OPEN_INPUTS));
                }
                self.inputs.open.insert(id, OpenInput::from_request(data));
            }
            EventKind::InputReceived => {
                let id = request_id(data);
                if self.inputs.open.remove(&id).is_none() {
                    return Err(match self.inputs.closed(&id) {
                        Some(_) => LifecycleError::InputClosed(id),
                        None => LifecycleError::UnknownInput(id),
                    });
                }
                self.inputs.close(id, Some(seq));
            }
            EventKind::AgentThinking | EventKind::AgentMessage | EventKind::UserMessage => {}
        }
        Ok(())
    }

    /// Follows an event that a log already accepted, when rebuilding a run's
    /// state from stored history. Never refuses: history that retention cut
    /// short may begin mid-run, and stored events were checked when appended.
    pub fn replay(&mut self, kind: EventKind, data: &Map<String, Value>, seq: u64) {
        if kind != EventKind::UserMessage {
            self.queued = false;
        }
        match kind {
            EventKind::UserMessage => self.queued |= !self.started && !self.ended() && says_queued(data),
            EventKind::AgentStarted => self.started = true,
            EventKind::AgentError => {
                self.status = RunStatus::Error;
                self.inputs.close_all();
            }
            EventKind::AgentCompleted => {
                self.open_tool_calls.clear();
                self.status = RunStatus::Completed;
                self.inputs.close_all();
            }
            EventKind::InputRequested => {
                self.started = true;
                self.inputs.open.insert(request_id(data), OpenInput::from_request(data));
            }
            EventKind::InputReceived => {
                let id = request_id(data);
                self.inputs.open.remove(&id);
                self.inputs.close(id, Some(seq));
            }
            EventKind::ToolExecuting => {
                self.started = true;
                self.open_tool_calls.insert(tool_call_id(data));
            }
            EventKind::ToolCompleted => {
                self.started = true;
                self.open_tool_calls.remove(&tool_call_id(data));
            }
            EventKind::AgentThinking | EventKind::AgentMessage => self.started = true,
        }
    }

    /// Checks a whole batch, to be stored after `head_seq`, and answers the
    /// state after it; `self` is untouched, so a violation anywhere appends nothing.
    pub fn check_batch<'a>(
        &self,
        events: impl IntoIterator<Item = &'a NewEvent>,
        head_seq: u64,
    ) -> Result<Self, LifecycleError> {
        let mut next = self.clone();
        for (seq, e) in (head_seq + 1..).zip(events) {
            next.apply(e.kind, &e.data, seq)?;
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(kind: EventKind, data: Value) -> NewEvent {
        NewEvent::new(kind, data.as_object().cloned().unwrap_or_default())
    }

    fn started() -> RunLifecycle {
        let mut run = RunLifecycle::default();
        run.apply(EventKind::AgentStarted, &Map::new(), 1).unwrap();
        run
    }

    #[test]
    fn replay_follows_history_that_starts_mid_run() {
        let mut run = RunLifecycle::default();
        run.replay(EventKind::ToolCompleted, json!({"tool_call_id":"x"}).as_object().unwrap(), 4);
        run.replay(EventKind::ToolExecuting, json!({"tool_call_id":"y"}).as_object().unwrap(), 5);
        assert!(run.started() && !run.ended());
        assert_eq!(run.open_tool_calls().collect::<Vec<_>>(), vec!["y"]);
        run.replay(EventKind::AgentCompleted, &Map::new(), 6);
        assert_eq!(run.status(), RunStatus::Completed);
        assert!(run.apply(EventKind::AgentThinking, &Map::new(), 7).is_err());
    }

    #[test]
    fn a_full_run_passes() {
        let batch = [
            ev(EventKind::UserMessage, json!({"text":"hi"})),
            ev(EventKind::AgentStarted, json!({"agent_name":"a"})),
            ev(EventKind::AgentThinking, json!({"thought":"t"})),
            ev(EventKind::ToolExecuting, json!({"tool_call_id":"c1","tool_name":"calc"})),
            ev(EventKind::ToolCompleted, json!({"tool_call_id":"c1"})),
            ev(EventKind::AgentMessage, json!({"message_id":"m","delta":"x"})),
            ev(EventKind::AgentCompleted, json!({})),
        ];
        let end = RunLifecycle::default().check_batch(&batch, 0).unwrap();
        assert_eq!(end.status(), RunStatus::Completed);
    }

    #[test]
    fn violations() {
        let fresh = RunLifecycle::default();
        assert_eq!(fresh.check_batch(&[ev(EventKind::AgentThinking, json!({}))], 1), Err(LifecycleError::NotStarted));
        assert_eq!(
            started().check_batch(&[ev(EventKind::AgentStarted, json!({}))], 1),
            Err(LifecycleError::AlreadyStarted)
        );
        assert_eq!(
            started().check_batch(&[ev(EventKind::ToolCompleted, json!({"tool_call_id":"nope"}))], 1),
            Err(LifecycleError::UnknownToolCall("nope".into()))
        );
        let open = started().check_batch(&[ev(EventKind::ToolExecuting, json!({"tool_call_id":"c"}))], 1).unwrap();
        assert!(matches!(
            open.check_batch(&[ev(EventKind::AgentCompleted, json!({}))], 1),
            Err(LifecycleError::ToolCallsOpen(_))
        ));
        assert!(matches!(
            open.check_batch(&[ev(EventKind::ToolExecuting, json!({"tool_call_id":"c"}))], 1),
            Err(LifecycleError::ToolCallAlreadyOpen(_))
        ));
        // agent_error is always allowed, even with open tool calls or before agent_started ...
        assert_eq!(open.check_batch(&[ev(EventKind::AgentError, json!({}))], 1).unwrap().status(), RunStatus::Error);
        let failed = fresh.check_batch(&[ev(EventKind::AgentError, json!({}))], 1).unwrap();
        // ... but nothing follows a terminal event.
        assert_eq!(failed.check_batch(&[ev(EventKind::AgentError, json!({}))], 1), Err(LifecycleError::Ended));
    }

    fn ask(id: &str) -> NewEvent {
        ev(EventKind::InputRequested, json!({"request_id": id, "kind": "text", "prompt": "?"}))
    }

    fn answer(id: &str) -> NewEvent {
        ev(EventKind::InputReceived, json!({"request_id": id, "kind": "text", "answer": {"text": "x"}}))
    }

    #[test]
    fn a_request_is_answered_once_and_the_run_s_end_closes_the_rest() {
        let waiting = started().check_batch(&[ask("a"), ask("b")], 1).unwrap();
        assert_eq!(waiting.inputs().open.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(waiting.check_batch(&[ask("a")], 3), Err(LifecycleError::InputAlreadyRequested("a".into())));
        assert_eq!(waiting.check_batch(&[answer("z")], 3), Err(LifecycleError::UnknownInput("z".into())));
        let answered = waiting.check_batch(&[answer("a")], 3).unwrap();
        assert_eq!(answered.inputs().closed("a").and_then(|c| c.answer_seq), Some(4));
        assert_eq!(answered.check_batch(&[answer("a")], 4), Err(LifecycleError::InputClosed("a".into())));
        // An id is asked once per run, even after its answer.
        assert_eq!(answered.check_batch(&[ask("a")], 4), Err(LifecycleError::InputAlreadyRequested("a".into())));
        // Unlike open tool calls, open requests do not hold up agent_completed: the end closes them.
        let done = answered.check_batch(&[ev(EventKind::AgentCompleted, json!({}))], 4).unwrap();
        assert!(done.inputs().open.is_empty());
        assert_eq!(done.inputs().closed("b").map(|c| c.answer_seq), Some(None));
        // Replay follows the same history to the same state.
        let mut replayed = RunLifecycle::default();
        for (seq, e) in (1..).zip([ev(EventKind::AgentStarted, json!({})), ask("a"), ask("b"), answer("a")]) {
            replayed.replay(e.kind, &e.data, seq);
        }
        replayed.replay(EventKind::AgentCompleted, &Map::new(), 5);
        assert_eq!(replayed, done);
    }

    #[test]
    fn open_requests_and_remembered_ones_are_bounded() {
        let mut run = started();
        let mut seq = 1;
        for i in 0..crate::input::MAX_OPEN_INPUTS {
            run = run.check_batch(&[ask(&i.to_string())], seq).unwrap();
            seq += 1;
        }
        assert_eq!(run.check_batch(&[ask("one more")], seq), Err(LifecycleError::TooManyOpenInputs(16)));
        run = run.check_batch(&[answer("0")], seq).unwrap();
        seq += 1;
        for i in 0..200 {
            let id = format!("later{i}");
            run = run.check_batch(&[ask(&id), answer(&id)], seq).unwrap();
            seq += 2;
        }
        assert_eq!(run.inputs().closed.len(), CLOSED_INPUTS_KEPT);
        assert_eq!(run.inputs().closed.back().map(|c| c.request_id.as_str()), Some("later199"));
    }

    #[test]
    fn a_queued_run_is_queued_until_it_starts_or_ends() {
        let queued_message = ev(EventKind::UserMessage, json!({"text":"hi","queued":true}));
        let waiting = RunLifecycle::default().check_batch(std::slice::from_ref(&queued_message), 0).unwrap();
        assert!(waiting.queued() && !waiting.started());
        let started = waiting.check_batch(&[ev(EventKind::AgentStarted, json!({}))], 1).unwrap();
        assert!(!started.queued());
        let gone = waiting.check_batch(&[ev(EventKind::AgentError, json!({}))], 1).unwrap();
        assert!(!gone.queued());
        let mut replayed = RunLifecycle::default();
        replayed.replay(EventKind::UserMessage, &queued_message.data, 1);
        assert!(replayed.queued());
        replayed.replay(EventKind::AgentStarted, &Map::new(), 2);
        assert_eq!(replayed, started);
    }

    #[test]
    fn a_failing_batch_leaves_the_state_untouched() {
        let run = started();
        let batch = [ev(EventKind::ToolExecuting, json!({"tool_call_id":"c"})), ev(EventKind::AgentStarted, json!({}))];
        assert!(run.check_batch(&batch, 0).is_err());
        assert_eq!(run, started());
    }
}
