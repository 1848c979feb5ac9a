//! The conformance suite on two nodes of a cluster, over Redis Streams and
//! over NATS JetStream: every rule, and the model-based test with its steps
//! spread over both nodes, fresh nodes for restarts, and writes the engine
//! refuses. Needs the test run's own Redis and NATS (`scripts/engines.sh`
//! starts them), else the default ports; fails when they are missing.

use std::sync::Arc;

use agentwire_conformance::model::{self, Target};
use agentwire_conformance::{ClusterDeployment, Deployment, conformance_tests, test_nats, test_redis};
use agentwire_log::{LogConfig, NewRun, NoFeed};
use agentwire_protocol::{EventKind, NewEvent, ThreadId, UserId};
use proptest::prelude::*;
use serde_json::json;

/// The suite on one engine, as a module named after it.
macro_rules! on_engine {
    ($engine:ident, $url:expr) => {
        mod $engine {
            use super::*;

            conformance_tests!(ClusterDeployment::new(&$url, "rules");
                numbering, concurrent_appends_stay_gap_free, deduplication, lifecycle, ownership, routing, cancel,
                retention_keeps_run_state, sweep_takes_the_oldest_first, idle_expiry, deletion, restart, input_requests, one_run_at_a_time);

            /// Issue 15, item 2: a view rebuilt from nothing (a fresh node) read a
            /// thread's whole history. Now nodes record the runs' state every so
            /// many events, and a rebuild reads that record and what follows it.
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn a_rebuilt_view_reads_the_last_checkpoint_and_what_follows() {
                let mut deployment = ClusterDeployment::new(&$url, "checkpoint").checkpoint_every(100);
                let faults = deployment.faults();
                let nodes = deployment.open(LogConfig::default(), Arc::new(NoFeed)).await;
                let (owner, thread) = (UserId::parse("u").unwrap(), ThreadId::parse("thread_long").unwrap());
                let new = NewRun { thread_id: thread.clone(), owner, agent_name: None, in_process: false, run_id: None };
                let run = nodes.a.create_run(new).await.unwrap().run_id;
                let event = |kind, data: serde_json::Value, id: String| {
                    NewEvent::new(kind, data.as_object().cloned().unwrap_or_default()).with_event_id(id)
                };
                let opening = vec![
                    event(EventKind::AgentStarted, json!({"agent_name":"a"}), "start".into()),
                    event(EventKind::ToolExecuting, json!({"tool_name":"t","tool_call_id":"c1"}), "tool".into()),
                ];
                nodes.a.append(run.as_str(), opening).await.unwrap();
                for batch in 0..200 {
                    let thoughts = (0..10)
                        .map(|n| event(EventKind::AgentThinking, json!({"thought":"t"}), format!("n{batch}-{n}")))
                        .collect();
                    nodes.b.append(run.as_str(), thoughts).await.unwrap();
                }
                let nodes = deployment.restart(nodes).await;
                let before = faults.events_read();
                let done = event(EventKind::ToolCompleted, json!({"tool_call_id":"c1"}), "done".into());
                assert_eq!(nodes.a.append(run.as_str(), vec![done]).await.unwrap().seqs, vec![2003], "the tool was open");
                let read = faults.events_read() - before;
                // At most the events after the newest record (a checkpoint may still have been queued).
                assert!(read <= 300, "a fresh node read {read} of 2,002 events to go on");
                let retried = event(EventKind::AgentThinking, json!({"thought":"t"}), "n0-0".into());
                assert_eq!(nodes.a.append(run.as_str(), vec![retried]).await.unwrap().seqs, vec![3]);
                deployment.close(nodes).await;
            }

            proptest! {
                // Each case starts a deployment of its own on the engine.
                #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

                #[test]
                fn the_log_follows_the_model(steps in model::steps()) {
                    model::check(&Target::Cluster($url), &steps, None)?;
                }
            }
        }
    };
}

on_engine!(redis, test_redis());
on_engine!(nats, test_nats());
