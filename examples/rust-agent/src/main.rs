//! A custom Rust agent served by embedding agentwire as a library: every message
//! to a thread starts a run of `Shouter`, whose events the run context emits.
//! `cargo run -p agentwire-example-rust-agent`, then post a message (README "Two commands").
use std::sync::Arc;

use agentwire_agent::{Agent, AgentError, RunContext, RunInput};
use agentwire_hub::{Hub, HubMetrics};
use agentwire_log::MemoryLog;
use agentwire_server::{Server, ServerConfig};
use serde_json::{Value, json};

struct Shouter;

#[async_trait::async_trait]
impl Agent for Shouter {
    fn name(&self) -> &str {
        "shouter"
    }

    async fn run(&self, ctx: &RunContext, input: RunInput) -> Result<Value, AgentError> {
        let text = input.user_message.unwrap_or_default();
        ctx.thinking("Making it louder").await?;
        // tool_executing now, tool_completed when the work ends, however it ends.
        let upper = async { Ok::<_, String>(text.to_uppercase()) };
        let loud = ctx.call_tool("upper", json!({ "text": text }), upper).await?.unwrap_or_default();
        ctx.message().delta(format!("{loud}!")).await?;
        Ok(json!({ "shouted": loud }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = ServerConfig::from_env()?; // AGENTWIRE_LISTEN etc., dev mode on loopback
    let hub = Hub::new(config.hub_config(), HubMetrics::new());
    let log = Arc::new(MemoryLog::new(config.log_config(), hub.clone())?);
    let server = Server::new(config, log, hub, Some(Arc::new(Shouter))).await?;
    let listener = server.bind().await?;
    println!("agentwire with the shouter agent on http://{}", listener.local_addr()?);
    server.serve(listener, async { tokio::signal::ctrl_c().await.unwrap_or(()) }).await?;
    Ok(())
}
