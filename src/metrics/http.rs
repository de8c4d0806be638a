//! The `/metrics` endpoint: a small HTTP/1.1 server on its own address.
//!
//! Rendering runs on tokio's blocking pool (as the exporter's own listener
//! does), so a scrape never holds up a runtime thread that serves calls; no
//! backend call uses that pool, so it is never saturated by them.
//!
//! Its limits ([`MetricsLimits`]), so that nobody reaching this port can
//! hold the process's file descriptors: a connection cap (when full, a new
//! connection takes the place of the oldest one that never sent a whole
//! request head, or is closed at once), hyper's header read timeout (a
//! slowloris sending a byte a second is closed when it runs out, and so is
//! an idle keep-alive connection), and a cap on any connection's life (a
//! client that reads its answer slowly, or sends requests forever).
//!
//! With `[server.tls] metrics = true` it is served over TLS (ALPN
//! `http/1.1`), with the gRPC listener's certificate, client-certificate
//! policy and reloads; the handshake runs in the connection's own task,
//! under the header timeout.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{
    DEFAULT_METRICS_CONNECTION_TIMEOUT_MS, DEFAULT_METRICS_HEADER_TIMEOUT_MS,
    DEFAULT_METRICS_MAX_CONNECTIONS, ServerConfig,
};
use crate::connection::tls::ServerTls;
use crate::connection::{self, ConnectionCap, Slot, is_connection_error};
use crate::metrics::live::StatsSource;
use crate::metrics::{live, recorder};

/// The Prometheus text exposition format.
const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often the recorder's upkeep runs (it drains histogram buffers).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// How long a connection past its life gets to finish the answer it is
/// sending before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The limits of the `/metrics` listener; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct MetricsLimits {
    /// Connections open at once; when full, a new one takes the place of
    /// the oldest that never sent a whole request head, or is closed.
    pub max_connections: usize,
    /// Time to send a request head, from the connection's start or the end
    /// of its last answer.
    pub header_timeout: Duration,
    /// Longest life of a connection: then it is closed once its answer in
    /// progress is sent, or [`CLOSE_GRACE`] later at the latest.
    pub connection_timeout: Duration,
}

impl MetricsLimits {
    /// The `metrics_*` limits of the `[server]` table.
    pub fn from_config(config: &ServerConfig) -> MetricsLimits {
        MetricsLimits {
            max_connections: config.metrics_max_connections,
            header_timeout: Duration::from_millis(config.metrics_header_timeout_ms),
            connection_timeout: Duration::from_millis(config.metrics_connection_timeout_ms),
        }
    }
}

impl Default for MetricsLimits {
    fn default() -> Self {
        MetricsLimits {
            max_connections: DEFAULT_METRICS_MAX_CONNECTIONS,
            header_timeout: Duration::from_millis(DEFAULT_METRICS_HEADER_TIMEOUT_MS),
            connection_timeout: Duration::from_millis(DEFAULT_METRICS_CONNECTION_TIMEOUT_MS),
        }
    }
}

/// Serves `/metrics` for `gateway` on `listener` until `stop` is cancelled,
/// with the default limits.
pub async fn serve(listener: TcpListener, gateway: Arc<dyn StatsSource>, stop: CancellationToken) {
    serve_with(listener, gateway, MetricsLimits::default(), stop).await;
}

/// Serves `/metrics` for `gateway` on `listener`, within `limits`, until
/// `stop` is cancelled.
pub async fn serve_with(
    listener: TcpListener,
    gateway: Arc<dyn StatsSource>,
    limits: MetricsLimits,
    stop: CancellationToken,
) {
    serve_tls(listener, gateway, limits, None, stop).await;
}

/// [`serve_with`], over TLS when `tls` is given.
pub(crate) async fn serve_tls(
    listener: TcpListener,
    gateway: Arc<dyn StatsSource>,
    limits: MetricsLimits,
    tls: Option<Arc<ServerTls>>,
    stop: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, max_connections = limits.max_connections, tls = tls.is_some(), "serving Prometheus metrics on /metrics");
    }
    let cap = ConnectionCap::new(connection::METRICS, limits.max_connections);
    let upkeep = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => recorder().run_upkeep(),
                    () = stop.cancelled() => break,
                }
            }
        }
    });
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: wait, then go on.
                    tracing::warn!(error = %e, "metrics listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let Some(slot) = cap.admit() else {
            // Full of connections that have sent requests: closed at once,
            // counted by the cap.
            drop(stream);
            continue;
        };
        let gateway = gateway.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let Some(tls) = tls else {
                return serve_connection(stream, slot, gateway, limits, stop).await;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.metrics());
            // The handshake counts as sending the request head.
            match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => serve_connection(stream, slot, gateway, limits, stop).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics TLS handshake failed"),
                Err(_) => slot.closed_by_limit("header_timeout"),
            }
        });
    }
    upkeep.abort();
}

/// Serves one connection within `limits`, holding its `slot`.
async fn serve_connection<I>(
    io: I,
    mut slot: Slot,
    gateway: Arc<dyn StatsSource>,
    limits: MetricsLimits,
    stop: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let starter = slot.starter();
    let service = service_fn(move |request| {
        // A whole request head came: the connection keeps its place.
        starter.mark_started();
        respond(request, gateway.clone())
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => Some(result),
        () = tokio::time::sleep(limits.connection_timeout) => {
            slot.closed_by_limit("connection_timeout");
            connection.as_mut().graceful_shutdown();
            tokio::time::timeout(CLOSE_GRACE, connection.as_mut()).await.ok()
        }
        // A newcomer took the place of this connection, which never
        // sent a whole request head (e.g. a slowloris).
        () = slot.evicted() => None,
        () = stop.cancelled() => None,
    };
    if let Some(Err(e)) = result {
        if e.is_timeout() {
            slot.closed_by_limit("header_timeout");
        }
        tracing::debug!(error = %e, "metrics connection ended with an error");
    }
    drop(slot);
}

async fn respond(
    request: Request<Incoming>,
    gateway: Arc<dyn StatsSource>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n"));
    }
    match request.uri().path() {
        "/metrics" => {
            let rendered = tokio::task::spawn_blocking(move || render(gateway.as_ref())).await;
            Ok(match rendered {
                Ok(text) => {
                    let mut response = Response::new(Full::new(Bytes::from(text)));
                    response
                        .headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_TEXT));
                    response
                }
                Err(e) => {
                    tracing::error!(error = %e, "rendering metrics failed");
                    plain(StatusCode::INTERNAL_SERVER_ERROR, "rendering failed\n")
                }
            })
        }
        "/" => Ok(plain(StatusCode::OK, "infergate: metrics at /metrics\n")),
        _ => Ok(plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        )),
    }
}

/// The whole scrape: recorded events, then live pool state.
pub fn render(source: &dyn StatsSource) -> String {
    let mut text = recorder().render();
    live::render(source, &mut text);
    text
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}
