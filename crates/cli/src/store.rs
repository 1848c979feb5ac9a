//! Where this node keeps its threads: the settings that choose the log, and
//! opening it.
//!
//! The server crate takes a log that is already open; choosing one is the
//! binary's job, so that an application embedding the server compiles only the
//! log it uses. The shared engines (Redis Streams, NATS JetStream) are the
//! `redis` and `nats` cargo features, both on by default.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agentwire_log::{EmbeddedLog, EmbeddedStore, FeedSink, Log, LogConfig, MemoryLog};
use clap::Args;

/// The settings that choose and open the log.
#[derive(Debug, Clone, Args)]
pub struct StoreSettings {
    /// Where the thread log lives: `embedded` (a durable file in the data directory),
    /// `memory` (this process only, lost on restart; for tests and throwaway use),
    /// or a shared engine for several nodes: `redis://host:port` (Redis Streams) or
    /// `nats://host:port` (NATS JetStream).
    #[arg(long, visible_alias = "store", env = "AGENTWIRE_BACKBONE", default_value = "embedded")]
    pub backbone: String,

    /// Names this deployment's keys, streams and buckets on a shared backbone, so
    /// several deployments (or test runs) can share one Redis or NATS.
    #[arg(long, env = "AGENTWIRE_BACKBONE_PREFIX", default_value = "agentwire")]
    pub backbone_prefix: String,

    /// On a shared backbone: a node silent for this long is taken for dead, and
    /// the runs its in-process engine was executing end with `worker_lost`.
    #[arg(long, env = "AGENTWIRE_NODE_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub node_ttl: Duration,

    /// On NATS JetStream: copies of the stream and buckets agentwire creates
    /// (existing ones keep theirs). 3 survives the loss of a machine.
    #[arg(long, env = "AGENTWIRE_BACKBONE_REPLICAS", default_value_t = 1)]
    pub backbone_replicas: usize,

    /// Start on a shared engine whose settings could lose an acknowledged event
    /// (Redis without `appendfsync always`, a JetStream stream with fewer than 3
    /// replicas, ...); `/readyz` and `agentwire_weak_durability` then say so.
    /// Without it such a node refuses to start.
    #[arg(long, env = "AGENTWIRE_ALLOW_WEAK_DURABILITY", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub allow_weak_durability: bool,

    /// Directory of the embedded store. Locked while a server uses it.
    #[arg(long, env = "AGENTWIRE_DATA_DIR", default_value = "./agentwire-data")]
    pub data_dir: PathBuf,

    /// Bytes of the embedded store's pages kept in memory. Appends write the
    /// newest pages and reads mostly want them, so a small cache loses little;
    /// resident memory grows with the data file until it is full.
    #[arg(long, env = "AGENTWIRE_STORE_CACHE", default_value_t = agentwire_log::embedded::CACHE_BYTES)]
    pub store_cache: usize,
}

/// Why the log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Config(String),
    #[error("cannot open the log: {0}")]
    Store(#[from] agentwire_log::StoreError),
    #[cfg(any(feature = "redis", feature = "nats"))]
    #[error("cannot open the backbone: {0}")]
    Backbone(#[from] agentwire_backbone::BackboneError),
}

/// Opens the log `settings` name with the rules of `config`, feeding what is
/// appended to `feed` (the server's hub). `node_id` names this node among
/// nodes sharing a backbone.
pub async fn open(
    settings: &StoreSettings,
    config: LogConfig,
    node_id: &str,
    feed: Arc<dyn FeedSink>,
) -> Result<Arc<dyn Log>, OpenError> {
    match settings.backbone.as_str() {
        "embedded" => {
            let store = EmbeddedStore::open_with_cache(&settings.data_dir, settings.store_cache)?;
            let log = EmbeddedLog::open(store, config, feed)?;
            tracing::info!(data_dir = %settings.data_dir.display(), "embedded log opened");
            Ok(Arc::new(log))
        }
        "memory" => {
            tracing::warn!("memory log: nothing survives a restart");
            Ok(Arc::new(MemoryLog::new(config, feed)?))
        }
        url => open_shared(settings, url, config, node_id, feed).await,
    }
}

#[cfg(any(feature = "redis", feature = "nats"))]
async fn open_shared(
    settings: &StoreSettings,
    url: &str,
    config: LogConfig,
    node_id: &str,
    feed: Arc<dyn FeedSink>,
) -> Result<Arc<dyn Log>, OpenError> {
    let cluster = agentwire_backbone::ClusterConfig {
        prefix: settings.backbone_prefix.clone(),
        node_id: node_id.to_owned(),
        node_ttl: settings.node_ttl,
        replicas: settings.backbone_replicas,
        allow_weak_durability: settings.allow_weak_durability,
        checkpoint_every: agentwire_backbone::CHECKPOINT_EVERY,
        log: config,
    };
    let Some(opened) = agentwire_backbone::open(url, cluster, feed).await else {
        return Err(unknown(url));
    };
    let log = opened?;
    tracing::info!(backbone = %redact_url(url), prefix = %settings.backbone_prefix, node = node_id, "shared backbone opened");
    Ok(log)
}

#[cfg(not(any(feature = "redis", feature = "nats")))]
async fn open_shared(
    _: &StoreSettings,
    url: &str,
    _: LogConfig,
    _: &str,
    _: Arc<dyn FeedSink>,
) -> Result<Arc<dyn Log>, OpenError> {
    Err(unknown(url))
}

/// The refusal of a backbone this build cannot open.
fn unknown(url: &str) -> OpenError {
    #[cfg(any(feature = "redis", feature = "nats"))]
    let schemes = agentwire_backbone::SCHEMES.join(", ");
    #[cfg(not(any(feature = "redis", feature = "nats")))]
    let schemes = "no shared engine (built without the redis and nats features)".to_owned();
    OpenError::Config(format!("backbone {:?} is not one of embedded, memory, {schemes}", redact_url(url)))
}

/// `url` without its password, for logs.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://…@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// The configured node id, else the host name and the listen port. On a shared
/// backbone it names the runs this node's engine executes, so nodes need ids
/// that differ.
pub fn node_id(configured: Option<&str>, port: u16) -> String {
    if let Some(id) = configured.filter(|id| !id.is_empty()) {
        return id.to_owned();
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    match port {
        // Port 0 is chosen by the OS: two nodes on one host would share `host:0`.
        0 => format!("{host}:{:08x}", rand::random::<u32>()),
        port => format!("{host}:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(redact_url("redis://:secret@db:6379"), "redis://…@db:6379");
        assert_eq!(redact_url("nats://host:4222"), "nats://host:4222");
    }

    #[test]
    fn a_chosen_node_id_wins_and_the_default_names_the_port() {
        assert_eq!(node_id(Some("edge-1"), 8080), "edge-1");
        assert!(node_id(None, 8080).ends_with(":8080"));
        assert_ne!(node_id(Some(""), 0), node_id(None, 0), "port 0 gets a random suffix");
    }

    #[tokio::test]
    async fn an_unknown_backbone_is_refused_without_its_password() {
        let settings = StoreSettings {
            backbone: "postgres://u:hunter2@db/x".into(),
            backbone_prefix: "agentwire".into(),
            node_ttl: Duration::from_secs(10),
            backbone_replicas: 1,
            allow_weak_durability: false,
            data_dir: PathBuf::from("unused"),
            store_cache: 1 << 20,
        };
        let feed: Arc<dyn FeedSink> = Arc::new(agentwire_log::NoFeed);
        let err = open(&settings, LogConfig::default(), "n", feed).await.err().map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains("not one of embedded, memory"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}
