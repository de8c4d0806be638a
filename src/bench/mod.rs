//! `infergate bench`: a ghz-compatible load generator for infergate.
//!
//! ghz's command line runs unchanged (its flags, its `--config` files, its
//! call templates, its report formats), with a live progress bar on a
//! terminal, plus the overlap that ghz cannot show: the server-reported
//! backend time over the wall time. `docs/benchmarking.md` maps every ghz
//! flag.
//!
//! - [`args`]: the flags
//! - [`config`]: ghz's config file
//! - [`settings`]: flags over config over defaults
//! - [`call`]: the methods
//! - [`template`] and [`calldata`]: ghz's call templates and their values
//! - [`data`]: the request messages (JSON), [`binary`]: binary ones;
//!   [`metadata`]: the request metadata
//! - [`run`]: the workers, `--rps` pacing and the open loop
//! - [`stop`]: the calls in flight at the end (`--duration-stop`)
//! - [`report`]: summary and JSON; [`csv`], [`html`]; [`output`] picks one
//! - [`progress`]: the progress bar

pub mod args;
pub mod binary;
pub mod call;
pub mod calldata;
pub mod config;
pub mod csv;
pub mod data;
pub mod html;
pub mod metadata;
pub mod output;
pub mod progress;
pub mod report;
pub mod run;
pub mod settings;
pub mod stop;
pub mod template;

use std::sync::Arc;
use std::time::SystemTime;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

pub use args::{BenchArgs, Format};
use calldata::CallData;
use data::Messages;
use metadata::Metadata;
use progress::Progress;
use run::{Outcome, Plan};
pub use settings::Settings;

/// Runs a load test as the flags say; returns the report text, or what is
/// wrong with the flags or the target.
pub async fn bench(args: &BenchArgs) -> Result<String, String> {
    run_settings(&args.resolve()?).await
}

/// Runs a load test with resolved settings; returns the report text.
pub async fn run_settings(settings: &Settings) -> Result<String, String> {
    let worker_ids = worker_ids(settings);
    let sample = CallData::new(settings.call, &worker_ids[0], 0, SystemTime::now());
    let messages = match &settings.binary {
        Some(bytes) => Messages::fixed(binary::messages(bytes)?),
        None => Messages::parse(&settings.data, &sample)?,
    };
    let metadata = Metadata::parse(settings.metadata.as_deref(), &sample)?;
    let target = &settings.target;
    let mut channels = Vec::with_capacity(settings.connections);
    for _ in 0..settings.connections {
        let scheme = if settings.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{target}"))
            .map_err(|e| format!("{target}: not a host:port ({e})"))?
            .tcp_nodelay(true)
            .connect_timeout(settings.connect_timeout);
        if let Some(tls) = &settings.tls {
            let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            if let Some(name) = &tls.server_name {
                config = config.domain_name(name.clone());
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| format!("TLS settings: {e}"))?;
        }
        if let Some(keepalive) = settings.keepalive {
            endpoint = endpoint
                .http2_keep_alive_interval(keepalive)
                .keep_alive_timeout(keepalive);
        }
        if let Some(authority) = &settings.authority {
            let origin = format!("{scheme}://{authority}")
                .parse()
                .map_err(|e| format!("--authority {authority:?}: {e}"))?;
            endpoint = endpoint.origin(origin);
        }
        channels.push(
            endpoint
                .connect()
                .await
                .map_err(|e| format!("cannot connect to {target}: {e}"))?,
        );
    }
    let plan = Arc::new(Plan {
        call: settings.call,
        messages,
        metadata,
        channels,
        concurrency: settings.concurrency,
        total: settings.total,
        deadline: settings.deadline(),
        duration_stop: settings.duration_stop,
        rps: settings.rps,
        open_loop: settings.open_loop,
        timeout: settings.timeout,
        worker_ids,
    });
    let progress = Progress::new(
        settings.total,
        settings
            .total
            .is_none()
            .then_some(settings.duration)
            .flatten(),
    );
    let mut outcome = run::run(plan, progress).await;
    skip_first(&mut outcome, settings.skip_first);
    Ok(output::render(settings, &outcome))
}

/// ghz's worker IDs: `g<worker>c<connection>`, after `<name>:` if named.
fn worker_ids(settings: &Settings) -> Vec<String> {
    let prefix = settings
        .name
        .as_deref()
        .map(|name| format!("{name}:"))
        .unwrap_or_default();
    (0..settings.concurrency.max(1))
        .map(|w| format!("{prefix}g{w}c{}", w % settings.connections.max(1)))
        .collect()
}

/// Leaves the first `n` calls to finish out of the report, as ghz's
/// `--skipFirst` leaves out the first results it receives.
fn skip_first(outcome: &mut Outcome, n: u64) {
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    if n == 0 {
        return;
    }
    let samples = &mut outcome.samples;
    samples.sort_by_key(|s| s.start + s.latency);
    samples.drain(..n.min(samples.len()));
    samples.sort_by_key(|s| s.start);
}
