//! `infergate health`: one grpc.health.v1 Check against a running gateway,
//! for a container's HEALTHCHECK or a systemd/Kubernetes probe where no
//! shell, curl or grpcurl is at hand.
//!
//! Prints the status (`SERVING`, `NOT_SERVING`, ...) and exits 0 when it is
//! `SERVING`, 1 for anything else: another status, an unknown service, no
//! answer within `--timeout`. An address that is not host:port exits 64.

use std::time::Duration;

use clap::Args;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::bench::args::parse_duration;

/// Flags of `health`.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// The gateway's gRPC address, as host:port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:50051")]
    pub addr: String,
    /// The service to check: empty for the whole server, or a model's name.
    #[arg(long, default_value = "")]
    pub service: String,
    /// Give up (exit 1) after this long, connecting included (e.g. 3s, 500ms).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Why a check did not answer `SERVING`.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// `--addr` is not something to connect to (exit 64).
    #[error("{0}")]
    Usage(String),
    /// No status: not reachable, too slow, or an error status (exit 1).
    #[error("{0}")]
    Unhealthy(String),
}

/// Checks `args.service` on `args.addr`; the status the server answered
/// (which may be `NOT_SERVING`), or why there is none.
pub async fn check(args: &HealthArgs) -> Result<ServingStatus, HealthError> {
    let addr = args.addr.strip_prefix("http://").unwrap_or(&args.addr);
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| HealthError::Usage(format!("{addr}: not a host:port ({e})")))?
        .connect_timeout(args.timeout)
        .timeout(args.timeout);
    let call = async {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| HealthError::Unhealthy(format!("cannot connect to {addr}: {e}")))?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await
            .map_err(|status| {
                HealthError::Unhealthy(format!("{addr}: {:?}: {}", status.code(), status.message()))
            })?;
        Ok(ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown))
    };
    tokio::time::timeout(args.timeout, call)
        .await
        .unwrap_or_else(|_| {
            Err(HealthError::Unhealthy(format!(
                "{addr}: no answer within {:?}",
                args.timeout
            )))
        })
}
