//! The loop of one worker thread: take a job, run the backend, reply.
//!
//! A worker owns its backend (made by the model's factory on this thread),
//! so backend calls never share state and never hold a lock. A panic inside
//! the backend is caught here: the call gets INTERNAL, the backend is made
//! anew for the next call, and the thread lives on, so the pool keeps its
//! full size.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::backend::{Backend, BackendError, CallContext, Completion, TokenSink};
use crate::error::{Error, Stage};
use crate::pool::Shared;
use crate::pool::job::{Collect, Forward, Job, Outcome, Reply};

/// How a backend call ended.
enum Ended {
    Done(Completion, Option<Instant>),
    Failed(BackendError),
    Panicked(String),
}

/// Runs jobs until the queue is closed and empty.
pub(crate) fn run(index: usize, shared: Arc<Shared>) {
    let mut backend: Option<Box<dyn Backend>> = None;
    while let Some(job) = shared.queue.pop() {
        run_job(index, &shared, &mut backend, job);
    }
    tracing::debug!(model = %shared.model, worker = index, "worker stopped");
}

fn run_job(index: usize, shared: &Shared, slot: &mut Option<Box<dyn Backend>>, job: Job) {
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
    if picked >= deadline {
        reply.finish(Err(Error::DeadlineExceeded {
            model: shared.model.clone(),
            timeout_ms,
            stage: Stage::Queued,
        }));
        return;
    }
    let backend = match slot {
        Some(backend) => backend,
        None => match shared.factory.create(index) {
            Ok(backend) => slot.insert(backend),
            Err(source) => {
                tracing::warn!(model = %shared.model, worker = index, error = %source, "backend could not start");
                reply.finish(Err(Error::Backend {
                    model: shared.model.clone(),
                    source,
                }));
                return;
            }
        },
    };

    shared.calls.fetch_add(1, Ordering::Relaxed);
    shared.metrics.queue_wait(picked - admitted);
    shared.running.begin(index, &cancel);
    let ended = match &reply {
        Reply::Whole(_) => {
            let mut sink = Collect(String::new());
            let ended = call(backend.as_mut(), &params, &cancel, deadline, &mut sink);
            (ended, sink.0)
        }
        Reply::Stream(tx) => {
            let mut sink = Forward(tx);
            (
                call(backend.as_mut(), &params, &cancel, deadline, &mut sink),
                String::new(),
            )
        }
    };
    let backend_time = shared.running.end(index);
    shared.metrics.backend_call(backend_time);
    if let (Ended::Panicked(_), _) = &ended {
        shared.metrics.panicked();
    }

    let (ended, text) = ended;
    if cancel.is_cancelled() {
        if let Ended::Panicked(_) = ended {
            *slot = None;
        }
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
        Ended::Panicked(message) => {
            tracing::error!(model = %shared.model, worker = index, panic = %message, "backend panicked; making a new one for this worker");
            *slot = None;
            Err(Error::BackendPanic {
                model: shared.model.clone(),
            })
        }
    };
    reply.finish(result);
}

/// One backend call, with panics caught.
fn call(
    backend: &mut dyn Backend,
    params: &crate::backend::GenerateParams,
    cancel: &crate::cancel::CancelSignal,
    deadline: Instant,
    sink: &mut dyn TokenSink,
) -> Ended {
    let mut ctx = CallContext::new(cancel, deadline, sink);
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
