//! The report of a run: ghz's summary and ghz's JSON schema (durations in
//! integer nanoseconds), plus what ghz cannot show: the overlap, i.e. the
//! server-reported backend time over the wall time, and the server-side
//! queue wait. The CSV and HTML forms are in [`crate::bench::csv`] and
//! [`crate::bench::html`].

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tonic::Code;

use crate::bench::run::{Outcome, Sample};

/// The percentiles of the latency distribution, as ghz reports them.
const PERCENTILES: [u32; 7] = [10, 25, 50, 75, 90, 95, 99];
/// Bars in the response time histogram, as ghz draws it.
const HISTOGRAM_BUCKETS: usize = 10;
/// Width of the longest histogram bar.
const BAR_WIDTH: usize = 40;

/// Everything a report shows, computed once.
pub struct Report {
    /// Calls reported.
    pub count: usize,
    /// Wall time of the run.
    pub total: Duration,
    /// Mean latency.
    pub average: Duration,
    /// Lowest latency.
    pub fastest: Duration,
    /// Highest latency.
    pub slowest: Duration,
    /// Calls per second (count over total).
    pub rps: f64,
    /// (percentage, latency), over the OK calls.
    pub latency_distribution: Vec<(u32, Duration)>,
    /// (upper mark, count), over the OK calls.
    pub histogram: Vec<(Duration, usize)>,
    /// Calls by status, Go's names.
    pub status_codes: BTreeMap<&'static str, usize>,
    /// Calls by error, as grpc-go prints it.
    pub errors: BTreeMap<String, usize>,
    /// Sum of the server-reported backend time of all calls.
    pub backend_total: Duration,
    /// Server-reported queue wait: (p50, p99, max, mean).
    pub queue_wait: Option<(Duration, Duration, Duration, Duration)>,
}

impl Report {
    /// The largest count of the histogram, at least 1: what the bars of
    /// the summary and the HTML page are scaled to.
    pub(crate) fn tallest_bar(&self) -> usize {
        self.histogram
            .iter()
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(0)
            .max(1)
    }

    /// Computes the report of a run. The latency figures count the OK calls
    /// only, as ghz does, unless `count_errors` (ghz's `--count-errors`).
    pub fn new(outcome: &Outcome, count_errors: bool) -> Self {
        let samples = &outcome.samples;
        let mut ok: Vec<Duration> = samples
            .iter()
            .filter(|s| count_errors || s.code == Code::Ok)
            .map(|s| s.latency)
            .collect();
        ok.sort_unstable();
        let fastest = ok.first().copied().unwrap_or_default();
        let slowest = ok.last().copied().unwrap_or_default();
        let average = if ok.is_empty() {
            Duration::ZERO
        } else {
            ok.iter().sum::<Duration>() / u32::try_from(ok.len()).unwrap_or(u32::MAX)
        };
        let mut status_codes = BTreeMap::new();
        let mut errors = BTreeMap::new();
        for sample in samples {
            *status_codes.entry(go_code_name(sample.code)).or_default() += 1;
            if let Some(error) = error_string(sample) {
                *errors.entry(error).or_default() += 1;
            }
        }
        let mut waits: Vec<Duration> = samples
            .iter()
            .filter(|s| s.code == Code::Ok)
            .map(|s| Duration::from_micros(s.queue_wait_us))
            .collect();
        waits.sort_unstable();
        let queue_wait = (!waits.is_empty()).then(|| {
            let mean =
                waits.iter().sum::<Duration>() / u32::try_from(waits.len()).unwrap_or(u32::MAX);
            (
                percentile(&waits, 50),
                percentile(&waits, 99),
                waits[waits.len() - 1],
                mean,
            )
        });
        let secs = outcome.total.as_secs_f64();
        Report {
            count: samples.len(),
            total: outcome.total,
            average,
            fastest,
            slowest,
            rps: if secs > 0.0 {
                samples.len() as f64 / secs
            } else {
                0.0
            },
            latency_distribution: PERCENTILES
                .iter()
                .map(|&p| (p, percentile(&ok, p)))
                .collect(),
            histogram: histogram(&ok, fastest, slowest),
            status_codes,
            errors,
            backend_total: samples
                .iter()
                .map(|s| Duration::from_micros(s.backend_us))
                .sum(),
            queue_wait,
        }
    }

    /// Mean number of backend calls running at once over the run.
    pub fn overlap(&self) -> f64 {
        let wall = self.total.as_secs_f64();
        if wall > 0.0 {
            self.backend_total.as_secs_f64() / wall
        } else {
            0.0
        }
    }

    /// The summary, as ghz prints it, plus the overlap.
    pub fn summary(&self, name: Option<&str>) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "\nSummary:");
        if let Some(name) = name {
            let _ = writeln!(out, "  Name:\t{name}");
        }
        let _ = writeln!(out, "  Count:\t{}", self.count);
        let _ = writeln!(out, "  Total:\t{}", human(self.total));
        let _ = writeln!(out, "  Slowest:\t{}", human(self.slowest));
        let _ = writeln!(out, "  Fastest:\t{}", human(self.fastest));
        let _ = writeln!(out, "  Average:\t{}", human(self.average));
        let _ = writeln!(out, "  Requests/sec:\t{:.2}", self.rps);
        let _ = writeln!(out, "\nResponse time histogram:");
        let max = self.tallest_bar();
        for (mark, count) in &self.histogram {
            let bar = "∎".repeat(count * BAR_WIDTH / max);
            let _ = writeln!(out, "  {:.3} [{count}]\t|{bar}", mark.as_secs_f64() * 1e3);
        }
        let _ = writeln!(out, "\nLatency distribution:");
        for (p, latency) in &self.latency_distribution {
            let _ = writeln!(out, "  {p} % in {} ", human(*latency));
        }
        let _ = writeln!(out, "\nStatus code distribution:");
        for (code, n) in &self.status_codes {
            let _ = writeln!(out, "  [{code}]\t{n} responses");
        }
        if !self.errors.is_empty() {
            let _ = writeln!(out, "\nError distribution:");
            for (error, n) in &self.errors {
                let _ = writeln!(out, "  [{n}]\t{error}");
            }
        }
        let _ = writeln!(out, "\nOverlap (server-reported; ghz cannot show this):");
        let _ = writeln!(
            out,
            "  Backend time:\t{} over {} of wall time = {:.2} calls running at once on average",
            human(self.backend_total),
            human(self.total),
            self.overlap()
        );
        if let Some((p50, p99, max, mean)) = self.queue_wait {
            let _ = writeln!(
                out,
                "  Queue wait:\tmean {}, p50 {}, p99 {}, max {}",
                human(mean),
                human(p50),
                human(p99),
                human(max)
            );
        }
        out
    }

    /// ghz's JSON report.
    pub fn json(
        &self,
        outcome: &Outcome,
        name: Option<&str>,
        options: Value,
        details: bool,
    ) -> Value {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let total_ok: usize = self.histogram.iter().map(|(_, n)| n).sum();
        let mut report = json!({
            "name": name.unwrap_or(""),
            "endReason": outcome.end_reason.as_str(),
            "date": rfc3339(outcome.started_at),
            "options": options,
            "count": self.count,
            "total": ns(self.total),
            "average": ns(self.average),
            "fastest": ns(self.fastest),
            "slowest": ns(self.slowest),
            "rps": self.rps,
            "errorDistribution": self.errors,
            "statusCodeDistribution": self.status_codes,
            "latencyDistribution": self.latency_distribution.iter()
                .map(|(p, l)| json!({"percentage": p, "latency": ns(*l)}))
                .collect::<Vec<_>>(),
            "histogram": self.histogram.iter()
                .map(|(mark, n)| json!({
                    "mark": mark.as_secs_f64(),
                    "count": n,
                    "frequency": if total_ok > 0 { *n as f64 / total_ok as f64 } else { 0.0 },
                }))
                .collect::<Vec<_>>(),
            "infergate": {
                "backendTotal": ns(self.backend_total),
                "overlap": self.overlap(),
                "queueWait": self.queue_wait.map(|(p50, p99, max, mean)| json!({
                    "p50": ns(p50), "p99": ns(p99), "max": ns(max), "mean": ns(mean),
                })),
            },
        });
        if details {
            report["details"] = outcome
                .samples
                .iter()
                .map(|s| {
                    json!({
                        "timestamp": rfc3339(outcome.started_at + s.start),
                        "latency": ns(s.latency),
                        "error": error_string(s).unwrap_or_default(),
                        "status": go_code_name(s.code),
                        "backend": ns(Duration::from_micros(s.backend_us)),
                        "queueWait": ns(Duration::from_micros(s.queue_wait_us)),
                    })
                })
                .collect();
        }
        report
    }
}

/// The latency at percentile `p` of sorted values (nearest rank).
fn percentile(sorted: &[Duration], p: u32) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (f64::from(p) / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// ghz's histogram: equal-width buckets from fastest to slowest, each
/// marked by its upper edge.
fn histogram(sorted: &[Duration], fastest: Duration, slowest: Duration) -> Vec<(Duration, usize)> {
    if sorted.is_empty() {
        return Vec::new();
    }
    let width = (slowest - fastest) / u32::try_from(HISTOGRAM_BUCKETS).unwrap_or(10);
    let mut buckets: Vec<(Duration, usize)> = (0..=HISTOGRAM_BUCKETS)
        .map(|i| (fastest + width * u32::try_from(i).unwrap_or(0), 0))
        .collect();
    for latency in sorted {
        let index = buckets
            .iter()
            .position(|(mark, _)| latency <= mark)
            .unwrap_or(buckets.len() - 1);
        buckets[index].1 += 1;
    }
    buckets
}

/// Go's name of a gRPC code, as ghz writes it.
pub fn go_code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// A failed call as grpc-go prints its error.
pub fn error_string(sample: &Sample) -> Option<String> {
    let message = sample.error.as_ref()?;
    Some(format!(
        "rpc error: code = {} desc = {message}",
        go_code_name(sample.code)
    ))
}

/// A duration as the summary shows it: `12.34 ms` or `1.23 s`.
pub fn human(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }
}

/// RFC 3339 in UTC with nanoseconds, as Go's time.RFC3339Nano.
pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_nanos()
    )
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's
/// algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::run::EndReason;

    fn sample(ms: u64, code: Code) -> Sample {
        Sample {
            start: Duration::ZERO,
            latency: Duration::from_millis(ms),
            code,
            error: (code != Code::Ok).then(|| "full".to_string()),
            backend_us: ms * 1000,
            queue_wait_us: 10,
        }
    }

    #[test]
    fn reports_percentiles_codes_and_overlap() {
        let mut samples: Vec<Sample> = (1..=100).map(|ms| sample(ms, Code::Ok)).collect();
        samples.push(sample(1, Code::ResourceExhausted));
        let outcome = Outcome {
            samples,
            total: Duration::from_millis(500),
            end_reason: EndReason::Normal,
            started_at: UNIX_EPOCH,
        };
        let report = Report::new(&outcome, false);
        assert_eq!(report.count, 101);
        assert_eq!(report.fastest, Duration::from_millis(1));
        assert_eq!(report.slowest, Duration::from_millis(100));
        assert_eq!(
            report.latency_distribution[2],
            (50, Duration::from_millis(50))
        );
        assert_eq!(
            report.latency_distribution[6],
            (99, Duration::from_millis(99))
        );
        assert_eq!(report.status_codes["OK"], 100);
        assert_eq!(report.status_codes["ResourceExhausted"], 1);
        assert_eq!(report.histogram.iter().map(|(_, n)| n).sum::<usize>(), 100);
        // 5.051 s of backend time over 0.5 s of wall.
        assert!(
            (report.overlap() - 10.102).abs() < 0.01,
            "{}",
            report.overlap()
        );
        let json = report.json(&outcome, Some("t"), json!({}), true);
        assert_eq!(json["count"], 101);
        assert_eq!(json["total"], 500_000_000u64);
        assert_eq!(json["statusCodeDistribution"]["OK"], 100);
        assert_eq!(
            json["errorDistribution"]["rpc error: code = ResourceExhausted desc = full"],
            1
        );
        assert_eq!(json["latencyDistribution"][2]["latency"], 50_000_000u64);
        assert_eq!(json["details"].as_array().unwrap().len(), 101);
        assert!(report.summary(None).contains("Requests/sec:\t202.00"));
    }

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_769_607) + Duration::from_nanos(5);
        assert_eq!(rfc3339(t), "2026-11-27T08:53:27.000000005Z");
    }
}
