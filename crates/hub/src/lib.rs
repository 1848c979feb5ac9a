//! # agentwire-hub
//!
//! The real-time core, apart from any transport: a [`Hub`] that maps threads to
//! the connections watching them and fans appended events out to bounded
//! per-connection queues, and a [`Session`] per connection that joins history
//! replay to the live stream with no gap and no duplicate, and a [`Feed`] that
//! turns both into the one stream of steps every transport encodes (WebSocket,
//! SSE, AG-UI): replay pages, live batches, deleted threads, and an end with its reason.

mod feed;
mod hub;
mod metrics;
mod session;

pub use feed::{End, Feed, Next};
pub use hub::{Connection, Hub, HubConfig, Outbox};
pub use metrics::{EventLabel, HubMetrics, LAG_BUCKETS, LagCounts, PerKind, ReasonLabel, TransportLabel, lag_quantile};
pub use session::{Session, Started};
