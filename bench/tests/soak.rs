//! The soak, short (issue 13 item 12): resident memory reaches a plateau under a
//! steady stream of short runs. Measured here (debug build, 10,000 runs): 163,
//! 223 and 209 bytes per ended run after warm-up; with ended runs kept in memory
//! (the behaviour before eviction) 1,384. The bound sits between, generous
//! enough not to flake on a busy machine, tight enough that such a leak fails it.

use agentwire_bench::soak::soak;
use agentwire_log::EmbeddedStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_reaches_a_plateau_under_a_stream_of_short_runs() {
    const RUNS: usize = 10_000;
    let dir = tempfile::tempdir().expect("temp dir");
    // A small page cache, so the store's own warm-up ends early in a short run.
    let store = EmbeddedStore::open_with_cache(dir.path(), 1 << 20).expect("open the store");
    let outcome = soak(store, RUNS, 100, dir.path()).await;
    let slope = outcome.slope();
    eprintln!("growth per ended run after warm-up: {slope:.1} B");
    assert_eq!(outcome.in_memory, 0, "ended runs left the working state");
    assert!(slope < 600.0, "resident memory grew {slope:.0} bytes per ended run after warm-up");
}
