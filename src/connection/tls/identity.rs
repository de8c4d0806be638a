//! Who is calling, by their client certificate: the subject of the leaf
//! certificate a client presented in an mTLS handshake (already verified
//! against `client_ca` by rustls), read once per connection.
//!
//! The subject is parsed with RustCrypto's `x509-cert` (DER types only, no
//! parser combinators, no date library): rustls verifies certificates with
//! webpki, which does not expose the subject.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use x509_cert::Certificate;
use x509_cert::der::Decode;

use crate::connection::activity::ConnectionInfo;

/// The identity of the client of an mTLS connection, from its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerIdentity {
    /// The certificate's subject as an RFC 4514 string, most specific part
    /// first: `CN=alice,O=Acme`.
    pub(crate) subject: Arc<str>,
    /// The subject's (first) common name, if it has one that is a string.
    pub(crate) common_name: Option<Arc<str>>,
}

impl PeerIdentity {
    /// The identity in a DER certificate, or `None` if it cannot be parsed
    /// (rustls has verified it, so that would be a certificate webpki
    /// accepts and x509-cert does not; the call then has no identity).
    pub(crate) fn from_der(cert: &CertificateDer<'_>) -> Option<PeerIdentity> {
        let cert = match Certificate::from_der(cert.as_ref()) {
            Ok(cert) => cert,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the subject of a verified client certificate");
                return None;
            }
        };
        let subject = cert.tbs_certificate().subject();
        let common_name = subject
            .common_name()
            .ok()
            .flatten()
            .map(|cn| Arc::from(cn.value().as_ref()));
        Some(PeerIdentity {
            subject: Arc::from(subject.to_string()),
            common_name,
        })
    }
}

/// The client-certificate identity of the connection `request` came on:
/// `None` on plain-text connections, and on TLS connections whose client
/// presented no certificate (`client_auth = "optional"`) or whose subject
/// could not be read.
pub(crate) fn peer_identity<T>(request: &tonic::Request<T>) -> Option<PeerIdentity> {
    request
        .extensions()
        .get::<ConnectionInfo>()
        .and_then(|info| info.peer.clone())
}
