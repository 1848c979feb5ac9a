//! The data directory from the outside: export and import move threads, and a bad or busy directory stops start-up with a clear error.

mod common;

use common::*;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

async fn export_thread(data_dir: &std::path::Path) -> std::process::Output {
    let mut export = Command::new(env!("CARGO_BIN_EXE_agentwire"));
    export.args(["export", "--thread", "thread_moving", "--data-dir"]).arg(data_dir);
    export.output().await.unwrap()
}

#[tokio::test]
async fn a_thread_exported_from_one_server_reads_the_same_on_another() {
    let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let http = reqwest::Client::new();
    let mut node = start(from.path()).await;
    let (status, body) =
        post(&http, format!("{}/v1/runs", node.base), json!({"thread_id":"thread_moving","user_id":"crash"}))
            .await
            .unwrap();
    assert_eq!(status, 201, "{body}");
    let run = body["run_id"].as_str().unwrap();
    let events = json!({"events":[
        {"event":"agent_started","data":{"agent_name":"a"}},
        {"event":"agent_message","data":{"message_id":"m","delta":"hello"}},
        {"event":"agent_completed","data":{}}
    ]});
    assert_eq!(post(&http, format!("{}/v1/runs/{run}/events", node.base), events).await.unwrap().0, 200);
    let before = history(&http, &node.base, "thread_moving").await;
    // The data directory is locked while its server runs: export refuses.
    let locked = export_thread(from.path()).await;
    assert!(!locked.status.success());
    assert!(String::from_utf8_lossy(&locked.stderr).contains("in use"), "{}", String::from_utf8_lossy(&locked.stderr));
    node.child.kill().await.unwrap();

    let export = export_thread(from.path()).await;
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    assert_eq!(String::from_utf8_lossy(&export.stdout).lines().count(), 1 + 1 + 3, "thread, run, three events");

    let mut import = Command::new(env!("CARGO_BIN_EXE_agentwire"))
        .args(["import", "--data-dir"])
        .arg(to.path())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    import.stdin.take().unwrap().write_all(&export.stdout).await.unwrap();
    assert!(import.wait().await.unwrap().success());

    let mut moved = start(to.path()).await;
    assert_eq!(history(&http, &moved.base, "thread_moving").await, before);
    moved.child.kill().await.ok();
}

async fn serve_fails(data_dir: &std::path::Path) -> String {
    let out = tokio::time::timeout(
        WAIT,
        Command::new(env!("CARGO_BIN_EXE_agentwire"))
            .args(["serve", "--listen", "127.0.0.1:0", "--jwt-secret", SECRET, "--data-dir"])
            .arg(data_dir)
            .output(),
    )
    .await
    .expect("agentwire exits instead of serving")
    .unwrap();
    assert!(!out.status.success(), "serve must fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn a_corrupt_or_busy_data_directory_stops_start_up_with_a_clear_error() {
    let corrupt = tempfile::tempdir().unwrap();
    std::fs::write(corrupt.path().join("agentwire.redb"), vec![0x5a; 8192]).unwrap();
    let err = serve_fails(corrupt.path()).await;
    assert!(err.contains("unreadable or corrupt"), "{err}");

    let busy = tempfile::tempdir().unwrap();
    let mut first = start(busy.path()).await;
    let err = serve_fails(busy.path()).await;
    assert!(err.contains("in use by another agentwire process"), "{err}");
    first.child.kill().await.ok();
}
