//! The run lifecycle rules of PROTOCOL §2, as a pure state machine.
//!
//! Every log implementation keeps one [`RunLifecycle`] per run and checks a
//! whole publish with [`RunLifecycle::check_batch`] before appending anything:
//! the batch is all or nothing.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::LifecycleError;
use crate::event::{EventKind, NewEvent};

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

/// What the rules need to know about a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunLifecycle {
    started: bool,
    status: RunStatus,
    open_tool_calls: BTreeSet<String>,
}

fn tool_call_id(data: &Map<String, Value>) -> String {
    data.get("tool_call_id").and_then(Value::as_str).unwrap_or_default().to_owned()
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

    /// Applies one event, or says why it may not be appended. `user_message`
    /// stands outside the rules.
    pub fn apply(&mut self, kind: EventKind, data: &Map<String, Value>) -> Result<(), LifecycleError> {
        if kind == EventKind::UserMessage {
            return Ok(());
        }
        if self.ended() {
            return Err(LifecycleError::Ended);
        }
        match kind {
            EventKind::AgentStarted if self.started => return Err(LifecycleError::AlreadyStarted),
            EventKind::AgentStarted => self.started = true,
            // A run may fail before it starts (a worker that never came up, the idle watchdog).
            EventKind::AgentError => self.status = RunStatus::Error,
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
            }
            EventKind::AgentThinking | EventKind::AgentMessage | EventKind::UserMessage => {}
        }
        Ok(())
    }

    /// Follows an event that a log already accepted, when rebuilding a run's
    /// state from stored history. Never refuses: history that retention cut
    /// short may begin mid-run, and stored events were checked when appended.
    pub fn replay(&mut self, kind: EventKind, data: &Map<String, Value>) {
        match kind {
            EventKind::UserMessage => {}
            EventKind::AgentStarted => self.started = true,
            EventKind::AgentError => self.status = RunStatus::Error,
            EventKind::AgentCompleted => {
                self.open_tool_calls.clear();
                self.status = RunStatus::Completed;
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

    /// Checks a whole batch and answers the state after it; `self` is untouched,
    /// so a violation anywhere appends nothing.
    pub fn check_batch<'a>(&self, events: impl IntoIterator<Item = &'a NewEvent>) -> Result<Self, LifecycleError> {
        let mut next = self.clone();
        for e in events {
            next.apply(e.kind, &e.data)?;
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
        run.apply(EventKind::AgentStarted, &Map::new()).unwrap();
        run
    }

    #[test]
    fn replay_follows_history_that_starts_mid_run() {
        let mut run = RunLifecycle::default();
        run.replay(EventKind::ToolCompleted, json!({"tool_call_id":"x"}).as_object().unwrap());
        run.replay(EventKind::ToolExecuting, json!({"tool_call_id":"y"}).as_object().unwrap());
        assert!(run.started() && !run.ended());
        assert_eq!(run.open_tool_calls().collect::<Vec<_>>(), vec!["y"]);
        run.replay(EventKind::AgentCompleted, &Map::new());
        assert_eq!(run.status(), RunStatus::Completed);
        assert!(run.apply(EventKind::AgentThinking, &Map::new()).is_err());
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
        let end = RunLifecycle::default().check_batch(&batch).unwrap();
        assert_eq!(end.status(), RunStatus::Completed);
    }

    #[test]
    fn violations() {
        let fresh = RunLifecycle::default();
        assert_eq!(fresh.check_batch(&[ev(EventKind::AgentThinking, json!({}))]), Err(LifecycleError::NotStarted));
        assert_eq!(
            started().check_batch(&[ev(EventKind::AgentStarted, json!({}))]),
            Err(LifecycleError::AlreadyStarted)
        );
        assert_eq!(
            started().check_batch(&[ev(EventKind::ToolCompleted, json!({"tool_call_id":"nope"}))]),
            Err(LifecycleError::UnknownToolCall("nope".into()))
        );
        let open = started().check_batch(&[ev(EventKind::ToolExecuting, json!({"tool_call_id":"c"}))]).unwrap();
        assert!(matches!(
            open.check_batch(&[ev(EventKind::AgentCompleted, json!({}))]),
            Err(LifecycleError::ToolCallsOpen(_))
        ));
        assert!(matches!(
            open.check_batch(&[ev(EventKind::ToolExecuting, json!({"tool_call_id":"c"}))]),
            Err(LifecycleError::ToolCallAlreadyOpen(_))
        ));
        // agent_error is always allowed, even with open tool calls or before agent_started ...
        assert_eq!(open.check_batch(&[ev(EventKind::AgentError, json!({}))]).unwrap().status(), RunStatus::Error);
        let failed = fresh.check_batch(&[ev(EventKind::AgentError, json!({}))]).unwrap();
        // ... but nothing follows a terminal event.
        assert_eq!(failed.check_batch(&[ev(EventKind::AgentError, json!({}))]), Err(LifecycleError::Ended));
    }

    #[test]
    fn a_failing_batch_leaves_the_state_untouched() {
        let run = started();
        let batch = [ev(EventKind::ToolExecuting, json!({"tool_call_id":"c"})), ev(EventKind::AgentStarted, json!({}))];
        assert!(run.check_batch(&batch).is_err());
        assert_eq!(run, started());
    }
}
