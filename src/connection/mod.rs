//! The edges of the network: what bounds the connections of both listeners,
//! so that no client can hold file descriptors, memory or tasks for long
//! without doing work.
//!
//! - [`ConnectionCap`]: how many connections a listener keeps open; one
//!   beyond it is accepted and closed at once (counted), so that a flood
//!   costs the process a fixed number of descriptors and clients fail fast
//!   instead of waiting in the kernel's backlog.
//! - [`incoming`]: the gRPC listener's accepted connections, each holding
//!   its slot under the cap and closing itself once idle ([`activity`]
//!   counts the calls in flight on it).
//! - [`fd_limit`]: raises the process's descriptor limit at start-up.
//!
//! tonic and hyper provide the rest (HTTP/2 keepalive, header read timeouts,
//! stream limits); `server.rs` and `metrics/http.rs` set them up. What is
//! here is what they lack: a connection cap, and an idle timeout that
//! counts calls rather than bytes (hyper's HTTP/2 server has none; tonic's
//! `max_connection_age` would cut off long calls).

pub(crate) mod activity;
pub(crate) mod fd_limit;
pub(crate) mod incoming;

use std::sync::Arc;

use metrics::{Counter, Gauge, counter, gauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::{CONNECTIONS, CONNECTIONS_CLOSED_TOTAL, CONNECTIONS_REFUSED_TOTAL, recorder};

/// The `listener` label of the gRPC listener.
pub(crate) const GRPC: &str = "grpc";
/// The `listener` label of the `/metrics` listener.
pub(crate) const METRICS: &str = "metrics";

/// A listener's cap on open connections.
#[derive(Clone)]
pub(crate) struct ConnectionCap {
    listener: &'static str,
    slots: Arc<Semaphore>,
    open: Gauge,
    refused: Counter,
}

impl ConnectionCap {
    /// A cap of `max` connections for the listener labelled `listener`.
    pub(crate) fn new(listener: &'static str, max: usize) -> ConnectionCap {
        // Handles made before the recorder is installed would record
        // nowhere.
        recorder();
        ConnectionCap {
            listener,
            slots: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            open: gauge!(CONNECTIONS, "listener" => listener),
            refused: counter!(
                CONNECTIONS_REFUSED_TOTAL,
                "listener" => listener,
                "reason" => "max_connections"
            ),
        }
    }

    /// A slot for a connection just accepted, or `None` (counted) when the
    /// listener is full and the connection must be closed.
    pub(crate) fn admit(&self) -> Option<Slot> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                self.open.increment(1.0);
                Some(Slot {
                    _permit: permit,
                    open: self.open.clone(),
                    listener: self.listener,
                })
            }
            Err(_) => {
                self.refused.increment(1);
                None
            }
        }
    }
}

/// One open connection's place under its listener's cap; dropping it (when
/// the connection closes) frees the place.
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
    listener: &'static str,
}

impl Slot {
    /// Counts this connection as closed by the server because of `reason`.
    pub(crate) fn closed_by_limit(&self, reason: &'static str) {
        counter!(CONNECTIONS_CLOSED_TOTAL, "listener" => self.listener, "reason" => reason)
            .increment(1);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

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
