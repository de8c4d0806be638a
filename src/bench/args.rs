//! The flags of `infergate bench`: ghz's flags, by ghz's names, so that a
//! ghz command line runs unchanged. Flags that only matter to ghz (a proto
//! file: the methods are compiled in; `--insecure`: plaintext unless --cacert, as
//! speaks) are accepted and do nothing. Flags are `Option`s so that a
//! `--config` file fills what the command line leaves out, as in ghz;
//! defaults are applied in [`crate::bench::settings`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

pub use crate::bench::stop::DurationStop;

/// `infergate bench`: a load generator a ghz user knows at once.
#[derive(Debug, Clone, Default, Args)]
pub struct BenchArgs {
    /// The server, as host:port (e.g. 127.0.0.1:50051); or "host" in --config.
    pub target: Option<String>,
    /// A ghz JSON or TOML config file (e.g. bench/ghz/s2-pair.json); flags
    /// given on the command line override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The method: package.Service/Method or package.Service.Method
    /// (Generate, GenerateStream or ListModels of infergate.v1.Inference)
    /// [default: infergate.v1.Inference/Generate].
    #[arg(long)]
    pub call: Option<String>,
    /// No-op (accepted for ghz): the infergate methods are compiled in.
    #[arg(long, value_name = "FILE")]
    pub proto: Option<String>,
    /// No-op (accepted for ghz): the infergate methods are compiled in.
    #[arg(long, value_name = "FILE")]
    pub protoset: Option<String>,
    /// No-op (accepted for ghz): proto import paths.
    #[arg(short = 'i', long = "import-paths", value_name = "PATHS")]
    pub import_paths: Option<String>,
    /// No-op (accepted for ghz): without --cacert infergate bench speaks
    /// plaintext HTTP/2 (h2c), which is what ghz's --insecure selects.
    #[arg(long)]
    pub insecure: bool,
    /// Refused: certificate verification is never skipped (give --cacert).
    #[arg(long = "skipTLS", hide = true)]
    pub skip_tls: bool,
    /// TLS: the CA bundle (PEM) the gateway's certificate must chain to.
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<String>,
    /// TLS: the client certificate (PEM), for an mTLS gateway (with --key).
    #[arg(long, value_name = "FILE")]
    pub cert: Option<String>,
    /// TLS: the client certificate's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub key: Option<String>,
    /// TLS: the name the gateway's certificate must carry (default: the
    /// target's host).
    #[arg(long, value_name = "NAME")]
    pub cname: Option<String>,
    /// The :authority of every call (default: the target).
    #[arg(long)]
    pub authority: Option<String>,
    /// The request as proto JSON; an array is used round-robin, one item
    /// per request, as ghz does; `@` reads it from stdin. ghz's call
    /// templates ({{.RequestNumber}}, {{.WorkerID}}, {{.UUID}}, ...) are
    /// rendered per call [default: {"model":"echo","prompt":"hello"}].
    #[arg(short = 'd', long, conflicts_with_all = ["data_file", "binary", "binary_file"])]
    pub data: Option<String>,
    /// The request data (as -d) from a JSON file.
    #[arg(short = 'D', long = "data-file", value_name = "PATH", conflicts_with_all = ["binary", "binary_file"])]
    pub data_file: Option<PathBuf>,
    /// The request as serialized protobuf, read from stdin: one
    /// GenerateRequest, or several each prefixed by its length (varint).
    #[arg(short = 'b', long, conflicts_with = "binary_file")]
    pub binary: bool,
    /// The request as serialized protobuf (as -b), from a file.
    #[arg(short = 'B', long = "binary-file", value_name = "PATH")]
    pub binary_file: Option<PathBuf>,
    /// Request metadata as a JSON object of strings, e.g.
    /// '{"x-tenant":"a","request-id":"{{.RequestNumber}}"}'.
    #[arg(short = 'm', long, conflicts_with = "metadata_file")]
    pub metadata: Option<String>,
    /// The metadata (as -m) from a JSON file.
    #[arg(short = 'M', long = "metadata-file", value_name = "PATH")]
    pub metadata_file: Option<PathBuf>,
    /// Workers: each has one call in flight at a time [default: 50].
    #[arg(short = 'c', long)]
    pub concurrency: Option<usize>,
    /// Requests to send in all; ignored with -z [default: 200].
    #[arg(short = 'n', long)]
    pub total: Option<u64>,
    /// Send for this long (e.g. 30s, 1m), then stop; -n is ignored.
    #[arg(short = 'z', long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this long even if -n calls are not all done.
    #[arg(short = 'x', long = "max-duration", value_parser = parse_duration)]
    pub max_duration: Option<Duration>,
    /// What happens to the calls in flight when -z or -x runs out (or on
    /// Ctrl-C): close cancels them and reports them as Canceled, as ghz
    /// does; wait lets them finish; ignore cancels them and leaves them out
    /// of the report [default: close].
    #[arg(long = "duration-stop", value_enum)]
    pub duration_stop: Option<DurationStop>,
    /// Requests per second in all, spread over the -c workers, as ghz
    /// paces them: a worker still has one call at a time, so -c caps the
    /// rate; 0 means no limit. With --async, an open loop instead.
    #[arg(short = 'r', long)]
    pub rps: Option<f64>,
    /// With --rps: start calls on schedule however many are still running
    /// (an open loop; -c no longer caps it), and measure latency from each
    /// call's scheduled start, so a stalling server cannot hide its queue.
    #[arg(long = "async")]
    pub async_: bool,
    /// ghz's load schedule: only "const" (the default) is supported.
    #[arg(long = "load-schedule")]
    pub load_schedule: Option<String>,
    /// ghz's concurrency schedule: only "const" (the default) is supported.
    #[arg(long = "concurrency-schedule")]
    pub concurrency_schedule: Option<String>,
    /// gRPC connections (HTTP/2), shared round-robin by the workers
    /// [default: 1].
    #[arg(long)]
    pub connections: Option<usize>,
    /// Deadline of each call (sent as grpc-timeout); 0 means none
    /// [default: 20s].
    #[arg(short = 't', long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Time allowed to open each connection [default: 10s].
    #[arg(long = "connect-timeout", value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// HTTP/2 keepalive ping interval (and ping timeout); 0 means none.
    #[arg(long, value_parser = parse_duration)]
    pub keepalive: Option<Duration>,
    /// Report format [default: summary].
    #[arg(short = 'O', long, value_enum)]
    pub format: Option<Format>,
    /// Write the report to this file instead of stdout.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// A name for the run, shown in the reports (and in {{.WorkerID}}).
    #[arg(long)]
    pub name: Option<String>,
    /// Tags for the JSON report, as a JSON object of strings.
    #[arg(long)]
    pub tags: Option<String>,
    /// Leave the first N finished calls out of the report (warm-up).
    #[arg(long = "skipFirst", value_name = "N")]
    pub skip_first: Option<u64>,
    /// Count failed calls in the latency figures too (by default only OK
    /// calls make the fastest, slowest, average, histogram and percentiles).
    #[arg(long = "count-errors")]
    pub count_errors: bool,
    /// Threads of the load generator's runtime [default: all cores].
    #[arg(long)]
    pub cpus: Option<usize>,
    /// No-op (accepted for ghz): answers of any size are read.
    #[arg(long = "max-recv-message-size", value_name = "SIZE", hide = true)]
    pub max_recv_message_size: Option<String>,
    /// No-op (accepted for ghz): requests of any size are sent.
    #[arg(long = "max-send-message-size", value_name = "SIZE", hide = true)]
    pub max_send_message_size: Option<String>,
    /// No-op (accepted for ghz): no reflection is needed.
    #[arg(long = "reflect-metadata", hide = true)]
    pub reflect_metadata: Option<String>,
    /// Not supported: calls are sent uncompressed (a warning says so).
    #[arg(short = 'e', long = "enable-compression", hide = true)]
    pub enable_compression: bool,
    /// Not supported: ghz's debug log (a warning says so).
    #[arg(long, hide = true)]
    pub debug: Option<String>,
    /// Leave the per-request details out of the JSON report (smaller files
    /// for long runs).
    #[arg(long)]
    pub no_details: bool,
}

/// Report formats, ghz's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The human summary, as ghz prints it, plus the overlap.
    Summary,
    /// One line per call: duration (ms), status, error.
    Csv,
    /// ghz's JSON report schema (durations in integer nanoseconds).
    Json,
    /// The JSON report, indented.
    Pretty,
    /// A self-contained HTML page: summary, histogram, distributions.
    Html,
}

impl Format {
    /// Parses a format name (ghz's, as in a config file's "format").
    pub fn parse(name: &str) -> Result<Format, String> {
        match name {
            "influx-summary" | "influx-details" | "prometheus" => Err(format!(
                "format {name:?} is not supported by infergate bench (summary, csv, json, pretty, html)"
            )),
            _ => Format::from_str(name, true)
                .map_err(|_| format!("unknown format {name:?} (summary, csv, json, pretty, html)")),
        }
    }
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
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn formats_parse_by_ghz_names() {
        assert_eq!(Format::parse("pretty"), Ok(Format::Pretty));
        assert_eq!(Format::parse("CSV"), Ok(Format::Csv));
        assert!(
            Format::parse("prometheus")
                .unwrap_err()
                .contains("not supported")
        );
        assert!(Format::parse("xml").is_err());
    }
}
