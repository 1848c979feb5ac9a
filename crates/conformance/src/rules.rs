//! The rules every log keeps, one function per rule, each through both
//! handles of a [`Deployment`] (what one node writes, the other must honour).
//! Each opens its own log; none depends on another.

use std::sync::Arc;
use std::time::Duration;

use agentwire_log::input::{self, InputAnswer, InputOutcome, InputStatus};
use agentwire_log::{Log, LogConfig, LogError, NewRun, NoFeed, RetentionPolicy};
use agentwire_protocol::{EventKind, LifecycleError, NewEvent, RunId, RunStatus, ThreadId, Timestamp, UserId};
use serde_json::{Value, json};

use crate::{Deployment, Nodes, Recorder};

/// An hour: an idle timeout no test reaches.
const HOUR: Duration = Duration::from_secs(3600);
/// How long a test waits for what a shared engine does in the background.
const SETTLES: Duration = Duration::from_secs(10);

fn ev(kind: EventKind, data: Value) -> NewEvent {
    NewEvent::new(kind, data.as_object().cloned().unwrap_or_default())
}

fn thought(text: &str) -> NewEvent {
    ev(EventKind::AgentThinking, json!({"thought": text}))
}

fn started() -> NewEvent {
    ev(EventKind::AgentStarted, json!({"agent_name":"t"}))
}

fn tool(call: &str) -> NewEvent {
    ev(EventKind::ToolExecuting, json!({"tool_name":"search","tool_call_id": call}))
}

fn tool_done(call: &str) -> NewEvent {
    ev(EventKind::ToolCompleted, json!({"tool_call_id": call, "result":"ok"}))
}

fn completed() -> NewEvent {
    ev(EventKind::AgentCompleted, json!({}))
}

fn user(name: &str) -> UserId {
    UserId::parse(name).expect("a user id")
}

fn thread(name: &str) -> ThreadId {
    ThreadId::parse(name).expect("a thread id")
}

/// A run an external publisher registers in `thread` for `owner`.
fn new_run(thread: &ThreadId, owner: &UserId) -> NewRun {
    NewRun { thread_id: thread.clone(), owner: owner.clone(), agent_name: None, in_process: false, run_id: None }
}

fn config(idle: Duration) -> LogConfig {
    LogConfig { run_idle_timeout: idle, ..LogConfig::default() }
}

async fn open(d: &mut dyn Deployment, config: LogConfig) -> Nodes {
    d.open(config, Arc::new(NoFeed)).await
}

/// Waits until `done` holds; panics with `what` past [`SETTLES`].
async fn settles<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let waited = tokio::time::timeout(SETTLES, async {
        while !done().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(waited.await.is_ok(), "never settled: {what}");
}

/// The seqs of a thread's retained events, in order.
async fn seqs(log: &dyn Log, thread: &ThreadId) -> Vec<u64> {
    log.read(thread, 0, 10_000).await.expect("read").events.iter().map(|e| e.seq()).collect()
}

/// Seqs are per thread, start at 1, have no gaps, and are fed in order; a
/// page reads after a seq and says where the thread ends.
pub async fn numbering(d: &mut dyn Deployment) {
    let feed = Arc::new(Recorder::default());
    let nodes = d.open(config(HOUR), feed.clone()).await;
    let (a, b) = (&*nodes.a, &*nodes.b);
    let alice = user("alice");
    let (one, two) = (thread("thread_one"), thread("thread_two"));
    let r1 = a.create_run(new_run(&one, &alice)).await.unwrap().run_id;
    let r2 = b.create_run(new_run(&two, &alice)).await.unwrap().run_id;
    assert_eq!(a.append(r1.as_str(), vec![started()]).await.unwrap().seqs, vec![1]);
    assert_eq!(b.append(r2.as_str(), vec![started()]).await.unwrap().seqs, vec![1]);
    assert_eq!(b.append(r1.as_str(), vec![thought("a"), thought("b")]).await.unwrap().seqs, vec![2, 3]);
    assert_eq!(a.append(r1.as_str(), vec![thought("c")]).await.unwrap().seqs, vec![4]);

    let page = b.read(&one, 1, 2).await.unwrap();
    assert_eq!(page.events.iter().map(|e| e.seq()).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!((page.oldest_seq, page.head_seq), (1, 4));
    let thoughts: Vec<&str> = page.events.iter().filter_map(|e| e.envelope().data.get("thought")?.as_str()).collect();
    assert_eq!(thoughts, ["a", "b"], "stored as sent");
    assert_eq!(seqs(a, &two).await, vec![1]);
    assert!(matches!(a.read(&thread("thread_none"), 0, 10).await, Err(LogError::ThreadNotFound(_))));
    settles("the feed hands over every event once, in order", || async {
        feed.seqs_of(&one) == vec![1, 2, 3, 4] && feed.seqs_of(&two) == vec![1]
    })
    .await;
    d.close(nodes).await;
}

/// Appends racing through both handles to one thread get every seq exactly
/// once, and each writer's own events keep their order.
pub async fn concurrent_appends_stay_gap_free(d: &mut dyn Deployment) {
    const WRITERS: usize = 4;
    const EACH: usize = 40;
    let feed = Arc::new(Recorder::default());
    let nodes = d.open(config(HOUR), feed.clone()).await;
    let owner = user("u");
    let shared = thread("thread_race");
    let run = nodes.a.create_run(new_run(&shared, &owner)).await.unwrap().run_id;
    nodes.a.append(run.as_str(), vec![started()]).await.unwrap();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let log = if w % 2 == 0 { nodes.a.clone() } else { nodes.b.clone() };
        let run = run.clone();
        writers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for n in 0..EACH {
                let event = thought(&format!("{w}-{n}"));
                got.extend(log.append(run.as_str(), vec![event]).await.expect("append").seqs);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for writer in writers {
        let got = writer.await.expect("writer");
        assert!(got.windows(2).all(|w| w[0] < w[1]), "a writer's events keep their order");
        all.extend(got);
    }
    all.sort_unstable();
    let expected: Vec<u64> = (2..=(1 + WRITERS * EACH) as u64).collect();
    assert_eq!(all, expected, "every seq once");
    assert_eq!(seqs(&*nodes.b, &shared).await, (1..=(1 + WRITERS * EACH) as u64).collect::<Vec<_>>());
    let total = 1 + WRITERS * EACH;
    settles("the feed hands over every event once, in order", || async {
        feed.seqs_of(&shared) == (1..=total as u64).collect::<Vec<_>>()
    })
    .await;
    d.close(nodes).await;
}

/// A repeated `event_id` answers the seq it was first stored at, through
/// either handle, within one publish, and after its run ended; ids are per
/// run; a refused publish records none of its ids.
pub async fn deduplication(d: &mut dyn Deployment) {
    let nodes = open(d, config(HOUR)).await;
    let (a, b) = (&*nodes.a, &*nodes.b);
    let owner = user("u");
    let t = thread("thread_dedup");
    let run = a.create_run(new_run(&t, &owner)).await.unwrap().run_id;
    let other = a.create_run(new_run(&t, &owner)).await.unwrap().run_id;
    assert_eq!(a.append(run.as_str(), vec![started().with_event_id("s")]).await.unwrap().seqs, vec![1]);
    assert_eq!(b.append(run.as_str(), vec![started().with_event_id("s")]).await.unwrap().seqs, vec![1]);
    let batch = vec![thought("x").with_event_id("x"), thought("x again").with_event_id("x"), thought("y")];
    assert_eq!(b.append(run.as_str(), batch).await.unwrap().seqs, vec![2, 2, 3]);
    // The same id in another run is another event.
    assert_eq!(a.append(other.as_str(), vec![started().with_event_id("s")]).await.unwrap().seqs, vec![4]);
    // A publish the lifecycle refuses stores nothing and remembers none of its ids.
    let refused = a.append(run.as_str(), vec![tool_done("nope").with_event_id("z")]).await;
    assert!(matches!(refused, Err(LogError::Lifecycle(LifecycleError::UnknownToolCall(_)))), "{refused:?}");
    assert_eq!(b.append(run.as_str(), vec![thought("z").with_event_id("z")]).await.unwrap().seqs, vec![5]);
    assert_eq!(a.append(run.as_str(), vec![completed().with_event_id("end")]).await.unwrap().seqs, vec![6]);
    // After the end: repeats still answer; anything new is refused.
    assert_eq!(b.append(run.as_str(), vec![thought("x").with_event_id("x")]).await.unwrap().seqs, vec![2]);
    let mixed = b.append(run.as_str(), vec![thought("x").with_event_id("x"), thought("new")]).await;
    assert!(matches!(mixed, Err(LogError::Lifecycle(LifecycleError::Ended))), "{mixed:?}");
    assert_eq!(b.read(&t, 0, 100).await.unwrap().head_seq, 6);
    assert_eq!(a.run(run.as_str()).await.unwrap().unwrap().status, RunStatus::Completed);
    d.close(nodes).await;
}

/// An append the lifecycle refuses stores nothing, whichever event of it is
/// wrong; the run's rules hold across handles.
pub async fn lifecycle(d: &mut dyn Deployment) {
    let feed = Arc::new(Recorder::default());
    let nodes = d.open(config(HOUR), feed.clone()).await;
    let (a, b) = (&*nodes.a, &*nodes.b);
    let owner = user("u");
    let t = thread("thread_life");
    let run = a.create_run(new_run(&t, &owner)).await.unwrap().run_id;
    let before_start = a.append(run.as_str(), vec![thought("before the start")]).await;
    assert!(matches!(before_start, Err(LogError::Lifecycle(LifecycleError::NotStarted))), "{before_start:?}");
    // A batch whose last event is wrong stores none of it, its start included.
    let half_wrong = a.append(run.as_str(), vec![started(), tool_done("c1")]).await;
    assert!(matches!(half_wrong, Err(LogError::Lifecycle(LifecycleError::UnknownToolCall(_)))), "{half_wrong:?}");
    assert_eq!(b.read(&t, 0, 10).await.unwrap().head_seq, 0, "nothing stored");
    assert_eq!(a.append(run.as_str(), vec![started(), tool("c1")]).await.unwrap().seqs, vec![1, 2]);
    let twice = b.append(run.as_str(), vec![started()]).await;
    assert!(matches!(twice, Err(LogError::Lifecycle(LifecycleError::AlreadyStarted))), "{twice:?}");
    let again = b.append(run.as_str(), vec![tool("c1")]).await;
    assert!(matches!(again, Err(LogError::Lifecycle(LifecycleError::ToolCallAlreadyOpen(_)))), "{again:?}");
    let early = b.append(run.as_str(), vec![completed()]).await;
    assert!(matches!(early, Err(LogError::Lifecycle(LifecycleError::ToolCallsOpen(_)))), "{early:?}");
    assert_eq!(b.append(run.as_str(), vec![tool_done("c1"), completed()]).await.unwrap().seqs, vec![3, 4]);
    let late = a.append(run.as_str(), vec![thought("late")]).await;
    assert!(matches!(late, Err(LogError::Lifecycle(LifecycleError::Ended))), "{late:?}");
    let info = a.run(run.as_str()).await.unwrap().expect("registered");
    assert_eq!((info.status, info.agent_name.as_deref()), (RunStatus::Completed, Some("t")));
    // An error ends a run too, even with a tool open.
    let failing = b.create_run(new_run(&t, &owner)).await.unwrap().run_id;
    let error = NewEvent::agent_error("failed", "it broke");
    assert_eq!(b.append(failing.as_str(), vec![started(), tool("c2"), error]).await.unwrap().seqs, vec![5, 6, 7]);
    assert_eq!(a.run(failing.as_str()).await.unwrap().unwrap().status, RunStatus::Error);
    settles("refused appends were never fed", || async { feed.seqs_of(&t) == (1..=7).collect::<Vec<_>>() }).await;
    d.close(nodes).await;
}

/// A thread's owner is fixed when it is made; a refused registration leaves
/// nothing behind (no thread, no run, no record of another user touched).
pub async fn ownership(d: &mut dyn Deployment) {
    let nodes = open(d, config(HOUR)).await;
    let (a, b) = (&*nodes.a, &*nodes.b);
    let (alice, mallory) = (user("alice"), user("mallory"));
    let t = a.create_thread(None, &alice).await.unwrap();
    assert!(matches!(b.create_thread(Some(t.clone()), &mallory).await, Err(LogError::ThreadExists(_))));
    assert!(matches!(b.ensure_thread(&t, &mallory).await, Err(LogError::Forbidden)));
    b.ensure_thread(&t, &alice).await.unwrap();
    assert!(matches!(b.create_run(new_run(&t, &mallory)).await, Err(LogError::Forbidden)));
    assert_eq!(b.thread_owner(&t).await.unwrap(), Some(alice.clone()));

    let chosen = |thread: &str, run: &str, owner: &UserId| NewRun {
        run_id: Some(RunId::parse(run).expect("run id")),
        ..new_run(&ThreadId::parse(thread).expect("thread id"), owner)
    };
    let job = a.create_run(chosen(t.as_str(), "job-7", &alice)).await.unwrap();
    assert_eq!(job.run_id.as_str(), "job-7");
    // A taken id, for a new thread: refused, and the thread was never made.
    assert!(matches!(b.create_run(chosen("thread_new", "job-7", &alice)).await, Err(LogError::RunExists(_))));
    assert_eq!(a.thread_owner(&thread("thread_new")).await.unwrap(), None);
    // The same for another user: the first registration is untouched.
    assert!(matches!(b.create_run(chosen("thread_m", "job-7", &mallory)).await, Err(LogError::RunExists(_))));
    assert_eq!(a.run("job-7").await.unwrap().unwrap().thread_id, t);
    // An id naming alice's thread by its pattern is not mallory's to take, nor one naming no thread.
    let claim = format!("run_{t}_job42");
    assert!(matches!(b.create_run(chosen("thread_m", &claim, &mallory)).await, Err(LogError::Forbidden)));
    let nowhere = chosen("thread_m", "run_thread_nobody_1", &mallory);
    assert!(matches!(a.create_run(nowhere).await, Err(LogError::Forbidden)));
    assert_eq!(b.thread_owner(&thread("thread_m")).await.unwrap(), None);
    // Alice may name her thread from another of hers.
    a.create_run(chosen("thread_a2", &claim, &alice)).await.unwrap();
    // Only what was accepted counts: alice's two threads, her two runs.
    settles("both handles count what was made", || async {
        [a.stats(), b.stats()].iter().all(|s| s.threads == 2 && s.runs_in_flight == 2)
    })
    .await;
    d.close(nodes).await;
}

/// Run ids minted elsewhere route by the thread id they carry, only into a
/// thread a publisher created, and are registered once accepted.
pub async fn routing(d: &mut dyn Deployment) {
    let nodes = open(d, config(HOUR)).await;
    let (a, b) = (&*nodes.a, &*nodes.b);
    let alice = user("alice");
    // A thread a user made by hand takes no events by the id pattern...
    let by_hand = thread("thread_hand");
    a.create_thread(Some(by_hand.clone()), &alice).await.unwrap();
    assert!(matches!(b.append("run_thread_hand_1", vec![started()]).await, Err(LogError::RunNotFound(_))));
    // ...one a publisher created does, through either handle.
    let published = thread("thread_pub");
    let first = a.create_run(NewRun { agent_name: Some("demo".into()), ..new_run(&published, &alice) }).await;
    assert!(first.is_ok());
    let appended = b.append("legacy_thread_pub_42", vec![started()]).await.unwrap();
    assert_eq!((appended.thread_id, appended.seqs), (published.clone(), vec![1]));
    let info = a.run("legacy_thread_pub_42").await.unwrap().expect("registered on its first publish");
    // Its agent is the one its `agent_started` names.
    assert_eq!((info.thread_id, info.agent_name.as_deref()), (published.clone(), Some("t")));
    assert_eq!(a.append("run_thread_pub_0badc0de", vec![started()]).await.unwrap().seqs, vec![2]);
    // A refused first publish registers nothing.
    let refused = b.append("legacy_thread_pub_9", vec![thought("t")]).await;
    assert!(matches!(refused, Err(LogError::Lifecycle(LifecycleError::NotStarted))), "{refused:?}");
    assert_eq!(a.run("legacy_thread_pub_9").await.unwrap(), None);
    for unroutable in ["run_thread_zz_1", "4f1c0f3e-uuid", "run with spaces thread_pub"] {
        let answer = a.append(unroutable, vec![started()]).await;
        assert!(matches!(answer, Err(LogError::RunNotFound(_))), "{unroutable}: {answer:?}");
    }
    settles("the runs registered by publishing count", || async { b.stats().runs_in_flight == 3 }).await;
    d.close(nodes).await;
}

/// Cancel ends a run with `agent_error {code:"cancelled"}`, seen through
/// either handle; a second cancel, or one of an unknown run, is refused.
pub async fn cancel(d: &mut dyn Deployment) {
    let nodes = open(d, config(HOUR)).await;
    let (a, b) = (&*nodes.a, &*nodes.b);
    let owner = user("u");
    let t = thread("thread_cancel");
    let run = a.create_run(new_run(&t, &owner)).await.unwrap().run_id;
    a.append(run.as_str(), vec![started(), tool("c1")]).await.unwrap();
    assert_eq!(b.cancel(run.as_str()).await.unwrap().seqs, vec![3], "even with a tool open");
    let info = a.run(run.as_str()).await.unwrap().expect("registered");
    assert_eq!((info.status, info.cancel_requested), (RunStatus::Error, true));
    let last = a.read(&t, 2, 1).await.unwrap();
    assert_eq!(last.events[0].envelope().data["code"], "cancelled");
    assert!(matches!(a.cancel(run.as_str()).await, Err(LogError::Lifecycle(LifecycleError::Ended))));
    assert!(matches!(a.append(run.as_str(), vec![tool_done("c1")]).await, Err(LogError::Lifecycle(_))));
    assert!(matches!(b.cancel("run_thread_cancel_unknown").await, Err(LogError::RunNotFound(_))));
    // A run cancelled before its start ends too.
    let early = b.create_run(new_run(&t, &owner)).await.unwrap().run_id;
    assert_eq!(a.cancel(early.as_str()).await.unwrap().seqs, vec![4]);
    assert_eq!(b.run(early.as_str()).await.unwrap().unwrap().status, RunStatus::Error);
    settles("nothing is left running", || async { a.stats().runs_in_flight == 0 }).await;
    d.close(nodes).await;
}

/// Waits until the thread's oldest retained `seq` is `oldest` (a shared
/// engine trims in the background, after the appends that pass the limit).
async fn oldest_becomes(log: &dyn Log, t: &ThreadId, oldest: u64) {
    settles(&format!("{t} starts at {oldest}"), || async {
        log.read(t, 0, 0).await.map(|p| p.oldest_seq).ok() == Some(oldest)
    })
    .await;
}

/// Run state lives with the run, not in its events (issue 15, item 3): with
/// a per-thread limit of 10, a 30-event run with a tool open across the cut
/// goes on through a fresh log (restarted, or fresh nodes) as if nothing
/// were removed: the tool is still open, the start still counts, and a
/// retried `event_id` whose event is gone answers its first seq.
pub async fn retention_keeps_run_state(d: &mut dyn Deployment) {
    let keep10 = LogConfig {
        retention: RetentionPolicy { max_events_per_thread: 10, ..RetentionPolicy::default() },
        ..config(HOUR)
    };
    let nodes = open(d, keep10).await;
    let owner = user("u");
    let t = thread("thread_keep");
    let run = nodes.a.create_run(new_run(&t, &owner)).await.unwrap().run_id;
    let mut events = vec![started().with_event_id("start"), tool("t1").with_event_id("tool")];
    events.extend((0..28).map(|n| thought(&n.to_string()).with_event_id(format!("n{n}"))));
    // One event per append: JetStream removes whole appends.
    for (n, event) in events.into_iter().enumerate() {
        let log = if n % 2 == 0 { &nodes.a } else { &nodes.b };
        log.append(run.as_str(), vec![event]).await.unwrap();
    }
    oldest_becomes(&*nodes.b, &t, 21).await;
    assert_eq!(seqs(&*nodes.a, &t).await, (21..=30).collect::<Vec<_>>());

    let nodes = d.restart(nodes).await;
    let (a, b) = (&*nodes.a, &*nodes.b);
    let retried = a.append(run.as_str(), vec![thought("0").with_event_id("n0")]).await.unwrap();
    assert_eq!(retried.seqs, vec![3], "a retry of a removed event answers its first seq");
    let again = b.append(run.as_str(), vec![started()]).await;
    assert!(matches!(again, Err(LogError::Lifecycle(LifecycleError::AlreadyStarted))), "{again:?}");
    let info = b.run(run.as_str()).await.unwrap().expect("still registered");
    assert_eq!((info.status, info.agent_name.as_deref()), (RunStatus::Running, Some("t")));
    assert_eq!(b.append(run.as_str(), vec![tool_done("t1")]).await.unwrap().seqs, vec![31], "the tool was open");
    assert_eq!(a.append(run.as_str(), vec![completed()]).await.unwrap().seqs, vec![32]);
    // Later trims move the kept state on rather than starting again from the events.
    oldest_becomes(a, &t, 23).await;
    let nodes = d.restart(nodes).await;
    let late = nodes.b.append(run.as_str(), vec![thought("after the end")]).await;
    assert!(matches!(late, Err(LogError::Lifecycle(LifecycleError::Ended))), "{late:?}");
    assert_eq!(nodes.a.append(run.as_str(), vec![thought("1").with_event_id("n1")]).await.unwrap().seqs, vec![4]);
    d.close(nodes).await;
}

/// The sweep for the age and whole-log limits takes the oldest events first,
/// the threads holding them emptied first, and an emptied thread goes on
/// where it was.
pub async fn sweep_takes_the_oldest_first(d: &mut dyn Deployment) {
    // A log that counts appends counts the marker an emptied thread keeps
    // too: the whole-log limit is one higher there, so both cut the same.
    let max_events = if d.counts_appends() { 4 } else { 3 };
    let retention = RetentionPolicy { max_age: Duration::from_secs(60), max_events, ..RetentionPolicy::default() };
    let by_age = LogConfig { retention, ..config(HOUR) };
    let nodes = open(d, by_age).await;
    let owner = user("u");
    let (old, new) = (thread("thread_old"), thread("thread_new"));
    let old_run = nodes.a.create_run(new_run(&old, &owner)).await.unwrap().run_id;
    // One event per append: JetStream removes whole appends.
    for event in [started(), thought("1"), thought("2"), thought("3")] {
        nodes.a.append(old_run.as_str(), vec![event]).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let between = Timestamp::now().millis();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new_run_id = nodes.b.create_run(new_run(&new, &owner)).await.unwrap().run_id;
    for event in [started(), thought("a"), thought("b")] {
        nodes.b.append(new_run_id.as_str(), vec![event]).await.unwrap();
    }
    // A minute after `between`: the whole old thread is past the age limit, nothing of the new one.
    let later = Timestamp(between + 60_000);
    assert_eq!(nodes.b.enforce_retention(later).await.unwrap(), 4);
    let page = nodes.a.read(&old, 0, 100).await.unwrap();
    assert_eq!((page.oldest_seq, page.head_seq, page.events.len()), (5, 4, 0), "the old thread is emptied");
    assert_eq!(seqs(&*nodes.a, &new).await, vec![1, 2, 3], "the new thread is untouched");
    assert_eq!(nodes.a.enforce_retention(later).await.unwrap(), 0, "nothing left due");
    assert_eq!(nodes.b.append(old_run.as_str(), vec![thought("4")]).await.unwrap().seqs, vec![5]);
    // Now 1 event in the old thread and 3 in the new one, one over the whole-log
    // limit: the oldest (the new thread's first) goes.
    assert_eq!(nodes.a.enforce_retention(Timestamp::now()).await.unwrap(), 1);
    assert_eq!(seqs(&*nodes.b, &new).await, vec![2, 3]);
    assert_eq!(seqs(&*nodes.b, &old).await, vec![5]);
    d.close(nodes).await;
}

/// A run that keeps publishing is not ended as idle; a quiet one is, once,
/// with `agent_error {code:"timeout"}`, and it is ended for both handles.
pub async fn idle_expiry(d: &mut dyn Deployment) {
    let nodes = open(d, config(Duration::from_millis(600))).await;
    let (a, b) = (&*nodes.a, &*nodes.b);
    let t = thread("thread_quiet");
    let run = a.create_run(new_run(&t, &user("u"))).await.unwrap().run_id;
    a.append(run.as_str(), vec![started()]).await.unwrap();
    for n in 0..8 {
        assert!(b.expire_idle_runs(Timestamp::now()).await.unwrap().is_empty(), "an active run was ended");
        b.append(run.as_str(), vec![thought(&n.to_string())]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A watchdog looks every tenth of the timeout; a node judges idleness on what it has looked at.
    assert!(b.expire_idle_runs(Timestamp::now()).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(b.expire_idle_runs(Timestamp::now()).await.unwrap(), vec![run.clone()]);
    assert!(a.expire_idle_runs(Timestamp::now()).await.unwrap().is_empty(), "ended once");
    let info = a.run(run.as_str()).await.unwrap().unwrap();
    assert_eq!(info.status, RunStatus::Error);
    let last = a.read(&t, 9, 1).await.unwrap();
    assert_eq!(last.events[0].envelope().data["code"], "timeout");
    settles("nothing is left running", || async { a.stats().runs_in_flight == 0 }).await;
    d.close(nodes).await;
}

/// Deleting a thread (its owner or the operator) ends its running runs,
/// removes its events, runs and `event_id`s, and frees its id; anyone else
/// is refused. A log that cannot delete says so and changes nothing.
pub async fn deletion(d: &mut dyn Deployment) {
    let nodes = open(d, config(HOUR)).await;
    let (a, b) = (&*nodes.a, &*nodes.b);
    let (alice, mallory) = (user("alice"), user("mallory"));
    let t = thread("thread_gone");
    let done = a.create_run(new_run(&t, &alice)).await.unwrap().run_id;
    a.append(done.as_str(), vec![started().with_event_id("s"), completed()]).await.unwrap();
    let going = a.create_run(new_run(&t, &alice)).await.unwrap().run_id;
    a.append(going.as_str(), vec![started()]).await.unwrap();

    if !d.deletes_threads() {
        assert!(matches!(b.delete_thread(&t, Some(&alice)).await, Err(LogError::Unsupported(_))));
        assert_eq!(seqs(a, &t).await, vec![1, 2, 3], "nothing changed");
        assert_eq!(a.run(going.as_str()).await.unwrap().unwrap().status, RunStatus::Running);
        d.close(nodes).await;
        return;
    }
    assert!(matches!(b.delete_thread(&thread("thread_none"), None).await, Err(LogError::ThreadNotFound(_))));
    assert!(matches!(b.delete_thread(&t, Some(&mallory)).await, Err(LogError::Forbidden)));
    assert_eq!(seqs(a, &t).await, vec![1, 2, 3], "a refused delete changes nothing");
    assert_eq!(b.delete_thread(&t, Some(&alice)).await.unwrap(), vec![going.clone()], "the running run ends");
    assert!(matches!(a.read(&t, 0, 10).await, Err(LogError::ThreadNotFound(_))));
    assert_eq!(a.run(done.as_str()).await.unwrap(), None);
    assert_eq!(b.run(going.as_str()).await.unwrap(), None);
    assert_eq!(a.thread_owner(&t).await.unwrap(), None);
    // The id is free again, for anyone, and starts from nothing.
    let fresh = b.create_run(NewRun { run_id: Some(done.clone()), ..new_run(&t, &mallory) }).await.unwrap();
    assert_eq!(a.append(fresh.run_id.as_str(), vec![started().with_event_id("s")]).await.unwrap().seqs, vec![1]);
    assert_eq!(a.thread_owner(&t).await.unwrap(), Some(mallory));
    settles("the deleted thread's run no longer counts", || async { a.stats().runs_in_flight == 1 }).await;
    d.close(nodes).await;
}

/// Threads, runs, events and `event_id`s survive a restart byte for byte; a
/// running run goes on where it was (its tool still open, its idle clock
/// still running); an ended run still answers repeats and refuses more.
pub async fn restart(d: &mut dyn Deployment) {
    assert!(d.keeps_data(), "a log that keeps nothing has no restart to test");
    let idle = Duration::from_millis(600);
    let nodes = open(d, config(idle)).await;
    let alice = user("alice");
    let t = thread("thread_keep");
    let run = nodes.a.create_run(NewRun { agent_name: Some("a".into()), ..new_run(&t, &alice) }).await.unwrap();
    let run = run.run_id;
    let first = vec![started().with_event_id("s"), tool("c1").with_event_id("x")];
    assert_eq!(nodes.a.append(run.as_str(), first).await.unwrap().seqs, vec![1, 2]);
    let ended = nodes.b.create_run(new_run(&t, &alice)).await.unwrap().run_id;
    let done = vec![started(), completed().with_event_id("fin")];
    assert_eq!(nodes.b.append(ended.as_str(), done).await.unwrap().seqs, vec![3, 4]);
    let quiet = nodes.a.create_run(new_run(&thread("thread_idle"), &alice)).await.unwrap().run_id;
    let before: Vec<String> =
        nodes.a.read(&t, 0, 100).await.unwrap().events.iter().map(|e| e.json.to_string()).collect();

    let nodes = d.restart(nodes).await;
    let (a, b) = (&*nodes.a, &*nodes.b);
    let page = b.read(&t, 0, 100).await.unwrap();
    assert_eq!(page.head_seq, 4);
    assert_eq!(page.events.iter().map(|e| e.json.to_string()).collect::<Vec<_>>(), before, "history byte for byte");
    assert_eq!(a.thread_owner(&t).await.unwrap(), Some(alice.clone()));
    assert!(matches!(b.ensure_thread(&t, &user("bob")).await, Err(LogError::Forbidden)));
    let info = b.run(run.as_str()).await.unwrap().unwrap();
    assert_eq!((info.status, info.agent_name.as_deref()), (RunStatus::Running, Some("a")));
    assert_eq!(a.append(run.as_str(), vec![started().with_event_id("s")]).await.unwrap().seqs, vec![1]);
    let early_end = b.append(run.as_str(), vec![completed()]).await;
    assert!(matches!(early_end, Err(LogError::Lifecycle(LifecycleError::ToolCallsOpen(_)))), "{early_end:?}");
    assert_eq!(a.append(run.as_str(), vec![tool_done("c1"), completed()]).await.unwrap().seqs, vec![5, 6]);
    assert_eq!(b.append(ended.as_str(), vec![completed().with_event_id("fin")]).await.unwrap().seqs, vec![4]);
    let late = a.append(ended.as_str(), vec![thought("t")]).await;
    assert!(matches!(late, Err(LogError::Lifecycle(LifecycleError::Ended))), "{late:?}");
    // A run minted elsewhere still routes by extraction to the stored thread.
    assert_eq!(b.append("legacy_thread_keep_1", vec![started()]).await.unwrap().seqs, vec![7]);
    // The idle clock was not reset into forgetting the quiet run: it ends once the timeout passes.
    assert!(a.expire_idle_runs(Timestamp::now()).await.unwrap().is_empty());
    tokio::time::sleep(idle * 2).await;
    let mut expired = a.expire_idle_runs(Timestamp::now()).await.unwrap();
    expired.sort();
    let mut both = vec![quiet, RunId::parse("legacy_thread_keep_1").unwrap()];
    both.sort();
    assert_eq!(expired, both);
    d.close(nodes).await;
}

fn ask(request_id: &str, fields: Value) -> NewEvent {
    let mut event = ev(EventKind::InputRequested, json!({"request_id": request_id, "prompt": "?"}));
    if let Value::Object(fields) = fields {
        event.data.extend(fields);
    }
    event
}

fn answer(request_id: &str, run: Option<&RunId>, value: Value) -> InputAnswer {
    InputAnswer { request_id: request_id.into(), run_id: run.map(ToString::to_string), answer: value, user: user("u") }
}

/// An agent asks and its user answers, once (PROTOCOL §2.1): the answer
/// reaches a waiter on the other node; a second answer, an unknown request, an
/// answer of the wrong kind are refused and leave no trace; a request nobody
/// answers lapses into its default, and its run is not idle while it waits; the
/// run's end closes what is still open; an open request survives a restart.
pub async fn input_requests(d: &mut dyn Deployment) {
    let idle = Duration::from_millis(600);
    let nodes = open(d, config(idle)).await;
    let (a, b) = (&*nodes.a, &*nodes.b);
    let t = thread("thread_asks");
    let run = a.create_run(new_run(&t, &user("u"))).await.unwrap().run_id;
    let approval = json!({"kind": "approval", "tool_name": "send_email", "arguments": {"to": "bob"}});
    a.append(run.as_str(), vec![started(), ask("send", approval)]).await.unwrap();
    let info = b.run(run.as_str()).await.unwrap().unwrap();
    assert_eq!(info.inputs.open.keys().collect::<Vec<_>>(), ["send"], "the open request shows in the run");
    let waiter = {
        let (b, run) = (nodes.b.clone(), run.clone());
        tokio::spawn(async move { b.wait_input(run.as_str(), "send", Duration::from_secs(20)).await })
    };

    let refusals = [
        (b.answer_input(&t, answer("send", None, json!({"text": "yes"}))).await, "a wrong kind"),
        (b.answer_input(&t, answer("nope", None, json!({"approved": true}))).await, "an unknown request"),
        (b.answer_input(&thread("thread_other"), answer("send", None, json!({"approved": true}))).await, "elsewhere"),
    ];
    assert!(matches!(refusals[0].0, Err(LogError::BadAnswer(_))), "{:?}", refusals[0]);
    assert!(matches!(refusals[1].0, Err(LogError::InputNotFound(_))), "{:?}", refusals[1]);
    assert!(matches!(refusals[2].0, Err(LogError::ThreadNotFound(_))), "{:?}", refusals[2]);
    assert_eq!(seqs(a, &t).await, vec![1, 2], "refusals leave nothing behind");

    let answered = a.answer_input(&t, answer("send", None, json!({"approved": true, "message": "go"}))).await.unwrap();
    assert_eq!(answered.seqs, vec![3]);
    let woken = waiter.await.unwrap().unwrap();
    assert_eq!(woken, InputStatus::Answered { answer_seq: 3 }, "the waiter on the other node hears it");
    let watched = b.input_changes().map_or(0, |w| w.watched_runs());
    assert_eq!(watched, 0, "a waiter that is done leaves no registration behind");
    let outcome = input::await_input(b, &run, &t, "send", Duration::ZERO).await.unwrap();
    let InputOutcome::Received(data) = outcome else { panic!("no answer: {outcome:?}") };
    assert_eq!(data["answer"], json!({"approved": true, "message": "go"}));
    assert_eq!((&data["source"], &data["user_id"]), (&json!("user"), &json!("u")));
    let again = b.answer_input(&t, answer("send", Some(&run), json!({"approved": false}))).await;
    assert!(matches!(again, Err(LogError::InputClosed(_))), "answered once: {again:?}");

    // Waiting outlasts the idle timeout: not idle; then the default answers it.
    let choice = json!({"kind": "choice", "options": ["a", "b"], "default": "b", "timeout_ms": 1500});
    a.append(run.as_str(), vec![ask("pick", choice)]).await.unwrap();
    for _ in 0..10 {
        assert!(b.expire_idle_runs(Timestamp::now()).await.unwrap().is_empty(), "a waiting run was ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seqs(a, &t).await, vec![1, 2, 3, 4], "nothing lapsed yet");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(b.expire_idle_runs(Timestamp::now()).await.unwrap().is_empty());
    let lapsed = a.read(&t, 4, 10).await.unwrap().events;
    assert_eq!(lapsed.len(), 1, "answered once, by default");
    let data = &lapsed[0].envelope().data;
    assert_eq!((&data["answer"], &data["source"]), (&json!({"choice": "b"}), &json!("timeout")));
    assert_eq!(a.run(run.as_str()).await.unwrap().unwrap().status, RunStatus::Running, "the run goes on");

    let nodes = if d.keeps_data() {
        a.append(run.as_str(), vec![ask("kept", json!({"kind": "text"}))]).await.unwrap();
        let nodes = d.restart(nodes).await;
        let info = nodes.b.run(run.as_str()).await.unwrap().unwrap();
        assert_eq!(info.inputs.open.keys().collect::<Vec<_>>(), ["kept"], "an open request survives a restart");
        let kept = nodes.a.answer_input(&t, answer("kept", None, json!({"text": "still here"}))).await.unwrap();
        assert_eq!(kept.seqs, vec![7]);
        nodes
    } else {
        nodes
    };
    let (a, b) = (&*nodes.a, &*nodes.b);
    let head = a.read(&t, 0, 100).await.unwrap().head_seq;
    a.append(run.as_str(), vec![ask("late", json!({"kind": "text"})), completed()]).await.unwrap();
    assert!(b.run(run.as_str()).await.unwrap().unwrap().inputs.open.is_empty(), "the end closes what is open");
    let closed = b.answer_input(&t, answer("late", Some(&run), json!({"text": "x"}))).await;
    assert!(matches!(closed, Err(LogError::InputClosed(_))), "{closed:?}");
    let unnamed = b.answer_input(&t, answer("late", None, json!({"text": "x"}))).await;
    assert!(matches!(unnamed, Err(LogError::InputNotFound(_))), "only live runs are searched: {unnamed:?}");
    assert_eq!(a.read(&t, 0, 100).await.unwrap().head_seq, head + 2);
    let status = b.wait_input(run.as_str(), "late", Duration::from_secs(5)).await.unwrap();
    assert_eq!(status, InputStatus::Closed);
    d.close(nodes).await;
}

/// A thread's going runs are listed through either handle, and a run
/// registered only while the thread is idle is refused, naming the run that is
/// going, until that run ends (PROTOCOL §3, `double_texting`).
pub async fn one_run_at_a_time(d: &mut dyn Deployment) {
    let nodes = open(d, config(HOUR)).await;
    let (a, b) = (&*nodes.a, &*nodes.b);
    let (t, owner) = (thread("thread_single"), user("u"));
    assert!(b.running_runs(&t).await.unwrap().is_empty(), "no thread, nothing going");
    let first = a.create_run(new_run(&t, &owner)).await.unwrap().run_id;
    a.append(first.as_str(), vec![started()]).await.unwrap();
    for log in [a, b] {
        assert_eq!(log.running_runs(&t).await.unwrap(), vec![first.clone()]);
        let refused = log.create_run_if_idle(new_run(&t, &owner)).await;
        assert!(matches!(&refused, Err(LogError::RunInFlight(going)) if going == &first), "{refused:?}");
    }
    a.append(first.as_str(), vec![completed()]).await.unwrap();
    let second = b.create_run_if_idle(new_run(&t, &owner)).await.unwrap().run_id;
    b.append(second.as_str(), vec![started()]).await.unwrap();
    assert_eq!(a.running_runs(&t).await.unwrap(), vec![second]);
    d.close(nodes).await;
}
