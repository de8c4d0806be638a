//! infergate: a gRPC inference gateway that runs synchronous model backends
//! on bounded per-model worker pools, so that concurrent calls overlap.
//!
//! A call travels: [`service`] (proto in) → [`gateway`] (find the model,
//! [`request`] checks, its [`deadline`]) → [`pool`] (admission, bounded
//! queue, worker thread) → [`backend`] (the blocking model call) → back as
//! one [`outcome`] type, on a oneshot, or through a channel for streams
//! ([`stream`]) → [`service`] (proto out). [`error`] maps every failure to
//! one gRPC status; [`server`] wires health, reflection and the shutdown
//! sequence; [`config`] reads the TOML file.
//!
//! The embedding API (for serving custom backends from Rust) is what is
//! `pub`: [`config`], [`backend`], [`gateway`], [`server`], [`metrics`],
//! [`error`], [`deadline`], [`outcome`], [`proto`], and the command line
//! ([`cli`], [`bench`], [`health`]). The rest is `pub(crate)`.
//!
//! Modules:
//! - [`config`]: the configuration file, defaults and validation
//! - [`server`]: `run(listener, config, gateway, shutdown)` and `serve`
//! - [`service`]: the generated `Inference` trait, conversions only
//! - [`gateway`]: models, admission, shutdown state
//! - [`deadline`]: the one deadline of a call
//! - [`request`]: request validation and `grpc-timeout`
//! - [`pool`]: the worker pool: admission, queue, workers, tickets
//! - [`outcome`]: the one result type from worker to handler
//! - [`stream`]: the handler side of a streaming call
//! - [`backend`]: the synchronous `Backend` trait and the shipped backends
//! - [`cancel`]: a cancel signal synchronous code can wait on
//! - [`error`]: the error type and its status codes
//! - [`status_fix`]: oversized requests → RESOURCE_EXHAUSTED, undecodable
//!   ones → INVALID_ARGUMENT
//! - [`cache`]: the per-model response cache and the coalescing of
//!   identical calls
//! - `batch`: GenerateBatch, many calls in one RPC
//! - `chain`: a call's way through its model's fallbacks
//! - [`metrics`]: Prometheus metrics and the `/metrics` endpoint
//! - `connection`: connection caps, idle timeouts, TLS and mTLS
//!   (`connection::tls`, with the caller's certificate identity), and the
//!   fd limit of both listeners
//! - [`bench`]: `infergate bench`, the ghz-compatible load generator
//! - [`health`]: `infergate health`, one grpc.health.v1 Check (for a
//!   container HEALTHCHECK)
//! - [`auth`]: API keys: the keys file, its reloads, per-key limits
//! - [`tenant`]: who a call is from (its tenant, weight and priority cap)
//! - [`unary`]: a Generate call's future, admitted when made, small while it waits
//! - [`cli`]: the command line

pub mod auth;
pub mod backend;
pub(crate) mod batch;
pub mod bench;
pub mod cache;
pub(crate) mod cancel;
pub(crate) mod chain;
pub mod cli;
pub mod config;
pub(crate) mod connection;
pub mod deadline;
pub mod error;
pub mod gateway;
pub mod health;
pub mod metrics;
pub mod outcome;
pub(crate) mod pool;
pub(crate) mod record;
pub(crate) mod request;
pub mod server;
pub(crate) mod service;
pub(crate) mod status_fix;
pub(crate) mod stream;
pub mod tenant;
pub mod unary;

/// The generated messages, server and client of `infergate.v1`.
#[allow(
    missing_docs,
    clippy::doc_lazy_continuation,
    clippy::doc_overindented_list_items
)]
pub mod proto {
    tonic::include_proto!("infergate.v1");

    /// The encoded descriptors of `proto/`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/infergate_descriptor.bin"));
}

pub use config::Config;
pub use error::Error;
pub use gateway::Gateway;
pub use stream::GenerationStream;
