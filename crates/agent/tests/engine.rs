//! The engine's lifecycle guarantees, checked against the in-memory log.

use std::sync::Arc;
use std::time::Duration;

use agentwire_agent::{Agent, AgentError, DemoAgent, Engine, EngineLimits, RunContext, RunInput, StartError};
use agentwire_log::{Log, LogConfig, MemoryLog, NewRun, NoFeed, RunInfo};
use agentwire_protocol::{EventKind, NewEvent, RunStatus, ThreadId, UserId};
use async_trait::async_trait;
use serde_json::{Value, json};

type Script = fn(&RunContext) -> std::pin::Pin<Box<dyn Future<Output = Result<Value, AgentError>> + Send + '_>>;

/// An agent whose behaviour each test picks.
struct Scripted(Script);

#[async_trait]
impl Agent for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }
    async fn run(&self, ctx: &RunContext, _input: RunInput) -> Result<Value, AgentError> {
        (self.0)(ctx).await
    }
}

/// A fresh in-memory log with one registered run.
async fn new_run(thread: &str) -> (Arc<dyn Log>, ThreadId, RunInfo) {
    let log: Arc<dyn Log> = Arc::new(MemoryLog::new(LogConfig::default(), Arc::new(NoFeed)).unwrap());
    let thread = ThreadId::parse(thread).unwrap();
    let new = NewRun {
        thread_id: thread.clone(),
        owner: UserId::parse("u").unwrap(),
        agent_name: None,
        in_process: false,
        run_id: None,
    };
    let run = log.create_run(new).await.unwrap();
    (log, thread, run)
}

async fn run_to_end(agent: Arc<dyn Agent>, text: &str) -> (Vec<(EventKind, Value)>, RunInfo) {
    let (log, thread, run) = new_run("thread_engine").await;
    let engine = Engine::new(log.clone(), agent);
    let slot = engine.reserve(&run.owner).unwrap();
    assert!(engine.start(slot, run.clone(), RunInput { user_message: Some(text.into()), extra: Value::Null }));
    for _ in 0..500 {
        if engine.running() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Let any spawned flush land.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let page = log.read(&thread, 0, 1000).await.unwrap();
    let events = page.events.iter().map(|e| (e.kind(), Value::Object(e.envelope().data.clone()))).collect();
    let info = log.run(run.run_id.as_str()).await.unwrap().unwrap();
    (events, info)
}

fn kinds(events: &[(EventKind, Value)]) -> Vec<EventKind> {
    events.iter().map(|(k, _)| *k).collect()
}

fn terminal_count(events: &[(EventKind, Value)]) -> usize {
    events.iter().filter(|(k, _)| k.is_terminal()).count()
}

#[tokio::test]
async fn the_demo_agent_produces_every_critical_event_in_order() {
    let (events, info) = run_to_end(Arc::new(DemoAgent { step_delay: Duration::ZERO }), "what is 6 * 7?").await;
    let ks = kinds(&events);
    assert_eq!(&ks[..3], &[EventKind::UserMessage, EventKind::AgentStarted, EventKind::AgentThinking]);
    for k in [EventKind::ToolExecuting, EventKind::ToolCompleted, EventKind::AgentMessage] {
        assert!(ks.contains(&k), "{k} missing from {ks:?}");
    }
    assert_eq!(ks.last(), Some(&EventKind::AgentCompleted));
    let calc = events.iter().find(|(k, d)| *k == EventKind::ToolCompleted && d["result"] == json!(42));
    assert!(calc.is_some(), "calculator result 42 in {events:?}");
    let answer: String = events
        .iter()
        .filter(|(k, _)| *k == EventKind::AgentMessage)
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert!(answer.contains("6 * 7 = 42"), "{answer}");
    assert_eq!(info.status, RunStatus::Completed);
}

#[tokio::test]
async fn an_agent_error_ends_the_run_once_with_agent_error() {
    let (events, info) = run_to_end(Arc::new(DemoAgent { step_delay: Duration::ZERO }), "/fail please").await;
    assert_eq!(terminal_count(&events), 1);
    let (kind, data) = events.last().unwrap();
    assert_eq!((*kind, data["code"].as_str()), (EventKind::AgentError, Some("failed")));
    assert_eq!(info.status, RunStatus::Error);
}

#[tokio::test]
async fn a_panic_inside_a_tool_still_closes_the_tool_and_ends_the_run() {
    let (events, _) = run_to_end(Arc::new(DemoAgent { step_delay: Duration::ZERO }), "/panic").await;
    let ks = kinds(&events);
    let n = ks.len();
    assert_eq!(&ks[n - 2..], &[EventKind::ToolCompleted, EventKind::AgentError], "{ks:?}");
    assert_eq!(events[n - 2].1["error"], "the tool panicked");
    assert!(events[n - 1].1["message"].as_str().unwrap().contains("panicked"));
    assert_eq!(terminal_count(&events), 1);
}

#[tokio::test]
async fn a_tool_guard_dropped_by_an_early_return_reports_an_error() {
    let agent = Scripted(|ctx| {
        Box::pin(async move {
            let _guard = ctx.tool("search", json!({"q": "x"})).await?;
            Err(AgentError::failed("gave up mid-tool"))
        })
    });
    let (events, _) = run_to_end(Arc::new(agent), "hi").await;
    let ks = kinds(&events);
    assert_eq!(
        ks,
        [
            EventKind::UserMessage,
            EventKind::AgentStarted,
            EventKind::ToolExecuting,
            EventKind::ToolCompleted,
            EventKind::AgentError
        ]
    );
    assert!(events[3].1["error"].as_str().unwrap().contains("without a result"));
}

#[tokio::test]
async fn an_agent_cannot_complete_with_a_tool_call_leaked_open() {
    let agent = Scripted(|ctx| {
        Box::pin(async move {
            let guard = ctx.tool("leak", json!({})).await?;
            std::mem::forget(guard);
            Ok(json!("done"))
        })
    });
    let (events, info) = run_to_end(Arc::new(agent), "hi").await;
    assert_eq!(kinds(&events).last(), Some(&EventKind::AgentError));
    assert_eq!(terminal_count(&events), 1);
    assert_eq!(info.status, RunStatus::Error);
}

#[tokio::test]
async fn cancelling_stops_the_agent_without_a_second_terminal_event() {
    let (log, thread, run) = new_run("thread_cancel").await;
    let engine = Engine::new(log.clone(), Arc::new(DemoAgent { step_delay: Duration::from_millis(200) }));
    let slot = engine.reserve(&run.owner).unwrap();
    engine.start(slot, run.clone(), RunInput { user_message: Some("1+1".into()), extra: Value::Null });
    tokio::time::sleep(Duration::from_millis(50)).await;
    log.cancel(run.run_id.as_str()).await.unwrap();
    assert!(engine.stop(run.run_id.as_str()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(engine.running(), 0);
    let events = log.read(&thread, 0, 100).await.unwrap().events;
    assert_eq!(events.iter().filter(|e| e.kind().is_terminal()).count(), 1);
    assert_eq!(events.last().unwrap().envelope().data["code"], "cancelled");
    // A late append from the stopped agent would be refused by the lifecycle.
    let late = NewEvent::new(EventKind::AgentThinking, json!({"thought":"late"}).as_object().cloned().unwrap());
    assert!(log.append(run.run_id.as_str(), vec![late]).await.is_err());
}

#[tokio::test]
async fn shutdown_ends_running_runs_with_worker_lost() {
    let (log, thread, run) = new_run("thread_shutdown").await;
    let engine = Engine::new(log.clone(), Arc::new(DemoAgent { step_delay: Duration::from_secs(60) }));
    engine.start(engine.reserve(&run.owner).unwrap(), run.clone(), RunInput::default());
    tokio::time::sleep(Duration::from_millis(30)).await;
    engine.shutdown(Duration::from_secs(5)).await;
    let events = log.read(&thread, 0, 100).await.unwrap().events;
    assert_eq!(events.last().unwrap().envelope().data["code"], "worker_lost");
    assert_eq!(engine.reserve(&run.owner).err(), Some(StartError::ShuttingDown), "no new runs after shutdown");
}

/// Waits until `engine` runs nothing, then answers the run's last event's data.
async fn last_event_when_done(engine: &Engine, log: &Arc<dyn Log>, thread: &ThreadId) -> Value {
    for _ in 0..400 {
        if engine.running() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(engine.running(), 0, "the run did not end");
    let events = log.read(thread, 0, 1000).await.unwrap().events;
    assert_eq!(events.iter().filter(|e| e.kind().is_terminal()).count(), 1);
    Value::Object(events.last().unwrap().envelope().data.clone())
}

#[tokio::test]
async fn runs_per_user_are_capped_and_their_places_given_back() {
    let (log, thread, run) = new_run("thread_capped").await;
    let limits = EngineLimits { max_runs_per_user: 2, ..EngineLimits::default() };
    let engine =
        Engine::with_limits(log.clone(), Arc::new(DemoAgent { step_delay: Duration::from_millis(20) }), limits);
    let (first, second) = (engine.reserve(&run.owner).unwrap(), engine.reserve(&run.owner).unwrap());
    assert_eq!(engine.reserve(&run.owner).err(), Some(StartError::TooManyRuns(2)));
    assert!(engine.reserve(&UserId::parse("other").unwrap()).is_ok(), "another user has places of their own");
    drop(second); // a run refused after reserving gives its place back
    let third = engine.reserve(&run.owner).unwrap();
    drop(third);
    assert!(engine.start(first, run.clone(), RunInput { user_message: Some("1+1".into()), extra: Value::Null }));
    let _held = engine.reserve(&run.owner).unwrap();
    assert!(engine.reserve(&run.owner).is_err(), "the started run holds its place");
    last_event_when_done(&engine, &log, &thread).await;
    assert!(engine.reserve(&run.owner).is_ok(), "an ended run gives its place back");
}

#[tokio::test]
async fn a_run_past_its_longest_duration_ends_with_timeout() {
    let (log, thread, run) = new_run("thread_long").await;
    let limits = EngineLimits { max_duration: Some(Duration::from_millis(100)), ..EngineLimits::default() };
    let engine = Engine::with_limits(log.clone(), Arc::new(DemoAgent { step_delay: Duration::from_secs(60) }), limits);
    engine.start(engine.reserve(&run.owner).unwrap(), run.clone(), RunInput::default());
    let last = last_event_when_done(&engine, &log, &thread).await;
    assert_eq!(last["code"], "timeout", "{last}");
}

#[tokio::test]
async fn a_run_no_one_watches_is_cancelled_and_a_watched_one_goes_on() {
    let watched = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = watched.clone();
    let limits = EngineLimits {
        unwatched: Some((
            Duration::from_millis(100),
            Arc::new(move |_: &ThreadId| flag.load(std::sync::atomic::Ordering::Relaxed)),
        )),
        ..EngineLimits::default()
    };
    let (log, thread, run) = new_run("thread_alone").await;
    let engine = Engine::with_limits(log.clone(), Arc::new(DemoAgent { step_delay: Duration::from_secs(60) }), limits);
    engine.start(engine.reserve(&run.owner).unwrap(), run.clone(), RunInput::default());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(engine.running(), 1, "watched: still going");
    watched.store(false, std::sync::atomic::Ordering::Relaxed);
    let last = last_event_when_done(&engine, &log, &thread).await;
    assert_eq!(last["code"], "cancelled", "{last}");
}

/// Waits until `thread` holds an open input request; answers its id.
async fn asked(log: &Arc<dyn Log>, run: &RunInfo) -> String {
    for _ in 0..400 {
        let info = log.run(run.run_id.as_str()).await.unwrap().unwrap();
        if let Some(id) = info.inputs.open.keys().next() {
            return id.clone();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the agent never asked");
}

async fn wait_idle(engine: &Engine) {
    for _ in 0..400 {
        if engine.running() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the run never ended");
}

#[tokio::test]
async fn the_demo_agent_asks_before_the_clock_and_goes_on_as_told() {
    for approved in [true, false] {
        let (log, thread, run) = new_run("thread_ask").await;
        let engine = Engine::new(log.clone(), Arc::new(DemoAgent { step_delay: Duration::ZERO }));
        let slot = engine.reserve(&run.owner).unwrap();
        let input = RunInput { user_message: Some("what time is it? ask me first".into()), extra: Value::Null };
        assert!(engine.start(slot, run.clone(), input));
        let request_id = asked(&log, &run).await;
        let answer = agentwire_log::InputAnswer {
            request_id,
            run_id: None,
            answer: json!({ "approved": approved }),
            user: run.owner.clone(),
        };
        log.answer_input(&thread, answer).await.unwrap();
        wait_idle(&engine).await;
        let page = log.read(&thread, 0, 1000).await.unwrap();
        let kinds: Vec<EventKind> = page.events.iter().map(|e| e.kind()).collect();
        let request = page.events.iter().find(|e| e.kind() == EventKind::InputRequested).unwrap();
        assert_eq!(request.envelope().data["tool_name"], "clock");
        assert_eq!(kinds.contains(&EventKind::ToolExecuting), approved, "the clock runs only if approved: {kinds:?}");
        assert_eq!(kinds.last(), Some(&EventKind::AgentCompleted));
        let result = &page.events.last().unwrap().envelope().data["result"]["answer"];
        assert_eq!(result.as_str().unwrap().contains("did not let me"), !approved, "{result}");
    }
}

#[tokio::test]
async fn an_unanswered_question_takes_its_default_and_a_cancel_stops_the_wait() {
    let (log, thread, run) = new_run("thread_lapse").await;
    let script: Script = |ctx| {
        Box::pin(async move {
            let question = agentwire_agent::Question::choice("Which?", ["tea", "coffee"])
                .default_answer("tea")
                .timeout(Duration::from_millis(50));
            let answer = ctx.ask(question).await?;
            Ok(json!({ "choice": answer.choice(), "timed_out": answer.timed_out }))
        })
    };
    let engine = Engine::new(log.clone(), Arc::new(Scripted(script)));
    let slot = engine.reserve(&run.owner).unwrap();
    assert!(engine.start(slot, run.clone(), RunInput::default()));
    asked(&log, &run).await;
    tokio::time::sleep(Duration::from_millis(80)).await;
    // The watchdog's tick is what answers a lapsed request.
    log.expire_idle_runs(agentwire_protocol::Timestamp::now()).await.unwrap();
    wait_idle(&engine).await;
    let page = log.read(&thread, 0, 1000).await.unwrap();
    let last = page.events.last().unwrap().envelope();
    assert_eq!(last.data["result"], json!({ "choice": "tea", "timed_out": true }));

    let (log, _, run) = new_run("thread_gone").await;
    let script: Script = |ctx| {
        Box::pin(async move {
            ctx.ask(agentwire_agent::Question::text("Anything?")).await?;
            Ok(Value::Null)
        })
    };
    let engine = Engine::new(log.clone(), Arc::new(Scripted(script)));
    let slot = engine.reserve(&run.owner).unwrap();
    assert!(engine.start(slot, run.clone(), RunInput::default()));
    asked(&log, &run).await;
    log.cancel(run.run_id.as_str()).await.unwrap();
    engine.stop(run.run_id.as_str());
    wait_idle(&engine).await;
    let info = log.run(run.run_id.as_str()).await.unwrap().unwrap();
    assert_eq!(info.status, RunStatus::Error);
    assert!(info.inputs.open.is_empty(), "the cancel closed the request");
}
