//! The execution engine: runs in-process agents and guarantees their lifecycle.
//!
//! For each run it emits `agent_started` (after the user's message, when there
//! is one), drives the agent with a [`RunContext`], and appends exactly one
//! terminal event: `agent_completed` with what the agent returned, or
//! `agent_error` when it failed, panicked, or the server shut down under it. A
//! cancelled run is already ended by the log; the engine just stops it.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentwire_log::{Log, RunInfo};
use agentwire_protocol::{EventKind, NewEvent, RunId};
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
}

/// Runs agents; owns their tasks and can stop them.
pub struct Engine {
    log: Arc<dyn Log>,
    agent: Arc<dyn Agent>,
    tasks: TaskTracker,
    running: Arc<Mutex<HashMap<RunId, CancellationToken>>>,
    shutdown: CancellationToken,
}

impl Engine {
    /// An engine that runs `agent`, appending to `log`.
    pub fn new(log: Arc<dyn Log>, agent: Arc<dyn Agent>) -> Self {
        Self {
            log,
            agent,
            tasks: TaskTracker::new(),
            running: Arc::new(Mutex::new(HashMap::new())),
            shutdown: CancellationToken::new(),
        }
    }

    /// The configured agent's name.
    pub fn agent_name(&self) -> &str {
        self.agent.name()
    }

    /// Runs in flight in this engine.
    pub fn running(&self) -> usize {
        self.running.lock().len()
    }

    /// Starts `run` in a task of its own; `false` once the engine is shutting down.
    pub fn start(&self, run: RunInfo, input: RunInput) -> bool {
        if self.shutdown.is_cancelled() {
            return false;
        }
        let stop = CancellationToken::new();
        self.running.lock().insert(run.run_id.clone(), stop.clone());
        let (log, agent, running, shutdown) =
            (self.log.clone(), self.agent.clone(), self.running.clone(), self.shutdown.clone());
        self.tasks.spawn(async move {
            let run_id = run.run_id.clone();
            drive(log, agent, run, input, stop, shutdown).await;
            running.lock().remove(&run_id);
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

fn started_events(agent_name: &str, input: &RunInput) -> Vec<NewEvent> {
    let mut events = Vec::with_capacity(2);
    if let Some(text) = &input.user_message {
        events.push(NewEvent::new(
            EventKind::UserMessage,
            json!({ "text": text }).as_object().cloned().unwrap_or_default(),
        ));
    }
    let started = json!({ "agent_name": agent_name, "input": input.user_message });
    events.push(NewEvent::new(EventKind::AgentStarted, started.as_object().cloned().unwrap_or_default()));
    events
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

async fn drive(
    log: Arc<dyn Log>,
    agent: Arc<dyn Agent>,
    run: RunInfo,
    input: RunInput,
    stop: CancellationToken,
    shutdown: CancellationToken,
) {
    let began = Instant::now();
    let ctx = RunContext::new(log, run.run_id.clone(), run.thread_id.clone(), stop.clone());
    if let Err(e) = ctx.emit_all(started_events(agent.name(), &input)).await {
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
