//! The per-RPC bookkeeping: one `infergate_requests_total` and one
//! `infergate_request_duration_seconds` sample per call, however it ends.
//!
//! A [`CallRecord`] is made when the handler receives the call and is
//! finished with the call's outcome. If it is dropped unfinished (the
//! client went away and tonic dropped the handler or the stream), the call
//! is counted as CANCELLED.

use std::sync::Arc;
use std::time::Instant;

use tonic::Code;

use crate::error::Error;
use crate::metrics::{Method, ModelMetrics};

/// The record of one RPC.
pub(crate) struct CallRecord {
    metrics: Arc<ModelMetrics>,
    /// The handler's span (model, request id), for the closing log line.
    span: tracing::Span,
    method: Method,
    received: Instant,
    /// The `tenant` label.
    tenant: Arc<str>,
    finished: bool,
}

impl CallRecord {
    pub(crate) fn new(
        metrics: Arc<ModelMetrics>,
        method: Method,
        received: Instant,
        tenant: Arc<str>,
    ) -> Self {
        CallRecord {
            metrics,
            span: tracing::Span::current(),
            method,
            received,
            tenant,
            finished: false,
        }
    }

    /// The model's metric handles.
    pub(crate) fn metrics(&self) -> &ModelMetrics {
        &self.metrics
    }

    /// Records the outcome: OK, or the error's code (and its rejection
    /// reason, if it is one).
    pub(crate) fn finish(&mut self, error: Option<&Error>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let code = match error {
            None => Code::Ok,
            Some(error) => {
                self.metrics.rejected(error, &self.tenant);
                error.code()
            }
        };
        self.close(code);
    }

    fn close(&self, code: Code) {
        let elapsed = self.received.elapsed();
        self.metrics
            .request_finished(self.method, code, elapsed, &self.tenant);
        let _entered = self.span.enter();
        tracing::debug!(
            method = self.method.as_str(),
            code = crate::metrics::code_name(code),
            elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            "call finished"
        );
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        if !self.finished {
            self.finished = true;
            self.close(Code::Cancelled);
        }
    }
}
