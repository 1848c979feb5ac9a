//! Any publish body is validated without a panic; what passes respects the rules.
#![no_main]

use agentwire_protocol::{EventKind, PublishLimits, parse_publish_body};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = PublishLimits { max_events: 64 };
    if let Ok(events) = parse_publish_body(data, limits) {
        assert!(!events.is_empty() && events.len() <= 64);
        for e in &events {
            assert_ne!(e.kind, EventKind::UserMessage, "publishers may not send user_message");
            assert!(e.kind.check_data(&e.data).is_ok());
        }
    }
});
