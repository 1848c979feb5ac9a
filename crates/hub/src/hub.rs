//! The hub: which connection watches which thread, and the fan-out to them.
//!
//! The log hands every appended event to [`Hub::deliver`] (the hub is the log's
//! [`FeedSink`]). The hub looks up the thread's connections and pushes the shared
//! event into each connection's **bounded** queue without waiting. The queue is
//! bounded twice: in events and in bytes, so a thread of large events cannot make
//! a reader that stops reading hold megabytes per event. A full queue means the
//! connection cannot keep up: instead of growing memory or blocking the
//! publisher, the hub trips the connection's overflow token and its transport
//! closes it with `4008`; the client resumes with `after_seq` and loses nothing.
//!
//! When a thread is deleted, the log tells the hub after the thread's last
//! events were handed over; the hub drops the thread's subscribers and leaves
//! each connection a notice, which its [`crate::Feed`] reports after the events
//! queued before it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use agentwire_log::{FeedSink, StoredEvent};
use agentwire_protocol::ThreadId;
use dashmap::DashMap;
use tokio::sync::Notify;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::metrics::HubMetrics;

/// Hub settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Events a connection may have queued before it counts as a slow consumer.
    pub send_queue: usize,
    /// Bytes of events a connection may have queued before it counts as a slow
    /// consumer. One event larger than this still goes to an empty queue.
    pub send_queue_bytes: usize,
    /// Most events sent in one `batch` frame.
    pub max_batch: usize,
    /// A batch takes no more events once it holds this many bytes.
    pub max_batch_bytes: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self { send_queue: 4096, send_queue_bytes: 8 << 20, max_batch: 256, max_batch_bytes: 1 << 20 }
    }
}

/// What happened to a thread under a connection's subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    /// The thread was deleted: the subscription ends.
    Deleted(ThreadId),
    /// The thread's history was rewritten: the subscription starts again with `reset`.
    Rewound(ThreadId),
}

/// Notices for a connection, waiting for its feed.
#[derive(Default)]
pub(crate) struct Notices {
    waiting: Mutex<Vec<Notice>>,
    notify: Notify,
}

impl Notices {
    fn push(&self, notice: Notice) {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).push(notice);
        // A stored permit if nobody waits: the notice is seen on the next wait.
        self.notify.notify_one();
    }

    pub(crate) fn take(&self) -> Vec<Notice> {
        std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) async fn arrived(&self) {
        self.notify.notified().await;
    }
}

struct Subscriber {
    conn: u64,
    tx: mpsc::Sender<Arc<StoredEvent>>,
    /// Bytes queued for the connection (shared by its subscriptions and its outbox).
    queued: Arc<AtomicUsize>,
    overflow: CancellationToken,
    notices: Arc<Notices>,
}

impl Subscriber {
    /// Queues `event`; `Full` when the queue is full in events or in bytes (nothing is queued then).
    fn offer(&self, event: &Arc<StoredEvent>, max_bytes: usize) -> Result<(), TrySendError<()>> {
        let len = event.json.len();
        let before = self.queued.fetch_add(len, Ordering::AcqRel);
        if before > 0 && before + len > max_bytes {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            return Err(TrySendError::Full(()));
        }
        self.tx.try_send(event.clone()).map_err(|e| {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            match e {
                TrySendError::Full(_) => TrySendError::Full(()),
                TrySendError::Closed(_) => TrySendError::Closed(()),
            }
        })
    }
}

/// Subscriptions of this node and the fan-out to them.
pub struct Hub {
    config: HubConfig,
    threads: DashMap<ThreadId, Vec<Subscriber>>,
    next_conn: AtomicU64,
    metrics: HubMetrics,
}

impl Hub {
    /// An empty hub.
    pub fn new(config: HubConfig, metrics: HubMetrics) -> Arc<Self> {
        Arc::new(Self { config, threads: DashMap::new(), next_conn: AtomicU64::new(1), metrics })
    }

    /// The hub's settings.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// The hub's metrics.
    pub fn metrics(&self) -> &HubMetrics {
        &self.metrics
    }

    /// Threads with at least one subscriber on this node.
    pub fn watched_threads(&self) -> usize {
        self.threads.len()
    }

    /// Whether `thread` has a subscriber on this node.
    pub fn is_watched(&self, thread: &ThreadId) -> bool {
        self.threads.contains_key(thread)
    }

    /// Opens a connection: a handle to subscribe with and the queue to send from.
    pub fn connect(self: &Arc<Self>) -> (Connection, Outbox) {
        let (tx, rx) = mpsc::channel(self.config.send_queue.max(1));
        let queued = Arc::new(AtomicUsize::new(0));
        let conn = Connection {
            hub: self.clone(),
            id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            tx,
            queued: queued.clone(),
            overflow: CancellationToken::new(),
            notices: Arc::new(Notices::default()),
            threads: HashSet::new(),
        };
        let outbox = Outbox {
            rx,
            queued,
            max_batch: self.config.max_batch.max(1),
            max_batch_bytes: self.config.max_batch_bytes,
            queue_depth: self.metrics.queue_depth.clone(),
        };
        (conn, outbox)
    }

    fn remove(&self, thread: &ThreadId, conn: u64) {
        if let dashmap::Entry::Occupied(mut entry) = self.threads.entry(thread.clone()) {
            entry.get_mut().retain(|s| s.conn != conn);
            if entry.get().is_empty() {
                entry.remove();
            }
        }
    }
}

impl FeedSink for Hub {
    fn thread_deleted(&self, thread: &ThreadId) {
        if let Some((_, subs)) = self.threads.remove(thread) {
            for sub in subs {
                sub.notices.push(Notice::Deleted(thread.clone()));
            }
        }
    }

    fn thread_rewound(&self, thread: &ThreadId) {
        if let Some(subs) = self.threads.get(thread) {
            for sub in subs.iter() {
                sub.notices.push(Notice::Rewound(thread.clone()));
            }
        }
    }

    fn watched(&self) -> Vec<ThreadId> {
        self.threads.iter().map(|entry| entry.key().clone()).collect()
    }

    fn deliver(&self, events: &[Arc<StoredEvent>]) {
        for e in events {
            self.metrics.appended.get(e.kind()).inc();
        }
        self.redeliver(events);
    }

    fn redeliver(&self, events: &[Arc<StoredEvent>]) {
        for group in events.chunk_by(|a, b| a.thread_id() == b.thread_id()) {
            let Some(subs) = self.threads.get(group[0].thread_id()) else { continue };
            for sub in subs.iter() {
                for (i, event) in group.iter().enumerate() {
                    match sub.offer(event, self.config.send_queue_bytes) {
                        Ok(()) => {}
                        Err(TrySendError::Full(_)) => {
                            if !sub.overflow.is_cancelled() {
                                sub.overflow.cancel();
                                self.metrics.slow_consumer_disconnects.inc();
                            }
                            self.metrics.dropped_slow_consumer.inc_by((group.len() - i) as u64);
                            break;
                        }
                        Err(TrySendError::Closed(_)) => break,
                    }
                }
            }
        }
    }
}

/// One client connection's registration with the hub. Dropping it removes
/// every subscription it holds.
pub struct Connection {
    hub: Arc<Hub>,
    id: u64,
    tx: mpsc::Sender<Arc<StoredEvent>>,
    queued: Arc<AtomicUsize>,
    overflow: CancellationToken,
    notices: Arc<Notices>,
    threads: HashSet<ThreadId>,
}

impl Connection {
    /// This connection's id on this node.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Starts receiving `thread`'s live events. Idempotent.
    pub fn watch(&mut self, thread: &ThreadId) {
        if !self.threads.insert(thread.clone()) {
            return;
        }
        self.hub.threads.entry(thread.clone()).or_default().push(Subscriber {
            conn: self.id,
            tx: self.tx.clone(),
            queued: self.queued.clone(),
            overflow: self.overflow.clone(),
            notices: self.notices.clone(),
        });
        self.hub.metrics.subscriptions.inc();
    }

    /// Stops receiving `thread`'s live events; `false` if it was not watched.
    pub fn unwatch(&mut self, thread: &ThreadId) -> bool {
        if !self.threads.remove(thread) {
            return false;
        }
        self.hub.remove(thread, self.id);
        self.hub.metrics.subscriptions.dec();
        true
    }

    /// Whether this connection watches `thread`.
    pub fn watches(&self, thread: &ThreadId) -> bool {
        self.threads.contains(thread)
    }

    /// How many threads this connection watches.
    pub fn watch_count(&self) -> usize {
        self.threads.len()
    }

    /// Resolves when the connection's queue overflowed (a slow consumer).
    pub fn overflowed(&self) -> WaitForCancellationFuture<'_> {
        self.overflow.cancelled()
    }

    /// Whether the connection's queue has overflowed.
    pub fn is_overflowed(&self) -> bool {
        self.overflow.is_cancelled()
    }

    /// The overflow signal, to wait on apart from the connection.
    pub(crate) fn overflow_token(&self) -> CancellationToken {
        self.overflow.clone()
    }

    /// Where the hub leaves notices of deleted threads for this connection.
    pub(crate) fn notices(&self) -> Arc<Notices> {
        self.notices.clone()
    }

    /// The hub this connection belongs to.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        for thread in self.threads.drain() {
            self.hub.remove(&thread, self.id);
            self.hub.metrics.subscriptions.dec();
        }
    }
}

/// The receiving end of a connection's queue.
pub struct Outbox {
    rx: mpsc::Receiver<Arc<StoredEvent>>,
    queued: Arc<AtomicUsize>,
    max_batch: usize,
    max_batch_bytes: usize,
    queue_depth: prometheus_client::metrics::histogram::Histogram,
}

impl Outbox {
    /// Waits for at least one event, then takes every event already queued, up
    /// to the batch limits: events that are ready together go out together.
    pub async fn next_batch(&mut self) -> Vec<Arc<StoredEvent>> {
        // The hub holds no sender of its own, so `recv` only answers `None` after
        // every connection handle is gone; the caller has stopped by then.
        let Some(first) = self.rx.recv().await else { return Vec::new() };
        let mut batch = vec![first];
        self.fill(&mut batch);
        self.queue_depth.observe((batch.len() + self.rx.len()) as f64);
        batch
    }

    /// Takes what is already queued, up to the batch limits, without waiting
    /// (to flush before a close).
    pub fn ready_batch(&mut self) -> Vec<Arc<StoredEvent>> {
        let mut batch = Vec::new();
        self.fill(&mut batch);
        batch
    }

    /// Adds queued events to `batch` until a limit is reached; what leaves the
    /// queue leaves its byte count.
    fn fill(&mut self, batch: &mut Vec<Arc<StoredEvent>>) {
        let mut bytes: usize = batch.iter().map(|e| e.json.len()).sum();
        while batch.len() < self.max_batch && bytes < self.max_batch_bytes {
            match self.rx.try_recv() {
                Ok(event) => {
                    bytes += event.json.len();
                    batch.push(event);
                }
                Err(_) => break,
            }
        }
        self.queued.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Events waiting in the queue.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}
