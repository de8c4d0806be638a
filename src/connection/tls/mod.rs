//! TLS and mTLS on the listeners (`[server.tls]`).
//!
//! - [`ServerTls`]: the rustls server configs in use (one for gRPC with
//!   ALPN `h2`, one for `/metrics` with `http/1.1`), behind a lock read once
//!   per handshake, so a reload swaps them for new connections while open
//!   ones keep theirs;
//! - [`load`]: the PEM files into those configs, with errors naming the
//!   key, the file and what is wrong ([`TlsFileError`]);
//! - [`reload`]: re-reads the files when they change and on SIGHUP;
//! - [`handshake`]: what a gRPC connection goes through before tonic sees
//!   it: its first byte tells TLS (0x16) from a plain-text HTTP/2 client,
//!   which gets a clear gRPC error ([`plaintext`]) instead of a reset;
//! - [`identity`]: the client certificate's subject, which handlers read
//!   with [`peer_identity`].
//!
//! Handshakes run in tasks of their own (see `incoming`), each under
//! `handshake_timeout_ms`, and hold their connection's slot under the
//! connection cap: a client that opens TCP and never sends a ClientHello
//! costs one slot until its timeout, or until a newcomer takes its place,
//! and holds up nobody else's handshake.
//!
//! Why tokio-rustls rather than tonic's `ServerTlsConfig`: tonic's TLS
//! cannot reload its certificate, and it would wrap our own accept stream
//! (the cap and idle timeouts) from the outside, where a handshake cannot
//! be told apart from a plain-text client.

mod identity;
mod load;
mod plaintext;
mod reload;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use metrics::counter;
use rustls::ServerConfig;
use tokio_util::task::AbortOnDropHandle;

use crate::config::TlsConfig;
use crate::connection::incoming::LimitedIo;
use crate::metrics::{TLS_RELOADS_TOTAL, recorder};

#[allow(unused_imports)] // peer_identity's users arrive with the tenant wiring
pub(crate) use identity::{PeerIdentity, peer_identity};
pub use load::TlsFileError;

/// The TLS configs of the listeners, swapped whole on a reload.
pub(crate) struct ServerTls {
    settings: TlsConfig,
    /// Read (and the `Arc` cloned) once per handshake; written by a reload.
    current: RwLock<Arc<load::Configs>>,
}

impl ServerTls {
    /// Loads the files of `settings`; fails on the first one that cannot
    /// be used.
    pub(crate) fn load(settings: &TlsConfig) -> Result<Arc<ServerTls>, TlsFileError> {
        let configs = load::Configs::load(settings)?;
        Ok(Arc::new(ServerTls {
            settings: settings.clone(),
            current: RwLock::new(Arc::new(configs)),
        }))
    }

    /// Loads the files and starts reloading them on change and SIGHUP,
    /// until the handle drops.
    pub(crate) fn start(
        settings: &TlsConfig,
    ) -> Result<(Arc<ServerTls>, AbortOnDropHandle<()>), TlsFileError> {
        let tls = ServerTls::load(settings)?;
        // Both series from the start, so that an alert on errors has a
        // zero to rise from.
        count_reload("ok", 0);
        count_reload("error", 0);
        let interval = Duration::from_millis(settings.reload_interval_ms);
        tracing::info!(
            cert = %settings.cert.display(),
            client_auth = ?settings.client_auth(),
            metrics = settings.metrics,
            "TLS on"
        );
        let watcher = reload::spawn(tls.clone(), interval);
        Ok((tls, watcher))
    }

    /// Whether `/metrics` is served over TLS too.
    pub(crate) fn for_metrics(&self) -> bool {
        self.settings.metrics
    }

    /// The time a client gets to finish its handshake.
    pub(crate) fn handshake_timeout(&self) -> Duration {
        self.settings.handshake_timeout()
    }

    /// The gRPC listener's config for a new connection.
    pub(crate) fn grpc(&self) -> Arc<ServerConfig> {
        self.current().grpc.clone()
    }

    /// `/metrics`' config for a new connection.
    pub(crate) fn metrics(&self) -> Arc<ServerConfig> {
        self.current().metrics.clone()
    }

    fn current(&self) -> Arc<load::Configs> {
        // A poisoned lock still holds a whole config: the writer swaps an
        // `Arc` and cannot panic half-way.
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The files a reload reads.
    fn files(&self) -> Vec<PathBuf> {
        let s = &self.settings;
        [s.cert.clone(), s.key.clone()]
            .into_iter()
            .chain(s.client_ca.clone())
            .collect()
    }

    /// Reads the files again; on success new connections get the new
    /// configs, on failure the old ones stay (logged, counted). `why` is
    /// logged: `changed` or `sighup`.
    pub(crate) fn reload(&self, why: &str) -> bool {
        match load::Configs::load(&self.settings) {
            Ok(configs) => {
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(configs);
                count_reload("ok", 1);
                tracing::info!(why, cert = %self.settings.cert.display(), "TLS files reloaded");
                true
            }
            Err(e) => {
                count_reload("error", 1);
                tracing::warn!(
                    why,
                    key = e.key,
                    file = %e.path.display(),
                    problem = %e.problem,
                    "cannot reload the TLS files; keeping the certificate in use"
                );
                false
            }
        }
    }
}

/// Counts reloads with `result` (rare: the handle is not kept).
fn count_reload(result: &'static str, n: u64) {
    // Handles made before the recorder is installed would record nowhere.
    recorder();
    counter!(TLS_RELOADS_TOTAL, "result" => result).increment(n);
}

/// What a new gRPC connection on a TLS listener turned out to be.
pub(crate) enum Handshake {
    /// A finished TLS handshake, its identity in the connection's info.
    Tls(Box<tokio_rustls::server::TlsStream<LimitedIo>>),
    /// Not TLS, or a failed handshake: answered (if it was a plain-text
    /// gRPC client) and closed.
    Closed,
}

/// The first byte of a TLS record carrying a handshake (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// The first byte of the HTTP/2 preface (`PRI * HTTP/2.0`).
const H2_PREFACE_START: u8 = b'P';

/// Runs a new connection's TLS handshake, within the handshake timeout.
pub(crate) async fn handshake(tls: &ServerTls, io: LimitedIo) -> Handshake {
    let timeout = tls.handshake_timeout();
    let peer = io.remote_addr();
    let work = async {
        let mut first = [0u8; 1];
        match io.peek(&mut first).await {
            Ok(1) => {}
            // Closed before a byte, or reset.
            _ => return Handshake::Closed,
        }
        match first[0] {
            TLS_HANDSHAKE_RECORD => {}
            H2_PREFACE_START => {
                tracing::debug!(
                    ?peer,
                    "plain-text client on the TLS listener; answering UNAVAILABLE"
                );
                plaintext::refuse_plaintext(io, timeout).await;
                return Handshake::Closed;
            }
            other => {
                tracing::debug!(
                    ?peer,
                    first_byte = other,
                    "neither TLS nor HTTP/2 on the TLS listener; closing"
                );
                return Handshake::Closed;
            }
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.grpc());
        match acceptor.accept(io).await {
            Ok(mut stream) => {
                let identity = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(PeerIdentity::from_der);
                stream.get_mut().0.set_peer(identity);
                Handshake::Tls(Box::new(stream))
            }
            Err(e) => {
                tracing::debug!(?peer, error = %e, "TLS handshake failed");
                Handshake::Closed
            }
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(handshake) => handshake,
        Err(_) => {
            tracing::debug!(?peer, "TLS handshake timed out");
            Handshake::Closed
        }
    }
}

#[cfg(test)]
mod tests;
