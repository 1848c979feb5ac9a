//! The logs of this repository as [`Deployment`]s.

use std::sync::Arc;
use std::time::Duration;

use agentwire_backbone::{Backbone, ClusterConfig, ClusterLog, NatsBackbone, RedisBackbone};
use agentwire_log::{EmbeddedLog, FeedSink, LogConfig, MemoryLog, NoFeed};
use async_trait::async_trait;

use crate::faults::{Faults, Faulty};
use crate::{Deployment, Nodes};

/// The memory log: one log twice; it keeps nothing across a restart.
#[derive(Default)]
pub struct MemoryDeployment;

impl MemoryDeployment {
    pub fn new() -> Self {
        Self
    }
}

#[async_trait]
impl Deployment for MemoryDeployment {
    async fn open(&mut self, config: LogConfig, feed: Arc<dyn FeedSink>) -> Nodes {
        let log: Arc<dyn agentwire_log::Log> = Arc::new(MemoryLog::new(config, feed).expect("a memory log"));
        Nodes { a: log.clone(), b: log }
    }

    async fn restart(&mut self, nodes: Nodes) -> Nodes {
        nodes
    }

    async fn close(&mut self, nodes: Nodes) {
        nodes.a.close().await;
    }

    fn keeps_data(&self) -> bool {
        false
    }
}

/// The embedded log in a temporary directory: one log twice; a restart
/// closes it and opens the same files again.
pub struct EmbeddedDeployment {
    dir: tempfile::TempDir,
    opened: Option<(LogConfig, Arc<dyn FeedSink>)>,
}

impl EmbeddedDeployment {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("a temporary directory"), opened: None }
    }

    fn open_log(&self, config: LogConfig, feed: Arc<dyn FeedSink>) -> Nodes {
        let log: Arc<dyn agentwire_log::Log> =
            Arc::new(EmbeddedLog::open_dir(self.dir.path(), config, feed).expect("the embedded log opens"));
        Nodes { a: log.clone(), b: log }
    }
}

impl Default for EmbeddedDeployment {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Deployment for EmbeddedDeployment {
    async fn open(&mut self, config: LogConfig, feed: Arc<dyn FeedSink>) -> Nodes {
        self.opened = Some((config.clone(), feed.clone()));
        self.open_log(config, feed)
    }

    async fn restart(&mut self, nodes: Nodes) -> Nodes {
        self.close(nodes).await;
        let (config, feed) = self.opened.clone().expect("opened before a restart");
        self.open_log(config, feed)
    }

    async fn close(&mut self, nodes: Nodes) {
        nodes.a.close().await;
        // The store's file lock goes with the last handle.
        assert_eq!(Arc::strong_count(&nodes.a), 2, "the test holds another handle on the log");
    }
}

/// Two nodes, `a` and `b`, of one deployment under a prefix of its own, on a
/// shared Redis or NATS; a restart closes both and starts two fresh ones.
/// Every node's backbone goes through [`Faulty`], so the model-based test
/// can make the engine refuse a write.
pub struct ClusterDeployment {
    url: String,
    prefix: String,
    faults: Arc<Faults>,
    opened: Option<(LogConfig, Arc<dyn FeedSink>)>,
    checkpoint_every: u64,
}

impl ClusterDeployment {
    /// A deployment on the engine at `url` (`redis://…` or `nats://…`),
    /// under a prefix no other test uses; `tag` names it in the engine.
    pub fn new(url: &str, tag: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let prefix = format!("c-{tag}-{}-{n}-{nanos}", std::process::id());
        let checkpoint_every = agentwire_backbone::CHECKPOINT_EVERY;
        Self { url: url.to_owned(), prefix, faults: Arc::default(), opened: None, checkpoint_every }
    }

    /// Nodes that record a thread's run state every `events` events (see
    /// `ClusterConfig::checkpoint_every`).
    pub fn checkpoint_every(mut self, events: u64) -> Self {
        self.checkpoint_every = events;
        self
    }

    /// The switch that makes the engine refuse the next write.
    pub fn faults(&self) -> Arc<Faults> {
        self.faults.clone()
    }

    fn is_nats(&self) -> bool {
        self.url.starts_with("nats://")
    }

    async fn node(&self, id: &str, config: LogConfig, feed: Arc<dyn FeedSink>) -> Arc<dyn agentwire_log::Log> {
        let config = ClusterConfig {
            prefix: self.prefix.clone(),
            node_id: id.into(),
            node_ttl: Duration::from_secs(5),
            replicas: 1,
            // The test engines are single processes without fsync on every write.
            allow_weak_durability: true,
            checkpoint_every: self.checkpoint_every,
            log: config,
        };
        async fn start<B: Backbone>(
            backbone: B,
            faults: Arc<Faults>,
            config: ClusterConfig,
            feed: Arc<dyn FeedSink>,
        ) -> Arc<dyn agentwire_log::Log> {
            let log = ClusterLog::start(Faulty::new(backbone, faults), config, feed).await;
            Arc::new(log.expect("the node starts"))
        }
        if self.is_nats() {
            let backbone = NatsBackbone::connect(&self.url, &self.prefix, 1).await.expect("NATS answers");
            start(backbone, self.faults.clone(), config, feed).await
        } else {
            let backbone = RedisBackbone::connect(&self.url, &self.prefix).await.expect("Redis answers");
            start(backbone, self.faults.clone(), config, feed).await
        }
    }

    async fn open_nodes(&self, config: LogConfig, feed: Arc<dyn FeedSink>) -> Nodes {
        let a = self.node("a", config.clone(), feed).await;
        let b = self.node("b", config, Arc::new(NoFeed)).await;
        Nodes { a, b }
    }
}

#[async_trait]
impl Deployment for ClusterDeployment {
    async fn open(&mut self, config: LogConfig, feed: Arc<dyn FeedSink>) -> Nodes {
        self.opened = Some((config.clone(), feed.clone()));
        self.open_nodes(config, feed).await
    }

    async fn restart(&mut self, nodes: Nodes) -> Nodes {
        self.close(nodes).await;
        let (config, feed) = self.opened.clone().expect("opened before a restart");
        self.open_nodes(config, feed).await
    }

    fn counts_appends(&self) -> bool {
        self.is_nats()
    }

    fn deletes_threads(&self) -> bool {
        false
    }

    fn trims_whole_appends(&self) -> bool {
        self.is_nats()
    }
}
