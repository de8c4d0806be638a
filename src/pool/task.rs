//! The pool of an asynchronous backend: each call is a task, at most
//! `workers` of them inside the backend at once.
//!
//! Admission is the pool's own (the same permit of `workers +
//! queue_capacity`, the same deadline check). An admitted call becomes a
//! task that waits for one of `workers` run slots (handed over in fair
//! order between tenants, by priority then arrival within one: the queue,
//! see [`super::handoff`]), then runs the backend's future.
//! The handler keeps a [`TaskHandle`] in its ticket: dropping the ticket
//! cancels the task, which drops the backend's future wherever it is (an
//! HTTP request in flight is aborted), and its permit and slot go back. Busy
//! workers, busy-seconds, queue waits and backend times are recorded as for
//! worker threads, so the metrics mean the same.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::backend::{AsyncBackend, AsyncContext, BackendError, GenerateParams};
use crate::deadline::Deadline;
use crate::error::{Error, Stage};
use crate::outcome::{CallResult, Outcome, Route, StreamItem, Timing};
use crate::pool::handoff::RunSlots;
use crate::pool::job::Reply;
use crate::pool::worker::panic_message;
use crate::pool::{Place, Shared};
use crate::tenant::Caller;

/// A call waiting for a run slot.
const WAITING: u8 = 0;
/// A call inside the backend.
const RUNNING: u8 = 1;

/// What a pool of tasks adds to the shared pool state.
pub(crate) struct Tasks {
    backend: Arc<dyn AsyncBackend>,
    /// `workers` slots (of the pool's `Running` table): calls inside the
    /// backend.
    run: RunSlots,
    /// Calls admitted and waiting for a run slot.
    waiting: AtomicUsize,
    /// Tasks not yet ended (shutdown waits for them as for threads).
    alive: AtomicUsize,
    /// Cancelled by a forced shutdown: every task ends now.
    abort: CancellationToken,
}

impl Tasks {
    pub(crate) fn new(backend: Arc<dyn AsyncBackend>, workers: usize) -> Self {
        Tasks {
            backend,
            run: RunSlots::new(workers),
            waiting: AtomicUsize::new(0),
            alive: AtomicUsize::new(0),
            abort: CancellationToken::new(),
        }
    }

    /// Calls waiting for a run slot.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// How many waiting calls would start before a new one at `place`.
    pub(crate) fn ahead(&self, place: Place<'_>) -> usize {
        self.run.ahead(place)
    }

    /// Tenants with calls waiting.
    pub(crate) fn tenants_waiting(&self) -> usize {
        self.run.tenants()
    }

    /// Tasks that have not ended.
    pub(crate) fn alive(&self) -> usize {
        self.alive.load(Ordering::Relaxed)
    }

    /// Ends every task now: waiting calls and running calls get
    /// UNAVAILABLE. Returns how many were waiting and how many running.
    pub(crate) fn abort(&self, running: usize) -> (usize, usize) {
        let waiting = self.waiting();
        self.abort.cancel();
        (waiting, running)
    }
}

/// The handler's hold on a task: cancels it, and says where it was.
pub(crate) struct TaskHandle {
    cancel: CancellationToken,
    state: Arc<AtomicU8>,
}

impl TaskHandle {
    /// Stops the task; returns whether it was waiting or running.
    pub(crate) fn cancel(&self) -> Stage {
        self.cancel.cancel();
        match self.state.load(Ordering::Acquire) {
            WAITING => Stage::Queued,
            _ => Stage::Running,
        }
    }
}

/// One admitted call of a task pool.
pub(crate) struct TaskJob {
    pub(crate) params: GenerateParams,
    /// Whose turn in the queue it takes.
    pub(crate) caller: Caller,
    /// Its priority among its tenant's calls (already capped).
    pub(crate) priority: u32,
    pub(crate) deadline: Deadline,
    pub(crate) received: Instant,
    /// When the call was admitted (its queue wait counts from here).
    pub(crate) admitted: Instant,
    pub(crate) reply: Reply,
    pub(crate) span: tracing::Span,
    /// The call's place in the pool, held until the task ends.
    pub(crate) permit: OwnedSemaphorePermit,
}

/// Starts the task of an admitted call.
pub(crate) fn spawn(shared: &Arc<Shared>, tasks: &Tasks, job: TaskJob) -> TaskHandle {
    let cancel = CancellationToken::new();
    let state = Arc::new(AtomicU8::new(WAITING));
    tasks.waiting.fetch_add(1, Ordering::Relaxed);
    tasks.alive.fetch_add(1, Ordering::Relaxed);
    let handle = TaskHandle {
        cancel: cancel.clone(),
        state: state.clone(),
    };
    let shared = shared.clone();
    let span = job.span.clone();
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            run(&shared, job, cancel, state).await;
            if let Some(tasks) = &shared.tasks {
                tasks.alive.fetch_sub(1, Ordering::Relaxed);
            }
        },
        span,
    ));
    handle
}

/// How a call ended.
enum Ended {
    /// The backend's future finished (or panicked).
    Done(Result<Result<crate::backend::Completion, BackendError>, String>),
    /// The handler gave up: nobody wants the result.
    Cancelled,
    /// A forced shutdown cut it off.
    Aborted,
    /// The deadline passed while it ran.
    Expired,
}

async fn run(shared: &Shared, job: TaskJob, cancel: CancellationToken, state: Arc<AtomicU8>) {
    let Some(tasks) = &shared.tasks else { return };
    let TaskJob {
        params,
        caller,
        priority,
        deadline,
        received,
        admitted,
        reply,
        span: _,
        permit: _permit,
    } = job;
    let model = || shared.model.clone();
    // Wait for a run slot: the queue.
    let waited = tokio::select! {
        biased;
        () = cancel.cancelled() => None,
        () = tasks.abort.cancelled() => Some(Err(Error::ShuttingDown)),
        () = tokio::time::sleep_until(deadline.at().into()) => Some(Err(Error::DeadlineExceeded {
            model: model(),
            deadline,
            stage: Stage::Queued,
        })),
        slot = tasks.run.acquire(&caller, priority) => Some(slot.ok_or(Error::ShuttingDown)),
    };
    tasks.waiting.fetch_sub(1, Ordering::Relaxed);
    let run_slot = match waited {
        None => return,
        Some(Err(error)) => {
            finish(reply, Err(error), &deadline).await;
            return;
        }
        Some(Ok(slot)) => slot,
    };
    state.store(RUNNING, Ordering::Release);

    let picked = Instant::now();
    let queue_wait = picked - admitted;
    shared.calls.fetch_add(1, Ordering::Relaxed);
    shared.metrics.queue_wait(queue_wait);
    let slot = run_slot.index();
    shared.running.begin(slot, None);
    let mut ctx = match &reply {
        Reply::Whole(_) => AsyncContext::collect(deadline.at()),
        Reply::Stream(tx) => AsyncContext::forward(tx.clone(), deadline.at()),
    };
    let ended = {
        let call = AssertUnwindSafe(tasks.backend.generate(&params, &mut ctx)).catch_unwind();
        tokio::select! {
            biased;
            () = cancel.cancelled() => Ended::Cancelled,
            () = tasks.abort.cancelled() => Ended::Aborted,
            () = tokio::time::sleep_until(deadline.at().into()) => Ended::Expired,
            result = call => Ended::Done(result.map_err(|panic| panic_message(panic.as_ref()))),
        }
    };
    let backend_time = shared.running.end(slot);
    shared.metrics.backend_call(backend_time);

    let result: CallResult = match ended {
        Ended::Cancelled => {
            tracing::debug!(model = %shared.model, "discarding the result of a cancelled call");
            return;
        }
        Ended::Aborted => Err(Error::ShuttingDown),
        // A backend that failed because the deadline came failed because
        // of the deadline.
        Ended::Done(Ok(Err(_))) if deadline.expired() => Err(Error::DeadlineExceeded {
            model: model(),
            deadline,
            stage: Stage::Running,
        }),
        Ended::Expired => Err(Error::DeadlineExceeded {
            model: model(),
            deadline,
            stage: Stage::Running,
        }),
        Ended::Done(Err(message)) => {
            tracing::error!(model = %shared.model, panic = %message, "backend panicked");
            shared.metrics.panicked();
            Err(Error::BackendPanic { model: model() })
        }
        Ended::Done(Ok(Err(source))) => Err(Error::Backend {
            model: model(),
            source,
        }),
        Ended::Done(Ok(Ok(completion))) => {
            shared.estimate.observe(backend_time);
            shared
                .metrics
                .tokens(completion.prompt_tokens, completion.completion_tokens);
            Ok(Outcome {
                text: ctx.take_text(),
                completion,
                timing: Timing {
                    queue_wait,
                    backend: backend_time,
                    total: Duration::ZERO,
                    first_token: ctx
                        .first_token_at()
                        .map(|t| t.saturating_duration_since(received)),
                },
                route: Route::default(),
            })
        }
    };
    drop(ctx);
    finish(reply, result, &deadline).await;
}

/// Sends the result; a stream's client that does not read is given up on
/// at the deadline.
async fn finish(reply: Reply, result: CallResult, deadline: &Deadline) {
    match reply {
        Reply::Whole(tx) => {
            let _ = tx.send(result);
        }
        Reply::Stream(tx) => {
            let item = result.map(StreamItem::Done);
            let _ = tokio::time::timeout_at(deadline.at().into(), tx.send(item)).await;
        }
    }
}
