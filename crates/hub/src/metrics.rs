//! Delivery telemetry: what left this node, how late, and who could not keep up.
//!
//! Counters per event kind are looked up once at start-up, so counting a
//! delivery on the hot path is one atomic add, not a label-map lookup.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// The `reason` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// The `transport` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub transport: &'static str,
}

/// Upper bounds (seconds) of the delivery-lag buckets: 50 µs doubling to ~1.6 s.
pub const LAG_BUCKETS: [f64; 16] = {
    let mut b = [0.0; 16];
    let mut i = 0;
    let mut v = 0.000_05;
    while i < 16 {
        b[i] = v;
        v *= 2.0;
        i += 1;
    }
    b
};

/// Lag counts per bucket (the last slot is +Inf), readable at any time: the
/// dashboard turns the difference of two readings into recent percentiles.
#[derive(Debug, Default)]
pub struct LagCounts([AtomicU64; LAG_BUCKETS.len() + 1]);

impl LagCounts {
    fn observe(&self, secs: f64) {
        let i = LAG_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(LAG_BUCKETS.len());
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts per bucket so far.
    pub fn read(&self) -> [u64; LAG_BUCKETS.len() + 1] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }
}

/// The `q` quantile (0..1) of the observations between two readings, as the
/// upper bound of the bucket it falls in (`None` when nothing was observed).
pub fn lag_quantile(before: &[u64], after: &[u64], q: f64) -> Option<f64> {
    let deltas: Vec<u64> = after.iter().zip(before).map(|(a, b)| a.saturating_sub(*b)).collect();
    let total: u64 = deltas.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, d) in deltas.iter().enumerate() {
        seen += d;
        if seen >= rank {
            return Some(LAG_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY));
        }
    }
    None
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

    /// The sum over every kind.
    pub fn total(&self) -> u64 {
        self.0.iter().map(Counter::get).sum()
    }

    /// `(event name, count)` for every kind.
    pub fn by_kind(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        EventKind::ALL.iter().zip(&self.0).map(|(k, c)| (k.as_str(), c.get()))
    }
}

/// The hub's metrics; cheap to clone (every field is a shared handle).
#[derive(Clone)]
pub struct HubMetrics {
    pub appended: PerKind,
    pub delivered: PerKind,
    pub delivery_lag: Histogram,
    /// The same observations as `delivery_lag`, readable for the dashboard.
    pub lag_counts: Arc<LagCounts>,
    pub slow_consumer_disconnects: Counter,
    /// Deliveries not queued because the connection had overflowed (it resumes from the log).
    pub dropped_slow_consumer: Counter,
    /// Events queued per connection when its writer takes a batch.
    pub queue_depth: Histogram,
    pub subscriptions: Gauge,
    pub connections: Family<TransportLabel, Gauge>,
    pub resumes: Counter,
    pub resets: Counter,
    pub gap_fills: Counter,
    /// The labelled families behind the per-kind and per-reason handles above, for [`Self::register`].
    appended_family: Family<EventLabel, Counter>,
    delivered_family: Family<EventLabel, Counter>,
    dropped_family: Family<ReasonLabel, Counter>,
}

impl Default for HubMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl HubMetrics {
    /// The metrics, registered nowhere yet: a hub can be made before the
    /// registry that will publish its figures (see [`Self::register`]).
    pub fn new() -> Self {
        let appended_family = Family::<EventLabel, Counter>::default();
        let delivered_family = Family::<EventLabel, Counter>::default();
        let dropped_family = Family::<ReasonLabel, Counter>::default();
        let dropped_slow_consumer = dropped_family.get_or_create(&ReasonLabel { reason: "slow_consumer" }).clone();
        Self {
            appended: PerKind::new(&appended_family),
            delivered: PerKind::new(&delivered_family),
            // 50 µs … ~1.6 s: loopback delivery sits at the low end, a stalled node at the top.
            delivery_lag: Histogram::new(LAG_BUCKETS.iter().copied()),
            lag_counts: Arc::default(),
            slow_consumer_disconnects: Counter::default(),
            dropped_slow_consumer,
            queue_depth: Histogram::new(exponential_buckets(1.0, 4.0, 8)),
            subscriptions: Gauge::default(),
            connections: Family::default(),
            resumes: Counter::default(),
            resets: Counter::default(),
            gap_fills: Counter::default(),
            appended_family,
            delivered_family,
            dropped_family,
        }
    }

    /// Metrics registered nowhere (tests, tools).
    pub fn unregistered() -> Self {
        Self::new()
    }

    /// Publishes these metrics under `agentwire_` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "agentwire_events_appended",
            "Events appended to thread logs (from publishers, in-process agents and the server), by event kind",
            self.appended_family.clone(),
        );
        registry.register(
            "agentwire_events_delivered",
            "Events sent to subscribers, by event kind",
            self.delivered_family.clone(),
        );
        registry.register(
            "agentwire_delivery_lag_seconds",
            "Time from append (or receipt from the backbone) to send, per delivered event",
            self.delivery_lag.clone(),
        );
        registry.register(
            "agentwire_slow_consumer_disconnects",
            "Connections closed because their send queue overflowed",
            self.slow_consumer_disconnects.clone(),
        );
        registry.register(
            "agentwire_subscriptions",
            "Thread subscriptions open on this node",
            self.subscriptions.clone(),
        );
        registry.register(
            "agentwire_connections",
            "Open subscriber connections, by transport",
            self.connections.clone(),
        );
        registry.register("agentwire_resumes", "Subscriptions that resumed with after_seq > 0", self.resumes.clone());
        registry.register("agentwire_resets", "Subscriptions answered with reset", self.resets.clone());
        registry.register(
            "agentwire_gap_fills",
            "Times a live stream skipped seqs and the gap was read back from the log",
            self.gap_fills.clone(),
        );
        registry.register(
            "agentwire_events_dropped",
            "Deliveries not queued, by reason (slow_consumer: the connection overflowed and is closed with 4008)",
            self.dropped_family.clone(),
        );
        registry.register(
            "agentwire_send_queue_depth",
            "Events waiting in a connection's send queue when its writer takes a batch",
            self.queue_depth.clone(),
        );
    }

    /// Counts events just written to a subscriber; live ones also record their
    /// lag (a replay of old history would only blur the publish→send picture).
    pub fn record_sent(&self, events: &[Arc<StoredEvent>], live: bool) {
        let now = Instant::now();
        for e in events {
            self.delivered.get(e.kind()).inc();
            if live {
                let lag = now.saturating_duration_since(e.received_at).as_secs_f64();
                self.delivery_lag.observe(lag);
                self.lag_counts.observe(lag);
            }
        }
    }
}
