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

/// What happens to a message posted while a run of its thread is going
/// (PROTOCOL §3, "double-texting").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DoubleTexting {
    /// The new run starts beside the one going.
    #[default]
    Concurrent,
    /// `409`, naming the run that is going.
    Reject,
    /// The new run starts once the runs going (and those queued before it) end.
    Enqueue,
    /// The runs going end with `agent_error {code:"cancelled"}`, then the new one starts.
    Interrupt,
}

/// The server's settings.
#[derive(Debug, Clone, Args)]
pub struct ServerConfig {
    /// Address to listen on. A loopback address with no JWT secret runs in dev mode.
    #[arg(long, env = "AGENTWIRE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// This node's name on the dashboard (and among nodes sharing a backbone).
    /// Default: the host name and the listen port (the binary works it out).
    #[arg(long, env = "AGENTWIRE_NODE_ID")]
    pub node_id: Option<String>,

    /// HS256 secret that subscriber JWTs are signed with, at least 32 bytes. Required outside loopback.
    #[arg(long, env = "AGENTWIRE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Tokens whose `exp` is further away than this are refused (a stolen token
    /// must not be good for years).
    #[arg(long, env = "AGENTWIRE_JWT_MAX_LIFETIME", default_value = "7d", value_parser = parse_duration)]
    pub jwt_max_lifetime: Duration,

    /// PEM public key (RSA → RS256, EC P-256 → ES256) that subscriber JWTs are verified with.
    #[arg(long, env = "AGENTWIRE_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<std::path::PathBuf>,

    /// JWKS file whose keys (chosen by the token's `kid`) verify subscriber JWTs.
    #[arg(long, env = "AGENTWIRE_JWT_JWKS")]
    pub jwt_jwks: Option<std::path::PathBuf>,

    /// Required `iss` claim, when set.
    #[arg(long, env = "AGENTWIRE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim, when set.
    #[arg(long, env = "AGENTWIRE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// A file of publish keys, one per line (`#` comments); re-read when it changes,
    /// so keys rotate without a restart.
    #[arg(long, env = "AGENTWIRE_PUBLISH_KEYS_FILE")]
    pub publish_keys_file: Option<std::path::PathBuf>,

    /// Publish keys (comma-separated) that publishers send as `Authorization: Bearer <key>`.
    /// In dev mode the key `dev-publish-key` is used when none is set.
    #[arg(long = "publish-key", env = "AGENTWIRE_PUBLISH_KEY", value_delimiter = ',', hide_env_values = true)]
    pub publish_keys: Vec<String>,

    /// Operator key for `/v1/admin/...`. In dev mode the operator routes are open.
    #[arg(long, env = "AGENTWIRE_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,

    /// A run that sends nothing for this long is ended with `agent_error {code:"timeout"}`.
    #[arg(long, env = "AGENTWIRE_RUN_IDLE_TIMEOUT", default_value = "300s", value_parser = parse_duration)]
    pub run_idle_timeout: Duration,

    /// What a message posted while its thread has a run going does, unless the
    /// request says: `concurrent`, `reject`, `enqueue` or `interrupt`.
    #[arg(long, env = "AGENTWIRE_DOUBLE_TEXTING", value_enum, default_value_t = DoubleTexting::Concurrent)]
    pub double_texting: DoubleTexting,

    /// How long an input request waits for its answer when it does not say
    /// (`timeout_ms`); then its default answers it (PROTOCOL §2.1).
    #[arg(long, env = "AGENTWIRE_INPUT_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub input_timeout: Duration,

    /// The longest an input request may wait, whatever it says.
    #[arg(long, env = "AGENTWIRE_INPUT_TIMEOUT_MAX", default_value = "24h", value_parser = parse_duration)]
    pub input_timeout_max: Duration,

    /// How long after its run ends an `event_id` is still recognised as a repeat;
    /// then it is forgotten, on disk too (PROTOCOL §2).
    #[arg(long, env = "AGENTWIRE_DEDUP_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub dedup_window: Duration,

    /// Threads with no run going that the embedded log keeps in memory (the
    /// least recently idle go first; the others are read from disk when needed).
    /// On a shared engine: the thread views a node keeps, and four times as
    /// many registrations and thread records (the others are read again when needed).
    #[arg(long, env = "AGENTWIRE_THREAD_CACHE", default_value_t = 10_000)]
    pub thread_cache: usize,

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

    /// Bytes of events a connection may have queued before it is closed as a slow
    /// consumer (4008), whatever their count.
    #[arg(long, env = "AGENTWIRE_SEND_QUEUE_BYTES", default_value_t = 8 << 20)]
    pub send_queue_bytes: usize,

    /// Most bytes of events one read of history answers (a history page, a replay
    /// page); a page stops before the event that would pass it (never empty).
    #[arg(long, env = "AGENTWIRE_MAX_PAGE_BYTES", default_value_t = 4 << 20)]
    pub max_page_bytes: usize,

    /// Threads one user may create per minute (0: no quota).
    #[arg(long, env = "AGENTWIRE_USER_THREADS_PER_MINUTE", default_value_t = 60)]
    pub quota_user_threads: u64,

    /// Runs one user may start per minute: messages and AG-UI runs (0: no quota).
    #[arg(long, env = "AGENTWIRE_USER_RUNS_PER_MINUTE", default_value_t = 30)]
    pub quota_user_runs: u64,

    /// Runs one publish key may register per minute (0: no quota).
    #[arg(long, env = "AGENTWIRE_KEY_RUNS_PER_MINUTE", default_value_t = 60_000)]
    pub quota_key_runs: u64,

    /// Events one publish key may append per minute (0: no quota).
    #[arg(long, env = "AGENTWIRE_KEY_EVENTS_PER_MINUTE", default_value_t = 6_000_000)]
    pub quota_key_events: u64,

    /// Bytes of publish bodies one publish key may send per minute (0: no quota).
    #[arg(long, env = "AGENTWIRE_KEY_BYTES_PER_MINUTE", default_value_t = 4 << 30)]
    pub quota_key_bytes: u64,

    /// In-process runs one user may have going at once (more: 429; 0: no limit).
    #[arg(long, env = "AGENTWIRE_MAX_RUNS_PER_USER", default_value_t = 4)]
    pub max_runs_per_user: usize,

    /// Longest an in-process run may go on; then it ends with `agent_error {code:"timeout"}` (0s: no limit).
    #[arg(long, env = "AGENTWIRE_MAX_RUN_DURATION", default_value = "10m", value_parser = parse_duration)]
    pub max_run_duration: Duration,

    /// An in-process run whose thread has had no watcher on this node for this long
    /// is cancelled (0s: never). Off when several nodes share a backbone, since
    /// watchers may be on another node.
    #[arg(long, env = "AGENTWIRE_UNWATCHED_RUN_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub unwatched_run_timeout: Duration,

    /// Most events sent together in one `batch` frame.
    #[arg(long, env = "AGENTWIRE_MAX_BATCH", default_value_t = 256)]
    pub max_batch: usize,

    /// Events read from the log per page when a subscription replays history.
    #[arg(long, env = "AGENTWIRE_REPLAY_PAGE", default_value_t = 2000)]
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

    /// Time a client has to send a request's headers, counted from the connection's
    /// start or the end of the previous response: also how long an idle keep-alive
    /// connection stays open.
    #[arg(long, env = "AGENTWIRE_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,

    /// Time a client has to send a whole request body (longer: `408 timeout`, and the connection closes).
    #[arg(long, env = "AGENTWIRE_HTTP_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub http_body_timeout: Duration,

    /// Time a write to a connection (an answer, an SSE or AG-UI stream, a WebSocket)
    /// may make no progress; past it the connection is closed as a slow consumer.
    #[arg(long, env = "AGENTWIRE_WRITE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// Most open HTTP connections from one IP address; one more is closed at once
    /// (0: no limit). WebSockets leave this count once upgraded.
    #[arg(long, env = "AGENTWIRE_MAX_HTTP_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_http_connections_per_ip: usize,

    /// Largest WebSocket message from a client, in bytes.
    #[arg(long, env = "AGENTWIRE_MAX_FRAME_BYTES", default_value_t = 64 << 10)]
    pub max_frame_bytes: usize,

    /// Most events in one publish (more: 413 too_large).
    #[arg(long, env = "AGENTWIRE_MAX_EVENTS_PER_PUBLISH", default_value_t = 1000)]
    pub max_events_per_publish: usize,

    /// Most threads one WebSocket connection may watch.
    #[arg(long = "max-subscriptions", env = "AGENTWIRE_MAX_SUBSCRIPTIONS", default_value_t = 256)]
    pub max_subscriptions_per_connection: usize,

    /// Most open WebSocket and SSE connections per user (more: 429).
    #[arg(long, env = "AGENTWIRE_MAX_CONNECTIONS_PER_USER", default_value_t = 64)]
    pub max_connections_per_user: usize,

    /// Most open WebSocket and SSE connections per client IP address (more: 429).
    #[arg(long, env = "AGENTWIRE_MAX_CONNECTIONS_PER_IP", default_value_t = 512)]
    pub max_connections_per_ip: usize,

    /// Publish requests per second per publish key, with bursts of twice that (more: 429; 0: no limit).
    #[arg(long, env = "AGENTWIRE_PUBLISH_RATE", default_value_t = 2000)]
    pub publish_rate: u32,

    /// Messages per second a WebSocket client may send, with bursts of twice that
    /// (more: an `error` frame with `rate_limited`, and the message is ignored).
    #[arg(long, env = "AGENTWIRE_WS_MESSAGE_RATE", default_value_t = 20)]
    pub ws_message_rate: u32,

    /// Origins (comma-separated scheme://host:port, e.g. `https://app.example.com`)
    /// allowed to open WebSockets and streams from a browser; `*` allows any. Besides
    /// these, http(s) origins on the allowed hosts (and, listening on loopback, on the
    /// loopback names with the bound port) pass. Requests without an Origin header
    /// (non-browser clients) pass.
    #[arg(long, env = "AGENTWIRE_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Route events of unregistered runs by the thread id inside their run id
    /// (`run_{thread_id}_…`, PROTOCOL §1), into threads a publisher created.
    /// `false`: only registered runs take events.
    #[arg(long, env = "AGENTWIRE_LEGACY_RUN_IDS", default_value_t = true, action = clap::ArgAction::Set)]
    pub legacy_run_ids: bool,

    /// Host names (comma-separated, `host` or `host:port`; `*` for any) this server
    /// answers to; a request with another `Host` gets `403`. Empty: any host, except
    /// in dev mode, which answers only `localhost`, `127.0.0.1` and `[::1]` with its
    /// port (against DNS rebinding). Browser origins on these hosts may connect.
    #[arg(long, env = "AGENTWIRE_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,

    /// Replace what looks secret in every event with "[REDACTED]" before it is stored (PROTOCOL §8).
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
    /// The log's rules these settings name; open the log with them, so the
    /// server's watchdog and the log agree on what idle means.
    pub fn log_config(&self) -> agentwire_log::LogConfig {
        agentwire_log::LogConfig {
            run_idle_timeout: self.run_idle_timeout,
            pattern_routing: self.legacy_run_ids,
            redact: self.redact_secrets,
            max_page_bytes: self.max_page_bytes,
            dedup_window: self.dedup_window,
            thread_cache: self.thread_cache,
            retention: self.retention(),
            input_timeouts: agentwire_protocol::InputTimeouts {
                default_ms: u64::try_from(self.input_timeout.as_millis()).unwrap_or(u64::MAX),
                max_ms: u64::try_from(self.input_timeout_max.as_millis()).unwrap_or(u64::MAX),
            },
            ..agentwire_log::LogConfig::default()
        }
    }

    /// The hub's settings these settings name.
    pub fn hub_config(&self) -> agentwire_hub::HubConfig {
        agentwire_hub::HubConfig {
            send_queue: self.send_queue,
            send_queue_bytes: self.send_queue_bytes,
            max_batch: self.max_batch,
            ..agentwire_hub::HubConfig::default()
        }
    }

    /// The retention limits these settings name.
    pub fn retention(&self) -> agentwire_log::RetentionPolicy {
        agentwire_log::RetentionPolicy {
            max_events_per_thread: self.retention_thread_events,
            max_events: self.retention_events,
            max_age: self.retention_max_age,
        }
    }

    /// Whether subscriber tokens can be verified: a secret, a public key or a JWKS is set.
    pub fn has_token_verifier(&self) -> bool {
        self.jwt_secret.is_some() || self.jwt_public_key.is_some() || self.jwt_jwks.is_some()
    }

    /// Dev mode: no way to verify tokens and a loopback listen address (PROTOCOL §7).
    pub fn dev_mode(&self) -> bool {
        !self.has_token_verifier() && self.listen.ip().is_loopback()
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
