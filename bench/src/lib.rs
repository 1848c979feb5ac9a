//! # agentwire-bench
//!
//! Benchmarks that measure agentwire and a peer on the same workload in the
//! same run and print ratios. Each binary under `src/bin` is one benchmark;
//! `BENCHMARKS.md` says how to run them and what they measured.

pub mod fjall_store;
pub mod load;
pub mod publisher;
pub mod soak;
pub mod soak_http;
pub mod stats;
pub mod timed;
