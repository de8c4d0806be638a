//! One upstream's metric handles (the OpenAI backend's replicas): whether
//! it takes calls, its requests in flight, and its requests by outcome.

use metrics::{Gauge, counter, gauge};

use crate::metrics::{UPSTREAM_INFLIGHT, UPSTREAM_REQUESTS_TOTAL, UPSTREAM_UP, recorder};

/// The outcomes of an upstream request that are not an HTTP status: the
/// `code` label besides `100`..`599`, so the label set stays bounded.
pub const UPSTREAM_CODES: [&str; 6] = [
    "connect_error",
    "timeout",
    "cancelled",
    "transport_error",
    "malformed",
    "error_event",
];

/// The handles of one upstream of one model.
pub struct UpstreamMetrics {
    model: String,
    upstream: String,
    up: Gauge,
    inflight: Gauge,
}

impl UpstreamMetrics {
    /// Resolves the handles (installing the recorder if need be); the
    /// upstream starts up, with nothing in flight.
    pub fn new(model: &str, upstream: &str) -> Self {
        recorder();
        let labels = || {
            [
                ("model", model.to_string()),
                ("upstream", upstream.to_string()),
            ]
        };
        let metrics = UpstreamMetrics {
            model: model.to_string(),
            upstream: upstream.to_string(),
            up: gauge!(UPSTREAM_UP, &labels()),
            inflight: gauge!(UPSTREAM_INFLIGHT, &labels()),
        };
        metrics.up.set(1.0);
        metrics.inflight.set(0.0);
        metrics
    }

    /// Whether the upstream takes calls now.
    pub fn set_up(&self, up: bool) {
        self.up.set(if up { 1.0 } else { 0.0 });
    }

    /// A request was sent.
    pub fn started(&self) {
        self.inflight.increment(1.0);
    }

    /// A request ended with `code`: its HTTP status, or one of
    /// [`UPSTREAM_CODES`].
    pub fn finished(&self, code: Code) {
        self.inflight.decrement(1.0);
        let code = match code {
            Code::Status(status) => status.to_string(),
            Code::Other(name) => name.to_string(),
        };
        counter!(UPSTREAM_REQUESTS_TOTAL,
            "model" => self.model.clone(),
            "upstream" => self.upstream.clone(),
            "code" => code)
        .increment(1);
    }
}

/// How an upstream request ended, for the `code` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The upstream answered this HTTP status (100..=599).
    Status(u16),
    /// One of [`UPSTREAM_CODES`].
    Other(&'static str),
}
