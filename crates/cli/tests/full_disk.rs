//! A full disk is survived: a real `agentwire` process on a small tmpfs answers
//! `503` once the disk is full and reports unready, loses nothing it
//! acknowledged, and takes writes again by itself once space comes back.
//!
//! Mounting a tmpfs needs root (or `CAP_SYS_ADMIN`); where the mount is refused
//! the test says so on stderr and passes without running.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes still free on the mount.
    fn available(&self) -> u64 {
        let out = Command::new("df").args(["--output=avail", "-B1"]).arg(self.path()).output().expect("df");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().nth(1).and_then(|l| l.trim().parse().ok()).expect("df prints the free bytes")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

async fn ready(http: &reqwest::Client, base: &str) -> u16 {
    http.get(format!("{base}/readyz")).send().await.map(|r| r.status().as_u16()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_loses_nothing_and_writing_resumes_when_space_returns() {
    let disk = match Tmpfs::mount("24m") {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("SKIPPED a_full_disk_…: cannot mount a tmpfs here ({why}); run as root to include it");
            return;
        }
    };
    let data = disk.path().join("data");
    let http = reqwest::Client::new();
    let mut node = start(&data).await;
    let (status, body) =
        post(&http, format!("{}/v1/runs", node.base), json!({"thread_id":"thread_full","user_id":"crash"}))
            .await
            .unwrap();
    assert_eq!(status, 201, "{body}");
    let run = body["run_id"].as_str().unwrap().to_owned();
    let publish = |n: usize| {
        let (http, url) = (http.clone(), format!("{}/v1/runs/{run}/events", node.base));
        // Pseudo-random letters: incompressible enough that every event costs
        // about its size on disk, even packed.
        let mut state = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let thought: String = (0..8_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b'a' + (state % 26) as u8)
            })
            .collect();
        let event = if n == 0 {
            json!({"event":"agent_started","data":{"agent_name":"filler"},"event_id":"e0"})
        } else {
            json!({"event":"agent_thinking","data":{"thought": thought},"event_id": format!("e{n}")})
        };
        async move { post(&http, url, event).await.unwrap() }
    };

    // Leave about 2 MiB free, so the store fills the disk soon.
    let ballast: PathBuf = disk.path().join("ballast");
    let room = disk.available().saturating_sub(2 << 20);
    std::fs::write(&ballast, vec![7u8; usize::try_from(room).unwrap()]).expect("write the ballast");

    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut refused = None;
    for n in 0..2_000 {
        let (status, body) = publish(n).await;
        match status {
            200 => {
                acked.insert(format!("e{n}"), body["seqs"][0].as_u64().unwrap());
            }
            503 => {
                refused = Some(n);
                break;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let first_refused = refused.expect("the disk fills up and a publish is refused with 503");
    assert!(acked.len() > 10, "some events fit before the disk filled ({})", acked.len());
    assert_eq!(ready(&http, &node.base).await, 503, "a log that cannot write is not ready");
    // Still full: still refused, and still nothing half-written.
    assert_eq!(publish(first_refused).await.0, 503);

    // Space comes back: the server resumes by itself.
    std::fs::remove_file(&ballast).unwrap();
    let deadline = Instant::now() + WAIT;
    while ready(&http, &node.base).await != 200 {
        assert!(Instant::now() < deadline, "the server did not resume after space came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = *acked.values().max().unwrap();
    for (i, n) in (first_refused..first_refused + 5).enumerate() {
        let (status, body) = publish(n).await;
        assert_eq!(status, 200, "{body}");
        let seq = body["seqs"][0].as_u64().unwrap();
        assert_eq!(seq, last + 1 + i as u64, "seqs go on from the last acknowledged one");
        acked.insert(format!("e{n}"), seq);
    }

    // After a restart: every acknowledged event, once, in order, and nothing else.
    node.child.kill().await.unwrap();
    let node = start(&data).await;
    let events = history(&http, &node.base, "thread_full").await;
    let stored: BTreeMap<String, u64> =
        events.iter().map(|e| (e["event_id"].as_str().unwrap().to_owned(), e["seq"].as_u64().unwrap())).collect();
    assert_eq!(stored, acked, "exactly what was acknowledged");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "no gap");
}
