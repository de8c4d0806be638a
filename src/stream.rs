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
use crate::outcome::{CacheState, Route, StreamItem};
use crate::pool::Ticket;
use crate::record::CallRecord;

/// The items of one streaming call, ending after [`StreamItem::Done`] or
/// the first error.
pub struct GenerationStream {
    rx: mpsc::Receiver<Result<StreamItem, Error>>,
    ticket: Ticket,
    /// Held until the stream is dropped: the call counts as in flight.
    _call: TaskTrackerToken,
    /// The RPC's record: attached once the call is sure to be served by
    /// this stream (a model with fallbacks peeks at the first item first).
    record: Option<CallRecord>,
    received: std::time::Instant,
    /// The first item, read before the record was attached.
    peeked: Option<Result<StreamItem, Error>>,
    /// Stamped on the last item.
    route: Route,
    model: String,
    /// Whether a token has been seen (time to first token is recorded once).
    first_token_seen: bool,
    deadline: Deadline,
    timer: Pin<Box<Sleep>>,
    done: bool,
}

impl GenerationStream {
    /// The stream of an admitted call, received at `received`.
    pub(crate) fn new(
        rx: mpsc::Receiver<Result<StreamItem, Error>>,
        ticket: Ticket,
        call: TaskTrackerToken,
        received: std::time::Instant,
        model: String,
        deadline: Deadline,
    ) -> Self {
        GenerationStream {
            rx,
            ticket,
            _call: call,
            record: None,
            received,
            peeked: None,
            route: Route {
                model: model.clone(),
                ..Route::default()
            },
            model,
            first_token_seen: false,
            deadline,
            timer: Box::pin(tokio::time::sleep_until(deadline.at().into())),
            done: false,
        }
    }

    /// Waits for the first item and returns its error, if it is one: a
    /// model with fallbacks passes such a call on. The item is kept for
    /// the client otherwise.
    pub(crate) async fn first_error(&mut self) -> Option<Error> {
        use tokio_stream::StreamExt;
        let first = self.next().await;
        let error = match &first {
            Some(Err(error)) => Some(error.clone()),
            _ => None,
        };
        self.peeked = first;
        error
    }

    /// Says which models were tried before this one, and the cache's part.
    pub(crate) fn set_route(&mut self, tried: Vec<String>, cache: CacheState) {
        self.route.tried = tried;
        self.route.cache = cache;
        // A call that ended at its first item was stamped while peeked.
        if let Some(Ok(StreamItem::Done(outcome))) = &mut self.peeked {
            outcome.route = self.route.clone();
        }
    }

    /// Attaches the RPC's record, catching up with what was peeked.
    pub(crate) fn attach(mut self, mut record: CallRecord) -> Self {
        match &self.peeked {
            Some(Ok(StreamItem::Text(_))) => {
                record.metrics().first_token(self.received.elapsed());
            }
            Some(Ok(StreamItem::Done(_))) => record.finish(None),
            Some(Err(error)) => record.finish(Some(error)),
            None if self.done => record.finish(None),
            None => {}
        }
        self.record = Some(record);
        self
    }

    fn end(&mut self, item: Result<StreamItem, Error>) -> Poll<Option<Result<StreamItem, Error>>> {
        self.done = true;
        self.ticket.settle();
        if let Some(record) = self.record.as_mut() {
            record.finish(item.as_ref().err());
        }
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
        if let Some(item) = self.peeked.take() {
            return Poll::Ready(Some(item));
        }
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
                    if let Some(record) = &self.record {
                        record.metrics().first_token(self.received.elapsed());
                    }
                }
                Poll::Ready(Some(Ok(StreamItem::Text(text))))
            }
            Poll::Ready(Some(Ok(StreamItem::Done(outcome)))) => {
                let mut outcome = outcome.received_at(self.received);
                outcome.route = self.route.clone();
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
