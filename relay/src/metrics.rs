//! Prometheus metrics, served as text at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// A rejection reason, as the `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// The rejection code, e.g. `non_finite`.
    pub reason: String,
}

/// Every metric the relay exports; cheap to update from any thread.
pub struct Metrics {
    registry: Registry,
    /// WebSocket sessions open (past the upgrade, hello or not).
    pub sessions: Gauge,
    /// Units handed out, reassignments included.
    pub assigned: Counter,
    /// Results accepted.
    pub accepted: Counter,
    /// Results rejected, by reason.
    pub rejected: Family<Reason, Counter>,
    /// Results replayed on the relay's CPU.
    pub replayed: Counter,
    /// Seconds from a round's first unit to its commit.
    pub round_seconds: Histogram,
    /// Bytes received in WebSocket frames.
    pub bytes_in: Counter,
    /// Bytes sent in WebSocket frames and weight/shard downloads.
    pub bytes_out: Counter,
    /// The current version.
    pub version: Gauge,
    /// Held-out loss of the current version, nats.
    pub val_loss: Gauge<f64, AtomicU64>,
    /// Mean last-step training loss of the results in the current version, nats.
    pub train_loss: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("crowdgrad");
        let metrics = Metrics {
            sessions: Gauge::default(),
            assigned: Counter::default(),
            accepted: Counter::default(),
            rejected: Family::default(),
            replayed: Counter::default(),
            round_seconds: Histogram::new(exponential_buckets(0.25, 2.0, 12)),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            version: Gauge::default(),
            val_loss: Gauge::default(),
            train_loss: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("sessions", "WebSocket sessions open", metrics.sessions.clone());
        registry.register("units_assigned", "Units handed out, reassignments included", metrics.assigned.clone());
        registry.register("results_accepted", "Results accepted", metrics.accepted.clone());
        registry.register("results_rejected", "Results rejected, by reason", metrics.rejected.clone());
        registry.register("results_replayed", "Results replayed on the relay's CPU", metrics.replayed.clone());
        registry.register(
            "round_seconds",
            "Seconds from a round's first unit to its commit",
            metrics.round_seconds.clone(),
        );
        registry.register("bytes_in", "Bytes received in WebSocket frames", metrics.bytes_in.clone());
        registry.register("bytes_out", "Bytes sent: frames and downloads", metrics.bytes_out.clone());
        registry.register("version", "Current model version", metrics.version.clone());
        registry.register("val_loss", "Held-out loss of the current version, nats", metrics.val_loss.clone());
        registry.register(
            "train_loss",
            "Mean training loss of the current version's results, nats",
            metrics.train_loss.clone(),
        );
        Metrics { registry, ..metrics }
    }
}

impl Metrics {
    /// The OpenMetrics text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}
