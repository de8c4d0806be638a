//! The end of a run's calls still in flight when `-z` or `-x` runs out, or
//! on Ctrl-C: ghz's `--duration-stop`.
//!
//! ghz closes its connections (`close`, its default), so that calls in
//! flight fail; grpc-go reports most as `Canceled: grpc: the client
//! connection is closing` (some as `Unavailable`, depending on where the
//! call was). Here every such call is cancelled (its stream reset, so the
//! server stops its work) and reported as `Canceled` with grpc-go's
//! message: one status for one cause.

use std::future::Future;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::bench::run::Sample;

/// The message of a call ended by the end of the run, as grpc-go words it
/// when a connection closes under a call.
pub const CONNECTION_CLOSING: &str = "grpc: the client connection is closing";

/// What happens to the calls in flight at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum DurationStop {
    /// Cancel them; report them as `Canceled` (ghz's default).
    #[default]
    Close,
    /// Let them finish (within their deadline) and report them.
    Wait,
    /// Cancel them and leave them out of the report.
    Ignore,
}

impl DurationStop {
    /// Parses ghz's name; ghz takes anything else as `close`.
    pub fn parse(name: &str) -> Option<DurationStop> {
        DurationStop::from_str(name, true).ok()
    }

    /// ghz's name.
    pub fn as_str(self) -> &'static str {
        match self {
            DurationStop::Close => "close",
            DurationStop::Wait => "wait",
            DurationStop::Ignore => "ignore",
        }
    }

    /// Runs `call` (started at `began`, `offset` into the run) to its end,
    /// or until `stop` fires, as the policy says; `None` for a call to
    /// leave out of the report.
    pub async fn finish(
        self,
        stop: &CancellationToken,
        call: impl Future<Output = Sample>,
        offset: Duration,
        began: Instant,
    ) -> Option<Sample> {
        if self == DurationStop::Wait {
            return Some(call.await);
        }
        tokio::select! {
            biased;
            sample = call => Some(sample),
            () = stop.cancelled() => (self == DurationStop::Close).then(|| Sample {
                start: offset,
                latency: began.elapsed(),
                code: Code::Cancelled,
                error: Some(CONNECTION_CLOSING.to_string()),
                backend_us: 0,
                queue_wait_us: 0,
            }),
        }
    }
}
