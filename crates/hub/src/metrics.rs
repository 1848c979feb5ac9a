//! Delivery telemetry: what left this node, how late, and who could not keep up.
//!
//! Counters per event kind are looked up once at start-up, so counting a
//! delivery on the hot path is one atomic add, not a label-map lookup.

use std::sync::Arc;
use std::time::Instant;

use agentwire_log::StoredEvent;
use agentwire_protocol::EventKind;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `event` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub event: &'static str,
}

/// The `transport` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub transport: &'static str,
}

/// One counter per event kind, in [`EventKind::ALL`] order.
#[derive(Clone)]
pub struct PerKind([Counter; EventKind::ALL.len()]);

impl PerKind {
    /// Resolves every kind's counter in `family` once.
    pub fn new(family: &Family<EventLabel, Counter>) -> Self {
        Self(EventKind::ALL.map(|k| family.get_or_create(&EventLabel { event: k.as_str() }).clone()))
    }

    /// The counter of `kind`.
    pub fn get(&self, kind: EventKind) -> &Counter {
        let i = EventKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        &self.0[i]
    }
}

/// The hub's metrics; cheap to clone (every field is a shared handle).
#[derive(Clone)]
pub struct HubMetrics {
    pub appended: PerKind,
    pub delivered: PerKind,
    pub delivery_lag: Histogram,
    pub slow_consumer_disconnects: Counter,
    pub subscriptions: Gauge,
    pub connections: Family<TransportLabel, Gauge>,
    pub resumes: Counter,
    pub resets: Counter,
    pub gap_fills: Counter,
}

impl HubMetrics {
    /// Creates the metrics and registers them under `agentwire_` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let appended = Family::<EventLabel, Counter>::default();
        registry.register(
            "agentwire_events_appended",
            "Events appended to thread logs (from publishers, in-process agents and the server), by event kind",
            appended.clone(),
        );
        let delivered = Family::<EventLabel, Counter>::default();
        registry.register("agentwire_events_delivered", "Events sent to subscribers, by event kind", delivered.clone());
        // 50 µs … ~1.6 s: loopback delivery sits at the low end, a stalled node at the top.
        let delivery_lag = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "agentwire_delivery_lag_seconds",
            "Time from append (or receipt from the backbone) to send, per delivered event",
            delivery_lag.clone(),
        );
        let metrics = Self {
            appended: PerKind::new(&appended),
            delivered: PerKind::new(&delivered),
            delivery_lag,
            slow_consumer_disconnects: Counter::default(),
            subscriptions: Gauge::default(),
            connections: Family::default(),
            resumes: Counter::default(),
            resets: Counter::default(),
            gap_fills: Counter::default(),
        };
        registry.register(
            "agentwire_slow_consumer_disconnects",
            "Connections closed because their send queue overflowed",
            metrics.slow_consumer_disconnects.clone(),
        );
        registry.register(
            "agentwire_subscriptions",
            "Thread subscriptions open on this node",
            metrics.subscriptions.clone(),
        );
        registry.register(
            "agentwire_connections",
            "Open subscriber connections, by transport",
            metrics.connections.clone(),
        );
        registry.register(
            "agentwire_resumes",
            "Subscriptions that resumed with after_seq > 0",
            metrics.resumes.clone(),
        );
        registry.register("agentwire_resets", "Subscriptions answered with reset", metrics.resets.clone());
        registry.register(
            "agentwire_gap_fills",
            "Times a live stream skipped seqs and the gap was read back from the log",
            metrics.gap_fills.clone(),
        );
        metrics
    }

    /// Metrics registered nowhere (tests, tools).
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }

    /// Counts events just written to a subscriber; live ones also record their
    /// lag (a replay of old history would only blur the publish→send picture).
    pub fn record_sent(&self, events: &[Arc<StoredEvent>], live: bool) {
        let now = Instant::now();
        for e in events {
            self.delivered.get(e.envelope.event).inc();
            if live {
                self.delivery_lag.observe(now.saturating_duration_since(e.received_at).as_secs_f64());
            }
        }
    }
}
