//! The run context: the only way an in-process agent reports what it does.
//!
//! The context, not the agent, owns the lifecycle: the engine emits
//! `agent_started` before the agent runs and the terminal event after it
//! returns, and a [`ToolGuard`] always ends its call with `tool_completed`. An
//! agent cannot emit a terminal event itself, so a run has exactly one.
//!
//! Emits go through one async lock and every emit first flushes the
//! `tool_completed` events that dropped guards left behind, so the order the
//! agent did things in is the order the log stores them in.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use agentwire_log::{Log, LogError};
use agentwire_protocol::{EventKind, LifecycleError, NewEvent, RunId, ThreadId};
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// An emit that did not reach the log.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    /// The run was ended from outside (cancelled, timed out): stop working.
    #[error("the run has ended")]
    RunEnded,
    #[error(transparent)]
    Log(#[from] LogError),
}

pub(crate) struct ContextInner {
    log: Arc<dyn Log>,
    run_id: RunId,
    thread_id: ThreadId,
    /// Serializes emits so that pending tool completions go out in order.
    emitter: tokio::sync::Mutex<()>,
    /// `tool_completed` events of guards dropped without a result.
    pending: Mutex<Vec<NewEvent>>,
    next_id: AtomicU64,
    stop: CancellationToken,
}

/// What an agent gets for one run. Cheap to clone.
#[derive(Clone)]
pub struct RunContext {
    inner: Arc<ContextInner>,
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

impl RunContext {
    pub(crate) fn new(log: Arc<dyn Log>, run_id: RunId, thread_id: ThreadId, stop: CancellationToken) -> Self {
        Self {
            inner: Arc::new(ContextInner {
                log,
                run_id,
                thread_id,
                emitter: tokio::sync::Mutex::new(()),
                pending: Mutex::new(Vec::new()),
                next_id: AtomicU64::new(1),
                stop,
            }),
        }
    }

    /// This run's id.
    pub fn run_id(&self) -> &RunId {
        &self.inner.run_id
    }

    /// The thread this run belongs to.
    pub fn thread_id(&self) -> &ThreadId {
        &self.inner.thread_id
    }

    /// Resolves when the run is stopped from outside (cancel, timeout, shutdown).
    pub fn stopped(&self) -> WaitForCancellationFuture<'_> {
        self.inner.stop.cancelled()
    }

    /// The log this run appends to.
    pub(crate) fn log(&self) -> &dyn Log {
        &*self.inner.log
    }

    pub(crate) fn next_id(&self, prefix: &str) -> String {
        format!("{prefix}_{}", self.inner.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Appends `events` after any pending tool completions, in one publish.
    pub(crate) async fn emit_all(&self, events: Vec<NewEvent>) -> Result<Vec<u64>, EmitError> {
        let _turn = self.inner.emitter.lock().await;
        let mut batch = std::mem::take(&mut *self.inner.pending.lock());
        batch.extend(events);
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        match self.inner.log.append(self.inner.run_id.as_str(), batch).await {
            Ok(appended) => Ok(appended.seqs),
            Err(LogError::Lifecycle(LifecycleError::Ended)) => {
                // Ended from outside: the engine drops the agent's future.
                self.inner.stop.cancel();
                Err(EmitError::RunEnded)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn emit(&self, kind: EventKind, data: Value) -> Result<(), EmitError> {
        self.emit_all(vec![NewEvent::new(kind, object(data))]).await.map(drop)
    }

    /// Shares a step of reasoning (`agent_thinking`).
    pub async fn thinking(&self, thought: impl Into<String>) -> Result<(), EmitError> {
        self.emit(EventKind::AgentThinking, json!({ "thought": thought.into() })).await
    }

    /// Shares a numbered step of reasoning.
    pub async fn thinking_step(&self, thought: impl Into<String>, step: u64) -> Result<(), EmitError> {
        self.emit(EventKind::AgentThinking, json!({ "thought": thought.into(), "step": step })).await
    }

    /// Begins a streamed answer; each [`MessageStream::delta`] is one `agent_message`.
    pub fn message(&self) -> MessageStream {
        MessageStream { ctx: self.clone(), message_id: self.next_id("msg") }
    }

    /// Begins a tool call (`tool_executing`). The guard ends it with
    /// `tool_completed`: through [`ToolGuard::complete`] or [`ToolGuard::fail`],
    /// or, if it is dropped first, with an error saying so.
    pub async fn tool(&self, tool_name: &str, args: Value) -> Result<ToolGuard, EmitError> {
        let tool_call_id = self.next_id("call");
        let data = json!({ "tool_call_id": tool_call_id, "tool_name": tool_name, "args": args });
        self.emit(EventKind::ToolExecuting, data).await?;
        Ok(ToolGuard { ctx: self.clone(), tool_call_id, started: Instant::now(), done: false })
    }

    /// Runs `work` as a tool call: `tool_executing`, then `tool_completed` with its
    /// result or its error (or a panic's, since the guard covers unwinding).
    pub async fn call_tool<T, E, F>(&self, tool_name: &str, args: Value, work: F) -> Result<Result<T, E>, EmitError>
    where
        F: Future<Output = Result<T, E>>,
        T: serde::Serialize,
        E: std::fmt::Display,
    {
        let guard = self.tool(tool_name, args).await?;
        let outcome = work.await;
        match &outcome {
            Ok(value) => guard.complete(serde_json::to_value(value).unwrap_or(Value::Null)).await?,
            Err(e) => guard.fail(e.to_string()).await?,
        }
        Ok(outcome)
    }

    /// Flushes what dropped guards left, from a task of its own: a guard dropped
    /// while the agent waits on something else should not wait for the next emit.
    fn flush_soon(&self) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let ctx = self.clone();
            rt.spawn(async move {
                if let Err(e) = ctx.emit_all(Vec::new()).await {
                    tracing::debug!(run_id = %ctx.run_id(), error = %e, "could not flush a dropped tool call");
                }
            });
        }
    }
}

/// A streamed answer: one `message_id`, many deltas.
pub struct MessageStream {
    ctx: RunContext,
    message_id: String,
}

impl MessageStream {
    /// The id that groups this answer's deltas.
    pub fn message_id(&self) -> &str {
        &self.message_id
    }

    /// Sends the next piece of text.
    pub async fn delta(&self, text: impl Into<String>) -> Result<(), EmitError> {
        let data = json!({ "message_id": self.message_id, "delta": text.into() });
        self.ctx.emit(EventKind::AgentMessage, data).await
    }
}

/// An open tool call. It always ends with `tool_completed`.
#[must_use = "a tool call ends when its guard completes, fails or is dropped"]
pub struct ToolGuard {
    ctx: RunContext,
    tool_call_id: String,
    started: Instant,
    done: bool,
}

impl ToolGuard {
    /// The call's id.
    pub fn tool_call_id(&self) -> &str {
        &self.tool_call_id
    }

    fn completion(&self, result: Value, error: Value) -> NewEvent {
        let duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let data =
            json!({ "tool_call_id": self.tool_call_id, "result": result, "error": error, "duration_ms": duration_ms });
        NewEvent::new(EventKind::ToolCompleted, object(data))
    }

    async fn finish(mut self, result: Value, error: Value) -> Result<(), EmitError> {
        self.done = true;
        let event = self.completion(result, error);
        self.ctx.emit_all(vec![event]).await.map(drop)
    }

    /// Ends the call with its result.
    pub async fn complete(self, result: Value) -> Result<(), EmitError> {
        self.finish(result, Value::Null).await
    }

    /// Ends the call with an error.
    pub async fn fail(self, error: impl Into<String>) -> Result<(), EmitError> {
        self.finish(Value::Null, Value::String(error.into())).await
    }
}

impl Drop for ToolGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let why = if std::thread::panicking() {
            "the tool panicked"
        } else {
            "the tool call ended without a result (the agent returned, failed or was stopped)"
        };
        let event = self.completion(Value::Null, Value::String(why.to_owned()));
        self.ctx.inner.pending.lock().push(event);
        self.ctx.flush_soon();
    }
}
