//! Any text a WebSocket client sends is parsed without a panic, and what parses
//! survives a round trip.
#![no_main]

use agentwire_protocol::ClientFrame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(frame) = ClientFrame::parse(text)
    {
        let again = serde_json::to_string(&frame).expect("a parsed frame serializes");
        assert_eq!(ClientFrame::parse(&again).ok(), Some(frame));
    }
});
