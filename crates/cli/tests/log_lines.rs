//! What a caller sends never forges a line in the server's log (issue 14): a run
//! id is the caller's raw path segment, and one holding a newline or an escape
//! sequence is written escaped.

mod common;

use common::*;
use serde_json::json;
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn a_run_id_with_newlines_and_escape_sequences_is_logged_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = start_logging(dir.path()).await;
    let http = reqwest::Client::new();
    // %0a: a newline; %1b[31m: a terminal colour escape.
    let forged = "run_x%0a2026-01-01T00:00:00Z%20ERROR%20FORGED%1b[31mRED";
    let (status, _) = post(&http, format!("{}/v1/runs/{forged}/events", node.base), json!({"event":"agent_completed"}))
        .await
        .unwrap();
    assert_eq!(status, 404);
    node.child.start_kill().unwrap();
    let mut log = String::new();
    node.child.stderr.take().unwrap().read_to_string(&mut log).await.unwrap();
    assert!(log.contains("unroutable run"), "the rejection was logged: {log}");
    assert!(!log.lines().any(|l| l.starts_with("2026-01-01T00:00:00Z ERROR FORGED")), "a forged line: {log}");
    assert!(!log.contains("\u{1b}[31mRED"), "a raw escape sequence reached the log: {log:?}");
}
