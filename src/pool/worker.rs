//! The loop of one worker thread: take a job, run the backend, reply.
//!
//! A worker owns its backend (made by the model's factory on this thread),
//! so backend calls never share state and never hold a lock. A backend is
//! replaced when it panics (caught here: that call gets INTERNAL) or says it
//! is broken (its process died, hung, or wrote garbage); the thread lives
//! on, so the pool keeps its full size. A backend that keeps failing is
//! restarted with an exponential back-off.
//!
//! A worker without a backend takes no calls (the healthy workers serve
//! them) and starts a new backend as soon as its back-off allows, not when
//! the next call comes. A worker whose start failed is *down*; when every
//! worker is down, the calls waiting are failed and new ones refused at
//! once (see `WorkerPool::submit`) until one starts again.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::backend::{
    Backend, BackendError, CallContext, Completion, GenerateParams, Health, TokenSink,
};
use crate::cancel::CancelSignal;
use crate::deadline::Deadline;
use crate::error::{Error, Stage};
use crate::outcome::{Outcome, Route, Timing};
use crate::pool::Shared;
use crate::pool::job::{Collect, Forward, Job, Reply};
use crate::pool::queue::Popped;

/// First restart delay after a failure; doubled per further failure.
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Calls shorter than this on average are "short" for the queue: a busy
/// worker comes back for the next call before a sleeping one would wake.
const SHORT_CALL: Duration = Duration::from_millis(1);
/// Longest restart delay.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// How a backend call failed.
enum Failure {
    /// The backend returned an error.
    Failed(BackendError),
    /// The backend panicked (with this message).
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
    /// Counted in the pool's `down`: no backend since a failure.
    down: bool,
}

impl Slot {
    fn new() -> Self {
        Slot {
            backend: None,
            failures: 0,
            next_start: Instant::now(),
            down: false,
        }
    }

    /// Tries to make the backend now.
    fn start(&mut self, index: usize, shared: &Shared) {
        match shared.factory.create(index) {
            Ok(backend) => {
                self.backend = Some(backend);
                shared.ready.fetch_add(1, Ordering::Relaxed);
                self.set_down(shared, false);
            }
            Err(error) => {
                tracing::warn!(model = %shared.model, worker = index, %error, "backend could not start");
                shared.metrics.worker_restarted("start_failed");
                shared.set_start_error(error.message);
                self.set_down(shared, true);
                self.failed();
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

    /// Marks the worker down or up, keeping the pool's count. The last
    /// worker to go down fails the calls still waiting: nobody would run
    /// them before their deadlines.
    fn set_down(&mut self, shared: &Shared, down: bool) {
        if self.down == down {
            return;
        }
        self.down = down;
        if !down {
            shared.down.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        if shared.down.fetch_add(1, Ordering::AcqRel) + 1 >= shared.workers {
            for job in shared.queue.drain() {
                let _entered = job.span.enter();
                job.reply
                    .finish(Err(shared.down_error()), &job.cancel, &job.deadline);
            }
        }
    }
}

/// Runs jobs until the queue is closed and empty.
pub(crate) fn run(index: usize, shared: Arc<Shared>) {
    let mut slot = Slot::new();
    slot.start(index, &shared);
    loop {
        if slot.backend.is_none() {
            // Down: wait out the back-off (unless the pool closes), then
            // try again. Calls go to the other workers meanwhile.
            if shared.closing.wait_until(slot.next_start) {
                break;
            }
            slot.start(index, &shared);
            continue;
        }
        match shared.queue.pop_until(None) {
            Popped::Job(job) => run_job(index, &shared, &mut slot, job),
            Popped::Timeout | Popped::Closed => break,
        }
    }
    if slot.backend.take().is_some() {
        shared.ready.fetch_sub(1, Ordering::Relaxed);
    }
    slot.set_down(&shared, false);
    tracing::debug!(model = %shared.model, worker = index, "worker stopped");
}

fn run_job(index: usize, shared: &Shared, slot: &mut Slot, job: Job) {
    let Job {
        params,
        cancel,
        deadline,
        received,
        admitted,
        reply,
        span,
        _permit,
    } = job;
    let _entered = span.enter();
    let picked = Instant::now();
    if cancel.is_cancelled() {
        // The caller gave up in the instant before the worker took the job.
        return;
    }
    let model = || shared.model.clone();
    if deadline.expired() {
        let expired = Error::DeadlineExceeded {
            model: model(),
            deadline,
            stage: Stage::Queued,
        };
        reply.finish(Err(expired), &cancel, &deadline);
        return;
    }
    // A worker takes calls only while it has a backend.
    let Some(backend) = slot.backend.as_mut() else {
        reply.finish(Err(shared.down_error()), &cancel, &deadline);
        return;
    };

    shared.calls.fetch_add(1, Ordering::Relaxed);
    let queue_wait = picked - admitted;
    shared.metrics.queue_wait(queue_wait);
    shared.running.begin(index, Some(&cancel));
    // Generate collects the text; GenerateStream forwards each piece.
    let mut collected = Collect(String::new());
    let mut forward;
    let sink: &mut dyn TokenSink = match &reply {
        Reply::Whole(_) => &mut collected,
        Reply::Stream(tx) => {
            forward = Forward {
                tx,
                cancel: &cancel,
                deadline: &deadline,
            };
            &mut forward
        }
    };
    let streaming = matches!(reply, Reply::Stream(_));
    let (ended, first_token) = call(
        backend.as_mut(),
        &params,
        &cancel,
        &deadline,
        sink,
        streaming,
    );
    let backend_time = shared.running.end(index);
    shared.metrics.backend_call(backend_time);

    match &ended {
        Err(Failure::Panicked(message)) => {
            tracing::error!(model = %shared.model, worker = index, panic = %message, "backend panicked");
            shared.metrics.panicked();
            slot.retire(index, shared, "panic");
        }
        _ => match backend.health() {
            Health::Healthy => {
                if ended.is_ok() {
                    slot.failures = 0;
                }
            }
            Health::Restart(reason) => slot.retire(index, shared, reason),
        },
    }

    if cancel.is_cancelled() {
        if shared.aborted.load(Ordering::Acquire) {
            // Cut off by a shutdown whose grace ran out: the caller waits.
            reply.finish(Err(Error::ShuttingDown), &cancel, &deadline);
        } else {
            // The caller went away or timed out, and has already answered.
            tracing::debug!(model = %shared.model, "discarding the result of a cancelled call");
        }
        return;
    }
    let result = match ended {
        Ok(completion) => {
            shared.estimate.observe(backend_time);
            let short = shared.estimate.mean().is_some_and(|m| m < SHORT_CALL);
            shared.queue.set_short_calls(short);
            shared
                .metrics
                .tokens(completion.prompt_tokens, completion.completion_tokens);
            Ok(Outcome {
                text: collected.0,
                completion,
                timing: Timing {
                    queue_wait,
                    backend: backend_time,
                    total: Duration::ZERO,
                    first_token: first_token.map(|t| t.saturating_duration_since(received)),
                },
                route: Route::default(),
            })
        }
        // A backend that gave up because the deadline came (its `sleep`, its
        // I/O timeout, or a client not reading ran out) failed because of
        // the deadline.
        Err(Failure::Failed(_)) if deadline.expired() => Err(Error::DeadlineExceeded {
            model: model(),
            deadline,
            stage: Stage::Running,
        }),
        Err(Failure::Failed(source)) => Err(Error::Backend {
            model: model(),
            source,
        }),
        Err(Failure::Panicked(_)) => Err(Error::BackendPanic { model: model() }),
    };
    reply.finish(result, &cancel, &deadline);
}

/// One backend call, with panics caught; also returns when the first piece
/// of text was emitted.
fn call(
    backend: &mut dyn Backend,
    params: &GenerateParams,
    cancel: &CancelSignal,
    deadline: &Deadline,
    sink: &mut dyn TokenSink,
    streaming: bool,
) -> (Result<Completion, Failure>, Option<Instant>) {
    let mut ctx = CallContext::new(cancel, deadline.at(), sink).with_streaming(streaming);
    let ended = match catch_unwind(AssertUnwindSafe(|| backend.generate(params, &mut ctx))) {
        Ok(Ok(completion)) => Ok(completion),
        Ok(Err(error)) => Err(Failure::Failed(error)),
        Err(payload) => Err(Failure::Panicked(panic_message(payload.as_ref()))),
    };
    (ended, ctx.first_token_at())
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
