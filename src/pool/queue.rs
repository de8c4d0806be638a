//! The queue in front of a model's workers: a [`FairQueue`] (round robin
//! between tenants, priority then arrival within one) behind a lock, and
//! the wake-ups of the workers waiting on it.
//!
//! Its bound is not kept here: admission takes a permit of the pool's
//! semaphore first (see [`super::WorkerPool::submit`]), so the queue never
//! holds more than `workers + queue_capacity` jobs and needs no count of
//! idle workers. Unlike a plain channel, a job can leave from the middle: a
//! call whose client went away (or whose deadline passed) gives its place
//! back at once, instead of holding it until a worker reaches it (by its
//! [`Key`], in O(log n); see [`super::fair`] for how memory stays bounded).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::fair::{FairQueue, Key};
use crate::tenant::Caller;

/// How many times the spinning idle worker yields before it sleeps.
const SPIN_YIELDS: u32 = 3;

/// What a worker's wait for a job gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Popped<T> {
    /// The next waiting job in fair order.
    Job(T),
    /// Nothing came before the given instant.
    Timeout,
    /// The queue is closed and empty: the worker stops.
    Closed,
}

/// A closable fair queue with removal by key. Workers block in `pop`.
pub(crate) struct JobQueue<T> {
    state: Mutex<State<T>>,
    /// Signalled when a job arrives or the queue closes.
    ready: Condvar,
    /// Live jobs, mirrored out of the lock so gauges, ListModels and
    /// admission read it without contending with workers.
    len: AtomicUsize,
    /// The model's calls are short (their recent mean is under a
    /// millisecond): busy workers come back for waiting calls sooner than a
    /// sleeping one would wake, so owed wake-ups are not paid.
    short_calls: AtomicBool,
}

struct State<T> {
    /// The waiting jobs, in the order they are to be served.
    jobs: FairQueue<T>,
    /// Workers asleep on the condition variable: the only ones a push must
    /// wake (a notify is a syscall even with nobody waiting).
    sleeping: usize,
    /// Whether an idle worker is spinning (yielding its core a few times
    /// before it sleeps): a push then wakes nobody, the spinner takes it.
    spinning: bool,
    /// Pushes that found workers asleep but woke none because one spun:
    /// the wake-ups owed if the spinner leaves calls behind.
    owed_wakes: usize,
    closed: bool,
}

impl<T> JobQueue<T> {
    pub(crate) fn new() -> Self {
        JobQueue {
            state: Mutex::new(State {
                jobs: FairQueue::new(),
                sleeping: 0,
                spinning: false,
                owed_wakes: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            len: AtomicUsize::new(0),
            short_calls: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while holding this lock; if something ever did, the
        // state is still a consistent list of jobs.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a job of `caller` at `priority`, returning its key, or gives it
    /// back if the queue is closed.
    pub(crate) fn push(&self, caller: &Caller, priority: u32, job: T) -> Result<Key, T> {
        let mut state = self.lock();
        if state.closed {
            return Err(job);
        }
        let key = state.jobs.push(caller, priority, job);
        self.len.store(state.jobs.len(), Ordering::Relaxed);
        // Busy workers find the job themselves when they come back.
        let wake = state.sleeping > 0 && !state.spinning;
        if state.sleeping > 0 && state.spinning {
            state.owed_wakes += 1;
        }
        drop(state);
        if wake {
            self.ready.notify_one();
        }
        Ok(key)
    }

    /// Takes a job out of the queue if it is still waiting.
    pub(crate) fn remove(&self, key: Key) -> Option<T> {
        let mut state = self.lock();
        let job = state.jobs.remove(key)?;
        self.len.store(state.jobs.len(), Ordering::Relaxed);
        Some(job)
    }

    /// How many waiting jobs would be served before a new one of `caller`
    /// at `priority` (see [`FairQueue::ahead`]).
    pub(crate) fn ahead(&self, caller: &Caller, priority: u32) -> usize {
        self.lock().jobs.ahead(caller, priority)
    }

    /// Tenants with jobs waiting.
    pub(crate) fn tenants(&self) -> usize {
        self.lock().jobs.tenants()
    }

    /// Blocks until a job is available and takes the next one in fair
    /// order; `None` once the queue is closed and empty.
    #[cfg(test)]
    pub(crate) fn pop(&self) -> Option<T> {
        match self.pop_until(None) {
            Popped::Job(job) => Some(job),
            Popped::Timeout | Popped::Closed => None,
        }
    }

    /// Like [`pop`](Self::pop), but gives up at `until` (when given): a
    /// worker whose backend is down waits for a job only until it is time
    /// to start a new backend.
    pub(crate) fn pop_until(&self, until: Option<Instant>) -> Popped<T> {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.jobs.pop() {
                let live = state.jobs.len();
                self.len.store(live, Ordering::Relaxed);
                // Pushes made while a worker spun woke nobody: if calls are
                // left, pay one of those wake-ups now, or the calls would
                // wait for this worker's call to end while others sleep.
                // Only owed ones: a push that found nobody asleep is taken
                // by a busy worker coming back.
                let wake = live > 0
                    && state.owed_wakes > 0
                    && state.sleeping > 0
                    && !self.short_calls.load(Ordering::Relaxed);
                if wake {
                    state.owed_wakes -= 1;
                } else if live == 0 {
                    state.owed_wakes = 0;
                }
                drop(state);
                if wake {
                    self.ready.notify_one();
                }
                return Popped::Job(job);
            }
            if state.closed {
                return Popped::Closed;
            }
            if until.is_none() && !state.spinning {
                // One idle worker at a time spins briefly: under load the
                // next call comes within microseconds, and taking it
                // without a sleep and a wake-up saves two system calls and
                // a context switch; idle pools go quiet after a few yields.
                state.spinning = true;
                drop(state);
                for _ in 0..SPIN_YIELDS {
                    std::thread::yield_now();
                    if self.len.load(Ordering::Relaxed) > 0 {
                        break;
                    }
                }
                state = self.lock();
                state.spinning = false;
                if state.jobs.len() > 0 || state.closed {
                    continue;
                }
            }
            state.sleeping += 1;
            state = match until {
                None => self
                    .ready
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(until) => {
                    let wait = until.saturating_duration_since(Instant::now());
                    let (state, _) = self
                        .ready
                        .wait_timeout(state, wait)
                        .unwrap_or_else(PoisonError::into_inner);
                    state
                }
            };
            state.sleeping -= 1;
            if state.jobs.len() == 0 && !state.closed && until.is_some_and(|u| Instant::now() >= u)
            {
                return Popped::Timeout;
            }
        }
    }

    /// Refuses new jobs from now on; workers finish what is queued, then
    /// their `pop` returns `None`.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Takes every waiting job out (when the shutdown grace runs out).
    pub(crate) fn drain(&self) -> Vec<T> {
        let mut state = self.lock();
        let jobs = state.jobs.drain();
        self.len.store(0, Ordering::Relaxed);
        jobs
    }

    /// Says whether the model's calls are short (see `short_calls`).
    pub(crate) fn set_short_calls(&self, short: bool) {
        if self.short_calls.load(Ordering::Relaxed) != short {
            self.short_calls.store(short, Ordering::Relaxed);
        }
    }

    /// Jobs waiting right now.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    /// Pushes a job of the anonymous tenant.
    fn push<T>(queue: &JobQueue<T>, job: T) -> Result<Key, T> {
        queue.push(&Caller::anonymous(), 0, job)
    }

    #[test]
    fn fifo_order() {
        let queue = JobQueue::new();
        push(&queue, 1).unwrap();
        push(&queue, 2).unwrap();
        assert_eq!(queue.pop(), Some(1));
        push(&queue, 3).unwrap();
        assert_eq!(queue.pop(), Some(2));
        assert_eq!(queue.pop(), Some(3));
    }

    #[test]
    fn removed_job_frees_its_place_and_is_skipped() {
        let queue = JobQueue::new();
        let a = push(&queue, "a").unwrap();
        push(&queue, "b").unwrap();
        assert_eq!(queue.remove(a), Some("a"));
        assert_eq!(queue.remove(a), None);
        assert_eq!(queue.len(), 1);
        push(&queue, "c").unwrap();
        assert_eq!(queue.pop(), Some("b"));
        assert_eq!(queue.pop(), Some("c"));
    }

    #[test]
    fn removed_jobs_do_not_stay_behind() {
        let queue = JobQueue::new();
        push(&queue, 0).unwrap();
        for i in 0..10_000 {
            let id = push(&queue, i).unwrap();
            queue.remove(id).unwrap();
        }
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.pop(), Some(0));
    }

    #[test]
    fn tenants_take_turns_behind_the_lock() {
        let queue = JobQueue::new();
        let a = Caller {
            tenant: "a".into(),
            ..Caller::anonymous()
        };
        for i in 0..10 {
            queue.push(&a, 0, i).unwrap();
        }
        push(&queue, 100).unwrap();
        assert_eq!(queue.tenants(), 2);
        // A new anonymous call is its tenant's second: two rounds, two of A's.
        assert_eq!(queue.ahead(&Caller::anonymous(), 0), 3);
        assert_eq!(queue.pop(), Some(0));
        assert_eq!(queue.pop(), Some(100));
        assert_eq!(queue.len(), 9);
    }

    #[test]
    fn pop_until_gives_up_at_the_instant() {
        let queue: JobQueue<u32> = JobQueue::new();
        let until = Instant::now() + Duration::from_millis(20);
        assert_eq!(queue.pop_until(Some(until)), Popped::Timeout);
        assert!(Instant::now() >= until);
        push(&queue, 5).unwrap();
        assert_eq!(queue.pop_until(Some(until)), Popped::Job(5));
    }

    #[test]
    fn close_wakes_idle_workers_after_the_queue_drains() {
        let queue = Arc::new(JobQueue::new());
        push(&queue, 7).unwrap();
        let worker = {
            let queue = queue.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while let Some(job) = queue.pop() {
                    got.push(job);
                }
                got
            })
        };
        queue.close();
        assert_eq!(push(&queue, 8), Err(8));
        assert_eq!(worker.join().unwrap(), vec![7]);
    }

    #[test]
    fn calls_pushed_while_a_worker_spins_still_reach_the_sleeping_ones() {
        // A worker sleeps; the test thread plays a spinning worker: the
        // pushes wake nobody, and taking the first call must wake the
        // sleeper for the second (else it waits for the first to end).
        let queue = Arc::new(JobQueue::new());
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let queue = queue.clone();
            std::thread::spawn(move || tx.send(queue.pop()));
        }
        for _ in 0..100_000 {
            if queue.lock().sleeping == 1 {
                break;
            }
            std::thread::yield_now();
        }
        queue.lock().spinning = true;
        push(&queue, 1).unwrap();
        push(&queue, 2).unwrap();
        assert_eq!(queue.lock().owed_wakes, 2);
        queue.lock().spinning = false;
        assert_eq!(queue.pop_until(None), Popped::Job(1));
        let second = rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(second, Ok(Some(2)), "the sleeping worker was never woken");
    }

    #[test]
    fn a_push_wakes_a_sleeping_worker() {
        let queue = Arc::new(JobQueue::new());
        let worker = {
            let queue = queue.clone();
            std::thread::spawn(move || queue.pop())
        };
        // Wait (bounded) until the worker sleeps, so the push must wake it.
        for _ in 0..100_000 {
            if queue.lock().sleeping == 1 {
                break;
            }
            std::thread::yield_now();
        }
        push(&queue, 2).unwrap();
        assert_eq!(worker.join().unwrap(), Some(2));
    }
}
