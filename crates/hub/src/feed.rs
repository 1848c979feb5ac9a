//! A subscriber's feed: everything a transport sends, as one stream of steps.
//!
//! The WebSocket, SSE and AG-UI transports all do the same thing: replay a
//! thread's history, join it to the live events, and stop for the same reasons
//! (server shutting down, slow consumer, token expired, the log failing). A
//! [`Feed`] does all of it once, over a hub [`Session`], and a transport only
//! encodes what [`Feed::next`] yields:
//!
//! - [`Next::Replay`]: a page of history of a thread just subscribed (the
//!   replay of every new subscription finishes before live events flow again);
//! - [`Next::Live`]: live events, in order, gaps already filled from the log;
//! - [`Next::Deleted`]: a subscribed thread was deleted; its subscription is over;
//! - [`Next::Reset`]: a subscribed thread's history was rewritten (a shared
//!   engine lost acknowledged events): the client drops what it has of it and
//!   takes the replay that follows from `oldest_seq`;
//! - [`Next::End`]: the feed is over, and why; on shutdown, with what was
//!   already queued, to send before the close.
//!
//! The write deadline is not here: it is enforced on the socket itself (see
//! the server's listener), so it covers every byte a transport writes.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use agentwire_log::{Log, LogError, StoredEvent};
use agentwire_protocol::ThreadId;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::hub::{Connection, Notice, Notices, Outbox};
use crate::session::{Session, Started};

/// Why a feed ended.
#[derive(Debug)]
pub enum End {
    /// The server is shutting down; the events are what was queued, to send first.
    Shutdown(Vec<Arc<StoredEvent>>),
    /// The connection's queue overflowed: the client resumes with `after_seq`.
    SlowConsumer,
    /// The token the connection was opened with expired.
    TokenExpired,
    /// The log could not be read (a replay or a gap fill): the client resumes.
    ReadFailed(LogError),
    /// The hub let go of the connection.
    Gone,
}

/// One step of a feed.
#[derive(Debug)]
pub enum Next {
    /// History of a newly subscribed thread, in order.
    Replay(Vec<Arc<StoredEvent>>),
    /// Live events, in order.
    Live(Vec<Arc<StoredEvent>>),
    /// A subscribed thread was deleted; the subscription has ended.
    Deleted(ThreadId),
    /// A subscribed thread's history was rewritten; its replay from `oldest_seq` follows.
    Reset { thread: ThreadId, oldest_seq: u64 },
    /// The feed is over; call [`Feed::next`] no more.
    End(End),
}

/// What woke the feed up.
enum Wake {
    Closing,
    Overflow,
    Expired,
    Notice,
    Batch(Vec<Arc<StoredEvent>>),
    Replay(Result<Vec<Arc<StoredEvent>>, LogError>),
}

/// A connection's subscriptions and everything it is to be sent. See the module docs.
pub struct Feed {
    session: Session,
    outbox: Outbox,
    closing: CancellationToken,
    overflow: CancellationToken,
    notices: Arc<Notices>,
    expiry: Pin<Box<Sleep>>,
    /// Subscriptions whose replay has not caught up yet, oldest first.
    replays: VecDeque<ThreadId>,
    /// Events taken from the queue and not yet turned into a step.
    held: Vec<Arc<StoredEvent>>,
    /// Notices (deleted and rewound threads), acted on once the events taken before them are out.
    notices_due: Vec<Notice>,
    /// Steps decided and not yet handed out.
    ready: VecDeque<Next>,
    shutting_down: bool,
}

impl Feed {
    /// A feed over a hub connection: history is read from `log` in pages of
    /// `page_size`; it ends when `closing` is cancelled or after `expires_in`.
    pub fn new(
        conn: Connection,
        outbox: Outbox,
        log: Arc<dyn Log>,
        page_size: usize,
        closing: CancellationToken,
        expires_in: Duration,
    ) -> Self {
        let overflow = conn.overflow_token();
        let notices = conn.notices();
        Self {
            session: Session::new(conn, log, page_size),
            outbox,
            closing,
            overflow,
            notices,
            expiry: Box::pin(tokio::time::sleep(expires_in)),
            replays: VecDeque::new(),
            held: Vec::new(),
            notices_due: Vec::new(),
            ready: VecDeque::new(),
            shutting_down: false,
        }
    }

    /// The hub connection (to count subscriptions).
    pub fn connection(&self) -> &Connection {
        self.session.connection()
    }

    /// Whether `thread` is subscribed.
    pub fn is_subscribed(&self, thread: &ThreadId) -> bool {
        self.session.is_subscribed(thread)
    }

    /// How many threads are subscribed.
    pub fn subscription_count(&self) -> usize {
        self.session.subscription_count()
    }

    /// Starts (or restarts) a subscription after `after_seq`; its replay comes
    /// from [`Feed::next`] as [`Next::Replay`] pages.
    pub async fn subscribe(&mut self, thread: &ThreadId, after_seq: u64) -> Result<Started, LogError> {
        let started = self.session.subscribe(thread, after_seq).await?;
        if !self.replays.contains(thread) {
            self.replays.push_back(thread.clone());
        }
        Ok(started)
    }

    /// Ends a subscription; `false` if there was none.
    pub fn unsubscribe(&mut self, thread: &ThreadId) -> bool {
        self.replays.retain(|t| t != thread);
        self.session.unsubscribe(thread)
    }

    /// Moves the token's expiry (a refreshed token).
    pub fn renew(&mut self, expires_in: Duration) {
        self.expiry.as_mut().reset(Instant::now() + expires_in);
    }

    /// The next step. Cancel-safe: a step is decided only once it is returned,
    /// so a transport may wait on it beside other things in a `select!`.
    pub async fn next(&mut self) -> Next {
        loop {
            if let Some(step) = self.ready.pop_front() {
                return step;
            }
            if !self.held.is_empty() {
                // Events taken from the queue go out before anything learnt after them.
                let live = match self.session.live(&self.held).await {
                    Ok(live) => live,
                    Err(e) => return Next::End(End::ReadFailed(e)),
                };
                self.held.clear();
                if self.shutting_down {
                    return Next::End(End::Shutdown(live));
                }
                if !live.is_empty() {
                    self.ready.push_back(Next::Live(live));
                }
            }
            if self.shutting_down {
                return Next::End(End::Shutdown(Vec::new()));
            }
            // One notice at a time, let go of only once acted on: dropped while a
            // rewound thread is read again, the feed keeps the notice for its next call.
            while let Some(notice) = self.notices_due.first().cloned() {
                match notice {
                    Notice::Deleted(thread) => {
                        self.notices_due.remove(0);
                        if self.unsubscribe(&thread) {
                            self.ready.push_back(Next::Deleted(thread));
                        }
                    }
                    Notice::Rewound(thread) if self.is_subscribed(&thread) => {
                        // From past any head: the session answers with a reset to the oldest seq.
                        let started = self.subscribe(&thread, u64::MAX).await;
                        self.notices_due.remove(0);
                        match started {
                            Ok(started) => {
                                let oldest_seq = started.reset.unwrap_or(1);
                                self.ready.push_back(Next::Reset { thread, oldest_seq });
                            }
                            // Deleted meanwhile: the failed subscribe has already let it go.
                            Err(LogError::ThreadNotFound(thread)) => self.ready.push_back(Next::Deleted(thread)),
                            Err(e) => return Next::End(End::ReadFailed(e)),
                        }
                    }
                    Notice::Rewound(_) => {
                        self.notices_due.remove(0);
                    }
                }
            }
            if !self.ready.is_empty() {
                continue;
            }
            let replaying = self.replays.front().cloned();
            let wake = tokio::select! {
                biased;
                _ = self.closing.cancelled() => Wake::Closing,
                _ = self.overflow.cancelled() => Wake::Overflow,
                _ = &mut self.expiry => Wake::Expired,
                _ = self.notices.arrived() => Wake::Notice,
                // Dropping a replay read loses nothing: the cursor moves once it is done.
                page = replay_page(&mut self.session, replaying.as_ref()), if replaying.is_some() => Wake::Replay(page),
                batch = self.outbox.next_batch(), if replaying.is_none() => Wake::Batch(batch),
            };
            match wake {
                Wake::Closing => {
                    // What was appended before shutdown still goes out before the close.
                    self.held.extend(self.outbox.ready_batch());
                    self.shutting_down = true;
                }
                Wake::Overflow => return Next::End(End::SlowConsumer),
                Wake::Expired => return Next::End(End::TokenExpired),
                Wake::Notice => {
                    self.held.extend(self.outbox.ready_batch());
                    self.notices_due.extend(self.notices.take());
                }
                Wake::Batch(batch) if batch.is_empty() => return Next::End(End::Gone),
                Wake::Batch(batch) => self.held = batch,
                Wake::Replay(Ok(page)) if page.is_empty() => {
                    self.replays.pop_front();
                }
                Wake::Replay(Ok(page)) => return Next::Replay(page),
                Wake::Replay(Err(LogError::ThreadNotFound(thread))) => {
                    // Deleted between the subscribe and its replay.
                    self.notices_due.push(Notice::Deleted(thread));
                }
                Wake::Replay(Err(e)) => return Next::End(End::ReadFailed(e)),
            }
        }
    }
}

async fn replay_page(session: &mut Session, thread: Option<&ThreadId>) -> Result<Vec<Arc<StoredEvent>>, LogError> {
    match thread {
        Some(thread) => session.replay(thread).await,
        None => Ok(Vec::new()),
    }
}
