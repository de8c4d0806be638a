//! The loop of one worker thread: take a job, run the backend, reply.
//!
//! A worker owns its backend (made by the model's factory on this thread),
//! so backend calls never share state and never hold a lock. A backend is
//! replaced when it panics (caught here: that call gets INTERNAL) or says it
//! is broken (its process died, hung, or wrote garbage); the thread lives
//! on, so the pool keeps its full size. A backend that keeps failing is
//! restarted with an exponential back-off.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::backend::{
    Backend, BackendError, BackendErrorKind, CallContext, Completion, Health, TokenSink,
};
use crate::cancel::CancelSignal;
use crate::error::{Error, Stage};
use crate::pool::Shared;
use crate::pool::job::{Collect, Forward, Job, Outcome, Reply};

/// First restart delay after a failure; doubled per further failure.
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest restart delay.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// How a backend call ended.
enum Ended {
    Done(Completion, Option<Instant>),
    Failed(BackendError),
    Panicked(String),
}

/// A worker's backend and its restart state.
struct Slot {
    backend: Option<Box<dyn Backend>>,
    /// Failures (failed starts, broken backends) since the last success:
    /// they set the back-off.
    failures: u32,
    /// No start is tried before this.
    next_start: Instant,
    /// Why the last start failed, for the calls that find no backend.
    last_error: Option<BackendError>,
}

impl Slot {
    fn new() -> Self {
        Slot {
            backend: None,
            failures: 0,
            next_start: Instant::now(),
            last_error: None,
        }
    }

    /// Tries to make the backend now.
    fn start(&mut self, index: usize, shared: &Shared) {
        match shared.factory.create(index) {
            Ok(backend) => {
                self.backend = Some(backend);
                shared.ready.fetch_add(1, Ordering::Relaxed);
                self.last_error = None;
            }
            Err(error) => {
                tracing::warn!(model = %shared.model, worker = index, %error, "backend could not start");
                shared.metrics.worker_restarted("start_failed");
                self.failed();
                self.last_error = Some(error);
            }
        }
    }

    /// Counts a failure and pushes the next start back.
    fn failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let delay = RESTART_BACKOFF_MIN
            .saturating_mul(1 << (self.failures - 1).min(16))
            .min(RESTART_BACKOFF_MAX);
        self.next_start = Instant::now() + delay;
    }

    /// Drops a broken backend; the next start waits out the back-off.
    fn retire(&mut self, index: usize, shared: &Shared, reason: &'static str) {
        if self.backend.take().is_some() {
            shared.ready.fetch_sub(1, Ordering::Relaxed);
        }
        shared.metrics.worker_restarted(reason);
        self.failed();
        tracing::warn!(model = %shared.model, worker = index, reason, "replacing the backend");
    }

    /// Makes sure there is a backend for a call due by `deadline`: starts
    /// one if needed, waiting out the back-off unless the call ends or
    /// expires first.
    fn ensure(
        &mut self,
        index: usize,
        shared: &Shared,
        cancel: &CancelSignal,
        deadline: Instant,
    ) -> Result<(), BackendError> {
        if self.backend.is_some() {
            return Ok(());
        }
        if self.next_start > deadline || cancel.wait_until(self.next_start) {
            return Err(self.start_error());
        }
        self.start(index, shared);
        if self.backend.is_some() {
            Ok(())
        } else {
            Err(self.start_error())
        }
    }

    fn start_error(&self) -> BackendError {
        let why = self
            .last_error
            .as_ref()
            .map_or_else(|| "it is restarting".to_string(), |e| e.message.clone());
        BackendError::new(
            BackendErrorKind::Unavailable,
            format!("no worker backend is available: {why}"),
        )
    }
}

/// Runs jobs until the queue is closed and empty.
pub(crate) fn run(index: usize, shared: Arc<Shared>) {
    let mut slot = Slot::new();
    slot.start(index, &shared);
    while let Some(job) = shared.queue.pop() {
        run_job(index, &shared, &mut slot, job);
        // Replace a broken backend now, not when the next call comes.
        if slot.backend.is_none() && Instant::now() >= slot.next_start {
            slot.start(index, &shared);
        }
    }
    if slot.backend.take().is_some() {
        shared.ready.fetch_sub(1, Ordering::Relaxed);
    }
    tracing::debug!(model = %shared.model, worker = index, "worker stopped");
}

fn run_job(index: usize, shared: &Shared, slot: &mut Slot, job: Job) {
    let Job {
        params,
        cancel,
        deadline,
        timeout_ms,
        admitted,
        reply,
        span,
    } = job;
    let _entered = span.enter();
    let picked = Instant::now();
    if cancel.is_cancelled() {
        // The caller gave up in the instant before the worker took the job.
        return;
    }
    let expired = || Error::DeadlineExceeded {
        model: shared.model.clone(),
        timeout_ms,
        stage: Stage::Queued,
    };
    if picked >= deadline {
        reply.finish(Err(expired()));
        return;
    }
    if let Err(source) = slot.ensure(index, shared, &cancel, deadline) {
        if !cancel.is_cancelled() {
            reply.finish(Err(Error::Backend {
                model: shared.model.clone(),
                source,
            }));
        }
        return;
    }
    // `ensure` succeeded, so there is a backend.
    let Some(backend) = slot.backend.as_mut() else {
        return;
    };

    shared.calls.fetch_add(1, Ordering::Relaxed);
    shared.metrics.queue_wait(picked - admitted);
    shared.running.begin(index, &cancel);
    // Generate collects the text; GenerateStream forwards each piece.
    let mut collected = Collect(String::new());
    let mut forward;
    let (sink, streaming): (&mut dyn TokenSink, bool) = match &reply {
        Reply::Whole(_) => (&mut collected, false),
        Reply::Stream(tx) => {
            forward = Forward(tx);
            (&mut forward, true)
        }
    };
    let ended = call(
        backend.as_mut(),
        &params,
        &cancel,
        deadline,
        sink,
        streaming,
    );
    let text = collected.0;
    let backend_time = shared.running.end(index);
    shared.metrics.backend_call(backend_time);

    match &ended {
        Ended::Panicked(message) => {
            tracing::error!(model = %shared.model, worker = index, panic = %message, "backend panicked");
            shared.metrics.panicked();
            slot.retire(index, shared, "panic");
        }
        _ => match backend.health() {
            Health::Healthy => {
                if matches!(ended, Ended::Done(..)) {
                    slot.failures = 0;
                }
            }
            Health::Restart(reason) => slot.retire(index, shared, reason),
        },
    }

    if cancel.is_cancelled() {
        if shared.aborted.load(Ordering::Acquire) {
            // Cut off by a shutdown whose grace ran out: the caller waits.
            reply.finish(Err(Error::ShuttingDown));
        } else {
            // The caller went away or timed out, and has already answered.
            tracing::debug!(model = %shared.model, "discarding the result of a cancelled call");
        }
        return;
    }
    let result = match ended {
        Ended::Done(completion, first_token) => {
            shared
                .metrics
                .tokens(completion.prompt_tokens, completion.completion_tokens);
            Ok(Outcome {
                text,
                completion,
                queue_wait: picked - admitted,
                backend_time,
                first_token,
            })
        }
        // A backend that gave up because the deadline came (its `sleep` or
        // its I/O timeout ran out) failed because of the deadline.
        Ended::Failed(_) if Instant::now() >= deadline => Err(Error::DeadlineExceeded {
            model: shared.model.clone(),
            timeout_ms,
            stage: Stage::Running,
        }),
        Ended::Failed(source) => Err(Error::Backend {
            model: shared.model.clone(),
            source,
        }),
        Ended::Panicked(_) => Err(Error::BackendPanic {
            model: shared.model.clone(),
        }),
    };
    reply.finish(result);
}

/// One backend call, with panics caught.
fn call(
    backend: &mut dyn Backend,
    params: &crate::backend::GenerateParams,
    cancel: &CancelSignal,
    deadline: Instant,
    sink: &mut dyn TokenSink,
    streaming: bool,
) -> Ended {
    let mut ctx = CallContext::new(cancel, deadline, sink).with_streaming(streaming);
    match catch_unwind(AssertUnwindSafe(|| backend.generate(params, &mut ctx))) {
        Ok(Ok(completion)) => Ended::Done(completion, ctx.first_token_at()),
        Ok(Err(error)) => Ended::Failed(error),
        Err(payload) => Ended::Panicked(panic_message(payload.as_ref())),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
