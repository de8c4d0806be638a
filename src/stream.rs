//! The handler side of a streaming call: text from the worker, bounded by
//! the call's deadline.
//!
//! [`GenerationStream`] reads the worker's items straight from its channel
//! (no task in between) and races them against the deadline. Dropping it,
//! which tonic does when the client goes away, drops the [`Ticket`] and so
//! cancels the call; the worker's next `emit` fails and the backend stops.
//! A client that stops reading cannot hold the worker: the worker's sends
//! give up at the deadline (see `pool::job::send_within`), and when the
//! client reads again the stream ends with DEADLINE_EXCEEDED rather than
//! late text.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tokio::time::Sleep;
use tokio_stream::Stream;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::deadline::Deadline;
use crate::error::{Error, Stage};
use crate::outcome::StreamItem;
use crate::pool::Ticket;
use crate::record::CallRecord;

/// The items of one streaming call, ending after [`StreamItem::Done`] or
/// the first error.
pub struct GenerationStream {
    rx: mpsc::Receiver<Result<StreamItem, Error>>,
    ticket: Ticket,
    /// Held until the stream is dropped: the call counts as in flight.
    _call: TaskTrackerToken,
    record: CallRecord,
    model: String,
    /// Whether a token has been seen (time to first token is recorded once).
    first_token_seen: bool,
    deadline: Deadline,
    timer: Pin<Box<Sleep>>,
    done: bool,
}

impl GenerationStream {
    pub(crate) fn new(
        rx: mpsc::Receiver<Result<StreamItem, Error>>,
        ticket: Ticket,
        call: TaskTrackerToken,
        record: CallRecord,
        model: String,
        deadline: Deadline,
    ) -> Self {
        GenerationStream {
            rx,
            ticket,
            _call: call,
            record,
            model,
            first_token_seen: false,
            deadline,
            timer: Box::pin(tokio::time::sleep_until(deadline.at().into())),
            done: false,
        }
    }

    fn end(&mut self, item: Result<StreamItem, Error>) -> Poll<Option<Result<StreamItem, Error>>> {
        self.done = true;
        self.ticket.settle();
        self.record.finish(item.as_ref().err());
        Poll::Ready(Some(item))
    }

    fn expire(&mut self) -> Poll<Option<Result<StreamItem, Error>>> {
        let stage = self.ticket.abandon().unwrap_or(Stage::Running);
        let error = Error::DeadlineExceeded {
            model: self.model.clone(),
            deadline: self.deadline,
            stage,
        };
        self.end(Err(error))
    }
}

impl Stream for GenerationStream {
    type Item = Result<StreamItem, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(StreamItem::Text(text)))) => {
                // Text buffered before the deadline but read after it is
                // late: the call ended at its deadline.
                if self.deadline.expired() {
                    return self.expire();
                }
                if !self.first_token_seen {
                    self.first_token_seen = true;
                    let elapsed = self.record.received().elapsed();
                    self.record.metrics().first_token(elapsed);
                }
                Poll::Ready(Some(Ok(StreamItem::Text(text))))
            }
            Poll::Ready(Some(Ok(StreamItem::Done(outcome)))) => {
                let outcome = outcome.received_at(self.record.received());
                self.end(Ok(StreamItem::Done(outcome)))
            }
            Poll::Ready(Some(Err(error))) => self.end(Err(error)),
            // The worker gave up without a last word: it could not deliver
            // one before the deadline.
            Poll::Ready(None) if self.deadline.expired() => self.expire(),
            Poll::Ready(None) => {
                let model = self.model.clone();
                self.end(Err(Error::Dropped { model }))
            }
            Poll::Pending => {
                if self.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.expire()
            }
        }
    }
}
