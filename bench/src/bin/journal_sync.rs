//! How long a durable journal record takes to write, two ways, through the
//! embedded store's own segment writer (`agentwire_log::embedded::segment`):
//! a direct, synced write (`O_DIRECT | O_DSYNC`, one system call, what the
//! journal does on Linux) against a buffered write and an `fdatasync` (the
//! peer: what it did before, and still does where direct I/O is refused).
//! Both write over a file of zeros written and synced beforehand, as the
//! journal writes over its prepared spares; the two alternate, `rounds` times.
//!
//! ```sh
//! cargo run --release -p agentwire-bench --bin journal_sync -- [records] [bytes] [rounds]
//! ```
//! Defaults: 4,000 records of 2,048 bytes (about a group of eight small
//! events), 3 rounds. Data goes under `target/bench-data` (a real disk).

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use agentwire_log::embedded::segment::{RECORD_ALIGN, SegmentFile};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let records = arg(1, 4000).max(100);
    let bytes = arg(2, 2048).max(1).next_multiple_of(RECORD_ALIGN);
    let rounds = arg(3, 3).max(1);
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data");
    std::fs::create_dir_all(&base).expect("create target/bench-data");
    let dir = tempfile::tempdir_in(&base).expect("a directory for the bench");
    let path = dir.path().join("segment");

    println!("durable journal records: {records} of {bytes} bytes over prepared zeros, {rounds} rounds");
    println!("| round | way | records/s | p50 / p99 / p999 / max (ms) |");
    println!("|---:|---|---:|---|");
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let mut p50s = [0.0; 2];
        for (i, direct) in [false, true].into_iter().enumerate() {
            prepare(&path, records * bytes);
            let mut file = if direct { SegmentFile::open(&path) } else { SegmentFile::open_buffered(&path) }
                .expect("open the segment");
            let way = match (direct, file.is_direct()) {
                (false, _) => "buffered + fdatasync",
                (true, true) => "O_DIRECT + O_DSYNC",
                (true, false) => "direct refused here: buffered + fdatasync",
            };
            let record = vec![b'x'; bytes];
            let mut times = Vec::with_capacity(records);
            let started = Instant::now();
            for n in 0..records {
                let at = Instant::now();
                file.write_durably(&record, (n * bytes) as u64).expect("a durable write");
                times.push(at.elapsed().as_secs_f64() * 1000.0);
            }
            let rate = records as f64 / started.elapsed().as_secs_f64();
            times.sort_by(f64::total_cmp);
            let q = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
            p50s[i] = q(0.5);
            println!(
                "| {round} | {way} | {rate:.0} | {:.3} / {:.3} / {:.3} / {:.2} |",
                q(0.5),
                q(0.99),
                q(0.999),
                times[times.len() - 1]
            );
        }
        ratios.push(p50s[1] / p50s[0]);
    }
    let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}x")).collect();
    println!("\ndirect / buffered, p50 per record: {}", shown.join(", "));
}

/// A file of `len` zeros, written and synced, as the journal's spares are.
fn prepare(path: &Path, len: usize) {
    let mut file = File::create(path).expect("create the segment");
    let zeros = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len());
        file.write_all(&zeros[..n]).expect("write zeros");
        left -= n;
    }
    file.sync_all().expect("sync the zeros");
}
