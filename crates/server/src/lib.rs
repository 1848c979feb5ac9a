//! # agentwire-server
//!
//! The HTTP, WebSocket and SSE face of agentwire. Handlers are thin: they
//! authenticate ([`auth`]), parse, and call the log, the hub or the engine,
//! which hold the logic. [`Server`] wires the pieces together and owns their
//! shutdown. It takes them ready: a [`Log`] opened with a [`Hub`] as its feed
//! (so appends reach the hub's subscribers), that hub, and optionally the
//! [`Agent`] that answers messages. Which log, and the node's name among
//! several, is for the program around it to choose: the `agentwire` binary
//! reads it from its settings, `examples/embed.rs` picks one in code.
//!
//! Shutdown goes in this order:
//!
//! 1. in-process agent runs end with `agent_error {code:"worker_lost"}` while
//!    their watchers are still connected;
//! 2. WebSockets close with `1001`, SSE streams end, no new connections are accepted;
//! 3. in-flight requests (publishes) finish;
//! 4. background tasks (the idle-run watchdog, the retention sweep) stop and the log writes what it has queued.

pub mod auth;
pub mod config;
pub mod error;
pub mod extract;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod quota;
pub mod routes;
pub mod state;

use std::sync::Arc;

use agentwire_agent::{Agent, Engine, EngineLimits, Watched};
use agentwire_hub::Hub;
use agentwire_log::{Log, retention, watchdog};
use agentwire_protocol::Timestamp;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::{Auth, Principal};
pub use config::{DEV_PUBLISH_KEY, DoubleTexting, ServerConfig};
pub use state::{AppState, NodeInfo};

/// Why the server could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("refusing to start: {0}")]
    Config(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Re-reads the publish-keys file every two seconds, so rotated keys apply without a restart.
async fn reload_publish_keys(auth: Arc<Auth>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        match auth.reload_publish_keys() {
            Ok(true) => tracing::info!("publish keys reloaded"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not reload publish keys; keeping the old ones"),
        }
    }
}

/// Forgets refilled quota buckets once a minute, so the quota maps hold only
/// the users and keys active in the last minute.
async fn sweep_quotas(quotas: Arc<quota::Quotas>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => quotas.sweep(),
        }
    }
}

/// What the in-process engine lets users make it do. Watchers are counted on
/// this node only, so with a shared backbone the unwatched timeout is off.
fn engine_limits(config: &ServerConfig, hub: &Arc<Hub>, shared: bool) -> EngineLimits {
    let unwatched = (!config.unwatched_run_timeout.is_zero() && !shared).then(|| {
        let hub = hub.clone();
        let watched: Watched = Arc::new(move |thread| hub.is_watched(thread));
        (config.unwatched_run_timeout, watched)
    });
    EngineLimits {
        max_runs_per_user: config.max_runs_per_user,
        max_duration: (!config.max_run_duration.is_zero()).then_some(config.max_run_duration),
        unwatched,
    }
}

/// A configured server, ready to serve.
pub struct Server {
    state: AppState,
}

impl Server {
    /// A server over a ready `log` whose appends reach `hub` (the log was opened
    /// with the hub as its feed sink: see the crate docs). `agent` runs for
    /// messages posted to threads and AG-UI runs; without one those routes answer
    /// `501 unsupported` and only external publishers speak.
    pub async fn new(
        config: ServerConfig,
        log: Arc<dyn Log>,
        hub: Arc<Hub>,
        agent: Option<Arc<dyn Agent>>,
    ) -> Result<Self, ServerError> {
        if !config.has_token_verifier() && !config.listen.ip().is_loopback() {
            return Err(ServerError::Config(format!(
                "{} is not a loopback address and no way to verify tokens is set \
                 (AGENTWIRE_JWT_SECRET, AGENTWIRE_JWT_PUBLIC_KEY or AGENTWIRE_JWT_JWKS)",
                config.listen
            )));
        }
        let mut registry = Registry::default();
        hub.metrics().register(&mut registry);
        let metrics = metrics::ServerMetrics::register(&mut registry);
        metrics.weak_durability.set(i64::from(!log.durability_warnings().is_empty()));
        let limits_of_engine = engine_limits(&config, &hub, log.is_shared());
        let engine = agent.map(|agent| Arc::new(Engine::with_limits(log.clone(), agent, limits_of_engine)));
        let auth = Arc::new(Auth::from_config(&config).map_err(|e| ServerError::Config(e.to_string()))?);
        if auth.dev_mode() {
            tracing::warn!(
                "DEV MODE: no JWT secret on a loopback address; /dev/token hands out tokens to anyone and operator routes are open"
            );
        }
        if !config.listen.ip().is_loopback() && config.allowed_hosts.is_empty() && config.allowed_origins.is_empty() {
            tracing::warn!(
                "no AGENTWIRE_ALLOWED_HOSTS or AGENTWIRE_ALLOWED_ORIGINS: browser pages (the chat page included) cannot open streams"
            );
        }
        if !auth.has_publish_keys() {
            tracing::warn!("no publish key is set (AGENTWIRE_PUBLISH_KEY): external publishers will be refused");
        }
        let limits = limits::Limits::new(&config);
        let quotas = Arc::new(quota::Quotas::new(&config));
        let id = config.node_id.clone().filter(|id| !id.is_empty()).unwrap_or_else(|| "agentwire".to_owned());
        let node = Arc::new(NodeInfo { id, started_at: Timestamp::now() });
        let state = AppState::new(state::Handles {
            node,
            config: Arc::new(config),
            log,
            hub,
            engine,
            auth,
            limits,
            quotas,
            metrics,
            registry: Arc::new(registry),
            closing: CancellationToken::new(),
            connections: TaskTracker::new(),
        });
        Ok(Self { state })
    }

    /// The shared state (tests use it to reach the log or sign tokens).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Binds the configured listen address.
    pub async fn bind(&self) -> Result<TcpListener, ServerError> {
        Ok(TcpListener::bind(self.state.config.listen).await?)
    }

    /// Serves on `listener` until `shutdown` resolves, then shuts down in order
    /// (see the crate docs).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        let state = self.state;
        let grace = state.config.shutdown_grace;
        match state.log.end_orphaned_runs().await {
            Ok(runs) if !runs.is_empty() => {
                tracing::warn!(count = runs.len(), "ended runs whose in-process agent died with the last server");
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "could not end orphaned runs"),
        }
        let background = TaskTracker::new();
        let stop_background = CancellationToken::new();
        background.spawn(watchdog::run(state.log.clone(), state.config.run_idle_timeout, stop_background.clone()));
        background.spawn(retention::run(state.log.clone(), state.config.retention_interval, stop_background.clone()));

        background.spawn(reload_publish_keys(state.auth.clone(), stop_background.clone()));
        background.spawn(sweep_quotas(state.quotas.clone(), stop_background.clone()));
        let http_limits = listener::HttpLimits {
            header_timeout: state.config.http_header_timeout,
            write_timeout: state.config.write_timeout,
            max_per_ip: state.config.max_http_connections_per_ip,
            write_timeouts: state.hub.metrics().slow_consumer_disconnects.clone(),
        };
        if let Ok(addr) = listener.local_addr() {
            state.limits.set_port(addr.port());
        }
        let http = listener::serve(listener, routes::router(state.clone()), http_limits, state.closing.clone());
        let mut http = tokio::spawn(http);

        let early = tokio::select! {
            _ = shutdown => None,
            served = &mut http => Some(served),
        };
        if let Some(served) = early {
            // The listener failed on its own: still stop what was started.
            state.closing.cancel();
            if let Some(engine) = &state.engine {
                engine.shutdown(grace).await;
            }
            stop_background.cancel();
            return match served {
                Ok(()) => Ok(()),
                Err(join) => Err(ServerError::Io(std::io::Error::other(join))),
            };
        }

        tracing::info!("shutting down: ending in-process runs");
        if let Some(engine) = &state.engine {
            engine.shutdown(grace).await;
        }
        tracing::info!("closing connections");
        state.closing.cancel();
        state.connections.close();
        if tokio::time::timeout(grace, state.connections.wait()).await.is_err() {
            tracing::warn!("some WebSockets did not close within the grace period");
        }
        match tokio::time::timeout(grace, http).await {
            Ok(Ok(())) => {}
            Ok(Err(join)) => tracing::error!(error = %join, "the HTTP server task failed"),
            Err(_) => tracing::warn!("in-flight requests did not finish within the grace period"),
        }
        stop_background.cancel();
        background.close();
        background.wait().await;
        state.log.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}
