//! Planning an append: de-duplication first, then the lifecycle rules.
//!
//! Pure, so every log implementation runs the same rules under its own kind of
//! atomicity (a mutex, a transaction, a compare-and-set) and the tests of the
//! rules need no store at all.

use std::collections::HashMap;

use agentwire_protocol::{LifecycleError, NewEvent, RunLifecycle};

/// What becomes of one published event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlannedEvent {
    /// Its `event_id` is already stored at this `seq`.
    Existing(u64),
    /// It is the n-th new event to append.
    New(usize),
}

/// The outcome of [`plan_append`].
#[derive(Debug, Clone, PartialEq)]
pub struct AppendPlan {
    /// One entry per published event, in order.
    pub planned: Vec<PlannedEvent>,
    /// The events to append, in order.
    pub new_events: Vec<NewEvent>,
    /// The run's lifecycle after the new events.
    pub lifecycle: RunLifecycle,
}

impl AppendPlan {
    /// The answer to the publisher when the new events take the seqs after `head_seq`.
    pub fn seqs(&self, head_seq: u64) -> Vec<u64> {
        self.planned
            .iter()
            .map(|p| match *p {
                PlannedEvent::Existing(seq) => seq,
                PlannedEvent::New(i) => head_seq + 1 + i as u64,
            })
            .collect()
    }
}

/// Plans the append of `events`, after the thread's `head_seq`, to a run whose
/// state is `lifecycle` and whose stored `event_id`s `known` answers.
/// De-duplication comes before the lifecycle rules, so a repeat answers its
/// first `seq` even after the run has ended.
pub fn plan_append(
    lifecycle: &RunLifecycle,
    mut known: impl FnMut(&str) -> Option<u64>,
    events: Vec<NewEvent>,
    head_seq: u64,
) -> Result<AppendPlan, LifecycleError> {
    let mut planned = Vec::with_capacity(events.len());
    let mut new_events = Vec::with_capacity(events.len());
    let mut in_batch: HashMap<String, usize> = HashMap::new();
    for event in events {
        if let Some(id) = &event.event_id {
            if let Some(seq) = known(id) {
                planned.push(PlannedEvent::Existing(seq));
                continue;
            }
            if let Some(&n) = in_batch.get(id) {
                planned.push(PlannedEvent::New(n));
                continue;
            }
            in_batch.insert(id.clone(), new_events.len());
        }
        planned.push(PlannedEvent::New(new_events.len()));
        new_events.push(event);
    }
    let lifecycle = lifecycle.check_batch(&new_events, head_seq)?;
    Ok(AppendPlan { planned, new_events, lifecycle })
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentwire_protocol::EventKind;
    use serde_json::{Map, json};

    fn ev(kind: EventKind, id: Option<&str>) -> NewEvent {
        let data = json!({"agent_name":"a","thought":"t"}).as_object().cloned().unwrap_or_else(Map::new);
        NewEvent { kind, data, event_id: id.map(str::to_owned) }
    }

    #[test]
    fn repeats_answer_their_first_seq_within_and_across_batches() {
        let plan = plan_append(
            &RunLifecycle::default(),
            |id| (id == "old").then_some(7),
            vec![
                ev(EventKind::AgentStarted, Some("a")),
                ev(EventKind::AgentThinking, Some("old")),
                ev(EventKind::AgentThinking, Some("a")),
                ev(EventKind::AgentThinking, None),
            ],
            10,
        )
        .unwrap();
        assert_eq!(plan.new_events.len(), 2);
        assert_eq!(plan.seqs(10), vec![11, 7, 11, 12]);
    }

    #[test]
    fn a_repeat_after_the_end_still_answers_its_seq() {
        let ended = RunLifecycle::default().check_batch(&[ev(EventKind::AgentError, None)], 0).unwrap();
        let plan = plan_append(&ended, |_| Some(3), vec![ev(EventKind::AgentThinking, Some("x"))], 9).unwrap();
        assert_eq!(plan.seqs(9), vec![3]);
        assert!(plan_append(&ended, |_| None, vec![ev(EventKind::AgentThinking, Some("y"))], 9).is_err());
    }
}
