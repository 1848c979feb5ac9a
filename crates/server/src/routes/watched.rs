//! One run of a thread as a stream of its own: what the AG-UI route and the
//! AI SDK's UI message stream share.
//!
//! A route starts the configured agent (or finds the run that is going) and
//! watches the thread through the hub like any subscriber, from before the
//! run's first event, so nothing of the run can be missed; an encoder turns
//! the run's events into the format's own and says when the run is over.

use agentwire_agent::RunInput;
use agentwire_hub::{End, Feed, Next};
use agentwire_log::{NewRun, RunInfo, StoredEvent};
use agentwire_protocol::{Envelope, EventKind, RunId, RunStatus, ThreadId, UserId};
use futures_util::Stream;
use serde_json::Value;

use crate::auth::remaining;
use crate::error::ApiError;
use crate::state::AppState;

/// Turns one run's events into a format's messages.
pub(crate) trait RunEncoder: Send + 'static {
    /// The messages for one event of the thread (none for other runs' events).
    fn encode(&mut self, event: &Envelope) -> Vec<Value>;
    /// Whether the run's last message has been produced.
    fn ended(&self) -> bool;
    /// The messages due once a batch of events is encoded.
    fn batch_end(&mut self) -> Vec<Value> {
        Vec::new()
    }
}

impl RunEncoder for agentwire_protocol::agui::AguiStream {
    fn encode(&mut self, event: &Envelope) -> Vec<Value> {
        self.encode(event)
    }
    fn ended(&self) -> bool {
        self.ended()
    }
    fn batch_end(&mut self) -> Vec<Value> {
        self.batch_end()
    }
}

impl RunEncoder for agentwire_protocol::ui_message::UiMessageStream {
    fn encode(&mut self, event: &Envelope) -> Vec<Value> {
        self.encode(event)
    }
    fn ended(&self) -> bool {
        self.ended()
    }
}

/// A feed for `user` (token valid until `exp`) that watches `thread` after `after_seq`.
pub(crate) async fn watch(state: &AppState, exp: u64, thread: &ThreadId, after_seq: u64) -> Result<Feed, ApiError> {
    let (conn, outbox) = state.hub.connect();
    let (log, page, closing) = (state.log.clone(), state.config.replay_page, state.closing.clone());
    let mut feed = Feed::new(conn, outbox, log, page, closing, remaining(exp));
    feed.subscribe(thread, after_seq).await?;
    Ok(feed)
}

/// Starts the configured agent on `text` in `thread` for `user`, watching the
/// thread from its current head first. Every quota and the engine's place are
/// taken before anything is written, so a refusal leaves nothing behind.
pub(crate) async fn start_run(
    state: &AppState,
    user: &UserId,
    exp: u64,
    thread: &ThreadId,
    run_id: Option<RunId>,
    input: RunInput,
) -> Result<(Feed, RunId), ApiError> {
    let engine = state.agent_engine()?;
    let (runs, threads) = state.user_run_charges(user, thread).await?;
    let slot = engine.reserve(user)?;
    state.log.ensure_thread(thread, user).await?;
    let head = state.log.read(thread, 0, 0).await?.head_seq;
    let feed = watch(state, exp, thread, head).await?;
    let new = NewRun {
        thread_id: thread.clone(),
        owner: user.clone(),
        agent_name: Some(engine.agent_name().to_owned()),
        in_process: true,
        run_id,
    };
    // A thread with a run going: as the server's double-texting setting says.
    let (run, queued) = crate::routes::threads::register(state, new, state.config.double_texting).await?;
    let run_id = run.run_id.clone();
    crate::routes::threads::start(engine, slot, run, input, queued)?;
    runs.keep();
    threads.keep();
    Ok((feed, run_id))
}

/// Events looked back over at most, to find where the running run began: a
/// resume costs at most two history pages' worth of reading (a run longer
/// than this is resumed from this far back).
const LOOK_BACK: u64 = 20_000;
/// Events read per step of that look.
const LOOK_BACK_PAGE: u64 = 1_000;

/// The run going on in `thread` (the run of its last event, if still
/// running) and the seq just before its `agent_started`, watched from there.
pub(crate) async fn attach_running(
    state: &AppState,
    exp: u64,
    thread: &ThreadId,
) -> Result<Option<(Feed, RunId)>, ApiError> {
    let Some((run, head)) = running_run(state, thread).await? else { return Ok(None) };
    let run_id = run.run_id;
    let started = started_at(state, thread, &run_id, head).await?;
    let feed = watch(state, exp, thread, started.saturating_sub(1)).await?;
    Ok(Some((feed, run_id)))
}

/// The run going on in `thread` (the run of its last event, if still
/// running), with the thread's head.
pub(crate) async fn running_run(state: &AppState, thread: &ThreadId) -> Result<Option<(RunInfo, u64)>, ApiError> {
    let head = state.log.read(thread, 0, 0).await?.head_seq;
    let last = state.log.read(thread, head.saturating_sub(1), 1).await?;
    let Some(last) = last.events.first() else { return Ok(None) };
    let run = state.log.run(last.run_id().as_str()).await?.filter(|r| r.status == RunStatus::Running);
    Ok(run.map(|run| (run, head)))
}

/// The runs of `thread` that wait on requests of their own (running, with
/// open input requests), with the thread's head: any of its running runs, not
/// only the run of its last event, since runs of one thread interleave.
pub(crate) async fn waiting_runs(state: &AppState, thread: &ThreadId) -> Result<(Vec<RunInfo>, u64), ApiError> {
    let head = state.log.read(thread, 0, 0).await?.head_seq;
    let mut waiting = Vec::new();
    for run in state.log.running_runs(thread).await? {
        let info = state.log.run(run.as_str()).await?;
        waiting.extend(info.filter(|r| r.status == RunStatus::Running && !r.inputs.open.is_empty()));
    }
    Ok((waiting, head))
}

/// The seq of `run`'s `agent_started`, looking back from `head` (the oldest
/// seq looked at when it is further back than [`LOOK_BACK`]).
async fn started_at(state: &AppState, thread: &ThreadId, run: &RunId, head: u64) -> Result<u64, ApiError> {
    let floor = head.saturating_sub(LOOK_BACK);
    let mut upto = head;
    while upto > floor {
        let from = upto.saturating_sub(LOOK_BACK_PAGE).max(floor);
        let mut events: Vec<std::sync::Arc<StoredEvent>> = Vec::new();
        // Pages may stop early at their byte budget: read on to `upto`.
        let mut after = from;
        while after < upto {
            let page = state.log.read(thread, after, usize::try_from(upto - after).unwrap_or(usize::MAX)).await?;
            let Some(last) = page.events.last() else { break };
            after = last.seq();
            events.extend(page.events);
        }
        if let Some(start) = events.iter().find(|e| e.run_id() == run && e.kind() == EventKind::AgentStarted) {
            return Ok(start.seq());
        }
        upto = from;
    }
    Ok(floor + 1)
}

/// The run's messages in order until it ends, or until the feed does (the
/// run goes on whatever ends this stream: shutdown, a slow reader, the token
/// expiring, the thread deleted or rewritten).
pub(crate) fn run_messages<E: RunEncoder>(mut feed: Feed, mut encoder: E) -> impl Stream<Item = Value> {
    async_stream::stream! {
        while !encoder.ended() {
            let (events, last) = match feed.next().await {
                Next::Replay(events) | Next::Live(events) => (events, false),
                // What was appended before shutdown still goes out.
                Next::End(End::Shutdown(events)) => (events, true),
                Next::Deleted(_) | Next::Reset { .. } | Next::End(_) => break,
            };
            for stored in &events {
                for message in encoder.encode(stored.envelope()) {
                    yield message;
                }
            }
            for message in encoder.batch_end() {
                yield message;
            }
            if last {
                break;
            }
        }
    }
}
