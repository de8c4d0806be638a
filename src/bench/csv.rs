//! ghz's CSV output (`-O csv`): one line per call, `duration
//! (ms),status,error`. An error holding a comma or a quote is quoted
//! (RFC 4180), which ghz does not do.

use std::fmt::Write;

use crate::bench::report::{error_string, go_code_name};
use crate::bench::run::Outcome;

/// The header line, as ghz writes it.
pub const HEADER: &str = "duration (ms),status,error";

/// The CSV report of a run.
pub fn render(outcome: &Outcome) -> String {
    let mut out = String::with_capacity(HEADER.len() + 1 + outcome.samples.len() * 12);
    out.push_str(HEADER);
    out.push('\n');
    for sample in &outcome.samples {
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "{:.2},{},",
            sample.latency.as_secs_f64() * 1e3,
            go_code_name(sample.code)
        );
        if let Some(error) = error_string(sample) {
            field(&mut out, &error);
        }
        out.push('\n');
    }
    out
}

/// A field, quoted when it must be.
fn field(out: &mut String, text: &str) {
    if text.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&text.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::run::{EndReason, Sample};
    use std::time::{Duration, UNIX_EPOCH};
    use tonic::Code;

    #[test]
    fn one_line_per_call_after_the_header() {
        let sample = |ms: u64, code: Code, error: Option<&str>| Sample {
            start: Duration::ZERO,
            latency: Duration::from_micros(ms * 1000 + 7),
            code,
            error: error.map(str::to_string),
            backend_us: 0,
            queue_wait_us: 0,
        };
        let outcome = Outcome {
            samples: vec![
                sample(12, Code::Ok, None),
                sample(3, Code::NotFound, Some("no model \"x\", sorry")),
            ],
            total: Duration::from_secs(1),
            end_reason: EndReason::Normal,
            started_at: UNIX_EPOCH,
        };
        assert_eq!(
            render(&outcome),
            "duration (ms),status,error\n12.01,OK,\n3.01,NotFound,\"rpc error: code = NotFound desc = no model \"\"x\"\", sorry\"\n"
        );
    }
}
