//! Start-up: how long the embedded log takes to open a large data directory,
//! against walking every thread of it (what a start-up cost before threads
//! were loaded on demand), measured in the same run on the same files.
//!
//! The directory holds `threads` threads of `events` events each, one ended run
//! per thread, and 100 runs still running; it is written straight through the
//! store (the log's rules are not what is measured) and kept under
//! `target/bench-data` for the next run.
//!
//! ```sh
//! cargo run --release -p agentwire-bench --bin startup -- [threads] [events per thread]
//! ```
//! Defaults: 1,000,000 threads of 10 events (10,000,000 events).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use agentwire_bench::soak::dir_bytes;
use agentwire_log::store::{Batch, RunRecord, ThreadRecord};
use agentwire_log::{EmbeddedLog, EmbeddedStore, Log, LogConfig, NoFeed, Store, StoredEvent};
use agentwire_protocol::{Envelope, EnvelopeType, EventKind, RunId, RunLifecycle, ThreadId, Timestamp, UserId};
use serde_json::json;

/// Runs left running, spread over the first threads.
const RUNNING: usize = 100;
/// Threads written per transaction while building.
const CHUNK: usize = 2_000;

fn envelope(thread: &ThreadId, run: &RunId, seq: u64, kind: EventKind, data: serde_json::Value) -> Arc<StoredEvent> {
    Arc::new(StoredEvent::new(Envelope {
        frame_type: EnvelopeType::Event,
        thread_id: thread.clone(),
        run_id: run.clone(),
        seq,
        event: kind,
        event_id: Some(format!("e{seq}")),
        ts: Timestamp::now(),
        data: data.as_object().cloned().unwrap_or_default(),
    }))
}

/// Writes the data set into `dir`.
fn build(dir: &Path, threads: usize, events: usize) {
    let store = EmbeddedStore::open(dir).expect("open the store");
    let owner = UserId::parse("soak").expect("user");
    let began = Instant::now();
    for chunk in 0..threads.div_ceil(CHUNK) {
        let mut batch = Batch::default();
        for t in chunk * CHUNK..((chunk + 1) * CHUNK).min(threads) {
            let thread = ThreadId::parse(&format!("thread_s{t}")).expect("thread id");
            let run = RunId::mint(&thread);
            batch
                .threads
                .push((thread.clone(), ThreadRecord { owner: owner.clone(), oldest_seq: 1, by_publisher: true }));
            let running = t < RUNNING;
            let mut lifecycle = RunLifecycle::default();
            lifecycle.apply(EventKind::AgentStarted, &serde_json::Map::new(), 1).expect("start");
            for seq in 1..=events as u64 {
                let (kind, data) = match seq {
                    1 => (EventKind::AgentStarted, json!({"agent_name":"soak"})),
                    s if s == events as u64 && !running => (EventKind::AgentCompleted, json!({"result":"ok"})),
                    s => (EventKind::AgentThinking, json!({"thought": format!("step {s} of a long run")})),
                };
                if kind == EventKind::AgentCompleted {
                    lifecycle.apply(kind, &serde_json::Map::new(), seq).expect("complete");
                }
                let event = envelope(&thread, &run, seq, kind, data);
                batch.event_ids.push((run.clone(), format!("e{seq}"), seq));
                batch.events.push(event);
            }
            let record = RunRecord {
                thread_id: thread,
                agent_name: Some("soak".into()),
                lifecycle,
                cancel_requested: false,
                last_activity_ms: Timestamp::now().millis(),
                in_process: false,
                last_seq: Some(events as u64),
            };
            batch.runs.push((run, record));
        }
        store.write(&[&batch]).expect("write");
        if chunk % 50 == 49 {
            eprintln!("  {} threads written ({:.0} s)", (chunk + 1) * CHUNK, began.elapsed().as_secs_f64());
        }
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let events: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10).max(2);
    let dir = Path::new("target/bench-data").join(format!("startup-{threads}-{events}"));
    if !dir.join(agentwire_log::embedded::DB_FILE).exists() {
        eprintln!("building {threads} threads × {events} events in {}", dir.display());
        build(&dir, threads, events);
    }
    println!(
        "startup: {threads} threads, {} events, {RUNNING} running runs, {:.2} GB on disk",
        threads * events,
        dir_bytes(&dir) as f64 / 1e9
    );

    // The peer: every thread walked, as a start-up did before (its record, its head).
    let began = Instant::now();
    let walked = walk_threads(&dir);
    let walk = began.elapsed();

    let began = Instant::now();
    let log = EmbeddedLog::open_dir(&dir, LogConfig::default(), Arc::new(NoFeed)).expect("open the log");
    log.ready().await.expect("ready");
    let open = began.elapsed();
    let loaded = log.stats().threads;
    log.close().await;

    println!("| start-up | time | threads read |");
    println!("|---|---|---|");
    println!("| agentwire (running runs' threads only) | {:.1} ms | {loaded} |", open.as_secs_f64() * 1e3);
    println!("| every thread walked (before) | {:.1} ms | {walked} |", walk.as_secs_f64() * 1e3);
    println!("ratio: {:.0}× faster", walk.as_secs_f64() / open.as_secs_f64().max(1e-9));
}

/// Reads every thread's record and head straight from the file, the way
/// start-up loaded the working state before threads were read on demand.
fn walk_threads(dir: &Path) -> usize {
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};
    const THREADS: TableDefinition<&str, &[u8]> = TableDefinition::new("threads");
    const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
    let db = redb::Database::open(dir.join(agentwire_log::embedded::DB_FILE)).expect("open the file");
    let txn = db.begin_read().expect("read");
    let (threads, events) = (txn.open_table(THREADS).expect("threads"), txn.open_table(EVENTS).expect("events"));
    let mut walked = 0;
    for item in threads.iter().expect("walk") {
        let (key, record) = item.expect("thread");
        let _: ThreadRecord = serde_json::from_slice(record.value()).expect("thread record");
        let id = key.value();
        let head = events.range((id, 0)..=(id, u64::MAX)).expect("events").next_back();
        walked += usize::from(head.is_some());
    }
    walked
}
