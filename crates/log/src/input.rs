//! Input requests as every log handles them (PROTOCOL §2.1): deciding a
//! user's answer, the timeouts the watchdog answers, and waiting for an answer.
//!
//! The open requests live in each run's lifecycle, so a log that stores and
//! replays runs keeps them across restarts and nodes without more records. What
//! is left to a log is finding the run that holds a request (a thread's live
//! runs), appending the `input_received` this module builds, and waking whoever
//! waits ([`Log::input_changes`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentwire_protocol::{EventKind, NewEvent, OpenInput, RunId, RunInputs, RunLifecycle, ThreadId, UserId};
use parking_lot::Mutex;
use serde_json::{Map, Value};
use tokio::sync::Notify;

use crate::{Log, LogError};

/// A user's answer to one of a thread's input requests.
#[derive(Debug, Clone)]
pub struct InputAnswer {
    pub request_id: String,
    /// The run that asked, when the caller knows it: a request of a run that
    /// has ended is then found too (`409`), not only those of live runs.
    pub run_id: Option<String>,
    /// The answer as sent, checked against the request; `null`: the user
    /// declines to answer (an approval is denied, a text or choice takes its default).
    pub answer: Value,
    pub user: UserId,
}

/// Where an input request stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputStatus {
    Open(OpenInput),
    /// Answered by its `input_received` at this `seq`.
    Answered {
        answer_seq: u64,
    },
    /// Closed without an answer: its run ended first.
    Closed,
}

impl InputStatus {
    /// Where `request_id` stands among `inputs`; `None` when they do not know it.
    pub fn of(inputs: &RunInputs, request_id: &str) -> Option<Self> {
        if let Some(open) = inputs.open.get(request_id) {
            return Some(Self::Open(open.clone()));
        }
        inputs.closed(request_id).map(|closed| match closed.answer_seq {
            Some(answer_seq) => Self::Answered { answer_seq },
            None => Self::Closed,
        })
    }
}

/// What an agent waiting on a request learns.
#[derive(Debug, Clone, PartialEq)]
pub enum InputOutcome {
    /// Still open when the wait ended.
    Waiting,
    /// The `input_received`'s data: the user's answer, or the default on the timeout.
    Received(Map<String, Value>),
    /// Closed without an answer (its run ended), or its answer is no longer kept.
    Closed,
}

/// The `input_received` that answers `answer.request_id` in `inputs`, or why not:
/// [`LogError::InputClosed`] for a request answered or closed,
/// [`LogError::InputNotFound`] for one `inputs` do not know, and
/// [`LogError::BadAnswer`] for an answer of the wrong kind.
pub fn answer_event(inputs: &RunInputs, answer: &InputAnswer) -> Result<NewEvent, LogError> {
    let id = &answer.request_id;
    match inputs.open.get(id) {
        Some(open) if answer.answer.is_null() => Ok(open.declined(id, &answer.user)),
        Some(open) => open.answered(id, &answer.answer, &answer.user).map_err(LogError::BadAnswer),
        None if inputs.closed(id).is_some() => Err(LogError::InputClosed(id.clone())),
        None => Err(LogError::InputNotFound(id.clone())),
    }
}

/// The `input_received` events that answer the requests of `inputs` lapsed at `now_ms`.
pub fn lapsed(inputs: &RunInputs, now_ms: i64) -> Vec<NewEvent> {
    inputs.open.iter().filter(|(_, open)| open.expired(now_ms)).map(|(id, open)| open.timed_out(id)).collect()
}

/// Whether `request_id` was asked by this going run (open, or closed and
/// remembered): the run an answer without a named run goes to.
pub fn asked_by_going_run(lifecycle: &RunLifecycle, request_id: &str) -> bool {
    let inputs = lifecycle.inputs();
    !lifecycle.ended() && (inputs.open.contains_key(request_id) || inputs.closed(request_id).is_some())
}

/// Whether an event of `kind` may close input requests of its run: an
/// answer, or the run's end.
pub fn closes_inputs(kind: EventKind) -> bool {
    kind == EventKind::InputReceived || kind.is_terminal()
}

/// Who waits on the input requests of which run. A change to one run's
/// requests wakes that run's waiters only: with one wake-up for the whole
/// node, every run that ended woke every long poll of every waiting agent,
/// each to look its run up again, a cost that grew with the waiters.
#[derive(Default)]
pub struct InputWatch {
    runs: Mutex<HashMap<RunId, Arc<Notify>>>,
}

impl InputWatch {
    /// Registers a waiter on `run`'s requests until the answer is dropped.
    pub fn watch(self: &Arc<Self>, run: &RunId) -> RunWatch {
        let notify = self.runs.lock().entry(run.clone()).or_default().clone();
        RunWatch { watch: self.clone(), run: run.clone(), notify }
    }

    /// `run`'s requests may have changed: wakes its waiters.
    pub fn changed(&self, run: &RunId) {
        if let Some(notify) = self.runs.lock().get(run) {
            notify.notify_waiters();
        }
    }

    /// Runs with a waiter (bounded by the waiters: an entry goes with its last).
    pub fn watched_runs(&self) -> usize {
        self.runs.lock().len()
    }
}

/// One waiter's registration on a run's requests; dropping it ends it.
pub struct RunWatch {
    watch: Arc<InputWatch>,
    run: RunId,
    notify: Arc<Notify>,
}

impl RunWatch {
    /// What wakes this waiter.
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for RunWatch {
    fn drop(&mut self) {
        let mut runs = self.watch.runs.lock();
        // Counted under the lock every registration takes: two references
        // (the map's and this one) mean this was the run's last waiter.
        if Arc::strong_count(&self.notify) == 2 {
            runs.remove(&self.run);
        }
    }
}

/// How often a waiter looks again without a wake-up (a log without
/// [`Log::input_changes`], or a change this node did not see).
const POLL_WITHOUT_NOTICE: Duration = Duration::from_millis(100);
const POLL_WITH_NOTICE: Duration = Duration::from_secs(1);

/// Where `request_id` of `run_id` stands, waiting up to `wait` while it is
/// open; the default of [`Log::wait_input`].
pub async fn wait_for_status<L: Log + ?Sized>(
    log: &L,
    run_id: &str,
    request_id: &str,
    wait: Duration,
) -> Result<InputStatus, LogError> {
    let until = Instant::now() + wait;
    // Registered under the id the log knows the run by: the one its
    // committed events name.
    let watch = match log.input_changes() {
        Some(changes) => {
            let info = log.run(run_id).await?.ok_or_else(|| LogError::RunNotFound(run_id.to_owned()))?;
            Some(changes.watch(&info.run_id))
        }
        None => None,
    };
    let poll = if watch.is_some() { POLL_WITH_NOTICE } else { POLL_WITHOUT_NOTICE };
    let unwatched = Notify::new();
    let notify = watch.as_ref().map_or(&unwatched, RunWatch::notify);
    loop {
        // Registered before the look, so a change between the two still wakes us.
        let woken = notify.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let info = log.run(run_id).await?.ok_or_else(|| LogError::RunNotFound(run_id.to_owned()))?;
        let status =
            InputStatus::of(&info.inputs, request_id).ok_or_else(|| LogError::InputNotFound(request_id.to_owned()))?;
        let left = until.saturating_duration_since(Instant::now());
        if !matches!(status, InputStatus::Open(_)) || left.is_zero() {
            return Ok(status);
        }
        let _ = tokio::time::timeout(left.min(poll), woken).await;
    }
}

/// Waits up to `wait` for the answer to `request_id` of `run` (in `thread`).
pub async fn await_input<L: Log + ?Sized>(
    log: &L,
    run: &RunId,
    thread: &ThreadId,
    request_id: &str,
    wait: Duration,
) -> Result<InputOutcome, LogError> {
    match log.wait_input(run.as_str(), request_id, wait).await? {
        InputStatus::Open(_) => Ok(InputOutcome::Waiting),
        InputStatus::Closed => Ok(InputOutcome::Closed),
        InputStatus::Answered { answer_seq } => Ok(received_at(log, thread, answer_seq, request_id).await?),
    }
}

/// The data of the `input_received` at `seq`, if retention still keeps it.
async fn received_at<L: Log + ?Sized>(
    log: &L,
    thread: &ThreadId,
    seq: u64,
    request_id: &str,
) -> Result<InputOutcome, LogError> {
    let page = log.read(thread, seq.saturating_sub(1), 1).await?;
    let event = page.events.into_iter().find(|e| e.seq() == seq && e.kind() == EventKind::InputReceived);
    Ok(match event {
        Some(e) if e.envelope().data.get("request_id").and_then(Value::as_str) == Some(request_id) => {
            InputOutcome::Received(e.envelope().data.clone())
        }
        _ => InputOutcome::Closed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use serde_json::json;

    #[test]
    fn a_change_wakes_its_runs_waiters_only_and_an_entry_goes_with_its_last_waiter() {
        let watch = Arc::new(InputWatch::default());
        let (a, b) = (RunId::parse("run_a").unwrap(), RunId::parse("run_b").unwrap());
        let (first, second, other) = (watch.watch(&a), watch.watch(&a), watch.watch(&b));
        assert_eq!(watch.watched_runs(), 2);
        let mut woken = [first.notify(), second.notify(), other.notify()].map(|n| Box::pin(n.notified()));
        for w in &mut woken {
            w.as_mut().enable();
        }
        watch.changed(&a);
        let [w1, w2, w3] = woken.map(|w| w.now_or_never().is_some());
        assert!(w1 && w2, "both waiters of run_a wake");
        assert!(!w3, "run_b's waiter sleeps on");
        drop(first);
        assert_eq!(watch.watched_runs(), 2, "run_a still has a waiter");
        drop((second, other));
        assert_eq!(watch.watched_runs(), 0, "no waiter, no entry");
        watch.changed(&a);
        assert_eq!(watch.watched_runs(), 0, "a change of an unwatched run adds nothing");
    }

    /// A going run that asked `x` (answered by its timeout) and `y` (open).
    fn going() -> RunLifecycle {
        let ask = |id: &str| {
            let data = json!({"request_id": id, "kind": "choice", "prompt": "?", "options": ["a", "b"]});
            NewEvent::new(EventKind::InputRequested, data.as_object().cloned().unwrap_or_default())
        };
        let started = NewEvent::new(EventKind::AgentStarted, Map::new());
        let answer = OpenInput::from_request(&ask("x").data).timed_out("x");
        RunLifecycle::default().check_batch(&[started, ask("x"), ask("y"), answer], 0).unwrap()
    }

    fn inputs() -> RunInputs {
        going().inputs().clone()
    }

    fn answer(id: &str, value: Value) -> InputAnswer {
        InputAnswer { request_id: id.into(), run_id: None, answer: value, user: UserId::parse("u").unwrap() }
    }

    #[test]
    fn an_answer_is_decided_by_where_its_request_stands() {
        let inputs = inputs();
        let ok = answer_event(&inputs, &answer("y", json!({"choice": "b"}))).unwrap();
        assert_eq!(ok.data["answer"], json!({"choice": "b"}));
        assert!(matches!(answer_event(&inputs, &answer("y", json!({"choice": "c"}))), Err(LogError::BadAnswer(_))));
        assert!(matches!(answer_event(&inputs, &answer("x", json!({"choice": "a"}))), Err(LogError::InputClosed(_))));
        assert!(matches!(answer_event(&inputs, &answer("z", json!({}))), Err(LogError::InputNotFound(_))));
        assert_eq!(InputStatus::of(&inputs, "x"), Some(InputStatus::Answered { answer_seq: 4 }));
        assert!(matches!(InputStatus::of(&inputs, "y"), Some(InputStatus::Open(_))));
        assert_eq!(InputStatus::of(&inputs, "z"), None);
        let run = going();
        let asked = |id| asked_by_going_run(&run, id);
        assert!(asked("x") && asked("y") && !asked("z"));
        let ended = run.check_batch(&[NewEvent::agent_error("cancelled", "stop")], 4).unwrap();
        assert!(!asked_by_going_run(&ended, "y"), "an ended run is not searched");
    }

    #[test]
    fn only_lapsed_requests_are_answered_by_the_watchdog() {
        let inputs = inputs();
        let expiry = inputs.next_expiry().unwrap();
        assert!(lapsed(&inputs, expiry - 1).is_empty());
        let answered = lapsed(&inputs, expiry);
        assert_eq!(answered.len(), 1);
        assert_eq!((&answered[0].data["request_id"], &answered[0].data["answer"]), (&json!("y"), &Value::Null));
    }
}
