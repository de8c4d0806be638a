//! What travels between an RPC handler and a worker: the job, its reply
//! channel, and the outcome.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::backend::{Cancelled, Completion, GenerateParams, TokenSink};
use crate::cancel::CancelSignal;
use crate::error::Error;

/// A finished call, as the worker hands it back.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The whole text (Generate); empty for streams, whose text went out as
    /// it was produced.
    pub text: String,
    /// What the backend reported.
    pub completion: Completion,
    /// Admitted to picked up by a worker.
    pub queue_wait: Duration,
    /// Time inside the backend call.
    pub backend_time: Duration,
    /// When the first piece of text was produced, if any.
    pub first_token: Option<Instant>,
}

/// The result of a call.
pub type JobResult = Result<Outcome, Error>;

/// One message of a streaming call, from the worker to the handler.
#[derive(Debug)]
pub enum StreamEvent {
    /// The next piece of text.
    Text(String),
    /// The end of the call.
    Done(JobResult),
}

/// How the worker answers.
pub(crate) enum Reply {
    /// Generate: the text is collected and sent once.
    Whole(oneshot::Sender<JobResult>),
    /// GenerateStream: each piece of text is sent as it comes (with
    /// back-pressure: a slow reader slows the backend), then the end.
    Stream(mpsc::Sender<StreamEvent>),
}

impl Reply {
    /// Sends the final result; a caller that has gone away is ignored.
    pub(crate) fn finish(self, result: JobResult) {
        match self {
            Reply::Whole(tx) => {
                let _ = tx.send(result);
            }
            Reply::Stream(tx) => {
                // Runs on a worker thread, never on the runtime.
                let _ = tx.blocking_send(StreamEvent::Done(result));
            }
        }
    }

    /// Sends the final result of a call that never ran, without blocking:
    /// for code on the async runtime (a shutdown cutting off the queue).
    /// Such a stream has sent nothing yet, so its buffer has room.
    pub(crate) fn finish_unstarted(self, result: JobResult) {
        match self {
            Reply::Whole(tx) => {
                let _ = tx.send(result);
            }
            Reply::Stream(tx) => {
                let _ = tx.try_send(StreamEvent::Done(result));
            }
        }
    }
}

/// A call waiting for, or running on, a worker.
pub(crate) struct Job {
    pub(crate) params: GenerateParams,
    /// Set when the caller no longer wants the result.
    pub(crate) cancel: CancelSignal,
    /// Queue wait plus run must end by then.
    pub(crate) deadline: Instant,
    /// The budget the deadline was set from, for error messages.
    pub(crate) timeout_ms: u64,
    /// When the job entered the queue.
    pub(crate) admitted: Instant,
    pub(crate) reply: Reply,
    /// The handler's span, so the worker's logs belong to the request.
    pub(crate) span: tracing::Span,
}

/// The sink of a Generate call: collects the text.
pub(crate) struct Collect(pub(crate) String);

impl TokenSink for Collect {
    fn emit(&mut self, text: &str) -> Result<(), Cancelled> {
        self.0.push_str(text);
        Ok(())
    }
}

/// The sink of a GenerateStream call: forwards each piece, blocking while
/// the handler's buffer is full.
pub(crate) struct Forward<'a>(pub(crate) &'a mpsc::Sender<StreamEvent>);

impl TokenSink for Forward<'_> {
    fn emit(&mut self, text: &str) -> Result<(), Cancelled> {
        self.0
            .blocking_send(StreamEvent::Text(text.to_string()))
            .map_err(|_| Cancelled)
    }
}
