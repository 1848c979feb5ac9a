//! A subscriber's session: joining replay to live with no gap and no duplicate.
//!
//! Transport-agnostic (the WebSocket and SSE handlers both drive one), so the
//! ordering logic is tested without a socket. The recipe:
//!
//! 1. **watch first**: the hub starts queueing the thread's live events;
//! 2. **then replay** from the log, page by page, remembering the last `seq` sent;
//! 3. **then live**: drop queued events at or below that `seq` (already replayed),
//!    and if a live event skips ahead, read the missing range from the log first.
//!
//! Because watching starts before reading, every event is either in the replay
//! or in the queue (or both): nothing falls between them.

use std::collections::HashMap;
use std::sync::Arc;

use agentwire_log::{Log, LogError, Page, StoredEvent};
use agentwire_protocol::ThreadId;
use tokio::task::JoinHandle;

use crate::hub::Connection;

/// How a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// The thread's head when the subscription began.
    pub head_seq: u64,
    /// `Some(oldest_seq)` when the client's `after_seq` cannot be honoured (older
    /// than retained history, or beyond the head of this log): the client must
    /// drop what it has, and the replay starts at `oldest_seq`.
    pub reset: Option<u64>,
}

/// One connection's subscriptions and how far each has been sent.
pub struct Session {
    conn: Connection,
    log: Arc<dyn Log>,
    /// thread → last `seq` handed to the transport.
    sent: HashMap<ThreadId, u64>,
    page_size: usize,
    /// The replay's next page, read while the transport sends the one before.
    ahead: Option<ReadAhead>,
}

/// A page being read ahead: of `thread`, after `after`. A replay that waits
/// for each page before it reads the next leaves the cores idle half the
/// time; one page ahead keeps the reading and the sending side by side, and
/// costs at most one page of memory more per connection.
struct ReadAhead {
    thread: ThreadId,
    after: u64,
    task: JoinHandle<Result<Page, LogError>>,
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Session {
    /// A session over a hub connection, reading history from `log` in pages of `page_size`.
    pub fn new(conn: Connection, log: Arc<dyn Log>, page_size: usize) -> Self {
        Self { conn, log, sent: HashMap::new(), page_size: page_size.max(1), ahead: None }
    }

    /// The hub connection (to wait for overflow, count subscriptions).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Whether `thread` is subscribed.
    pub fn is_subscribed(&self, thread: &ThreadId) -> bool {
        self.sent.contains_key(thread)
    }

    /// How many threads are subscribed.
    pub fn subscription_count(&self) -> usize {
        self.sent.len()
    }

    /// Starts (or restarts) a subscription: watches the thread, then positions
    /// the replay after `after_seq`. Follow with [`Session::replay`] until it is empty.
    pub async fn subscribe(&mut self, thread: &ThreadId, after_seq: u64) -> Result<Started, LogError> {
        self.forget_read_ahead(thread);
        self.conn.watch(thread);
        let metrics = self.conn.hub().metrics();
        let probe = match self.log.read(thread, after_seq, 0).await {
            Ok(page) => page,
            Err(e) => {
                self.sent.remove(thread);
                self.conn.unwatch(thread);
                return Err(e);
            }
        };
        let stale = after_seq > probe.head_seq || (after_seq > 0 && after_seq + 1 < probe.oldest_seq);
        let reset = stale.then_some(probe.oldest_seq.max(1));
        let cursor = match reset {
            Some(oldest) => {
                metrics.resets.inc();
                oldest - 1
            }
            None => {
                if after_seq > 0 {
                    metrics.resumes.inc();
                }
                after_seq
            }
        };
        self.sent.insert(thread.clone(), cursor);
        Ok(Started { head_seq: probe.head_seq, reset })
    }

    /// The next page of a subscription's replay; empty when it has caught up.
    pub async fn replay(&mut self, thread: &ThreadId) -> Result<Vec<Arc<StoredEvent>>, LogError> {
        let Some(&cursor) = self.sent.get(thread) else { return Ok(Vec::new()) };
        let page = match &mut self.ahead {
            // Awaited in place: a caller that drops this future finds the read still going.
            Some(ahead) if ahead.thread == *thread && ahead.after == cursor => {
                let read = (&mut ahead.task).await;
                self.ahead = None;
                read.map_err(|e| LogError::Unavailable(format!("read task failed: {e}")))??
            }
            _ => {
                self.ahead = None;
                self.log.read(thread, cursor, self.page_size).await?
            }
        };
        if let Some(last) = page.events.last() {
            let last = last.seq();
            self.sent.insert(thread.clone(), last);
            if last < page.head_seq {
                let (log, next, size) = (self.log.clone(), thread.clone(), self.page_size);
                let task = tokio::spawn(async move { log.read(&next, last, size).await });
                self.ahead = Some(ReadAhead { thread: thread.clone(), after: last, task });
            }
        }
        Ok(page.events)
    }

    /// Drops a page read ahead for `thread`: a subscription started again
    /// (after a rewind, say) must not be answered from what was read before.
    fn forget_read_ahead(&mut self, thread: &ThreadId) {
        if self.ahead.as_ref().is_some_and(|a| a.thread == *thread) {
            self.ahead = None;
        }
    }

    /// Ends a subscription; `false` if there was none.
    pub fn unsubscribe(&mut self, thread: &ThreadId) -> bool {
        self.forget_read_ahead(thread);
        self.conn.unwatch(thread);
        self.sent.remove(thread).is_some()
    }

    /// Turns a batch from the hub queue into what to send, in order: drops events
    /// of threads no longer subscribed and events already sent, and fills any gap
    /// from the log so the client never sees a skipped `seq`.
    ///
    /// Cancel-safe: how far each thread was sent changes only once the whole
    /// batch is decided, so a caller that drops this future may call it again
    /// with the same batch.
    pub async fn live(&mut self, batch: &[Arc<StoredEvent>]) -> Result<Vec<Arc<StoredEvent>>, LogError> {
        let mut out = Vec::with_capacity(batch.len());
        // thread → last seq of this batch's output, applied at the end.
        let mut moved: HashMap<&ThreadId, u64> = HashMap::new();
        for event in batch {
            let thread = event.thread_id();
            let Some(&sent) = self.sent.get(thread) else { continue };
            let last = moved.get(thread).copied().unwrap_or(sent);
            let seq = event.seq();
            if seq <= last {
                continue;
            }
            if seq > last + 1 {
                self.conn.hub().metrics().gap_fills.inc();
                // Pages stop at a byte budget: read until the gap is filled (or
                // retention has removed the rest of it).
                let mut at = last;
                while at + 1 < seq {
                    let missing = usize::try_from(seq - at - 1).unwrap_or(usize::MAX);
                    let page = self.log.read(thread, at, missing).await?;
                    let Some(end) = page.events.last().map(|e| e.seq()) else { break };
                    at = end;
                    out.extend(page.events.into_iter().filter(|e| e.seq() < seq));
                }
            }
            moved.insert(thread, seq);
            out.push(event.clone());
        }
        for (thread, seq) in moved {
            self.sent.insert(thread.clone(), seq);
        }
        Ok(out)
    }
}
