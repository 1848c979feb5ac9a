//! # agentwire-hub
//!
//! The real-time core, apart from any transport: a [`Hub`] that maps threads to
//! the connections watching them and fans appended events out to bounded
//! per-connection queues, and a [`Session`] per connection that joins history
//! replay to the live stream with no gap and no duplicate. The server's WebSocket
//! and SSE handlers are thin loops around these two.

mod hub;
mod metrics;
mod session;

pub use hub::{Connection, Hub, HubConfig, Outbox};
pub use metrics::{EventLabel, HubMetrics, LAG_BUCKETS, LagCounts, PerKind, ReasonLabel, TransportLabel, lag_quantile};
pub use session::{Session, Started};
