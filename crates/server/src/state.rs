//! The state every handler receives, passed explicitly through axum's `State`.

use std::sync::Arc;

use agentwire_agent::Engine;
use agentwire_hub::Hub;
use agentwire_log::Log;
use agentwire_protocol::{ThreadId, UserId};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::metrics::ServerMetrics;
use crate::quota::Charge;

/// Who this node is, for the dashboard.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: String,
    pub started_at: agentwire_protocol::Timestamp,
}

/// Shared handles of one server. Cloning is one reference count: axum clones
/// the state for every request (several times, with the middleware), and a
/// clone of each handle cost a dozen contended atomic operations a request.
#[derive(Clone)]
pub struct AppState(Arc<Handles>);

impl AppState {
    /// The state over `handles`.
    pub fn new(handles: Handles) -> Self {
        Self(Arc::new(handles))
    }
}

impl std::ops::Deref for AppState {
    type Target = Handles;

    fn deref(&self) -> &Handles {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Handles {
    pub config: Arc<ServerConfig>,
    pub node: Arc<NodeInfo>,
    pub log: Arc<dyn Log>,
    pub hub: Arc<Hub>,
    /// The in-process agent's engine; `None` when the server runs no agent of its own.
    pub engine: Option<Arc<Engine>>,
    pub auth: Arc<Auth>,
    pub limits: Arc<crate::limits::Limits>,
    pub quotas: Arc<crate::quota::Quotas>,
    pub metrics: ServerMetrics,
    pub registry: Arc<Registry>,
    /// Cancelled when long-lived connections must close (shutdown).
    pub closing: CancellationToken,
    /// Tracks WebSocket tasks, so shutdown can wait for their close frames.
    pub connections: TaskTracker,
}

impl AppState {
    /// The in-process engine, for routes that start a run of the server's own
    /// agent: `501 unsupported` when the server was started without one.
    pub fn agent_engine(&self) -> Result<&Arc<Engine>, ApiError> {
        self.engine.as_ref().ok_or_else(|| {
            ApiError::new(agentwire_protocol::ErrorCode::Unsupported, "this server runs no in-process agent")
        })
    }

    /// Runs executing in this node's in-process engine.
    pub fn agent_runs(&self) -> usize {
        self.engine.as_ref().map_or(0, |e| e.running())
    }

    /// Stops `run` if this node's engine executes it.
    pub fn stop_agent_run(&self, run: &str) {
        if let Some(engine) = &self.engine {
            engine.stop(run);
        }
    }

    /// What starting a run for `user` in `thread` costs: one run, and one thread
    /// when the thread is new. Kept by the caller once the run has started.
    pub async fn user_run_charges(
        &self,
        user: &UserId,
        thread: &ThreadId,
    ) -> Result<(Charge<'_, UserId>, Charge<'_, UserId>), ApiError> {
        let runs = self.quotas.user_runs.charge(user, 1)?;
        let new_thread = self.log.thread_owner(thread).await?.is_none();
        let threads = self.quotas.user_threads.charge(user, u64::from(new_thread))?;
        Ok((runs, threads))
    }

    /// `Ok` when `user` owns `thread`: `404` if it does not exist, `403` if it is someone else's.
    pub async fn check_owner(&self, user: &UserId, thread: &ThreadId) -> Result<(), ApiError> {
        match self.log.thread_owner(thread).await? {
            None => Err(ApiError::not_found(format!("thread {thread}"))),
            Some(owner) if &owner == user => Ok(()),
            Some(_) => Err(ApiError::forbidden()),
        }
    }
}
