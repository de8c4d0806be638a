//! Reading the PEM files of `[server.tls]` into rustls server configs, with
//! errors that name the key, the file and what is wrong with it.
//!
//! Everything is built with `rustls::crypto::ring::default_provider()`
//! passed explicitly: no process-wide provider is installed, so an
//! embedding program keeps its own choice.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use crate::config::{ClientAuth, TlsConfig};

/// ALPN of the gRPC listener: HTTP/2 only (gRPC needs it).
pub(crate) const ALPN_H2: &[u8] = b"h2";
/// ALPN of `/metrics`: HTTP/1.1, what hyper serves there.
pub(crate) const ALPN_HTTP1: &[u8] = b"http/1.1";

/// A TLS file that cannot be used: its `server.tls` key, its path, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFileError {
    /// `server.tls.cert`, `server.tls.key` or `server.tls.client_ca`.
    pub key: &'static str,
    /// The file, as configured (resolved against the config's directory).
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.key, self.path.display(), self.problem)
    }
}

impl std::error::Error for TlsFileError {}

const CERT_KEY: &str = "server.tls.cert";
const KEY_KEY: &str = "server.tls.key";
const CLIENT_CA_KEY: &str = "server.tls.client_ca";

/// The server configs of both listeners, built from the files of
/// `[server.tls]`; swapped whole on a reload.
pub(crate) struct Configs {
    /// The gRPC listener's: ALPN `h2`.
    pub(crate) grpc: Arc<ServerConfig>,
    /// `/metrics`': ALPN `http/1.1`, the same certificate and policy.
    pub(crate) metrics: Arc<ServerConfig>,
}

/// The crypto of every TLS config here: ring, explicitly.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Configs {
    /// Reads and checks the certificate, key and client CAs of `config`,
    /// and builds both listeners' configs from them.
    pub(crate) fn load(config: &TlsConfig) -> Result<Configs, TlsFileError> {
        let provider = provider();
        let certified = Arc::new(load_certified_key(config, &provider)?);
        let verifier = match (&config.client_ca, config.client_auth()) {
            (Some(path), Some(auth)) => {
                let roots = Arc::new(read_roots(path)?);
                let builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
                let builder = match auth {
                    ClientAuth::Required => builder,
                    ClientAuth::Optional => builder.allow_unauthenticated(),
                };
                Some(builder.build().map_err(|e| TlsFileError {
                    key: CLIENT_CA_KEY,
                    path: path.clone(),
                    problem: format!("cannot verify client certificates with it: {e}"),
                })?)
            }
            _ => None,
        };
        let build = |alpn: &[u8]| -> Result<Arc<ServerConfig>, TlsFileError> {
            let builder = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsFileError {
                    key: CERT_KEY,
                    path: config.cert.clone(),
                    problem: format!("no TLS version is available: {e}"),
                })?;
            let builder = match &verifier {
                Some(verifier) => builder.with_client_cert_verifier(verifier.clone()),
                None => builder.with_no_client_auth(),
            };
            let resolver = rustls::sign::SingleCertAndKey::from(certified.clone());
            let mut server = builder.with_cert_resolver(Arc::new(resolver));
            server.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(server))
        };
        Ok(Configs {
            grpc: build(ALPN_H2)?,
            metrics: build(ALPN_HTTP1)?,
        })
    }
}

/// The certificate chain and its key, checked to belong together.
fn load_certified_key(
    config: &TlsConfig,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsFileError> {
    let chain = read_certs(CERT_KEY, &config.cert)?;
    let key = read_key(&config.key)?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsFileError {
            key: KEY_KEY,
            path: config.key.clone(),
            problem: format!(
                "unsupported private key ({e}); use an RSA (2048 bits or more), ECDSA P-256/P-384 or Ed25519 key"
            ),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsFileError {
                key: KEY_KEY,
                path: config.key.clone(),
                problem: format!(
                    "the key does not match the certificate in {}",
                    config.cert.display()
                ),
            })
        }
        Err(e) => Err(TlsFileError {
            key: CERT_KEY,
            path: config.cert.clone(),
            problem: format!("the first certificate cannot be parsed: {e}"),
        }),
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|e| TlsFileError {
        key,
        path: path.to_path_buf(),
        problem: format!("cannot read the file: {e}"),
    })
}

fn pem_problem(key: &'static str, path: &Path, e: pem::Error) -> TlsFileError {
    TlsFileError {
        key,
        path: path.to_path_buf(),
        problem: format!("not valid PEM: {e}"),
    }
}

/// Every `CERTIFICATE` block of a PEM file, at least one.
fn read_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let bytes = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_problem(key, path, e))?;
    if certs.is_empty() {
        return Err(TlsFileError {
            key,
            path: path.to_path_buf(),
            problem: "no certificate found (expected a PEM \"BEGIN CERTIFICATE\" block)".into(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let bytes = read(KEY_KEY, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsFileError {
            key: KEY_KEY,
            path: path.to_path_buf(),
            problem: "no private key found (expected a PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" block)".into(),
        },
        e => pem_problem(KEY_KEY, path, e),
    })
}

/// The CA certificates client certificates must chain to.
fn read_roots(path: &Path) -> Result<RootCertStore, TlsFileError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(CLIENT_CA_KEY, path)? {
        roots.add(cert).map_err(|e| TlsFileError {
            key: CLIENT_CA_KEY,
            path: path.to_path_buf(),
            problem: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}
