//! `infergate bench`: a ghz-compatible load generator for infergate.
//!
//! ghz's flags where they mean the same (`-c`, `-n`, `-z`, `--rps`,
//! `--connections`, `-t`, `-m`, `-d`, `--call`), a live progress bar on a
//! terminal, ghz's summary and JSON report, plus the overlap that ghz
//! cannot show: the server-reported backend time over the wall time.
//!
//! - [`args`]: the flags
//! - [`data`]: the method, `-d` requests and `-m` metadata
//! - [`run`]: closed and open loops over the connections
//! - [`report`]: summary and JSON
//! - [`progress`]: the progress bar

pub mod args;
pub mod data;
pub mod progress;
pub mod report;
pub mod run;

use std::sync::Arc;

use serde_json::{Value, json};
use tonic::transport::Endpoint;

pub use args::{BenchArgs, Format};
use progress::Progress;
use report::Report;
use run::Plan;

/// Runs a load test as the flags say; returns the report text, or what is
/// wrong with the flags or the target.
pub async fn bench(args: &BenchArgs) -> Result<String, String> {
    let call = data::Call::parse(&args.call)?;
    let requests = data::requests(&args.data)?;
    let metadata = data::metadata(args.metadata.as_deref())?;
    if args.concurrency == 0 {
        return Err("-c must be at least 1".into());
    }
    if args.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    if args.rps.is_some_and(|rps| !(rps > 0.0 && rps.is_finite())) {
        return Err("--rps must be a positive number".into());
    }
    let target = args
        .target
        .strip_prefix("http://")
        .unwrap_or(&args.target)
        .to_string();
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let endpoint = Endpoint::from_shared(format!("http://{target}"))
            .map_err(|e| format!("{target}: not a host:port ({e})"))?
            .tcp_nodelay(true);
        channels.push(
            endpoint
                .connect()
                .await
                .map_err(|e| format!("cannot connect to {target}: {e}"))?,
        );
    }
    let plan = Arc::new(Plan {
        call,
        requests: Arc::new(requests),
        metadata,
        channels,
        concurrency: args.concurrency,
        total: args.total,
        duration: args.duration,
        rps: args.rps,
        timeout: args.timeout,
    });
    let progress = Progress::new(args.duration.is_none().then_some(args.total), args.duration);
    let outcome = run::run(plan, progress).await;
    let report = Report::new(&outcome);
    Ok(match args.format {
        Format::Summary => report.summary(),
        Format::Json => {
            let json = report.json(
                &outcome,
                args.name.as_deref(),
                options(args, &target, call),
                !args.no_details,
            );
            let mut text = json.to_string();
            text.push('\n');
            text
        }
    })
}

/// The run's options, as ghz records them.
fn options(args: &BenchArgs, target: &str, call: data::Call) -> Value {
    let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    json!({
        "call": call.full_name(),
        "host": target,
        "insecure": true,
        "total": args.total,
        "concurrency": args.concurrency,
        "connections": args.connections,
        "rps": args.rps.unwrap_or(0.0),
        "duration": args.duration.map_or(0, ns),
        "timeout": ns(args.timeout),
        "data": serde_json::from_str::<Value>(&args.data).unwrap_or(Value::Null),
        "metadata": args.metadata.as_deref().and_then(|m| serde_json::from_str::<Value>(m).ok()),
    })
}
