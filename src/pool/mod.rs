//! The per-model worker pool: admission, the bounded queue, the workers.
//!
//! Each model gets `workers` dedicated OS threads, named after it, fed by a
//! [`JobQueue`] of `queue_capacity` places. A handler [`WorkerPool::submit`]s
//! a job and awaits the reply on a oneshot (or an mpsc for streams); waiting
//! costs the caller a few hundred bytes of memory, not a thread. The
//! [`Ticket`] it gets back is a drop guard: if the handler goes away (client
//! cancelled, deadline passed), the job leaves the queue at once, or, if it is
//! already running, its backend is told to stop.

pub(crate) mod job;
mod queue;
mod running;
mod worker;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use crate::backend::{BackendFactory, GenerateParams};
use crate::cancel::CancelSignal;
use crate::error::{Error, Stage};
use crate::metrics::ModelMetrics;

pub(crate) use job::{Job, Reply};
pub use job::{JobResult, Outcome, StreamEvent};
use queue::{JobQueue, Refusal};
use running::Running;

/// A model's pool of worker threads and the queue in front of it.
pub struct WorkerPool {
    shared: Arc<Shared>,
}

/// State shared by the pool's handle, its workers and its tickets.
pub(crate) struct Shared {
    pub(crate) model: String,
    pub(crate) queue: JobQueue<Job>,
    pub(crate) factory: Arc<dyn BackendFactory>,
    /// Worker threads (fixed for the pool's life).
    pub(crate) workers: usize,
    /// The calls running on the workers.
    pub(crate) running: Running,
    /// Backend calls started since the pool began.
    pub(crate) calls: AtomicU64,
    /// Tickets alive: calls admitted and not yet finished.
    pub(crate) inflight: AtomicUsize,
    /// Workers that have a backend ready (started, not broken).
    pub(crate) ready: AtomicUsize,
    /// Set by `abort`: calls cut off now get UNAVAILABLE, not silence.
    pub(crate) aborted: AtomicBool,
    /// The model's metric handles.
    pub(crate) metrics: Arc<ModelMetrics>,
}

/// A snapshot of a pool's size and load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolStats {
    /// Worker threads.
    pub workers: usize,
    /// Places in the queue.
    pub queue_capacity: usize,
    /// Workers running a backend call.
    pub busy: usize,
    /// Calls waiting for a worker.
    pub queued: usize,
    /// Backend calls started since start-up.
    pub backend_calls: u64,
    /// Calls admitted and not yet finished: queued, running, or streaming.
    pub inflight: usize,
    /// Worker-seconds spent in backend calls, running ones included.
    pub busy_seconds: f64,
    /// Workers with a backend ready; 0 means the model cannot serve (e.g.
    /// its worker processes fail to start).
    pub ready: usize,
}

impl WorkerPool {
    /// Starts `workers` threads named `<model>-<i>` behind a queue of
    /// `queue_capacity`.
    pub fn start(
        model: &str,
        workers: usize,
        queue_capacity: usize,
        factory: Arc<dyn BackendFactory>,
    ) -> io::Result<WorkerPool> {
        let shared = Arc::new(Shared {
            model: model.to_string(),
            queue: JobQueue::new(queue_capacity),
            factory,
            workers,
            running: Running::new(workers),
            calls: AtomicU64::new(0),
            inflight: AtomicUsize::new(0),
            ready: AtomicUsize::new(0),
            aborted: AtomicBool::new(false),
            metrics: Arc::new(ModelMetrics::new(model)),
        });
        for index in 0..workers {
            let worker_shared = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{model}-{index}"))
                .spawn(move || worker::run(index, worker_shared));
            if let Err(e) = spawned {
                // Let the threads already started finish and exit.
                shared.queue.close();
                return Err(e);
            }
        }
        Ok(WorkerPool { shared })
    }

    /// The model's metric handles.
    pub fn metrics(&self) -> &Arc<ModelMetrics> {
        &self.shared.metrics
    }

    /// The backend kind, for ListModels.
    pub fn backend_kind(&self) -> &str {
        self.shared.factory.kind()
    }

    /// Admits a call, or refuses it at once: RESOURCE_EXHAUSTED when the
    /// queue is full, UNAVAILABLE when the pool is closed.
    pub(crate) fn submit(
        &self,
        params: GenerateParams,
        deadline: Instant,
        timeout_ms: u64,
        reply: Reply,
    ) -> Result<Ticket, Error> {
        let cancel = CancelSignal::new();
        let job = Job {
            params,
            cancel: cancel.clone(),
            deadline,
            timeout_ms,
            admitted: Instant::now(),
            reply,
            span: tracing::Span::current(),
        };
        match self.shared.queue.push(job) {
            Ok(id) => Ok(Ticket {
                id,
                _inflight: InflightGuard::new(&self.shared),
                shared: self.shared.clone(),
                cancel,
                settled: false,
            }),
            Err((_, Refusal::Full)) => Err(Error::QueueFull {
                model: self.shared.model.clone(),
                workers: self.shared.workers,
                capacity: self.shared.queue.capacity(),
            }),
            Err((_, Refusal::Closed)) => Err(Error::ShuttingDown),
        }
    }

    /// The pool's size and load right now.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            workers: self.shared.workers,
            queue_capacity: self.shared.queue.capacity(),
            busy: self.shared.running.busy(),
            queued: self.shared.queue.len(),
            backend_calls: self.shared.calls.load(Ordering::Relaxed),
            inflight: self.shared.inflight.load(Ordering::Relaxed),
            busy_seconds: self.shared.running.busy_seconds(),
            // A factory whose upstream is down has no worker ready.
            ready: if self.shared.factory.is_up() {
                self.shared.ready.load(Ordering::Relaxed)
            } else {
                0
            },
        }
    }

    /// Stops admitting calls. Queued and running calls go on; each worker
    /// thread exits once the queue is empty.
    pub fn close(&self) {
        self.shared.queue.close();
    }

    /// Ends every call now: queued ones get UNAVAILABLE, running ones are
    /// told to stop. For a shutdown whose grace has run out. Returns how many
    /// were queued and how many running.
    pub fn abort(&self) -> (usize, usize) {
        self.shared.aborted.store(true, Ordering::Release);
        self.close();
        let queued = self.shared.queue.drain();
        let cut_queued = queued.len();
        for job in queued {
            job.reply.finish_unstarted(Err(Error::ShuttingDown));
        }
        let cut_running = self.shared.running.cancel_all();
        (cut_queued, cut_running)
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        // The workers exit once the queue is empty; they are not joined, so
        // that dropping a pool never blocks an async caller.
        self.shared.queue.close();
    }
}

/// A handler's hold on an admitted call. Dropping it before the result
/// arrived cancels the call.
pub(crate) struct Ticket {
    id: u64,
    /// Counts the call in `inflight` for as long as the ticket lives.
    _inflight: InflightGuard,
    shared: Arc<Shared>,
    cancel: CancelSignal,
    /// The result arrived: there is nothing left to cancel.
    settled: bool,
}

impl Ticket {
    /// Marks the call finished, so dropping the ticket cancels nothing.
    pub(crate) fn settle(&mut self) {
        self.settled = true;
    }

    /// Gives up on the call: takes it out of the queue if it is still
    /// there, else tells the running backend to stop. Returns where it was,
    /// or `None` if it had already finished.
    pub(crate) fn abandon(&mut self) -> Option<Stage> {
        if self.settled {
            return None;
        }
        self.settled = true;
        if self.shared.queue.remove(self.id).is_some() {
            Some(Stage::Queued)
        } else {
            self.cancel.cancel();
            Some(Stage::Running)
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(stage) = self.abandon() {
            self.shared.metrics.cancelled(stage);
            tracing::debug!(model = %self.shared.model, stage = stage.as_str(), "call abandoned by its client");
        }
    }
}

/// Counts one call in the pool's `inflight` until dropped.
struct InflightGuard(Arc<Shared>);

impl InflightGuard {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(shared.clone())
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}
