//! The handler side of a streaming call: text from the worker, bounded by
//! the call's deadline.
//!
//! [`GenerationStream`] reads the worker's events straight from its channel
//! (no task in between) and races them against the deadline. Dropping it,
//! which tonic does when the client goes away, drops the [`Ticket`] and so
//! cancels the call; the worker's next `emit` fails and the backend stops.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::time::Sleep;
use tokio_stream::Stream;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::error::{Error, Stage};
use crate::gateway::Finished;
use crate::pool::StreamEvent;
use crate::pool::Ticket;
use crate::record::CallRecord;

/// One item of a streaming call.
#[derive(Debug)]
pub enum StreamItem {
    /// The next piece of text.
    Text(String),
    /// The end: usage and timing.
    Finished(Finished),
}

/// The events of one streaming call, ending after the final item or the
/// first error.
pub struct GenerationStream {
    rx: mpsc::Receiver<StreamEvent>,
    ticket: Ticket,
    /// Held until the stream is dropped: the call counts as in flight.
    _call: TaskTrackerToken,
    record: CallRecord,
    model: String,
    /// Whether a token has been seen (time to first token is recorded once).
    first_token_seen: bool,
    deadline: Pin<Box<Sleep>>,
    timeout_ms: u64,
    done: bool,
}

impl GenerationStream {
    pub(crate) fn new(
        rx: mpsc::Receiver<StreamEvent>,
        ticket: Ticket,
        call: TaskTrackerToken,
        record: CallRecord,
        model: String,
        deadline: Instant,
        timeout_ms: u64,
    ) -> Self {
        GenerationStream {
            rx,
            ticket,
            _call: call,
            record,
            model,
            first_token_seen: false,
            deadline: Box::pin(tokio::time::sleep_until(deadline.into())),
            timeout_ms,
            done: false,
        }
    }

    fn end(&mut self, item: Result<StreamItem, Error>) -> Poll<Option<Result<StreamItem, Error>>> {
        self.done = true;
        self.ticket.settle();
        self.record.finish(item.as_ref().err());
        Poll::Ready(Some(item))
    }
}

impl Stream for GenerationStream {
    type Item = Result<StreamItem, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(StreamEvent::Text(text))) => {
                if !self.first_token_seen {
                    self.first_token_seen = true;
                    let elapsed = self.record.received().elapsed();
                    self.record.metrics().first_token(elapsed);
                }
                Poll::Ready(Some(Ok(StreamItem::Text(text))))
            }
            Poll::Ready(Some(StreamEvent::Done(Ok(outcome)))) => {
                let finished = Finished::new(outcome, self.record.received());
                self.end(Ok(StreamItem::Finished(finished)))
            }
            Poll::Ready(Some(StreamEvent::Done(Err(error)))) => self.end(Err(error)),
            Poll::Ready(None) => {
                let model = self.model.clone();
                self.end(Err(Error::Dropped { model }))
            }
            Poll::Pending => {
                if self.deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let stage = self.ticket.abandon().unwrap_or(Stage::Running);
                let error = Error::DeadlineExceeded {
                    model: self.model.clone(),
                    timeout_ms: self.timeout_ms,
                    stage,
                };
                self.end(Err(error))
            }
        }
    }
}
