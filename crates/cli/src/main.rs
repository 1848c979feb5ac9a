//! `agentwire`: the binary. A thin shell: it reads settings, starts the server
//! crate with the demo agent, prints how to use it, and stops on Ctrl-C or SIGTERM.

mod store;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use agentwire_agent::DemoAgent;
use agentwire_hub::{Hub, HubMetrics};
use agentwire_log::EmbeddedStore;
use agentwire_protocol::ThreadId;
use agentwire_server::{DEV_PUBLISH_KEY, Server, ServerConfig};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// jemalloc: glibc's allocator spent a third of the server's time under a
/// streaming publish (arena locks taken by frees from other threads);
/// BENCHMARKS.md has the figures.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// agentwire: the real-time bridge between AI agents and the people watching them.
///
/// Publishers (agent workers) send run events over HTTP; agentwire numbers them
/// per thread, keeps them, and delivers them in order to every browser watching
/// the thread over WebSocket or Server-Sent Events.
#[derive(Parser)]
#[command(name = "agentwire", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server. Every setting is a flag and an AGENTWIRE_* environment variable.
    Serve {
        #[command(flatten)]
        config: Box<ServerConfig>,
        #[command(flatten)]
        store: store::StoreSettings,
    },
    /// Write threads of a stopped server's data directory to stdout as JSON lines.
    Export {
        /// A thread to export; repeat for several.
        #[arg(long = "thread", required = true)]
        threads: Vec<String>,
        /// The embedded store's directory.
        #[arg(long, env = "AGENTWIRE_DATA_DIR", default_value = "./agentwire-data")]
        data_dir: PathBuf,
    },
    /// Read threads written by `export` (from FILE, or stdin) into a data directory.
    /// A thread that already exists there is refused.
    Import {
        /// The export to read; stdin when absent.
        file: Option<PathBuf>,
        /// The embedded store's directory.
        #[arg(long, env = "AGENTWIRE_DATA_DIR", default_value = "./agentwire-data")]
        data_dir: PathBuf,
    },
}

/// Why an offline command failed.
#[derive(Debug)]
enum CommandError {
    Server(agentwire_server::ServerError),
    Open(store::OpenError),
    Store(agentwire_log::StoreError),
    Usage(String),
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Server(e) => e.fmt(f),
            Self::Open(e) => e.fmt(f),
            Self::Store(e) => e.fmt(f),
            Self::Usage(e) => f.write_str(e),
        }
    }
}

fn export(threads: &[String], data_dir: &std::path::Path) -> Result<(), CommandError> {
    let store = EmbeddedStore::open(data_dir).map_err(CommandError::Store)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for name in threads {
        let thread = ThreadId::parse(name).map_err(|e| CommandError::Usage(format!("{name}: {e}")))?;
        if !store.export_thread(&thread, &mut out).map_err(CommandError::Store)? {
            return Err(CommandError::Usage(format!("thread {thread} is not in {}", data_dir.display())));
        }
    }
    std::io::Write::flush(&mut out).map_err(|e| CommandError::Usage(format!("cannot write stdout: {e}")))
}

fn import(file: Option<&std::path::Path>, data_dir: &std::path::Path) -> Result<(), CommandError> {
    let store = EmbeddedStore::open(data_dir).map_err(CommandError::Store)?;
    let imported = match file {
        Some(path) => {
            let f = std::fs::File::open(path).map_err(|e| CommandError::Usage(format!("{}: {e}", path.display())))?;
            store.import(std::io::BufReader::new(f))
        }
        None => store.import(std::io::stdin().lock()),
    }
    .map_err(CommandError::Store)?;
    eprintln!("imported {} thread(s) into {}", imported.len(), data_dir.display());
    Ok(())
}

fn banner(config: &ServerConfig, addr: std::net::SocketAddr) -> String {
    let base = format!("http://{addr}");
    let mut out = format!("\nagentwire is listening on {base}\n");
    if !config.dev_mode() {
        out.push_str("Subscribers need a JWT signed with AGENTWIRE_JWT_SECRET; publishers a publish key.\n");
        return out;
    }
    let key = config.publish_keys.first().map(String::as_str).unwrap_or(DEV_PUBLISH_KEY);
    out.push_str(&format!(
        r#"DEV MODE (no JWT secret, loopback only). Paste these into a shell:

  # a token for user "alice"
  TOKEN=$(curl -s '{base}/dev/token?user=alice' | sed -E 's/.*"token":"([^"]+)".*/\1/')

  # ask the built-in demo agent something (this creates thread_demo for alice)
  curl -s -X POST {base}/v1/threads/thread_demo/messages -H "Authorization: Bearer $TOKEN" \
       -H 'content-type: application/json' -d '{{"text":"what is 6 * 7?"}}'

  # watch the thread live (Server-Sent Events; WebSocket: ws://{addr}/v1/ws?token=$TOKEN)
  curl -N "{base}/v1/threads/thread_demo/stream?after_seq=0&token=$TOKEN"

  # publish as an external agent (publish key: {key})
  RUN=$(curl -s -X POST {base}/v1/runs -H 'Authorization: Bearer {key}' -H 'content-type: application/json' \
        -d '{{"thread_id":"thread_demo","user_id":"alice","agent_name":"my-agent"}}' | sed -E 's/.*"run_id":"([^"]+)".*/\1/')
  curl -s -X POST {base}/v1/runs/$RUN/events -H 'Authorization: Bearer {key}' -H 'content-type: application/json' \
       -d '{{"events":[{{"event":"agent_started","data":{{"agent_name":"my-agent"}}}},{{"event":"agent_completed","data":{{"result":"hi"}}}}]}}'

  metrics: {base}/metrics   health: {base}/healthz   live figures: {base}/v1/admin/stats
"#
    ));
    out
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

async fn serve(mut config: ServerConfig, settings: store::StoreSettings) -> Result<(), CommandError> {
    let node_id = store::node_id(config.node_id.as_deref(), config.listen.port());
    config.node_id = Some(node_id.clone());
    let hub = Hub::new(config.hub_config(), HubMetrics::new());
    let log = store::open(&settings, config.log_config(), &node_id, hub.clone()).await.map_err(CommandError::Open)?;
    let agent = Arc::new(DemoAgent { step_delay: config.demo_step_delay });
    let server = Server::new(config.clone(), log, hub, Some(agent)).await.map_err(CommandError::Server)?;
    let listener = server.bind().await.map_err(CommandError::Server)?;
    let addr = listener.local_addr().map_err(|e| CommandError::Server(e.into()))?;
    println!("{}", banner(&config, addr));
    tracing::info!(%addr, dev_mode = config.dev_mode(), "listening");
    server.serve(listener, shutdown_signal()).await.map_err(CommandError::Server)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_env("AGENTWIRE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentwire: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve { config, store } => runtime.block_on(serve(*config, store)),
        Command::Export { threads, data_dir } => export(&threads, &data_dir),
        Command::Import { file, data_dir } => import(file.as_deref(), &data_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentwire: {e}");
            ExitCode::FAILURE
        }
    }
}
