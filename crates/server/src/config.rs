//! Every setting of the server, each a `--flag` and an `AGENTWIRE_*` variable.
//!
//! The settings are declared once, here, with their defaults and help text; the
//! binary flattens them into its command line, so `agentwire serve --help`
//! documents exactly what the server reads.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// The server's settings.
#[derive(Debug, Clone, Args)]
pub struct ServerConfig {
    /// Address to listen on. A loopback address with no JWT secret runs in dev mode.
    #[arg(long, env = "AGENTWIRE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// This node's name on the dashboard (and among nodes sharing a backbone).
    /// Default: the host name and the listen port.
    #[arg(long, env = "AGENTWIRE_NODE_ID")]
    pub node_id: Option<String>,

    /// HS256 secret that subscriber JWTs are signed with. Required outside loopback.
    #[arg(long, env = "AGENTWIRE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Publish keys (comma-separated) that publishers send as `Authorization: Bearer <key>`.
    /// In dev mode the key `dev-publish-key` is used when none is set.
    #[arg(long = "publish-key", env = "AGENTWIRE_PUBLISH_KEY", value_delimiter = ',', hide_env_values = true)]
    pub publish_keys: Vec<String>,

    /// Operator key for `/v1/admin/...`. In dev mode the operator routes are open.
    #[arg(long, env = "AGENTWIRE_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,

    /// Where the thread log lives: `embedded` (a durable file in the data directory)
    /// or `memory` (this process only, lost on restart; for tests and throwaway use).
    #[arg(long, visible_alias = "store", env = "AGENTWIRE_BACKBONE", default_value = "embedded")]
    pub backbone: String,

    /// Directory of the embedded store. Locked while a server uses it.
    #[arg(long, env = "AGENTWIRE_DATA_DIR", default_value = "./agentwire-data")]
    pub data_dir: std::path::PathBuf,

    /// A run that sends nothing for this long is ended with `agent_error {code:"timeout"}`.
    #[arg(long, env = "AGENTWIRE_RUN_IDLE_TIMEOUT", default_value = "300s", value_parser = parse_duration)]
    pub run_idle_timeout: Duration,

    /// Retention: most events kept per thread (0: no limit).
    #[arg(long, env = "AGENTWIRE_RETENTION_THREAD_EVENTS", default_value_t = 0)]
    pub retention_thread_events: u64,

    /// Retention: most events kept in the whole log, oldest threads first (0: no limit).
    #[arg(long, env = "AGENTWIRE_RETENTION_EVENTS", default_value_t = 0)]
    pub retention_events: u64,

    /// Retention: events older than this are removed (0s: kept forever).
    #[arg(long, env = "AGENTWIRE_RETENTION_MAX_AGE", default_value = "0s", value_parser = parse_duration)]
    pub retention_max_age: Duration,

    /// How often the retention sweep runs.
    #[arg(long, env = "AGENTWIRE_RETENTION_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub retention_interval: Duration,

    /// Events a connection may have queued before it is closed as a slow consumer (4008).
    #[arg(long, env = "AGENTWIRE_SEND_QUEUE", default_value_t = 4096)]
    pub send_queue: usize,

    /// Most events sent together in one `batch` frame.
    #[arg(long, env = "AGENTWIRE_MAX_BATCH", default_value_t = 256)]
    pub max_batch: usize,

    /// Events read from the log per page when a subscription replays history.
    #[arg(long, env = "AGENTWIRE_REPLAY_PAGE", default_value_t = 500)]
    pub replay_page: usize,

    /// How often idle WebSockets are pinged; one silent for two intervals is dropped.
    #[arg(long, env = "AGENTWIRE_WS_PING_INTERVAL", default_value = "20s", value_parser = parse_duration)]
    pub ws_ping_interval: Duration,

    /// How often an idle SSE stream gets a `: ping` comment.
    #[arg(long, env = "AGENTWIRE_SSE_KEEPALIVE", default_value = "15s", value_parser = parse_duration)]
    pub sse_keepalive: Duration,

    /// Largest HTTP request body, in bytes (larger: 413 too_large).
    #[arg(long, env = "AGENTWIRE_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,

    /// Largest WebSocket message from a client, in bytes.
    #[arg(long, env = "AGENTWIRE_MAX_FRAME_BYTES", default_value_t = 64 << 10)]
    pub max_frame_bytes: usize,

    /// Most events in one publish (more: 413 too_large).
    #[arg(long, env = "AGENTWIRE_MAX_EVENTS_PER_PUBLISH", default_value_t = 1000)]
    pub max_events_per_publish: usize,

    /// Most threads one WebSocket connection may watch.
    #[arg(long = "max-subscriptions", env = "AGENTWIRE_MAX_SUBSCRIPTIONS", default_value_t = 256)]
    pub max_subscriptions_per_connection: usize,

    /// Replace secret-looking tool arguments with "[REDACTED]" (PROTOCOL §8).
    #[arg(long, env = "AGENTWIRE_REDACT_SECRETS", default_value_t = true, action = clap::ArgAction::Set)]
    pub redact_secrets: bool,

    /// How long shutdown waits for agent runs and in-flight requests.
    #[arg(long, env = "AGENTWIRE_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Lifetime of tokens handed out by `/dev/token` in dev mode.
    #[arg(long, env = "AGENTWIRE_DEV_TOKEN_TTL", default_value = "24h", value_parser = parse_duration)]
    pub dev_token_ttl: Duration,

    /// Pause between the demo agent's steps, so a person can watch (0s: as fast as possible).
    #[arg(long, env = "AGENTWIRE_DEMO_STEP_DELAY", default_value = "60ms", value_parser = parse_duration)]
    pub demo_step_delay: Duration,
}

/// The publish key dev mode uses when none is configured.
pub const DEV_PUBLISH_KEY: &str = "dev-publish-key";

impl ServerConfig {
    /// The retention limits these settings name.
    pub fn retention(&self) -> agentwire_log::RetentionPolicy {
        agentwire_log::RetentionPolicy {
            max_events_per_thread: self.retention_thread_events,
            max_events: self.retention_events,
            max_age: self.retention_max_age,
        }
    }

    /// Dev mode: no JWT secret and a loopback listen address (PROTOCOL §7).
    pub fn dev_mode(&self) -> bool {
        self.jwt_secret.is_none() && self.listen.ip().is_loopback()
    }

    /// The settings as an empty command line gives them: the defaults above,
    /// overridden by any `AGENTWIRE_*` variable that is set.
    pub fn from_env() -> Result<Self, clap::Error> {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            config: ServerConfig,
        }
        <Defaults as clap::Parser>::try_parse_from(["agentwire"]).map(|d| d.config)
    }
}
