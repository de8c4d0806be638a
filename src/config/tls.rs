//! The `[server.tls]` table: TLS (and mTLS) on the gRPC listener, and
//! optionally on `/metrics`. What a file name cannot show (the PEM inside,
//! whether the key fits the certificate) is checked by
//! [`crate::connection::tls`] when the files are loaded: by
//! [`Config::from_file`](super::Config::from_file), so `check-config`
//! reports it, and again at every start and reload.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::validate::in_range;

/// Default time a TLS client gets to finish its handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Longest `handshake_timeout_ms`: one minute.
pub const MAX_HANDSHAKE_TIMEOUT_MS: u64 = 60_000;
/// Default interval between checks of the certificate files for changes.
pub const DEFAULT_RELOAD_INTERVAL_MS: u64 = 1_000;
/// Shortest `reload_interval_ms` (other than 0, which turns polling off):
/// each check is a few `stat` calls, but not a busy loop.
pub const MIN_RELOAD_INTERVAL_MS: u64 = 100;
/// Longest `reload_interval_ms`: one day.
pub const MAX_RELOAD_INTERVAL_MS: u64 = 86_400_000;

/// Whether a client must present a certificate (with `client_ca` set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// A client may connect without one; one it presents must verify.
    Optional,
    /// A client without a certificate that verifies is refused in the
    /// handshake.
    Required,
}

/// The `[server.tls]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The private key of `cert` (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
    /// CA certificates (PEM bundle) that client certificates must chain
    /// to; set, the listener asks clients for a certificate (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// `required` (the default with `client_ca`) or `optional`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
    /// Time from accept to a finished handshake; a client slower than
    /// that (or one that never speaks) is closed.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// How often the files are checked for changes and reloaded (0: only
    /// on SIGHUP).
    #[serde(default = "default_reload_interval_ms")]
    pub reload_interval_ms: u64,
    /// Serve `/metrics` over TLS too, with the same certificate and the
    /// same client-certificate policy.
    #[serde(default)]
    pub metrics: bool,
}

impl TlsConfig {
    /// A table with these files and every default.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> TlsConfig {
        TlsConfig {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
            client_auth: None,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            reload_interval_ms: DEFAULT_RELOAD_INTERVAL_MS,
            metrics: false,
        }
    }

    /// The client-certificate policy, `None` without `client_ca`.
    pub fn client_auth(&self) -> Option<ClientAuth> {
        self.client_ca
            .as_ref()
            .map(|_| self.client_auth.unwrap_or(ClientAuth::Required))
    }

    /// The handshake deadline as a duration.
    pub fn handshake_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.handshake_timeout_ms)
    }

    /// Joins relative file names to `dir`, the config file's directory.
    pub(crate) fn resolve_paths(&mut self, dir: &Path) {
        for path in [&mut self.cert, &mut self.key]
            .into_iter()
            .chain(self.client_ca.as_mut())
        {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        }
    }

    /// Checks what the types cannot; returns the key (under
    /// `server.tls.`) at fault and what is wrong.
    pub(crate) fn validate(&self) -> Result<(), (String, String)> {
        let key = |field: &str| format!("server.tls.{field}");
        for (field, path) in [("cert", &self.cert), ("key", &self.key)]
            .into_iter()
            .chain(self.client_ca.as_ref().map(|p| ("client_ca", p)))
        {
            if path.as_os_str().is_empty() {
                return Err((key(field), "is empty; name a PEM file".into()));
            }
        }
        if self.client_auth.is_some() && self.client_ca.is_none() {
            return Err((
                key("client_auth"),
                "is set but client_ca is not: name the CA bundle that client certificates must chain to".into(),
            ));
        }
        in_range(
            &key("handshake_timeout_ms"),
            self.handshake_timeout_ms,
            1,
            MAX_HANDSHAKE_TIMEOUT_MS,
        )?;
        if self.reload_interval_ms != 0 {
            in_range(
                &key("reload_interval_ms"),
                self.reload_interval_ms,
                MIN_RELOAD_INTERVAL_MS,
                MAX_RELOAD_INTERVAL_MS,
            )
            .map_err(|(k, m)| (k, format!("{m} (or 0: reload on SIGHUP only)")))?;
        }
        Ok(())
    }
}

fn default_handshake_timeout_ms() -> u64 {
    DEFAULT_HANDSHAKE_TIMEOUT_MS
}
fn default_reload_interval_ms() -> u64 {
    DEFAULT_RELOAD_INTERVAL_MS
}
