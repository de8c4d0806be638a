//! The per-model worker pool: admission, the bounded queue, the workers.
//!
//! Each model gets `workers` dedicated OS threads, named after it, fed by a
//! [`JobQueue`]. Admission is a count, not a guess: a call takes one of
//! `workers + queue_capacity` permits of a semaphore or is refused at once,
//! and its job holds the permit until it has run (or left the queue), so
//! "running + waiting" is bounded exactly. Waiting calls are served fairly
//! between tenants (weighted round robin), by priority then arrival within
//! one ([`fair`]). A call whose deadline the calls to be served before it
//! cannot meet, at the model's recent backend times, is refused at once as
//! well, rather than left to expire in the queue.
//!
//! A model whose backend is asynchronous ([`crate::backend::AsyncBackend`])
//! has no worker threads: each admitted call is a task that waits for one
//! of `workers` run slots, handed over in the same fair order
//! ([`handoff`]), and then runs the backend's future ([`task`]), under the
//! same admission, deadlines, cancellation and metrics.
//!
//! A handler [`WorkerPool::submit`]s a job and awaits the reply on a oneshot
//! (or an mpsc for streams); waiting costs memory, not a thread: the job
//! (264 bytes, in the queue) and the handler's future (see
//! [`crate::unary`]), beside what tonic and h2 keep per open stream (most
//! of a waiting call's ~5.4 KiB: `bench/FLOOR.md`). The [`Ticket`] it gets back is a drop guard: if the
//! handler goes away (client cancelled, deadline passed), the job leaves
//! the queue at once, or, if it is already running, its backend is told to
//! stop.

mod estimate;
mod fair;
mod handoff;
pub(crate) mod job;
mod queue;
mod running;
mod task;
mod worker;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::{Semaphore, TryAcquireError};

use crate::backend::{BackendFactory, GenerateParams};
use crate::cancel::CancelSignal;
use crate::deadline::Deadline;
use crate::error::{Error, Stage};
use crate::metrics::ModelMetrics;
pub use crate::metrics::PoolStats;
use crate::tenant::Caller;

use estimate::BackendEstimate;
use fair::Key;
pub(crate) use job::{Job, Reply};
use queue::JobQueue;
use running::Running;
use task::{TaskHandle, TaskJob, Tasks};

/// A model's pool of worker threads and the queue in front of it.
pub(crate) struct WorkerPool {
    shared: Arc<Shared>,
    /// The worker threads, so shutdown can tell when they have all ended
    /// (and with them every backend, worker processes included).
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// State shared by the pool's handle, its workers and its tickets.
pub(crate) struct Shared {
    pub(crate) model: String,
    pub(crate) queue: JobQueue<Job>,
    /// `workers + queue_capacity` permits: one per call running or waiting.
    admission: Arc<Semaphore>,
    queue_capacity: usize,
    /// Recent backend times, for deadline-aware admission.
    pub(crate) estimate: BackendEstimate,
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
    /// Workers without a backend since a failed start or a broken one;
    /// when all are down the pool refuses calls at once.
    pub(crate) down: AtomicUsize,
    /// Why the last start failed (a message safe for clients).
    start_error: Mutex<Option<String>>,
    /// Set when the pool closes: wakes down workers waiting to restart.
    pub(crate) closing: CancelSignal,
    /// Set by `abort`: calls cut off now get UNAVAILABLE, not silence.
    pub(crate) aborted: AtomicBool,
    /// The model's metric handles.
    pub(crate) metrics: Arc<ModelMetrics>,
    /// For an asynchronous backend: its calls run as tasks, and there are
    /// no worker threads.
    pub(crate) tasks: Option<Tasks>,
}

impl WorkerPool {
    /// Starts `workers` threads named `<model>-<i>` behind a queue of
    /// `queue_capacity`.
    pub(crate) fn start(
        model: &str,
        workers: usize,
        queue_capacity: usize,
        factory: Arc<dyn BackendFactory>,
    ) -> io::Result<WorkerPool> {
        let permits = workers.saturating_add(queue_capacity);
        let tasks = factory
            .asynchronous()
            .map(|backend| Tasks::new(backend, workers));
        let shared = Arc::new(Shared {
            model: model.to_string(),
            queue: JobQueue::new(),
            admission: Arc::new(Semaphore::new(permits.min(Semaphore::MAX_PERMITS))),
            queue_capacity,
            estimate: BackendEstimate::default(),
            factory,
            workers,
            running: Running::new(workers),
            calls: AtomicU64::new(0),
            inflight: AtomicUsize::new(0),
            down: AtomicUsize::new(0),
            start_error: Mutex::new(None),
            closing: CancelSignal::new(),
            aborted: AtomicBool::new(false),
            metrics: Arc::new(ModelMetrics::new(model)),
            // A task pool's backend is shared and always there.
            ready: AtomicUsize::new(if tasks.is_some() { workers } else { 0 }),
            tasks,
        });
        if shared.tasks.is_some() {
            return Ok(WorkerPool {
                shared,
                threads: Vec::new(),
            });
        }
        let mut threads = Vec::with_capacity(workers);
        for index in 0..workers {
            let worker_shared = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{model}-{index}"))
                .spawn(move || worker::run(index, worker_shared));
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    // Let the threads already started finish and exit.
                    shared.queue.close();
                    return Err(e);
                }
            }
        }
        Ok(WorkerPool { shared, threads })
    }

    /// The model's metric handles.
    pub(crate) fn metrics(&self) -> &Arc<ModelMetrics> {
        &self.shared.metrics
    }

    /// The backend kind, for ListModels.
    pub(crate) fn backend_kind(&self) -> &str {
        self.shared.factory.kind()
    }

    /// Admits a call, or refuses it at once: RESOURCE_EXHAUSTED when the
    /// queue is full, DEADLINE_EXCEEDED when the queue ahead cannot be
    /// through before the deadline, UNAVAILABLE when the pool is closed.
    pub(crate) fn submit(
        &self,
        params: GenerateParams,
        place: Place<'_>,
        deadline: Deadline,
        received: Instant,
        reply: Reply,
    ) -> Result<Ticket, Error> {
        let shared = &self.shared;
        if shared.down.load(Ordering::Acquire) >= shared.workers {
            return Err(shared.down_error());
        }
        // The whole queue first (one atomic load): only when it says no are
        // the calls that would really go first counted, under the lock.
        let too_late = |ahead| {
            shared
                .estimate
                .least_wait(ahead, shared.workers)
                .is_some_and(|wait| wait >= deadline.remaining())
        };
        if too_late(shared.queued()) && too_late(shared.ahead(place)) {
            return Err(Error::DeadlineExceeded {
                model: shared.model.clone(),
                deadline,
                stage: Stage::Admission,
            });
        }
        let permit = match shared.admission.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => {
                return Err(Error::QueueFull {
                    model: shared.model.clone(),
                    workers: shared.workers,
                    capacity: shared.queue_capacity,
                });
            }
            Err(TryAcquireError::Closed) => return Err(Error::ShuttingDown),
        };
        if let Some(tasks) = &shared.tasks {
            let job = TaskJob {
                params,
                caller: place.caller.clone(),
                priority: place.priority,
                deadline,
                received,
                admitted: Instant::now(),
                reply,
                span: tracing::Span::current(),
                permit,
            };
            let task = task::spawn(shared, tasks, job);
            return Ok(Ticket {
                handle: Handle::Task(task),
                _inflight: InflightGuard::new(shared),
                shared: shared.clone(),
                settled: false,
            });
        }
        let cancel = CancelSignal::new();
        let job = Job {
            params,
            cancel: cancel.clone(),
            deadline,
            received,
            admitted: Instant::now(),
            reply,
            span: tracing::Span::current(),
            _permit: permit,
        };
        let Ok(key) = shared.queue.push(place.caller, place.priority, job) else {
            return Err(Error::ShuttingDown);
        };
        // The last worker may have gone down (and failed the queue) since
        // the check above: then nobody would run this call.
        if shared.down.load(Ordering::Acquire) >= shared.workers
            && shared.queue.remove(key).is_some()
        {
            return Err(shared.down_error());
        }
        Ok(Ticket {
            handle: Handle::Thread { key, cancel },
            _inflight: InflightGuard::new(shared),
            shared: shared.clone(),
            settled: false,
        })
    }

    /// The pool's size and load right now.
    pub(crate) fn stats(&self) -> PoolStats {
        PoolStats {
            workers: self.shared.workers,
            queue_capacity: self.shared.queue_capacity,
            busy: self.shared.running.busy(),
            queued: self.shared.queued(),
            tenants_waiting: self.shared.tenants_waiting(),
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
    pub(crate) fn close(&self) {
        self.shared.admission.close();
        self.shared.queue.close();
        self.shared.closing.cancel();
    }

    /// Worker threads that have not ended yet (after `close`, each ends once
    /// the queue is empty and its call, if any, is over).
    pub(crate) fn threads_alive(&self) -> usize {
        let tasks = self.shared.tasks.as_ref().map_or(0, Tasks::alive);
        tasks + self.threads.iter().filter(|t| !t.is_finished()).count()
    }

    /// Ends every call now: queued ones get UNAVAILABLE, running ones are
    /// told to stop. For a shutdown whose grace has run out. Returns how many
    /// were queued and how many running.
    pub(crate) fn abort(&self) -> (usize, usize) {
        self.shared.aborted.store(true, Ordering::Release);
        self.close();
        if let Some(tasks) = &self.shared.tasks {
            return tasks.abort(self.shared.running.busy());
        }
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
        self.close();
    }
}

impl Shared {
    /// Calls waiting for a worker (or, for tasks, for a run permit).
    pub(crate) fn queued(&self) -> usize {
        match &self.tasks {
            Some(tasks) => tasks.waiting(),
            None => self.queue.len(),
        }
    }

    /// How many waiting calls would be served before a new one at `place`.
    fn ahead(&self, place: Place<'_>) -> usize {
        match &self.tasks {
            Some(tasks) => tasks.ahead(place),
            None => self.queue.ahead(place.caller, place.priority),
        }
    }

    /// Tenants with calls waiting.
    pub(crate) fn tenants_waiting(&self) -> usize {
        match &self.tasks {
            Some(tasks) => tasks.tenants_waiting(),
            None => self.queue.tenants(),
        }
    }

    /// Records why a backend could not start, for the calls refused while
    /// the model is down.
    pub(crate) fn set_start_error(&self, message: String) {
        *self
            .start_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(message);
    }

    /// The error of a call to a model none of whose workers is up.
    pub(crate) fn down_error(&self) -> Error {
        let why = self
            .start_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| "its backends are restarting".to_string());
        Error::ModelDown {
            model: self.model.clone(),
            why,
        }
    }
}

/// Where a call waits in the queue: its tenant's share, and its priority
/// among that tenant's calls.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place<'a> {
    pub(crate) caller: &'a Caller,
    /// Already capped by the caller's `max_priority`.
    pub(crate) priority: u32,
}

/// A handler's hold on an admitted call. Dropping it before the result
/// arrived cancels the call.
pub(crate) struct Ticket {
    handle: Handle,
    /// Counts the call in `inflight` for as long as the ticket lives.
    _inflight: InflightGuard,
    shared: Arc<Shared>,
    /// The result arrived: there is nothing left to cancel.
    settled: bool,
}

/// How a ticket reaches its call.
enum Handle {
    /// A job in the queue of worker threads, by key, and its cancel signal.
    Thread { key: Key, cancel: CancelSignal },
    /// A task's cancellation.
    Task(TaskHandle),
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
        match &self.handle {
            Handle::Task(task) => Some(task.cancel()),
            Handle::Thread { key, cancel } => {
                if self.shared.queue.remove(*key).is_some() {
                    Some(Stage::Queued)
                } else {
                    cancel.cancel();
                    Some(Stage::Running)
                }
            }
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
