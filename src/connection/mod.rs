//! The edges of the network: what bounds the connections of both listeners,
//! so that no client can hold file descriptors, memory or tasks for long
//! without doing work.
//!
//! - [`ConnectionCap`]: how many connections a listener keeps open, so
//!   that a flood costs the process a fixed number of descriptors. When
//!   full, a new connection takes the place of the oldest one that has not
//!   started a call yet (a flood of silent connections cannot lock real
//!   clients out); when every connection has started one, the new one is
//!   closed at once (counted), and its client fails fast instead of waiting
//!   in the kernel's backlog.
//! - [`incoming`]: the gRPC listener's accepted connections, each holding
//!   its slot under the cap and closing itself once idle ([`activity`]
//!   counts the calls in flight on it).
//! - [`tls`]: TLS and mTLS on both listeners (handshakes, reload, the
//!   client certificate's identity, the answer to plain-text clients).
//! - [`fd_limit`]: raises the process's descriptor limit at start-up.
//! - [`memory`]: hands the memory of a connection flood back to the system
//!   once it is over.
//!
//! tonic and hyper provide the rest (HTTP/2 keepalive, header read timeouts,
//! stream limits); `server.rs` and `metrics/http.rs` set them up. What is
//! here is what they lack: a connection cap, and an idle timeout that
//! counts calls rather than bytes (hyper's HTTP/2 server has none; tonic's
//! `max_connection_age` would cut off long calls).

pub(crate) mod activity;
mod cap;
pub(crate) mod fd_limit;
pub(crate) mod incoming;
pub(crate) mod memory;
pub(crate) mod tls;

pub(crate) use cap::{ConnectionCap, Slot};

/// The `listener` label of the gRPC listener.
pub(crate) const GRPC: &str = "grpc";
/// The `listener` label of the `/metrics` listener.
pub(crate) const METRICS: &str = "metrics";

/// Whether an accept error concerns only the connection being accepted
/// (it was reset before we took it): then the next accept can go on at
/// once. Other errors (out of descriptors, out of memory) call for a pause.
pub(crate) fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}
