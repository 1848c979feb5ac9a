//! agentwire inside your own program: open a log, hand it to the server with
//! an agent of your own (or none), serve.
//!
//! ```sh
//! cargo run -p agentwire-server --example embed
//! ```
//!
//! It listens on 127.0.0.1:8090 in dev mode with the memory log and the demo
//! agent; `curl -s 'http://127.0.0.1:8090/dev/token?user=alice'` gives a token.
//! Pass `None` instead of the agent and only external publishers speak
//! (`POST /v1/threads/{id}/messages` answers `501 unsupported`).

use std::sync::Arc;

use agentwire_agent::DemoAgent;
use agentwire_hub::{Hub, HubMetrics};
use agentwire_log::MemoryLog;
use agentwire_server::{Server, ServerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = ServerConfig::from_env()?;
    config.listen = "127.0.0.1:8090".parse()?;
    // The hub fans out what the log appends, so the log is opened with the hub as its feed.
    let hub = Hub::new(config.hub_config(), HubMetrics::new());
    let log = Arc::new(MemoryLog::new(config.log_config(), hub.clone())?);
    let agent = Arc::new(DemoAgent::default());
    let server = Server::new(config, log, hub, Some(agent)).await?;
    let listener = server.bind().await?;
    println!("listening on http://{}", listener.local_addr()?);
    server.serve(listener, async { tokio::signal::ctrl_c().await.unwrap_or(()) }).await?;
    Ok(())
}
