//! `infergate health`: one grpc.health.v1 Check against a running gateway,
//! for a container's HEALTHCHECK or a systemd/Kubernetes probe where no
//! shell, curl or grpcurl is at hand.
//!
//! Prints the status (`SERVING`, `NOT_SERVING`, ...) and exits 0 when it is
//! `SERVING`, 1 for anything else: another status, an unknown service, no
//! answer within `--timeout`. An address that is not host:port, or a TLS
//! file that cannot be read, exits 64. `--cacert` (with `--cert`/`--key`
//! for mTLS) checks a gateway that serves TLS (`[server.tls]`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
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
    /// Connect with TLS, trusting this CA bundle (PEM): for a gateway with
    /// `[server.tls]`.
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// With --cacert: the client certificate (PEM) for an mTLS gateway.
    #[arg(long, value_name = "FILE", requires = "key", requires = "cacert")]
    pub cert: Option<PathBuf>,
    /// With --cert: its private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the host of
    /// --addr).
    #[arg(long, value_name = "NAME", requires = "cacert")]
    pub server_name: Option<String>,
}

impl HealthArgs {
    /// The client TLS settings these flags ask for, if any; errors name the
    /// flag and the file.
    fn tls(&self) -> Result<Option<ClientTlsConfig>, HealthError> {
        let Some(cacert) = &self.cacert else {
            return Ok(None);
        };
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read(path)
                .map_err(|e| HealthError::Usage(format!("{flag} {}: {e}", path.display())))
        };
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("--cacert", cacert)?));
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            tls = tls.identity(Identity::from_pem(
                read("--cert", cert)?,
                read("--key", key)?,
            ));
        }
        if let Some(name) = &self.server_name {
            tls = tls.domain_name(name.clone());
        }
        Ok(Some(tls))
    }
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
    let tls = args.tls()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| HealthError::Usage(format!("{addr}: not a host:port ({e})")))?
        .connect_timeout(args.timeout)
        .timeout(args.timeout);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| HealthError::Usage(format!("TLS settings: {e}")))?;
    }
    let call = async {
        let channel = endpoint.connect().await.map_err(|e| {
            HealthError::Unhealthy(format!(
                "cannot connect to {addr}: {}",
                crate::error::chain(&e)
            ))
        })?;
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
