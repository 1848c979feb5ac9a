//! The crash test: a real `agentwire` process takes concurrent publishes and is
//! killed with SIGKILL mid-stream, several times. After each restart every event
//! that was answered `200` is there exactly once, `seq` has no gap, runs go on
//! publishing, and a subscriber resuming from its last `seq` gets the rest.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use parking_lot::Mutex;
use serde_json::json;

const THREADS: [&str; 3] = ["thread_crash0", "thread_crash1", "thread_crash2"];
const PUBLISHERS_PER_THREAD: usize = 4;
const CYCLES: usize = 3;

/// Publishes thinking events until the server goes away; records what was acknowledged.
async fn publish_until_gone(base: String, run: String, tag: String, acked: Arc<Mutex<HashMap<String, (String, u64)>>>) {
    let http = reqwest::Client::new();
    for n in 0.. {
        let event_id = format!("{tag}-{n}");
        let body = json!({"event":"agent_thinking","data":{"thought": format!("step {n}")},"event_id": event_id});
        match post(&http, format!("{base}/v1/runs/{run}/events"), body).await {
            Ok((200, body)) => {
                let seq = body["seqs"][0].as_u64().expect("seq");
                acked.lock().insert(event_id, (run.clone(), seq));
            }
            Ok((status, body)) => panic!("unexpected answer {status} {body}"),
            Err(_) => return,
        }
    }
}

/// Watches a thread and reports the last seq it saw, until the socket drops.
async fn watch(base: String, thread: &'static str, after: u64, last: Arc<Mutex<u64>>) {
    follow(&base, thread, after, |e| {
        let mut seen = last.lock();
        let seq = e["seq"].as_u64().unwrap();
        assert_eq!(seq, *seen + 1, "a watcher of {thread} saw a gap or a repeat");
        *seen = seq;
        true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_events_survive_sigkill_exactly_once_and_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let acked: Arc<Mutex<HashMap<String, (String, u64)>>> = Arc::default();
    let watched: Vec<Arc<Mutex<u64>>> = THREADS.iter().map(|_| Arc::default()).collect();

    let mut node = start(dir.path()).await;
    let mut runs = Vec::new();
    for thread in THREADS {
        let (status, body) =
            post(&http, format!("{}/v1/runs", node.base), json!({"thread_id":thread,"user_id":"crash"})).await.unwrap();
        assert_eq!(status, 201, "{body}");
        let run = body["run_id"].as_str().unwrap().to_owned();
        let started = json!({"event":"agent_started","data":{"agent_name":"crash"},"event_id":"start"});
        assert_eq!(post(&http, format!("{}/v1/runs/{run}/events", node.base), started).await.unwrap().0, 200);
        runs.push(run);
    }

    // A run of the in-process demo agent is in flight when the first kill comes.
    let demo_run = ask_demo(&http, &node.base, "thread_crash0").await;

    for cycle in 0..CYCLES {
        let mut tasks = Vec::new();
        for (t, thread) in THREADS.iter().enumerate() {
            let after = *watched[t].lock();
            tasks.push(tokio::spawn(watch(node.base.clone(), thread, after, watched[t].clone())));
            for p in 0..PUBLISHERS_PER_THREAD {
                let tag = format!("c{cycle}-t{t}-p{p}");
                tasks.push(tokio::spawn(publish_until_gone(node.base.clone(), runs[t].clone(), tag, acked.clone())));
            }
        }
        // Let publishing get going, then kill the server without warning.
        let before = acked.lock().len();
        tokio::time::timeout(WAIT, async {
            while acked.lock().len() < before + 200 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("publishing makes progress");
        tokio::time::sleep(Duration::from_millis(50 + 70 * cycle as u64)).await;
        node.child.kill().await.expect("SIGKILL");
        for task in tasks {
            task.await.expect("publisher or watcher task");
        }

        node = start(dir.path()).await;
        if cycle == 0 {
            let events = history(&http, &node.base, "thread_crash0").await;
            let end = events.iter().rev().find(|e| e["run_id"] == demo_run.as_str()).expect("the demo run's events");
            assert_eq!(
                (end["event"].as_str(), end["data"]["code"].as_str()),
                (Some("agent_error"), Some("worker_lost")),
                "the demo run cut by the kill is ended at restart, not left hanging"
            );
        }
        let acked_now = acked.lock().clone();
        eprintln!("cycle {cycle}: {} acknowledged in all", acked_now.len());
        assert!(acked_now.len() > before, "cycle {cycle} acknowledged nothing");
        for (t, thread) in THREADS.iter().enumerate() {
            let events = history(&http, &node.base, thread).await;
            let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
            eprintln!("  {thread}: head {} watched before the kill {}", seqs.len(), *watched[t].lock());
            assert_eq!(
                seqs,
                (1..=seqs.len() as u64).collect::<Vec<_>>(),
                "{thread}: seq has a gap after cycle {cycle}"
            );
            let mut by_id: HashMap<&str, Vec<u64>> = HashMap::new();
            for e in &events {
                if let Some(id) = e["event_id"].as_str() {
                    by_id.entry(id).or_default().push(e["seq"].as_u64().unwrap());
                }
            }
            for (id, (run, seq)) in acked_now.iter().filter(|(_, (run, _))| run == &runs[t]) {
                assert_eq!(
                    by_id.get(id.as_str()),
                    Some(&vec![*seq]),
                    "{run}: acknowledged {id} must be stored once at {seq}"
                );
            }
            // The watcher resumes from its last seq and catches up to the head with nothing missing.
            let last = watched[t].clone();
            let resumed = tokio::spawn(watch(node.base.clone(), thread, *last.lock(), last.clone()));
            tokio::time::timeout(WAIT, async {
                while *last.lock() < seqs.len() as u64 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("the resumed watcher catches up");
            resumed.abort();
            // And the run goes on publishing after the restart.
            let go_on = json!({"event":"agent_thinking","data":{"thought":"after restart"}});
            let (status, body) = post(&http, format!("{}/v1/runs/{}/events", node.base, runs[t]), go_on).await.unwrap();
            assert_eq!((status, body["seqs"][0].as_u64()), (200, Some(seqs.len() as u64 + 1)));
            *watched[t].lock() += 1;
        }
    }
    node.child.kill().await.ok();
}
