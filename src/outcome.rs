//! What a call produces: the one result type that travels from the worker
//! to the handler, converted to proto once, in [`crate::service`].
//!
//! A Generate call answers one [`CallResult`]; a GenerateStream call sends
//! `Result<StreamItem, Error>`s: the text as it comes, then
//! [`StreamItem::Done`] with the same [`Outcome`] a Generate call gets (its
//! text empty: it went out piece by piece), or the error that ended it.

use std::time::{Duration, Instant};

use crate::backend::Completion;
use crate::error::Error;

/// A finished call.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The whole text (Generate); empty for streams, whose text went out as
    /// it was produced.
    pub text: String,
    /// What the backend reported.
    pub completion: Completion,
    /// Where the call's time went.
    pub timing: Timing,
}

/// Where a call's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timing {
    /// Admitted to picked up by a worker.
    pub queue_wait: Duration,
    /// Inside the backend call.
    pub backend: Duration,
    /// Received by the handler to the result in the handler's hands.
    pub total: Duration,
    /// Received by the handler to the first piece of text, if any.
    pub first_token: Option<Duration>,
}

impl Outcome {
    /// Stamps the end-to-end time, once the handler holds the result.
    pub(crate) fn received_at(mut self, received: Instant) -> Self {
        self.timing.total = received.elapsed();
        self
    }
}

/// The result of a call.
pub type CallResult = Result<Outcome, Error>;

/// One message of a streaming call.
#[derive(Debug)]
pub enum StreamItem {
    /// The next piece of text.
    Text(String),
    /// The end: usage and timing.
    Done(Outcome),
}
