//! Thread extraction from any run id never panics and only ever answers a valid
//! thread id that occurs in the input.
#![no_main]

use agentwire_protocol::{ThreadId, extract_thread_id};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(run_id) = std::str::from_utf8(data)
        && let Some(thread) = extract_thread_id(run_id)
    {
        assert!(ThreadId::parse(thread.as_str()).is_ok());
        assert!(run_id.contains(thread.as_str()));
    }
});
