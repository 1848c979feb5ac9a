//! The execution engine: runs in-process agents and guarantees their lifecycle.
//!
//! For each run it emits `agent_started` (after the user's message, when there
//! is one), drives the agent with a [`RunContext`], and appends exactly one
//! terminal event: `agent_completed` with what the agent returned, or
//! `agent_error` when it failed, panicked, or the server shut down under it. A
//! cancelled run is already ended by the log; the engine just stops it.
//!
//! Its [`EngineLimits`] bound what users can make it do: runs at once per user
//! (a [`RunSlot`] is reserved before the run is registered, so a refusal leaves
//! nothing behind), how long a run may last (`agent_error {code:"timeout"}`), and
//! how long a run may go on while no one watches its thread (`cancelled`).
//!
//! A run can also be queued behind its thread ([`Engine::enqueue`]): its
//! user's message is appended at once, marked `queued`, and the run starts
//! once no other run of the thread is going and those queued before it have
//! started, as the log tells (so runs going on other nodes count too).

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentwire_log::{Log, RunInfo};
use agentwire_protocol::{EventKind, NewEvent, RunId, ThreadId, UserId};
use async_trait::async_trait;
use futures_util::FutureExt;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::context::RunContext;

/// What an agent is asked to do.
#[derive(Debug, Clone, Default)]
pub struct RunInput {
    /// The user's message that started the run, if a user started it; it is
    /// appended as `user_message` just before `agent_started`.
    pub user_message: Option<String>,
    /// Anything else the caller passes (AG-UI context, state, …).
    pub extra: Value,
}

/// Why an agent's run failed; becomes `agent_error {code, message}`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    /// One of `failed`, `cancelled`, `timeout`, `worker_lost`.
    pub code: &'static str,
    pub message: String,
}

impl AgentError {
    /// A plain failure (`code: "failed"`).
    pub fn failed(message: impl Into<String>) -> Self {
        Self { code: "failed", message: message.into() }
    }
}

impl From<crate::context::EmitError> for AgentError {
    fn from(e: crate::context::EmitError) -> Self {
        Self::failed(e.to_string())
    }
}

/// An agent that runs inside the server process.
#[async_trait]
pub trait Agent: Send + Sync + 'static {
    /// The name in `agent_started`.
    fn name(&self) -> &str;

    /// Does the work, reporting through `ctx`; what it returns is the run's result.
    async fn run(&self, ctx: &RunContext, input: RunInput) -> Result<Value, AgentError>;
}

enum Outcome {
    Returned(Result<Value, AgentError>),
    Panicked(String),
    Stopped,
    ShuttingDown,
    /// Ended by the engine: `agent_error {code, message}`.
    Limited(&'static str, String),
}

/// Whether a thread has a watcher (the hub answers for its node).
pub type Watched = Arc<dyn Fn(&ThreadId) -> bool + Send + Sync>;

/// What the engine lets users make it do. The default limits nothing.
#[derive(Clone, Default)]
pub struct EngineLimits {
    /// Runs one user may have going at once (0: no limit).
    pub max_runs_per_user: usize,
    /// Longest a run may go on before it ends with `timeout`.
    pub max_duration: Option<Duration>,
    /// A run whose thread has no watcher for this long is cancelled, as `watched` tells.
    pub unwatched: Option<(Duration, Watched)>,
}

/// Why a run could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("at most {0} runs may be going at once per user")]
    TooManyRuns(usize),
    #[error("the server is shutting down")]
    ShuttingDown,
}

type RunCounts = Arc<Mutex<HashMap<UserId, usize>>>;
/// Runs waiting for their thread, per thread, in the order they came.
type Queues = Arc<Mutex<HashMap<ThreadId, VecDeque<RunId>>>>;

/// How often a queued run looks whether its turn has come (two reads of the
/// log each time: on a shared engine, two round trips).
const QUEUE_POLL: Duration = Duration::from_millis(200);

/// A place for one run of one user, reserved before the run is registered;
/// dropping it (the run ended, or was never started) frees the place.
pub struct RunSlot {
    counts: RunCounts,
    user: UserId,
}

impl Drop for RunSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        if let Some(n) = counts.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

/// Runs agents; owns their tasks and can stop them.
pub struct Engine {
    log: Arc<dyn Log>,
    agent: Arc<dyn Agent>,
    limits: EngineLimits,
    tasks: TaskTracker,
    running: Arc<Mutex<HashMap<RunId, CancellationToken>>>,
    per_user: RunCounts,
    queues: Queues,
    shutdown: CancellationToken,
}

impl Engine {
    /// An engine that runs `agent`, appending to `log`, with no limits.
    pub fn new(log: Arc<dyn Log>, agent: Arc<dyn Agent>) -> Self {
        Self::with_limits(log, agent, EngineLimits::default())
    }

    /// An engine that runs `agent` within `limits`.
    pub fn with_limits(log: Arc<dyn Log>, agent: Arc<dyn Agent>, limits: EngineLimits) -> Self {
        Self {
            log,
            agent,
            limits,
            tasks: TaskTracker::new(),
            running: Arc::new(Mutex::new(HashMap::new())),
            per_user: Arc::new(Mutex::new(HashMap::new())),
            queues: Arc::new(Mutex::new(HashMap::new())),
            shutdown: CancellationToken::new(),
        }
    }

    /// Reserves a place for one more run of `user`, before its run is registered.
    pub fn reserve(&self, user: &UserId) -> Result<RunSlot, StartError> {
        if self.shutdown.is_cancelled() {
            return Err(StartError::ShuttingDown);
        }
        let max = self.limits.max_runs_per_user;
        let mut counts = self.per_user.lock();
        let n = counts.entry(user.clone()).or_insert(0);
        if max > 0 && *n >= max {
            if *n == 0 {
                counts.remove(user);
            }
            return Err(StartError::TooManyRuns(max));
        }
        *n += 1;
        Ok(RunSlot { counts: self.per_user.clone(), user: user.clone() })
    }

    /// The configured agent's name.
    pub fn agent_name(&self) -> &str {
        self.agent.name()
    }

    /// Runs in flight in this engine.
    pub fn running(&self) -> usize {
        self.running.lock().len()
    }

    /// Starts `run` in a task of its own, holding `slot` until it ends; `false`
    /// once the engine is shutting down.
    pub fn start(&self, slot: RunSlot, run: RunInfo, input: RunInput) -> bool {
        if self.shutdown.is_cancelled() {
            return false;
        }
        let stop = CancellationToken::new();
        self.running.lock().insert(run.run_id.clone(), stop.clone());
        let (log, agent, running, shutdown) =
            (self.log.clone(), self.agent.clone(), self.running.clone(), self.shutdown.clone());
        let limits = self.limits.clone();
        self.tasks.spawn(async move {
            let run_id = run.run_id.clone();
            drive(log, agent, &limits, run, input, stop, shutdown, false).await;
            running.lock().remove(&run_id);
            drop(slot);
        });
        true
    }

    /// Queues `run` behind the runs going in its thread, holding `slot`: its
    /// user's message is appended now, marked `queued`, and the run starts
    /// once nothing else of the thread is going and every run queued before it
    /// here has started. A queued run that is cancelled (or times out) while it
    /// waits is dropped from the queue; one the server's shutdown finds waiting
    /// ends with `worker_lost`. `false` once the engine is shutting down.
    pub fn enqueue(&self, slot: RunSlot, run: RunInfo, input: RunInput) -> bool {
        if self.shutdown.is_cancelled() {
            return false;
        }
        let stop = CancellationToken::new();
        self.running.lock().insert(run.run_id.clone(), stop.clone());
        self.queues.lock().entry(run.thread_id.clone()).or_default().push_back(run.run_id.clone());
        let (log, agent, running, shutdown) =
            (self.log.clone(), self.agent.clone(), self.running.clone(), self.shutdown.clone());
        let (queues, limits) = (self.queues.clone(), self.limits.clone());
        self.tasks.spawn(async move {
            let run_id = run.run_id.clone();
            let turn = wait_turn(&*log, &queues, &run, &input, &stop, &shutdown).await;
            leave_queue(&queues, &run);
            if turn {
                drive(log, agent, &limits, run, input, stop, shutdown, true).await;
            }
            running.lock().remove(&run_id);
            drop(slot);
        });
        true
    }

    /// Stops an in-process run (its log entry is ended by whoever asked). `false`
    /// if this engine is not running it.
    pub fn stop(&self, run_id: &str) -> bool {
        match self.running.lock().get(run_id) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// Stops every run with `agent_error {code:"worker_lost"}` and waits up to
    /// `grace` for their tasks to finish.
    pub async fn shutdown(&self, grace: Duration) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_err() {
            tracing::warn!(left = self.running(), "agent runs did not stop within the shutdown grace period");
        }
    }
}

fn user_message(text: &str, queued: bool) -> NewEvent {
    let data = if queued { json!({ "text": text, "queued": true }) } else { json!({ "text": text }) };
    NewEvent::new(EventKind::UserMessage, data.as_object().cloned().unwrap_or_default())
}

/// `user_message` (unless it was appended when the run was queued) and `agent_started`.
fn started_events(agent_name: &str, input: &RunInput, said: bool) -> Vec<NewEvent> {
    let mut events = Vec::with_capacity(2);
    if let Some(text) = input.user_message.as_deref().filter(|_| !said) {
        events.push(user_message(text, false));
    }
    let started = json!({ "agent_name": agent_name, "input": input.user_message });
    events.push(NewEvent::new(EventKind::AgentStarted, started.as_object().cloned().unwrap_or_default()));
    events
}

/// Takes `run` out of its thread's queue (and the thread out of the map once empty).
fn leave_queue(queues: &Queues, run: &RunInfo) {
    let mut queues = queues.lock();
    if let Some(queue) = queues.get_mut(&run.thread_id) {
        queue.retain(|r| r != &run.run_id);
        if queue.is_empty() {
            queues.remove(&run.thread_id);
        }
    }
}

/// Appends the queued run's message, then waits until it is first in its
/// thread's queue and no run of the thread outside the queue is going;
/// `false` if it is not to start (cancelled or ended while it waited, or the
/// server shutting down, which ends it with `worker_lost`).
async fn wait_turn(
    log: &dyn Log,
    queues: &Queues,
    run: &RunInfo,
    input: &RunInput,
    stop: &CancellationToken,
    shutdown: &CancellationToken,
) -> bool {
    let said = match &input.user_message {
        Some(text) => log.append(run.run_id.as_str(), vec![user_message(text, true)]).await.map(drop),
        None => Ok(()),
    };
    if let Err(e) = said {
        tracing::warn!(run_id = %run.run_id, error = %e, "could not queue the run");
        let _ =
            log.append(run.run_id.as_str(), vec![NewEvent::agent_error("failed", "the run could not be queued")]).await;
        return false;
    }
    loop {
        tokio::select! {
            () = tokio::time::sleep(QUEUE_POLL) => {}
            () = stop.cancelled() => return false,
            () = shutdown.cancelled() => {
                let lost = NewEvent::agent_error("worker_lost", "the server shut down before the run's turn came");
                let _ = log.append(run.run_id.as_str(), vec![lost]).await;
                return false;
            }
        }
        let queued: Vec<RunId> =
            queues.lock().get(&run.thread_id).map(|q| q.iter().cloned().collect()).unwrap_or_default();
        if queued.first() != Some(&run.run_id) {
            continue;
        }
        match log.run(run.run_id.as_str()).await {
            Ok(Some(info)) if info.status == agentwire_protocol::RunStatus::Running => {}
            Ok(_) => return false,
            Err(e) => {
                tracing::debug!(run_id = %run.run_id, error = %e, "a queued run could not look at its thread");
                continue;
            }
        }
        match log.running_runs(&run.thread_id).await {
            Ok(going) if going.iter().all(|r| queued.contains(r)) => return true,
            Ok(_) => {}
            Err(e) => tracing::debug!(run_id = %run.run_id, error = %e, "a queued run could not look at its thread"),
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// Resolves when the run has gone on for longer than the engine allows.
async fn past_duration(limits: &EngineLimits) -> Outcome {
    match limits.max_duration {
        Some(max) => {
            tokio::time::sleep(max).await;
            Outcome::Limited("timeout", format!("the run went on for longer than {} s", max.as_secs_f64()))
        }
        None => std::future::pending().await,
    }
}

/// Resolves when `thread` has had no watcher for the engine's unwatched timeout.
async fn unwatched_for(limits: &EngineLimits, thread: &ThreadId) -> Outcome {
    let Some((timeout, watched)) = &limits.unwatched else { return std::future::pending().await };
    let step = (*timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut alone_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(step).await;
        if watched(thread) {
            alone_since = None;
        } else if alone_since.get_or_insert_with(Instant::now).elapsed() >= *timeout {
            let message = format!("no one watched the thread for {} s", timeout.as_secs_f64());
            return Outcome::Limited("cancelled", message);
        }
    }
}

/// Runs the agent on `run` and ends the run; `said`: its user's message was
/// appended already (when it was queued).
// One task's inputs, each used once: a struct would only rename them.
#[allow(clippy::too_many_arguments)]
async fn drive(
    log: Arc<dyn Log>,
    agent: Arc<dyn Agent>,
    limits: &EngineLimits,
    run: RunInfo,
    input: RunInput,
    stop: CancellationToken,
    shutdown: CancellationToken,
    said: bool,
) {
    let began = Instant::now();
    let ctx = RunContext::new(log, run.run_id.clone(), run.thread_id.clone(), stop.clone());
    if let Err(e) = ctx.emit_all(started_events(agent.name(), &input, said)).await {
        tracing::warn!(run_id = %run.run_id, error = %e, "could not start the run");
        return;
    }
    let outcome = {
        let work = AssertUnwindSafe(agent.run(&ctx, input)).catch_unwind();
        tokio::select! {
            result = work => match result {
                Ok(returned) => Outcome::Returned(returned),
                Err(panic) => Outcome::Panicked(panic_message(&*panic)),
            },
            _ = stop.cancelled() => Outcome::Stopped,
            _ = shutdown.cancelled() => Outcome::ShuttingDown,
            limited = past_duration(limits) => limited,
            limited = unwatched_for(limits, &run.thread_id) => limited,
        }
        // The agent's future is dropped here: its open tool guards queue their completions.
    };
    let duration_ms = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX);
    let terminal = match outcome {
        Outcome::Returned(Ok(result)) => {
            let data = json!({ "result": result, "duration_ms": duration_ms });
            NewEvent::new(EventKind::AgentCompleted, data.as_object().cloned().unwrap_or_default())
        }
        Outcome::Returned(Err(e)) => NewEvent::agent_error(e.code, e.message),
        Outcome::Panicked(message) => NewEvent::agent_error("failed", format!("the agent panicked: {message}")),
        Outcome::ShuttingDown => NewEvent::agent_error("worker_lost", "the server shut down during the run"),
        Outcome::Limited(code, message) => NewEvent::agent_error(code, message),
        Outcome::Stopped => {
            // Ended from outside; flush what dropped guards left (the log refuses it if the run is over).
            let _ = ctx.emit_all(Vec::new()).await;
            return;
        }
    };
    match ctx.emit_all(vec![terminal]).await {
        Ok(_) | Err(crate::context::EmitError::RunEnded) => {}
        Err(e) => {
            // agent_completed is refused while a tool call is open (a guard kept
            // alive past the run): agent_error is always allowed.
            tracing::warn!(run_id = %run.run_id, error = %e, "terminal event refused; ending the run with agent_error");
            let fallback = NewEvent::agent_error("failed", format!("the run could not complete: {e}"));
            if let Err(e) = ctx.emit_all(vec![fallback]).await {
                tracing::error!(run_id = %run.run_id, error = %e, "could not end the run");
            }
        }
    }
}
