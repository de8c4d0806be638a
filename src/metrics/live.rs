//! The metric families read from the pools at scrape time: pool size and
//! load, and worker-seconds spent in backend calls.
//!
//! Reading them when the scrape is rendered means they cost nothing on the
//! request path, are the real state rather than a tally of events, and
//! exist for every model from start-up, at zero.

use std::fmt::Write;

use crate::metrics::{
    BACKEND_BUSY_SECONDS, INFLIGHT_REQUESTS, QUEUE_DEPTH, WORKERS, WORKERS_BUSY, WORKERS_READY,
};

/// A snapshot of a pool's size and load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolStats {
    /// Worker threads.
    pub workers: usize,
    /// Places in the queue.
    pub queue_capacity: usize,
    /// Workers running a backend call.
    pub busy: usize,
    /// Calls waiting for a worker.
    pub queued: usize,
    /// Tenants with calls waiting (they take turns).
    pub tenants_waiting: usize,
    /// Backend calls started since start-up.
    pub backend_calls: u64,
    /// Calls admitted and not yet finished: queued, running, or streaming.
    pub inflight: usize,
    /// Worker-seconds spent in backend calls, running ones included.
    pub busy_seconds: f64,
    /// Workers with a backend ready; 0 means the model cannot serve (e.g.
    /// its worker processes fail to start).
    pub ready: usize,
}

/// Where a scrape reads the pools from: the narrow view of the gateway the
/// metrics need, so this module does not depend on the gateway.
pub trait StatsSource: Send + Sync {
    /// Each model's name and pool stats, in configuration order.
    fn pool_stats(&self) -> Vec<(String, PoolStats)>;
}

/// One family: name, type, help, and how to read it from a pool.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&PoolStats) -> f64,
}

const FAMILIES: &[Family] = &[
    Family {
        name: WORKERS,
        kind: "gauge",
        help: "Worker threads of the model's pool: how many backend calls may run at once (threads).",
        value: |s| s.workers as f64,
    },
    Family {
        name: WORKERS_READY,
        kind: "gauge",
        help: "Workers with a backend up and ready for a call; 0 means the model is down (threads).",
        value: |s| s.ready as f64,
    },
    Family {
        name: WORKERS_BUSY,
        kind: "gauge",
        help: "Workers inside a backend call right now (threads).",
        value: |s| s.busy as f64,
    },
    Family {
        name: QUEUE_DEPTH,
        kind: "gauge",
        help: "Calls waiting in the model's queue for a worker (requests).",
        value: |s| s.queued as f64,
    },
    Family {
        name: INFLIGHT_REQUESTS,
        kind: "gauge",
        help: "Calls admitted and not yet finished: queued, running or streaming (requests).",
        value: |s| s.inflight as f64,
    },
    Family {
        name: BACKEND_BUSY_SECONDS,
        kind: "counter",
        help: "Worker-seconds spent inside backend calls, running calls included; rate() of it is the mean number of calls running at once (seconds).",
        value: |s| s.busy_seconds,
    },
];

/// Appends the live families of every model of `source` to `out`, in the
/// Prometheus text format.
pub fn render(source: &dyn StatsSource, out: &mut String) {
    let stats = source.pool_stats();
    for family in FAMILIES {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
        for (model, stats) in &stats {
            let _ = writeln!(
                out,
                "{}{{model=\"{}\"}} {}",
                family.name,
                escape_label(model),
                (family.value)(stats)
            );
        }
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn escape_label(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains(['\\', '"', '\n']) {
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        value.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("plain"), "plain");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
