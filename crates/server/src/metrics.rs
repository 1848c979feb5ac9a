//! Publish-side telemetry: refused publishes and figures of the log.

use agentwire_hub::ReasonLabel;
use agentwire_protocol::ErrorCode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What the server counts about publishers and the log.
#[derive(Clone)]
pub struct ServerMetrics {
    rejected: Family<ReasonLabel, Counter>,
    /// Every refused event, whatever the reason (for the dashboard).
    pub rejected_total: Counter,
    /// Refused because the run named no known thread.
    pub unroutable_total: Counter,
    pub threads: Gauge,
    pub runs_in_flight: Gauge,
    pub agent_runs: Gauge,
    /// 1 when the log's engine could lose an acknowledged event (accepted at start).
    pub weak_durability: Gauge,
}

impl ServerMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            rejected: Family::default(),
            rejected_total: Counter::default(),
            unroutable_total: Counter::default(),
            threads: Gauge::default(),
            runs_in_flight: Gauge::default(),
            agent_runs: Gauge::default(),
            weak_durability: Gauge::default(),
        };
        registry.register(
            "agentwire_events_rejected",
            "Published events refused, by reason (unroutable: the run names no known thread)",
            metrics.rejected.clone(),
        );
        registry.register(
            "agentwire_threads",
            "Threads in the log's working state (running ones, and idle ones up to AGENTWIRE_THREAD_CACHE)",
            metrics.threads.clone(),
        );
        registry.register("agentwire_runs_in_flight", "Runs started and not yet ended", metrics.runs_in_flight.clone());
        registry.register(
            "agentwire_agent_runs",
            "Runs executing in this node's in-process engine",
            metrics.agent_runs.clone(),
        );
        registry.register(
            "agentwire_weak_durability",
            "1 when the shared engine's settings could lose an acknowledged event and the node was started with --allow-weak-durability",
            metrics.weak_durability.clone(),
        );
        metrics
    }

    /// Counts a refused publish of `events` events.
    pub fn record_rejected(&self, code: ErrorCode, events: u64) {
        let events = events.max(1);
        let reason = match code {
            ErrorCode::NotFound => {
                self.unroutable_total.inc_by(events);
                "unroutable"
            }
            other => other.as_str(),
        };
        self.rejected.get_or_create(&ReasonLabel { reason }).inc_by(events);
        self.rejected_total.inc_by(events);
    }
}
