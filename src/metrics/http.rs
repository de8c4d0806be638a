//! The `/metrics` endpoint: a small HTTP/1.1 server on its own address.
//!
//! Rendering runs on tokio's blocking pool (as the exporter's own listener
//! does), so a scrape never holds up a runtime thread that serves calls; no
//! backend call uses that pool, so it is never saturated by them.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::live::StatsSource;
use crate::metrics::{live, recorder};

/// The Prometheus text exposition format.
const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often the recorder's upkeep runs (it drains histogram buffers).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Serves `/metrics` for the pools of `gateway` on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, gateway: Arc<dyn StatsSource>, stop: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving Prometheus metrics on /metrics");
    }
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
                Err(e) => {
                    // Out of file descriptors and the like: wait, then go on.
                    tracing::warn!(error = %e, "metrics listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let gateway = gateway.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| respond(request, gateway.clone()));
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "metrics connection ended with an error");
                    }
                }
                () = stop.cancelled() => {}
            }
        });
    }
    upkeep.abort();
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
