//! A call's way through its model and that model's `fallbacks`: which
//! model is tried now, the copy of the request and the deadline it gets,
//! and the models that failed before it.
//!
//! Every attempt keeps the first model's deadline as a ceiling; the last
//! attempt takes the request, the others a copy. Only failures that say
//! "this model cannot take the call now" ([`Error::fallback_reason`]) move
//! on to the next model; each such move is counted on the model that
//! failed.

use crate::deadline::Deadline;
use crate::error::Error;
use crate::gateway::{CallOptions, Model};
use crate::proto;

/// The state of one call's attempts.
pub(crate) struct Chain<'a> {
    models: &'a [Model],
    fallbacks: std::slice::Iter<'a, usize>,
    /// The model tried now.
    model: &'a Model,
    /// The one after it, if any.
    next: Option<&'a Model>,
    /// The first model's deadline: no attempt runs past it.
    overall: Deadline,
    request: Option<proto::GenerateRequest>,
    options: &'a CallOptions,
    /// The models that failed, in order.
    tried: Vec<String>,
}

impl<'a> Chain<'a> {
    /// A call on `first` (of `models`) and its fallbacks.
    pub(crate) fn new(
        models: &'a [Model],
        first: &'a Model,
        request: proto::GenerateRequest,
        options: &'a CallOptions,
    ) -> Self {
        let mut fallbacks = first.fallbacks().iter();
        let next = fallbacks.next().map(|&i| &models[i]);
        Chain {
            models,
            fallbacks,
            model: first,
            next,
            overall: first.deadline(options.received, options.client_timeout),
            request: Some(request),
            options,
            tried: Vec::new(),
        }
    }

    /// The model to try now, the request it gets and its deadline.
    pub(crate) fn attempt(
        &mut self,
    ) -> Result<(&'a Model, proto::GenerateRequest, Deadline), Error> {
        let request = match self.next {
            Some(_) => self.request.clone(),
            None => self.request.take(),
        };
        let request = request.ok_or_else(|| Error::Dropped {
            model: self.model.config.name.clone(),
        })?;
        let deadline = self
            .model
            .deadline(self.options.received, self.options.client_timeout)
            .earliest(self.overall);
        Ok((self.model, request, deadline))
    }

    /// Whether a model is left to try after this one.
    pub(crate) fn has_next(&self) -> bool {
        self.next.is_some()
    }

    /// The model tried now failed with `error`: moves on to the next one,
    /// or gives the error back when there is none, the failure allows none,
    /// or the deadline has passed.
    pub(crate) fn failed(&mut self, error: Error) -> Result<(), Error> {
        let (Some(to), Some(reason)) = (self.next, error.fallback_reason()) else {
            return Err(error);
        };
        if self.overall.expired() {
            return Err(error);
        }
        let metrics = self.model.metrics();
        metrics.rejected(&error, &self.options.caller.tenant);
        metrics.fell_back(&to.config.name, reason);
        tracing::debug!(model = %self.model.config.name, to = %to.config.name, reason, "falling back");
        self.tried.push(self.model.config.name.clone());
        self.model = to;
        self.next = self.fallbacks.next().map(|&i| &self.models[i]);
        Ok(())
    }

    /// The models that failed before the one that served the call.
    pub(crate) fn into_tried(self) -> Vec<String> {
        self.tried
    }
}
