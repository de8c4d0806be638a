//! A Generate call as a future that holds no more than a waiting call
//! needs.
//!
//! Every call waiting in a queue keeps its future alive, so its size is
//! memory per waiting call (bench S5). An `async fn` keeps each of its
//! arguments for its whole life, and each nested one its own copy, so the
//! request was held three times over (the service's, the gateway's, the
//! wait's), beside state for paths the call never took. Here the
//! synchronous part (lookup, key limits, validation, admission) runs when
//! the call is made, and a plain call (no cache, no fallbacks) then waits
//! as a [`Waiting`]: its record, its permits, its ticket, the reply channel
//! and the deadline's timer. Calls with a cache or fallbacks go through
//! the gateway's async path, boxed as before.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tokio::time::Sleep;

use crate::auth::limits::CallPermit;
use crate::error::{Error, Stage};
use crate::gateway::Admitted;
use crate::outcome::{CallResult, Outcome};
use crate::record::CallRecord;

/// The boxed future of a Generate call that takes the cache or fallbacks.
pub(crate) type Routed<'a> = Pin<Box<dyn Future<Output = CallResult> + Send + 'a>>;

pin_project! {
    /// A Generate call (see [`crate::Gateway::generate`]).
    pub struct GenerateCall<'a> {
        #[pin]
        state: State<'a>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<'a> {
        /// Refused or failed before it waited; taken on the first poll.
        Done { result: Option<CallResult> },
        /// A plain call admitted to its model's queue.
        Waiting { #[pin] waiting: Waiting<'a> },
        /// A call to a model with a cache or fallbacks.
        Routed { future: Routed<'a> },
    }
}

impl<'a> GenerateCall<'a> {
    pub(crate) fn done(result: CallResult) -> Self {
        let result = Some(result);
        GenerateCall {
            state: State::Done { result },
        }
    }

    pub(crate) fn waiting(waiting: Waiting<'a>) -> Self {
        GenerateCall {
            state: State::Waiting { waiting },
        }
    }

    pub(crate) fn routed(future: Routed<'a>) -> Self {
        GenerateCall {
            state: State::Routed { future },
        }
    }
}

impl Future for GenerateCall<'_> {
    type Output = CallResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CallResult> {
        match self.project().state.project() {
            // A future is not polled again once it is ready; if this one
            // were, it would have nothing more to give.
            StateProj::Done { result } => match result.take() {
                Some(result) => Poll::Ready(result),
                None => Poll::Pending,
            },
            StateProj::Waiting { waiting } => waiting.poll(cx),
            StateProj::Routed { future } => future.as_mut().poll(cx),
        }
    }
}

pin_project! {
    /// A plain call waiting for its worker's reply, up to its deadline.
    /// Dropped before the reply came (the client went away), its ticket
    /// takes it out of the queue or cancels it, and its record counts it
    /// as CANCELLED.
    pub(crate) struct Waiting<'a> {
        record: CallRecord,
        // The caller's place under its key's concurrency limit.
        _key_permit: CallPermit,
        call: Admitted<'a>,
        reply: oneshot::Receiver<CallResult>,
        // Fires at the call's deadline.
        #[pin]
        deadline: Sleep,
        // When the call reached the server (for the total time).
        received: Instant,
    }
}

impl<'a> Waiting<'a> {
    /// Starts the deadline's timer (so: on the runtime).
    pub(crate) fn new(
        record: CallRecord,
        key_permit: CallPermit,
        call: Admitted<'a>,
        reply: oneshot::Receiver<CallResult>,
        received: Instant,
    ) -> Self {
        let deadline = tokio::time::sleep_until(call.deadline.at().into());
        Waiting {
            record,
            _key_permit: key_permit,
            call,
            reply,
            deadline,
            received,
        }
    }
}

impl Future for Waiting<'_> {
    type Output = CallResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CallResult> {
        let this = self.project();
        // The reply first, then the timer: a reply that came with the
        // deadline wins, as with `tokio::time::timeout`.
        let result = match Pin::new(&mut *this.reply).poll(cx) {
            Poll::Ready(reply) => {
                this.call.ticket.settle();
                reply.unwrap_or_else(|_| {
                    Err(Error::Dropped {
                        model: this.call.model.config.name.clone(),
                    })
                })
            }
            Poll::Pending => {
                ready!(this.deadline.poll(cx));
                Err(Error::DeadlineExceeded {
                    model: this.call.model.config.name.clone(),
                    deadline: this.call.deadline,
                    stage: this.call.ticket.abandon().unwrap_or(Stage::Running),
                })
            }
        };
        let result = result.map(|outcome: Outcome| outcome.served_by(this.call.model));
        this.record.finish(result.as_ref().err());
        Poll::Ready(result.map(|outcome| outcome.received_at(*this.received)))
    }
}
