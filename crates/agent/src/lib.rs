//! # agentwire-agent
//!
//! The in-process agent SDK. Implement [`Agent`], hand it to an [`Engine`], and
//! start runs: the engine gives each run a [`RunContext`] through which the
//! agent reports thinking, tool calls and its streamed answer, and it takes
//! care of the rest of the lifecycle (`agent_started` first, every tool call
//! closed, exactly one terminal event, even on error or panic). An agent can
//! also ask its user and wait for the answer ([`RunContext::ask`],
//! [`RunContext::approve`]).
//!
//! ```no_run
//! use agentwire_agent::{Agent, AgentError, RunContext, RunInput};
//! use serde_json::{json, Value};
//!
//! struct Echo;
//!
//! #[async_trait::async_trait]
//! impl Agent for Echo {
//!     fn name(&self) -> &str { "echo" }
//!     async fn run(&self, ctx: &RunContext, input: RunInput) -> Result<Value, AgentError> {
//!         let text = input.user_message.unwrap_or_default();
//!         ctx.thinking("Repeating what I was told").await?;
//!         let len = ctx.call_tool("count", json!({"text": text}), async { Ok::<_, String>(text.len()) }).await?;
//!         ctx.message().delta(text.clone()).await?;
//!         Ok(json!({"echo": text, "len": len.ok()}))
//!     }
//! }
//! ```
//!
//! The engine appends through the same [`agentwire_log::Log`] as HTTP
//! publishers do: one way in, one set of rules.

mod ask;
mod context;
pub mod demo;
mod engine;

pub use ask::{Answer, Question};
pub use context::{EmitError, MessageStream, RunContext, ToolGuard};
pub use demo::DemoAgent;
pub use engine::{Agent, AgentError, Engine, EngineLimits, RunInput, RunSlot, StartError, Watched};
