//! GenerateBatch: many independent calls in one RPC, overlapped for the
//! client, results streamed as each finishes.
//!
//! Each item is an ordinary Generate call through [`Gateway::generate`]
//! (admission, deadline, fallbacks, cache, metrics with
//! `method="GenerateBatch"`), all started at once or `max_parallel` at a
//! time. The stream polls the items itself, with no task in between:
//! when the client goes away, tonic drops the stream, which drops every
//! unfinished item and so cancels it. The last message is the summary the
//! original team printed by hand: wall time, the sum of the items' times,
//! and the time the overlap saved.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_stream::Stream;
use tonic::Status;

use crate::error::Error;
use crate::gateway::{CallOptions, Gateway};
use crate::metrics::code_name;
use crate::outcome::Outcome;
use crate::proto;
use crate::service::generate_response;

/// One finished item: its index, its own time, its result.
type Finished = (usize, Duration, Result<Outcome, Error>);

/// Checks a batch and starts its items; the stream yields one message per
/// item as it finishes, then the summary.
pub(crate) fn run(
    gateway: Arc<Gateway>,
    request: proto::GenerateBatchRequest,
    options: CallOptions,
    request_id: String,
) -> Result<impl Stream<Item = Result<proto::GenerateBatchResponse, Status>> + Send, Error> {
    let count = request.items.len();
    let max = gateway.max_batch_items();
    if count == 0 {
        return Err(Error::invalid("items", "at least one item is required"));
    }
    if count > max {
        return Err(Error::invalid(
            "items",
            format!("{count} items; at most {max} (the server's max_batch_items)"),
        ));
    }
    if gateway.is_shutting_down() {
        return Err(Error::ShuttingDown);
    }
    let parallel = match request.max_parallel {
        0 => count,
        n => usize::try_from(n).unwrap_or(count).min(count),
    };
    let span = tracing::Span::current();
    let received = options.received;
    let items = futures_util::stream::iter(request.items.into_iter().enumerate().map(
        move |(index, item)| {
            let gateway = gateway.clone();
            let span = span.clone();
            let options = options.clone();
            let future = async move {
                let started = Instant::now();
                let result = gateway.generate(item, options).await;
                (index, started.elapsed(), result)
            };
            tracing::Instrument::instrument(future, span)
        },
    ))
    .buffer_unordered(parallel);
    Ok(BatchStream {
        items: Box::pin(items),
        received,
        request_id,
        count,
        succeeded: 0,
        sum: Duration::ZERO,
        done: false,
    })
}

/// The items as they finish, then the summary.
struct BatchStream {
    items: Pin<Box<dyn Stream<Item = Finished> + Send>>,
    received: Instant,
    request_id: String,
    count: usize,
    succeeded: usize,
    /// The items' own times, summed.
    sum: Duration,
    done: bool,
}

impl BatchStream {
    fn item(&mut self, (index, took, result): Finished) -> proto::GenerateBatchResponse {
        self.sum += took;
        let result = match result {
            Ok(outcome) => {
                self.succeeded += 1;
                proto::generate_batch_response::Result::Response(generate_response(outcome))
            }
            Err(error) => {
                let status = error.to_status(&format!("{} item {index}", self.request_id));
                proto::generate_batch_response::Result::Error(proto::ItemError {
                    code: status.code() as i32,
                    code_name: code_name(status.code()).to_string(),
                    message: status.message().to_string(),
                })
            }
        };
        proto::GenerateBatchResponse {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            result: Some(result),
        }
    }

    fn summary(&self) -> proto::GenerateBatchResponse {
        // In whole microseconds first, so that saved = sum - wall exactly.
        let (wall, sum) = (micros(self.received.elapsed()), micros(self.sum));
        let saved = sum.saturating_sub(wall);
        let fraction = if sum == 0 {
            0.0
        } else {
            saved as f64 / sum as f64
        };
        let count = u32::try_from(self.count).unwrap_or(u32::MAX);
        let succeeded = u32::try_from(self.succeeded).unwrap_or(u32::MAX);
        proto::GenerateBatchResponse {
            index: 0,
            result: Some(proto::generate_batch_response::Result::Summary(
                proto::BatchSummary {
                    items: count,
                    succeeded,
                    failed: count - succeeded,
                    wall_us: wall,
                    sum_us: sum,
                    saved_us: saved,
                    saved_fraction: fraction,
                },
            )),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Stream for BatchStream {
    type Item = Result<proto::GenerateBatchResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.items.as_mut().poll_next(cx) {
            Poll::Ready(Some(finished)) => Poll::Ready(Some(Ok(self.item(finished)))),
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Ok(self.summary())))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
