//! Any chat message reaches the demo agent's calculator without overflowing the
//! stack or running long: what it finds is evaluated within the calculator's limits.
#![no_main]

use agentwire_agent::demo::{MAX_EXPRESSION_LEN, calculate, find_expression};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Some(expression) = find_expression(text) {
        let answer = calculate(&expression);
        assert!(expression.len() <= MAX_EXPRESSION_LEN || answer.is_err());
    }
    // The message whole, as if every character were arithmetic.
    let _ = calculate(text);
});
