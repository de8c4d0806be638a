//! HTTP to the upstreams: one reqwest client per model, shared by its
//! calls and probes (HTTP/1.1 with a keep-alive connection pool; rustls
//! with ring, trusting the bundled Mozilla roots and the system's own), and
//! the few requests the backend makes.
//!
//! A request is a future: dropping it (the call was cancelled or ran out
//! of time) drops the connection, which the upstream sees closed at once.
//! `connect_timeout_ms` bounds connecting, `read_timeout_ms` each wait for
//! the next bytes; the caller bounds the whole by the call's deadline.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use rustls::RootCertStore;

/// Most bytes of a whole (non-streaming) answer.
pub(super) const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
/// Most bytes of an error answer kept (for the log).
pub(super) const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// Longest probe (and at least as long as the interval, up to this, so
/// that a slow but healthy upstream is not marked down).
const PROBE_TIMEOUT_MAX: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT_MIN: Duration = Duration::from_secs(1);

/// A model's client and credentials.
pub(super) struct Http {
    /// `None` if the client could not be built (logged at start-up).
    client: Option<reqwest::Client>,
    /// `Bearer <key>`, marked sensitive; never logged.
    authorization: Option<HeaderValue>,
}

/// Why a request failed before an answer, or while reading one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// Could not connect: refused, no route, name not found, connect
    /// timeout, TLS handshake. Nothing reached the upstream's model.
    Connect,
    /// No answer, or no next bytes, within `read_timeout_ms`.
    Timeout,
    /// The exchange broke after it began.
    Transport,
}

impl Failure {
    /// How a reqwest error failed.
    pub(super) fn of(error: &reqwest::Error) -> Failure {
        if error.is_connect() || error.is_builder() {
            Failure::Connect
        } else if error.is_timeout() {
            Failure::Timeout
        } else {
            Failure::Transport
        }
    }
}

impl Http {
    /// The client of one model. `api_key` is sent as `Bearer`; a key that
    /// cannot be a header value (a control character) is not sent, and
    /// said so in the log.
    pub(super) fn new(
        model: &str,
        connect: Duration,
        read: Duration,
        api_key: Option<&str>,
    ) -> Http {
        let client = build(connect, read)
            .inspect_err(|e| {
                tracing::error!(model, error = %e, "cannot build the HTTP client; every call will fail");
            })
            .ok();
        let authorization = api_key.map(str::trim).and_then(|key| {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                .inspect_err(|_| {
                    tracing::error!(
                        model,
                        "the API key is not a valid HTTP header value; it is not sent"
                    );
                })
                .ok()?;
            value.set_sensitive(true);
            Some(value)
        });
        Http {
            client,
            authorization,
        }
    }

    /// Whether an API key is sent.
    pub(super) fn has_key(&self) -> bool {
        self.authorization.is_some()
    }

    fn client(&self) -> Result<&reqwest::Client, Failure> {
        self.client.as_ref().ok_or(Failure::Connect)
    }

    /// Posts a chat completion request; the answer's headers, or why none
    /// came.
    pub(super) async fn post(
        &self,
        url: &str,
        body: Bytes,
    ) -> Result<reqwest::Response, (Failure, Option<reqwest::Error>)> {
        let client = self.client().map_err(|f| (f, None))?;
        let mut request = client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        request
            .send()
            .await
            .map_err(|e| (Failure::of(&e), Some(e.without_url())))
    }

    /// One probe: the status of an answer below 500, or why it failed
    /// (unscrubbed: the caller scrubs it).
    pub(super) async fn probe(&self, url: &str, interval: Duration) -> Result<u16, String> {
        let client = self
            .client()
            .map_err(|_| "the HTTP client could not be built".to_string())?;
        let mut request = client
            .get(url)
            .timeout(interval.clamp(PROBE_TIMEOUT_MIN, PROBE_TIMEOUT_MAX));
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        match request.send().await {
            Ok(response) if response.status().as_u16() < 500 => Ok(response.status().as_u16()),
            Ok(response) => Err(format!("the probe got HTTP {}", response.status().as_u16())),
            Err(error) => Err(format!("the probe failed: {}", crate::error::chain(&error))),
        }
    }
}

/// Whether an answer of `status` may be tried on another upstream: the
/// upstream said it did not take the request (503), or asked to be given
/// time (429 with `Retry-After`).
pub(super) fn may_retry(response: &reqwest::Response) -> bool {
    match response.status().as_u16() {
        503 => true,
        429 => response.headers().contains_key(RETRY_AFTER),
        _ => false,
    }
}

/// Up to `max` bytes of a body; `Ok(None)` if it is longer.
pub(super) async fn read_body(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Option<Bytes>, reqwest::Error> {
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.freeze()))
}

/// The start of an error answer, for the log: what could be read of its
/// first [`MAX_ERROR_BODY_BYTES`].
pub(super) async fn error_body(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(MAX_ERROR_BODY_BYTES);
    String::from_utf8_lossy(&body).into_owned()
}

fn build(connect: Duration, read: Duration) -> Result<reqwest::Client, String> {
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots())
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(connect)
        .read_timeout(read)
        .user_agent(concat!("infergate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| crate::error::chain(&e))
}

/// The roots every https upstream is checked against, loaded once per
/// process: Mozilla's (bundled, so a bare container works) and the
/// system's (so a private CA installed on the machine works).
fn roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let system = rustls_native_certs::load_native_certs();
            for error in &system.errors {
                tracing::debug!(%error, "cannot read some of the system's certificates");
            }
            let (added, ignored) = roots.add_parsable_certificates(system.certs);
            tracing::debug!(added, ignored, "the system's root certificates");
            Arc::new(roots)
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_roots_are_the_bundled_ones_and_the_systems() {
        let roots = roots();
        let system = rustls_native_certs::load_native_certs().certs.len();
        assert!(
            roots.len() >= webpki_roots::TLS_SERVER_ROOTS.len(),
            "{}",
            roots.len()
        );
        if system > 0 {
            assert!(roots.len() > webpki_roots::TLS_SERVER_ROOTS.len());
        }
    }

    #[test]
    fn a_client_is_built_and_keys_are_sensitive() {
        let http = Http::new(
            "m",
            Duration::from_secs(1),
            Duration::from_secs(1),
            Some(" sk-1\n"),
        );
        assert!(http.client.is_some());
        let authorization = http.authorization.expect("a key");
        assert!(authorization.is_sensitive());
        assert_eq!(authorization, "Bearer sk-1");
        let bad = Http::new(
            "m",
            Duration::from_secs(1),
            Duration::from_secs(1),
            Some("a\u{7}b"),
        );
        assert!(bad.authorization.is_none());
    }
}
