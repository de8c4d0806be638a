//! The flags of `infergate bench`, named as ghz names them where they mean
//! the same.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// `infergate bench`: a load generator a ghz user knows at once.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The server, as host:port (e.g. 127.0.0.1:50051).
    pub target: String,
    /// The method: package.Service/Method (Generate, GenerateStream or
    /// ListModels of infergate.v1.Inference).
    #[arg(long, default_value = "infergate.v1.Inference/Generate")]
    pub call: String,
    /// The request as proto JSON; an array is used round-robin, one item
    /// per request, as ghz does.
    #[arg(
        short = 'd',
        long = "data",
        default_value = r#"{"model":"echo","prompt":"hello"}"#
    )]
    pub data: String,
    /// Requests running at once (closed loop). Ignored with --rps.
    #[arg(short = 'c', long, default_value_t = 50)]
    pub concurrency: usize,
    /// Requests to send in all. Ignored with -z.
    #[arg(short = 'n', long, default_value_t = 200)]
    pub total: u64,
    /// Send for this long (e.g. 30s, 1m), then stop.
    #[arg(short = 'z', long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Requests per second, sent on schedule even while earlier ones still
    /// run (open loop); latency is measured from each request's scheduled
    /// time, so a stalled server cannot hide its queue.
    #[arg(long)]
    pub rps: Option<f64>,
    /// gRPC connections (HTTP/2), used round-robin.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Deadline of each call (sent as grpc-timeout).
    #[arg(short = 't', long, default_value = "20s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Request metadata as a JSON object, e.g. '{"x-tenant":"a"}'.
    #[arg(short = 'm', long)]
    pub metadata: Option<String>,
    /// Report format: a summary, or ghz's JSON report.
    #[arg(long, value_enum, default_value_t = Format::Summary)]
    pub format: Format,
    /// Write the report to this file instead of stdout.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// A name for the run, recorded in the JSON report.
    #[arg(long)]
    pub name: Option<String>,
    /// Leave the per-request details out of the JSON report (smaller files
    /// for long runs).
    #[arg(long)]
    pub no_details: bool,
}

/// Report formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The human summary, as ghz prints it, plus the overlap.
    Summary,
    /// ghz's JSON report schema (durations in integer nanoseconds).
    Json,
}

/// Parses durations as ghz takes them: `500ms`, `30s`, `1m30s`, `2h`; a
/// bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{text:?}: a number needs a unit (ms, s, m, h)"))?;
        let (number, tail) = rest.split_at(digits);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("{text:?}: expected a number before the unit"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let seconds = match unit {
            "ns" => number / 1e9,
            "us" | "µs" => number / 1e6,
            "ms" => number / 1e3,
            "s" => number,
            "m" => number * 60.0,
            "h" => number * 3600.0,
            _ => return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s, m, h)")),
        };
        total += Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))?;
        rest = next;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_ghz() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("s").is_err());
    }
}
