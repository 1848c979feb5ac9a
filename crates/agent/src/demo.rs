//! The built-in demo agent: deterministic, no network, and it exercises every event.
//!
//! It thinks out loud, calls a calculator when the message holds arithmetic and
//! a clock every time, then streams its answer word by word. A message that
//! starts with `/fail` makes it fail after thinking, and `/panic` makes it
//! panic inside a tool, so the error paths can be watched too. A message that
//! says "ask me first" makes it ask for approval before it reads the clock.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::context::RunContext;
use crate::engine::{Agent, AgentError, RunInput};

/// The demo agent.
#[derive(Debug, Clone)]
pub struct DemoAgent {
    /// Pause between steps, so a person can watch the run unfold (0 in tests).
    pub step_delay: Duration,
}

impl Default for DemoAgent {
    fn default() -> Self {
        Self { step_delay: Duration::from_millis(60) }
    }
}

/// The longest stretch of `text` that looks like arithmetic: digits, operators,
/// parentheses and spaces, with at least one digit and one operator.
pub fn find_expression(text: &str) -> Option<String> {
    let is_expr_char = |c: char| c.is_ascii_digit() || " .+-*/()%^".contains(c);
    text.split(|c: char| !is_expr_char(c))
        .map(str::trim)
        .filter(|s| s.chars().any(|c| c.is_ascii_digit()) && s.chars().any(|c| "+-*/%^".contains(c)))
        .max_by_key(|s| s.len())
        .map(str::to_owned)
}

/// The longest expression the calculator takes, in bytes. evalexpr parses and
/// evaluates by recursion (once per nesting level and per operator), so an
/// unbounded expression from a chat message could overflow the worker's stack
/// and abort the whole process; a short one cannot.
pub const MAX_EXPRESSION_LEN: usize = 256;
/// The deepest parenthesis nesting the calculator takes.
pub const MAX_EXPRESSION_DEPTH: usize = 32;

/// Evaluates arithmetic with floating-point numbers (so `7 / 2` is `3.5`).
/// Refuses, without evaluating, an expression longer than
/// [`MAX_EXPRESSION_LEN`] or nested deeper than [`MAX_EXPRESSION_DEPTH`].
pub fn calculate(expression: &str) -> Result<f64, String> {
    check_size(expression)?;
    let value = evalexpr::eval(&float_literals(expression)).map_err(|e| format!("cannot evaluate it: {e}"))?;
    value.as_number().map_err(|e| format!("it is not a number: {e}"))
}

/// Bounds what reaches the recursive evaluator (see [`MAX_EXPRESSION_LEN`]).
fn check_size(expression: &str) -> Result<(), String> {
    if expression.len() > MAX_EXPRESSION_LEN {
        return Err(format!("it is {} characters long; I take at most {MAX_EXPRESSION_LEN}", expression.len()));
    }
    let mut depth = 0usize;
    for c in expression.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ => continue,
        }
        if depth > MAX_EXPRESSION_DEPTH {
            return Err(format!("it nests parentheses deeper than {MAX_EXPRESSION_DEPTH}"));
        }
    }
    Ok(())
}

/// `text` as quoted in thoughts and answers: whole when short, else its start,
/// so a huge message does not become a huge answer streamed word by word.
/// Redacted before it is cut: half a key no longer looks like one to the log's pass.
fn shown(text: &str) -> String {
    const SHOWN: usize = 64;
    let text = agentwire_protocol::redact::redact_text(text);
    if text.len() <= SHOWN {
        return text.into_owned();
    }
    let cut = (0..=SHOWN).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    format!("{}… ({} characters)", &text[..cut], text.len())
}

/// `42.0` as `42`, so answers read as people write them.
fn whole_if_integral(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() < 9.0e15 { Value::from(value as i64) } else { Value::from(value) }
}

/// `7/2` → `7.0/2.0`: evalexpr divides integers as integers.
fn float_literals(expression: &str) -> String {
    let mut out = String::with_capacity(expression.len() + 8);
    let mut chars = expression.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c.is_ascii_digit() {
            let mut has_dot = false;
            while let Some(&n) = chars.peek() {
                if !(n.is_ascii_digit() || n == '.') {
                    break;
                }
                has_dot |= n == '.';
                out.push(n);
                chars.next();
            }
            if !has_dot {
                out.push_str(".0");
            }
        }
    }
    out
}

impl DemoAgent {
    async fn pause(&self) {
        if !self.step_delay.is_zero() {
            tokio::time::sleep(self.step_delay).await;
        }
    }
}

#[async_trait]
impl Agent for DemoAgent {
    fn name(&self) -> &str {
        "demo"
    }

    async fn run(&self, ctx: &RunContext, input: RunInput) -> Result<Value, AgentError> {
        let text = input.user_message.unwrap_or_default();
        ctx.thinking_step(format!("Reading the message: {:?}", shown(&text)), 1).await?;
        self.pause().await;
        if text.trim_start().starts_with("/fail") {
            return Err(AgentError::failed("you asked me to fail (/fail)"));
        }

        let mut facts = Vec::new();
        if let Some(expression) = find_expression(&text) {
            let shown = shown(&expression);
            ctx.thinking_step(format!("There is arithmetic in it; I will compute {shown}."), 2).await?;
            self.pause().await;
            let work = async { calculate(&expression).map(whole_if_integral) };
            match ctx.call_tool("calculator", json!({ "expression": shown }), work).await? {
                Ok(value) => facts.push(format!("{shown} = {value}")),
                Err(e) => facts.push(format!("I could not compute {shown}: {e}")),
            }
        }

        let clock_args = json!({ "timezone": "UTC" });
        if text.to_lowercase().contains("ask me first") {
            ctx.thinking_step("You asked me to ask first: may I read the clock?", 3).await?;
            if !ctx.approve("clock", clock_args.clone()).await? {
                facts.push("you did not let me read the clock".into());
                return Ok(self.answer(ctx, facts).await?);
            }
        }
        ctx.thinking_step("Checking the clock so I can say when I answered.", 3).await?;
        let clock = ctx.tool("clock", clock_args).await?;
        self.pause().await;
        if text.trim_start().starts_with("/panic") {
            panic!("you asked me to panic (/panic)");
        }
        let now = chrono::Utc::now().format("%H:%M:%S UTC").to_string();
        clock.complete(json!({ "time": now })).await?;
        facts.push(format!("it is {now}"));
        Ok(self.answer(ctx, facts).await?)
    }
}

impl DemoAgent {
    /// Streams what it found, word by word; answers the run's result.
    async fn answer(&self, ctx: &RunContext, facts: Vec<String>) -> Result<Value, crate::EmitError> {
        let answer = format!("Here is what I found: {}.", facts.join("; "));
        let message = ctx.message();
        for (i, word) in answer.split_inclusive(' ').enumerate() {
            message.delta(word).await?;
            if i % 3 == 2 {
                self.pause().await;
            }
        }
        Ok(json!({ "answer": answer }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_computes_arithmetic() {
        assert_eq!(find_expression("what is 12 * (3 + 4)?").as_deref(), Some("12 * (3 + 4)"));
        assert_eq!(find_expression("hello 2026"), None);
        assert_eq!(find_expression("no numbers + here"), None);
        assert_eq!(calculate("12 * (3 + 4)"), Ok(84.0));
        assert_eq!(calculate("7/2"), Ok(3.5));
        assert!(calculate("1 +").is_err());
    }

    #[test]
    fn hostile_expressions_are_refused_without_recursing() {
        // Each of these aborted the process through evalexpr's recursion (issue 14).
        let nested = format!("{}1+1{}", "(".repeat(20_000), ")".repeat(20_000));
        let plus = vec!["1"; 30_000].join("+");
        let power = vec!["2"; 30_000].join("^");
        for expression in [nested, plus, power] {
            let found = find_expression(&expression).unwrap();
            let refused = calculate(&found).unwrap_err();
            assert!(refused.contains("at most"), "{refused}");
            assert!(shown(&found).len() < 100);
        }
        let deep = format!("{}1{}", "(".repeat(33), ")".repeat(33));
        assert!(calculate(&deep).unwrap_err().contains("deeper"));
        let fine = format!("{}1+1{}", "(".repeat(32), ")".repeat(32));
        assert_eq!(calculate(&fine), Ok(2.0));
        // The longest chains still accepted evaluate on a small stack.
        let longest = [vec!["1"; 128].join("+"), vec!["1"; 128].join("^")];
        let on_small_stack = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || longest.map(|e| calculate(&e)))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(on_small_stack, [Ok(128.0), Ok(1.0)]);
    }
}
