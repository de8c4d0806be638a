//! Prometheus metrics: names, descriptions, buckets, the recorder, and the
//! `/metrics` endpoint.
//!
//! Two sources make one scrape:
//! - events (requests, rejections, durations, tokens) are recorded through
//!   the `metrics` crate into metrics-exporter-prometheus's registry, with
//!   real histogram buckets, using handles resolved once per model
//!   ([`ModelMetrics`]) so the hot path does no lookups;
//! - live state (workers, busy workers, queue depth, calls in flight, and
//!   worker-seconds spent in backend calls) is read from the pools when the
//!   scrape is rendered ([`live`]), so gauges are the real state, never a
//!   count of guesses, and the busy-seconds counter is fractional and
//!   includes calls still running. (The exporter's counters are integers,
//!   which cannot carry seconds; this is why `/metrics` is served by
//!   [`http`] rather than the exporter's own listener.)
//!
//! The metric names are a contract: dashboards and alerts depend on them.

pub mod http;
pub mod live;
mod model;
pub mod upstream;

use std::sync::OnceLock;

use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use live::{PoolStats, StatsSource};
pub use model::{Method, ModelMetrics, code_name};

/// Requests finished, by model, method and gRPC code.
pub const REQUESTS_TOTAL: &str = "infergate_requests_total";
/// Request received to response finished.
pub const REQUEST_DURATION: &str = "infergate_request_duration_seconds";
/// Admitted to the queue until picked up by a worker.
pub const QUEUE_WAIT: &str = "infergate_queue_wait_seconds";
/// Time inside the backend call.
pub const BACKEND_DURATION: &str = "infergate_backend_duration_seconds";
/// Request received to first token, for streams.
pub const TIME_TO_FIRST_TOKEN: &str = "infergate_time_to_first_token_seconds";
/// Worker threads of a model.
pub const WORKERS: &str = "infergate_workers";
/// Workers with a backend up: 0 means the model is down.
pub const WORKERS_READY: &str = "infergate_workers_ready";
/// Workers inside a backend call.
pub const WORKERS_BUSY: &str = "infergate_workers_busy";
/// Calls waiting for a worker.
pub const QUEUE_DEPTH: &str = "infergate_queue_depth";
/// Calls admitted and not yet finished (queued, running or streaming).
pub const INFLIGHT_REQUESTS: &str = "infergate_inflight_requests";
/// Worker-seconds spent in backend calls.
pub const BACKEND_BUSY_SECONDS: &str = "infergate_backend_busy_seconds_total";
/// Calls refused or expired, by reason.
pub const REJECTED_TOTAL: &str = "infergate_rejected_total";
/// Calls whose client went away, by the stage they were in.
pub const CANCELLED_TOTAL: &str = "infergate_cancelled_total";
/// Backend calls that panicked.
pub const BACKEND_PANICS_TOTAL: &str = "infergate_backend_panics_total";
/// Worker backends replaced, by reason.
pub const WORKER_RESTARTS_TOTAL: &str = "infergate_worker_restarts_total";
/// Input tokens of successful calls.
pub const PROMPT_TOKENS_TOTAL: &str = "infergate_prompt_tokens_total";
/// Generated tokens of successful calls.
pub const GENERATED_TOKENS_TOTAL: &str = "infergate_generated_tokens_total";
/// Connections open, by listener (`grpc`, `metrics`).
pub const CONNECTIONS: &str = "infergate_connections";
/// Connections closed at accept, by listener and reason.
pub const CONNECTIONS_REFUSED_TOTAL: &str = "infergate_connections_refused_total";
/// Connections the server closed because of a limit, by listener and reason.
pub const CONNECTIONS_CLOSED_TOTAL: &str = "infergate_connections_closed_total";
/// Calls that a model passed to one of its fallbacks, by model, the
/// fallback and the reason.
pub const FALLBACKS_TOTAL: &str = "infergate_fallbacks_total";
/// Calls answered from a model's response cache.
pub const CACHE_HITS_TOTAL: &str = "infergate_cache_hits_total";
/// Cacheable calls not in the cache, which ran the backend.
pub const CACHE_MISSES_TOTAL: &str = "infergate_cache_misses_total";
/// Calls that shared an identical call's backend call.
pub const CACHE_COALESCED_TOTAL: &str = "infergate_cache_coalesced_total";
/// Answers held in a model's response cache.
pub const CACHE_ENTRIES: &str = "infergate_cache_entries";
/// Bytes held in a model's response cache.
pub const CACHE_BYTES: &str = "infergate_cache_bytes";
/// Requests to an OpenAI backend's upstreams, by model, upstream and code
/// (the HTTP status, or how the request failed).
pub const UPSTREAM_REQUESTS_TOTAL: &str = "infergate_upstream_requests_total";
/// 1 while an upstream takes calls (not ejected, passing its probe).
pub const UPSTREAM_UP: &str = "infergate_upstream_up";
/// Requests in flight to an upstream.
pub const UPSTREAM_INFLIGHT: &str = "infergate_upstream_inflight";
/// Calls refused before any model was looked at: no API key, a malformed
/// one, an unknown one.
pub const AUTH_FAILURES_TOTAL: &str = "infergate_auth_failures_total";
/// API keys loaded now.
pub const AUTH_KEYS: &str = "infergate_auth_keys";
/// Reloads of the keys file, by result.
pub const AUTH_RELOADS_TOTAL: &str = "infergate_auth_reloads_total";
/// Reloads of the TLS files, by result (`ok`, `error`).
pub const TLS_RELOADS_TOTAL: &str = "infergate_tls_reloads_total";
/// Always 1, labelled with the version.
pub const BUILD_INFO: &str = "infergate_build_info";

/// The `model` label of calls that named no served model: a fixed value, so
/// that clients cannot grow the label set. Cannot collide with a model name
/// (parentheses are not allowed in names).
pub const UNKNOWN_MODEL: &str = "(unknown)";

/// Buckets of end-to-end latencies: 1 ms to 5 minutes, dense where LLM
/// calls live (tens of ms to tens of seconds).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5,
    2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

/// Buckets of queue waits: from 100 µs, where an idle pool hands off, to
/// minutes, where an overloaded one does.
pub const QUEUE_WAIT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The process-wide recorder's handle, installing the recorder on first
/// use. Every gateway in the process records into it. If the embedding
/// program installed another recorder first, ours still renders, but stays
/// empty of events (live state is still served).
pub fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; infergate's events will not appear in /metrics");
        }
        describe();
        metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        // The security series exist from start-up, at zero, with or
        // without keys and TLS: dashboards and alerts read 0, not "no data".
        for reason in ["missing", "malformed", "unknown"] {
            metrics::counter!(AUTH_FAILURES_TOTAL, "reason" => reason).absolute(0);
        }
        for result in ["ok", "error"] {
            metrics::counter!(AUTH_RELOADS_TOTAL, "result" => result).absolute(0);
            metrics::counter!(TLS_RELOADS_TOTAL, "result" => result).absolute(0);
        }
        metrics::gauge!(AUTH_KEYS).set(0.0);
        handle
    })
}

fn builder() -> PrometheusBuilder {
    let buckets = [
        (REQUEST_DURATION, LATENCY_BUCKETS),
        (BACKEND_DURATION, LATENCY_BUCKETS),
        (TIME_TO_FIRST_TOKEN, LATENCY_BUCKETS),
        (QUEUE_WAIT, QUEUE_WAIT_BUCKETS),
    ];
    buckets
        .into_iter()
        .fold(PrometheusBuilder::new(), |builder, (name, buckets)| {
            // Only fails on an empty bucket list; ours are constants.
            builder
                .set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
                .unwrap_or_else(|e| unreachable!("bucket constants are not empty: {e}"))
        })
}

/// HELP texts, each with its unit.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS_TOTAL,
        Unit::Count,
        "RPCs finished, by model, method, gRPC code and tenant (the API key's name, or anonymous) (requests)."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Request received to response finished (seconds)."
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Admitted to the model's queue until picked up by a worker (seconds)."
    );
    describe_histogram!(
        BACKEND_DURATION,
        Unit::Seconds,
        "Time inside the backend call on a worker thread (seconds)."
    );
    describe_histogram!(
        TIME_TO_FIRST_TOKEN,
        Unit::Seconds,
        "GenerateStream: request received to first token produced (seconds)."
    );
    describe_counter!(
        REJECTED_TOTAL,
        Unit::Count,
        "Calls refused or expired, by reason: queue_full, deadline (expired, or refused at admission when the queue ahead cannot meet it), shutting_down, model_down (no worker ready), invalid_argument, not_found, permission_denied (the API key may not use the model), rate_limit, concurrency_limit (the key's limits); by tenant (requests)."
    );
    describe_counter!(
        CANCELLED_TOTAL,
        Unit::Count,
        "Calls whose client went away, by the stage they were in: queued or running (requests)."
    );
    describe_counter!(
        BACKEND_PANICS_TOTAL,
        Unit::Count,
        "Backend calls that panicked; each failed INTERNAL and its worker got a fresh backend (calls)."
    );
    describe_counter!(
        WORKER_RESTARTS_TOTAL,
        Unit::Count,
        "Worker backends replaced, by reason: exited, hung, cancelled, malformed, panic, start_failed, other (restarts)."
    );
    describe_counter!(
        PROMPT_TOKENS_TOTAL,
        Unit::Count,
        "Input tokens of successful calls, as the backend counts them (tokens)."
    );
    describe_counter!(
        GENERATED_TOKENS_TOTAL,
        Unit::Count,
        "Tokens generated by successful calls (tokens)."
    );
    describe_gauge!(
        CONNECTIONS,
        Unit::Count,
        "Connections open, by listener: grpc or metrics (connections)."
    );
    describe_counter!(
        CONNECTIONS_REFUSED_TOTAL,
        Unit::Count,
        "Connections closed as soon as accepted, by listener and reason: max_connections, when every open one has started a call (connections)."
    );
    describe_counter!(
        CONNECTIONS_CLOSED_TOTAL,
        Unit::Count,
        "Connections the server closed on a limit, by listener and reason: idle, first_call, evicted (made way for a new one before any call), header_timeout (also idle keep-alive), connection_timeout (connections)."
    );
    describe_counter!(
        FALLBACKS_TOTAL,
        Unit::Count,
        "Calls passed from a model to its fallback `to` after failing before their first token, by reason: queue_full, deadline (refused at admission), model_down, unavailable, resource_exhausted (calls)."
    );
    describe_counter!(
        CACHE_HITS_TOTAL,
        Unit::Count,
        "Calls answered from the model's response cache, with no backend call (calls)."
    );
    describe_counter!(
        CACHE_MISSES_TOTAL,
        Unit::Count,
        "Cacheable calls that were not in the cache and ran the backend (calls)."
    );
    describe_counter!(
        CACHE_COALESCED_TOTAL,
        Unit::Count,
        "Calls that found an identical call running and shared its backend call (calls)."
    );
    describe_gauge!(
        CACHE_ENTRIES,
        Unit::Count,
        "Answers held in the model's response cache (entries)."
    );
    describe_gauge!(
        CACHE_BYTES,
        Unit::Bytes,
        "Bytes of keys and text held in the model's response cache (bytes)."
    );
    describe_counter!(
        UPSTREAM_REQUESTS_TOTAL,
        Unit::Count,
        "Requests to an OpenAI backend's upstreams, by model, upstream and code: the HTTP status, or connect_error, timeout, cancelled, transport_error, malformed, error_event (requests)."
    );
    describe_gauge!(
        UPSTREAM_UP,
        "1 while an upstream takes calls: not ejected after failures and passing its probe; 0 otherwise (state)."
    );
    describe_gauge!(
        UPSTREAM_INFLIGHT,
        Unit::Count,
        "Requests in flight to an upstream, retries included (requests)."
    );
    describe_counter!(
        AUTH_FAILURES_TOTAL,
        Unit::Count,
        "Calls refused as UNAUTHENTICATED, by reason: missing (no authorization metadata), malformed (not `Bearer <key>`), unknown (no such key) (calls)."
    );
    describe_gauge!(
        AUTH_KEYS,
        Unit::Count,
        "API keys loaded from the keys file now (keys)."
    );
    describe_counter!(
        AUTH_RELOADS_TOTAL,
        Unit::Count,
        "Reads of a changed keys file, by result: ok (the new keys are in force) or error (the old keys stay) (reloads)."
    );
    describe_counter!(
        TLS_RELOADS_TOTAL,
        Unit::Count,
        "Reloads of the [server.tls] files (on a change or SIGHUP), by result: ok, or error (the certificate in use was kept; the log says why) (reloads)."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which infergate is running (info)."
    );
}
