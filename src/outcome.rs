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
    /// Which model served it, which failed first, and the cache's part.
    pub route: Route,
}

/// How a call was served: set by the gateway, not the worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// The model that served the call (empty until the gateway stamps it).
    pub model: String,
    /// The models tried before it, each of which failed before its first
    /// token.
    pub tried: Vec<String>,
    /// The response cache's part in the call.
    pub cache: CacheState,
}

/// The response cache's part in a call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CacheState {
    /// No cache, or a request that may not be cached.
    #[default]
    Off,
    /// Not cached: the backend ran, and the answer was stored.
    Miss,
    /// Answered from the cache.
    Hit,
    /// Shared an identical call's backend call.
    Coalesced,
    /// The client asked to bypass the cache.
    Bypass,
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
    /// A shared answer as this call's (a hit, or an identical call's):
    /// this call took no queue place and no backend time of its own, so
    /// that summing calls' backend times counts each backend call once
    /// (the handler stamps the total).
    pub(crate) fn shared(cached: &Outcome, state: CacheState) -> Self {
        let mut outcome = cached.clone();
        outcome.timing = Timing::default();
        outcome.route.cache = state;
        outcome
    }

    /// The same outcome, served by the model of that name.
    pub(crate) fn served_by(mut self, model: &crate::gateway::Model) -> Self {
        self.route.model = model.config.name.clone();
        self
    }

    /// The same outcome, marked with the cache's part in it.
    pub(crate) fn cached(mut self, state: CacheState) -> Self {
        self.route.cache = state;
        self
    }

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
