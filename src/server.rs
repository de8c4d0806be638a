//! Runs the gRPC server: the inference service, health, reflection, and the
//! shutdown sequence.
//!
//! [`run`] is the seam tests use: it takes a bound listener, so a test binds
//! `127.0.0.1:0` and learns the port before the server starts.
//!
//! Shutdown order, when the `shutdown` future resolves: health turns
//! NOT_SERVING; the gateway stops admitting (new calls get UNAVAILABLE);
//! queued and running calls get `shutdown_grace_seconds` to finish; if the
//! grace runs out, what is left is cut off and logged; then the listener
//! closes and connections get a short moment to flush their last answers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::auth::Auth;
use crate::config::ReflectionAccess;
use crate::config::{Config, ServerConfig};
use crate::connection::activity::{CountCallsLayer, IdleTimeouts};
use crate::connection::incoming::Incoming;
use crate::connection::tls::ServerTls;
use crate::connection::{self, ConnectionCap, fd_limit};
use crate::deadline::{Arrival, ClientTimeout};
use crate::gateway::Gateway;
use crate::metrics;
use crate::proto;
use crate::proto::inference_server::InferenceServer;
use crate::request::parse_grpc_timeout;
use crate::service::InferenceService;
use crate::status_fix::FixStatus;
use tonic::service::interceptor::InterceptedService;

/// How long connections get, after the calls have drained, to deliver their
/// last answers before the server stops waiting for them (health Watch
/// streams never end on their own).
const CONNECTION_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// How long calls cut off at the end of the grace get to send their error.
const ABORT_WAIT: Duration = Duration::from_secs(1);

/// The least time worker threads get to end after the drain (a cut-off
/// call's backend needs a moment to notice and stop).
const WORKER_EXIT_WAIT: Duration = Duration::from_secs(2);

/// How often models' health is brought in step with their pools.
const HEALTH_POLL: Duration = Duration::from_secs(1);

/// HTTP/2 pings keep idle client connections from being dropped by
/// middleboxes, and find dead peers.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// A peer that has not answered a ping this long is dead: its connection
/// is closed and its calls cancelled (so at most interval + timeout, 50 s,
/// after a peer vanishes without a FIN).
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Bytes of HTTP/2 connection window per stream a connection may open.
/// Besides flow control, h2 derives from the connection window (half of it)
/// its budget for small DATA frames received but not yet read, and closes a
/// connection that exceeds it (ENHANCE_YOUR_CALM). Every unary gRPC call
/// sends one small DATA frame that waits until its handler runs, costing
/// about 256 bytes of that budget, so the window must cover a burst of
/// `max_concurrent_streams` new calls: with the default 65,535 bytes, a
/// client that opens ~150 calls at once is cut off.
const WINDOW_BYTES_PER_STREAM: u32 = 512;
/// The connection window never goes below HTTP/2's usual 1 MiB.
const MIN_CONNECTION_WINDOW: u32 = 1024 * 1024;

fn connection_window(max_concurrent_streams: u32) -> u32 {
    max_concurrent_streams
        .saturating_mul(WINDOW_BYTES_PER_STREAM)
        .max(MIN_CONNECTION_WINDOW)
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding or accepting failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Starting a model's worker threads failed.
    #[error("cannot start the worker pools: {0}")]
    Pools(std::io::Error),
    /// The reflection service could not read the descriptors.
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("gRPC transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A file of `[server.tls]` cannot be used.
    #[error("{0}")]
    Tls(#[from] TlsFileError),
}

pub use crate::connection::tls::TlsFileError;

/// Checks the files of `[server.tls]`, if any (readable, PEM, the key fits
/// the certificate): what `check-config` and `serve` report before
/// anything starts. `serve` loads them again when it starts.
pub fn check_tls_files(config: &ServerConfig) -> Result<(), TlsFileError> {
    match &config.tls {
        Some(tls) => ServerTls::load(tls).map(drop),
        None => Ok(()),
    }
}

/// Binds `config.server.listen` and `metrics_listen`, starts the models,
/// and serves gRPC and `/metrics` until `shutdown` resolves.
pub async fn serve(config: &Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let server_config = fit_fd_limit(config);
    let listener = bind(config.server.listen).await?;
    let metrics_listener = bind(config.server.metrics_listen).await?;
    // Loaded before the models start: a bad file is reported at once.
    let (tls, _reload) = start_tls(&server_config)?;
    let gateway = Arc::new(Gateway::from_config(config).map_err(ServeError::Pools)?);
    let stop_metrics = CancellationToken::new();
    let metrics = tokio::spawn(metrics::http::serve_tls(
        metrics_listener,
        gateway.clone(),
        metrics::http::MetricsLimits::from_config(&config.server),
        tls.clone().filter(|tls| tls.for_metrics()),
        stop_metrics.clone(),
    ));
    let result = serve_grpc(listener, &server_config, gateway, tls, shutdown).await;
    // Metrics stay up through the drain, so the drain can be watched.
    stop_metrics.cancel();
    let _ = metrics.await;
    result
}

/// Raises the soft fd limit to the hard one, and returns the server config
/// with `max_connections` lowered, if need be, to what the limit leaves
/// after `/metrics` and the worker processes: better a refused connection
/// than an `accept` failing with EMFILE for both listeners and the pools.
fn fit_fd_limit(config: &Config) -> ServerConfig {
    let mut server = config.server.clone();
    let limit = match fd_limit::raise() {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open file limit");
            return server;
        }
    };
    let workers = config.models.iter().map(|m| m.workers).sum();
    let budget =
        fd_limit::grpc_connection_budget(limit.soft, server.metrics_max_connections, workers);
    tracing::info!(
        soft = limit.soft,
        hard = limit.hard,
        max_connections = server.max_connections,
        "open file limit"
    );
    if server.max_connections > budget {
        tracing::warn!(
            configured = server.max_connections,
            allowed = budget,
            fd_limit = limit.soft,
            "server.max_connections is more than the open file limit leaves room for; lowering it"
        );
        server.max_connections = budget;
    }
    server
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// The TLS configs of `[server.tls]`, if any, and their reload task (which
/// ends when the handle drops).
type StartedTls = (Option<Arc<ServerTls>>, Option<AbortOnDropHandle<()>>);

fn start_tls(config: &ServerConfig) -> Result<StartedTls, ServeError> {
    Ok(match &config.tls {
        Some(settings) => {
            let (tls, reload) = ServerTls::start(settings)?;
            (Some(tls), Some(reload))
        }
        None => (None, None),
    })
}

/// Serves the gateway on `listener` until `shutdown` resolves, then drains.
/// With `[server.tls]`, over TLS, its files reloaded while it runs.
pub async fn run(
    listener: TcpListener,
    config: &ServerConfig,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (tls, _reload) = start_tls(config)?;
    serve_grpc(listener, config, gateway, tls, shutdown).await
}

async fn serve_grpc(
    listener: TcpListener,
    config: &ServerConfig,
    gateway: Arc<Gateway>,
    tls: Option<Arc<ServerTls>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, models = gateway.models().len(), tls = tls.is_some(), "serving gRPC");
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, &gateway, ServingStatus::Serving).await;

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // `[auth] reflection = "key"`: reflection needs a valid key too.
    let guard = reflection_guard(gateway.auth().cloned());
    let reflection_v1 = InterceptedService::new(reflection().build_v1()?, guard.clone());
    let reflection_v1alpha = InterceptedService::new(reflection().build_v1alpha()?, guard);

    let inference = InferenceServer::new(InferenceService::new(gateway.clone()))
        .max_decoding_message_size(config.max_message_bytes);

    let stop = CancellationToken::new();
    // Every limit of the gRPC listener, in one place:
    // - `max_connections`: so a flood costs a bounded number of fds and
    //   memory. When full, a new connection takes the place of the oldest
    //   one that has not started a call (a flood of silent connections
    //   cannot lock clients out); when all have, it is accepted and closed
    //   at once (infergate_connections_refused_total), so its client fails
    //   fast instead of hanging in the backlog;
    // - idle and first-call timeouts: a connection with no call in flight
    //   (or that never starts one: silent, preface-only) is closed, so idle
    //   connections cannot pile up to the cap (Incoming's IO counts calls,
    //   as CountCallsLayer reports them);
    // - HTTP/2 keepalive: a peer that stops answering pings is dropped,
    //   with its calls, instead of holding them until TCP gives up;
    // - max_concurrent_streams and the connection window bound what one
    //   connection can ask for (see `connection_window`);
    // - no max_connection_age: it would cut off long streaming calls.
    // No tower limits on calls: admission is per model, in the pools, where
    // a refusal can name the model and count in its metrics. A server-wide
    // one would also throttle health checks and reflection.
    let cap = ConnectionCap::new(connection::GRPC, config.max_connections);
    // Ends with `run`, however it returns.
    let _trim = AbortOnDropHandle::new(tokio::spawn(connection::memory::trim_after_floods(
        cap.clone(),
    )));
    let incoming = Incoming::new(
        listener,
        cap,
        IdleTimeouts {
            idle: config.idle_timeout(),
            first_call: config.first_call_timeout(),
        },
        tls,
    );
    let server = transport(config)
        // Outermost: stamps each request's arrival before its body is read,
        // the instant its deadline counts from (as the client's does).
        .layer(tower::util::MapRequestLayer::new(stamp_arrival))
        // Outermost, so every call (health and reflection too) counts as
        // activity on its connection, until its response body ends.
        .layer(CountCallsLayer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(FixStatus::new(inference))
        .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
    tokio::pin!(server);

    let watch_health = tokio::spawn(watch_models(health.clone(), gateway.clone(), stop.clone()));
    // Ends with `run`, however it returns.
    let _watch_keys = gateway
        .auth()
        .map(|auth| AbortOnDropHandle::new(tokio::spawn(auth.clone().watch(stop.clone()))));
    tokio::select! {
        result = &mut server => return result.map_err(ServeError::from),
        () = shutdown => {}
    }
    watch_health.abort();

    tracing::info!(
        in_flight = gateway.in_flight(),
        grace_seconds = config.shutdown_grace_seconds,
        "shutdown requested: refusing new calls and draining"
    );
    gateway.begin_shutdown();
    set_health(&health, &gateway, ServingStatus::NotServing).await;

    let grace_ends = std::time::Instant::now() + config.shutdown_grace();
    let drain = async {
        if tokio::time::timeout(config.shutdown_grace(), gateway.drained())
            .await
            .is_err()
        {
            let (queued, running) = gateway.abort();
            tracing::warn!(
                queued,
                running,
                "shutdown grace ran out: cut off {queued} queued and {running} running calls"
            );
            let _ = tokio::time::timeout(ABORT_WAIT, gateway.drained()).await;
        } else {
            tracing::info!("all calls finished");
        }
        // The workers end once their calls do; wait for them (and so for
        // their backends and worker processes) within the grace.
        let until = grace_ends.max(std::time::Instant::now() + WORKER_EXIT_WAIT);
        let alive = gateway.workers_stopped(until).await;
        if alive > 0 {
            tracing::warn!(alive, "worker threads still in a backend call at exit");
        }
        stop.cancel();
    };
    tokio::pin!(drain);
    // Keep serving while draining: the calls being drained need their
    // connections.
    tokio::select! {
        result = &mut server => return result.map_err(ServeError::from),
        () = &mut drain => {}
    }
    match tokio::time::timeout(CONNECTION_CLOSE_WAIT, &mut server).await {
        Ok(result) => result.map_err(ServeError::from),
        Err(_) => {
            tracing::debug!("connections still open after the drain (e.g. health Watch); closing");
            Ok(())
        }
    }
}

/// The HTTP/2 settings of the gRPC listener (streams per connection, the
/// connection window, keepalive), without layers or services. Public so
/// that the bare tonic baseline of the benchmarks (`bench/baselines`)
/// serves with exactly these settings: a comparison then measures the
/// gateway, not a difference in transport settings.
pub fn transport(config: &ServerConfig) -> Server {
    Server::builder()
        .max_concurrent_streams(config.max_concurrent_streams)
        .initial_connection_window_size(connection_window(config.max_concurrent_streams))
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
}

/// Puts the request's [`Arrival`] in its extensions, and moves its
/// `grpc-timeout` there too ([`ClientTimeout`]): the handlers' deadlines
/// enforce it, and no timer of tonic's races them.
fn stamp_arrival<B>(
    mut request: tonic::codegen::http::Request<B>,
) -> tonic::codegen::http::Request<B> {
    let arrival = Arrival(std::time::Instant::now());
    let timeout = request
        .headers_mut()
        .remove(GRPC_TIMEOUT)
        .and_then(|value| value.to_str().ok().and_then(parse_grpc_timeout));
    let extensions = request.extensions_mut();
    extensions.insert(arrival);
    extensions.insert(ClientTimeout(timeout));
    request
}

/// The header of a client's deadline.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The interceptor in front of reflection: lets every call through unless
/// `[auth] reflection = "key"`, then only calls with a valid key.
fn reflection_guard(
    auth: Option<Arc<Auth>>,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |request: tonic::Request<()>| match &auth {
        Some(auth) if auth.reflection() == ReflectionAccess::Key => auth
            .authenticate(request.metadata())
            .map(|_| request)
            .map_err(|failure| failure.to_status("-")),
        _ => Ok(request),
    }
}

/// Keeps each model's health in step with its pool: NOT_SERVING while no
/// worker has a backend up (e.g. its worker processes keep failing to
/// start), SERVING again once one has. The overall status stays SERVING:
/// the server itself is up.
async fn watch_models(health: HealthReporter, gateway: Arc<Gateway>, stop: CancellationToken) {
    let mut serving: Vec<bool> = vec![true; gateway.models().len()];
    let mut tick = tokio::time::interval(HEALTH_POLL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        if gateway.is_shutting_down() {
            return;
        }
        for (model, was) in gateway.models().iter().zip(serving.iter_mut()) {
            let now = model.stats().ready > 0;
            if now != *was {
                *was = now;
                let status = if now {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                tracing::warn!(model = %model.config.name, serving = now, "model health changed");
                health.set_service_status(&model.config.name, status).await;
            }
        }
    }
}

/// Sets the overall status, the service's, and every model's.
async fn set_health(health: &HealthReporter, gateway: &Gateway, status: ServingStatus) {
    health.set_service_status("", status).await;
    health
        .set_service_status(
            <InferenceServer<InferenceService> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
    for model in gateway.models() {
        health.set_service_status(&model.config.name, status).await;
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received SIGINT"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outermost_layer_takes_the_client_timeout_out_of_the_headers() {
        let request = tonic::codegen::http::Request::builder()
            .header(GRPC_TIMEOUT, "250m")
            .body(())
            .expect("a request");
        let request = stamp_arrival(request);
        assert!(request.headers().get(GRPC_TIMEOUT).is_none());
        let timeout = request.extensions().get::<ClientTimeout>().map(|t| t.0);
        assert_eq!(timeout, Some(Some(std::time::Duration::from_millis(250))));
        assert!(request.extensions().get::<Arrival>().is_some());

        let malformed = tonic::codegen::http::Request::builder()
            .header(GRPC_TIMEOUT, "soon")
            .body(())
            .expect("a request");
        let timeout = stamp_arrival(malformed)
            .extensions()
            .get::<ClientTimeout>()
            .map(|t| t.0);
        assert_eq!(timeout, Some(None));
    }
}
