//! The answer to a plain-text gRPC client on a TLS listener: instead of a
//! dropped connection (which clients report as a bare "connection reset"
//! or "h2 protocol error"), every call it sends gets a trailers-only gRPC
//! response, UNAVAILABLE with a message saying that the listener requires
//! TLS; then the connection is closed.
//!
//! It is a minimal HTTP/2 server (hyper's, which tonic uses anyway) on the
//! connection, bounded by the handshake timeout like a TLS handshake.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;

/// The `grpc-message` a plain-text client gets.
pub(crate) const PLAINTEXT_MESSAGE: &str =
    "this listener requires TLS; connect with TLS (grpcurl: -cacert instead of -plaintext)";

/// gRPC's UNAVAILABLE: the client may retry, with TLS.
const UNAVAILABLE: &str = "14";

/// How long the answer may take to reach the client once sent.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Answers every call on `io` (a connection that began with the HTTP/2
/// preface) with UNAVAILABLE, then closes it; gives up after `within`.
pub(crate) async fn refuse_plaintext<I>(io: I, within: Duration)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let answered = Arc::new(Notify::new());
    let service = service_fn({
        let answered = answered.clone();
        move |_request: Request<Incoming>| {
            answered.notify_one();
            async { Ok::<_, Infallible>(unavailable()) }
        }
    });
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let served = async {
        tokio::select! {
            _ = connection.as_mut() => return,
            () = answered.notified() => {}
        }
        // GOAWAY: the calls already sent are answered, then it closes.
        connection.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(CLOSE_GRACE, connection.as_mut()).await;
    };
    if tokio::time::timeout(within, served).await.is_err() {
        tracing::debug!("plain-text client on the TLS listener sent no call in time");
    }
}

/// A trailers-only gRPC response: UNAVAILABLE, in the headers.
fn unavailable() -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from_static(UNAVAILABLE));
    headers.insert(
        "grpc-message",
        // Percent-encoding leaves these characters as they are.
        HeaderValue::from_static(PLAINTEXT_MESSAGE),
    );
    response
}
