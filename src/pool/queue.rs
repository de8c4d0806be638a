//! The FIFO in front of a model's workers.
//!
//! Its bound is not kept here: admission takes a permit of the pool's
//! semaphore first (see [`super::WorkerPool::submit`]), so the queue never
//! holds more than `workers + queue_capacity` jobs and needs no count of
//! idle workers. Unlike a plain channel, a job can leave from the middle: a
//! call whose client went away (or whose deadline passed) gives its place
//! back at once, instead of holding it until a worker reaches it. Removal
//! marks the slot empty (found by binary search on the job id, since ids
//! only grow), and empty slots are compacted away once they outnumber live
//! jobs, so memory stays bounded.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// How many times the spinning idle worker yields before it sleeps.
const SPIN_YIELDS: u32 = 3;

/// What a worker's wait for a job gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Popped<T> {
    /// The oldest waiting job.
    Job(T),
    /// Nothing came before the given instant.
    Timeout,
    /// The queue is closed and empty: the worker stops.
    Closed,
}

/// A closable FIFO with removal by id. Workers block in `pop`.
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
    /// Jobs in arrival order with their ids; `None` marks a removed job.
    slots: VecDeque<(u64, Option<T>)>,
    /// The id the next job gets.
    next_id: u64,
    /// Slots that hold a job.
    live: usize,
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
                slots: VecDeque::new(),
                next_id: 0,
                live: 0,
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

    /// Adds a job, returning its id, or gives it back if the queue is
    /// closed.
    pub(crate) fn push(&self, job: T) -> Result<u64, T> {
        let mut state = self.lock();
        if state.closed {
            return Err(job);
        }
        let id = state.next_id;
        state.next_id += 1;
        state.slots.push_back((id, Some(job)));
        state.live += 1;
        self.len.store(state.live, Ordering::Relaxed);
        // Busy workers find the job themselves when they come back.
        let wake = state.sleeping > 0 && !state.spinning;
        if state.sleeping > 0 && state.spinning {
            state.owed_wakes += 1;
        }
        drop(state);
        if wake {
            self.ready.notify_one();
        }
        Ok(id)
    }

    /// Takes a job out of the queue if it is still waiting.
    pub(crate) fn remove(&self, id: u64) -> Option<T> {
        let mut state = self.lock();
        let index = state.slots.binary_search_by_key(&id, |(i, _)| *i).ok()?;
        let job = state.slots[index].1.take()?;
        state.live -= 1;
        self.len.store(state.live, Ordering::Relaxed);
        // Keep the dead slots from piling up behind a long-running call.
        if state.slots.len() > 2 * state.live + 64 {
            state.slots.retain(|(_, job)| job.is_some());
        }
        Some(job)
    }

    /// Blocks until a job is available and takes the oldest one; `None` once
    /// the queue is closed and empty.
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
            while let Some((_, slot)) = state.slots.pop_front() {
                if let Some(job) = slot {
                    state.live -= 1;
                    self.len.store(state.live, Ordering::Relaxed);
                    // Pushes made while a worker spun woke nobody: if calls
                    // are left, pay one of those wake-ups now, or the calls
                    // would wait for this worker's call to end while others
                    // sleep. Only owed ones: a push that found nobody asleep
                    // is taken by a busy worker coming back.
                    let wake = state.live > 0
                        && state.owed_wakes > 0
                        && state.sleeping > 0
                        && !self.short_calls.load(Ordering::Relaxed);
                    if wake {
                        state.owed_wakes -= 1;
                    } else if state.live == 0 {
                        state.owed_wakes = 0;
                    }
                    drop(state);
                    if wake {
                        self.ready.notify_one();
                    }
                    return Popped::Job(job);
                }
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
                if state.live > 0 || state.closed {
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
            if state.live == 0 && !state.closed && until.is_some_and(|u| Instant::now() >= u) {
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
        let jobs: Vec<T> = state.slots.drain(..).filter_map(|(_, job)| job).collect();
        state.live = 0;
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

    #[test]
    fn fifo_order() {
        let queue = JobQueue::new();
        queue.push(1).unwrap();
        queue.push(2).unwrap();
        assert_eq!(queue.pop(), Some(1));
        queue.push(3).unwrap();
        assert_eq!(queue.pop(), Some(2));
        assert_eq!(queue.pop(), Some(3));
    }

    #[test]
    fn removed_job_frees_its_place_and_is_skipped() {
        let queue = JobQueue::new();
        let a = queue.push("a").unwrap();
        queue.push("b").unwrap();
        assert_eq!(queue.remove(a), Some("a"));
        assert_eq!(queue.remove(a), None);
        assert_eq!(queue.len(), 1);
        queue.push("c").unwrap();
        assert_eq!(queue.pop(), Some("b"));
        assert_eq!(queue.pop(), Some("c"));
    }

    #[test]
    fn dead_slots_are_compacted() {
        let queue = JobQueue::new();
        queue.push(0).unwrap();
        for i in 0..10_000 {
            let id = queue.push(i).unwrap();
            queue.remove(id).unwrap();
        }
        assert!(queue.lock().slots.len() <= 64 + 2);
        assert_eq!(queue.pop(), Some(0));
    }

    #[test]
    fn pop_until_gives_up_at_the_instant() {
        let queue: JobQueue<u32> = JobQueue::new();
        let until = Instant::now() + Duration::from_millis(20);
        assert_eq!(queue.pop_until(Some(until)), Popped::Timeout);
        assert!(Instant::now() >= until);
        queue.push(5).unwrap();
        assert_eq!(queue.pop_until(Some(until)), Popped::Job(5));
    }

    #[test]
    fn close_wakes_idle_workers_after_the_queue_drains() {
        let queue = Arc::new(JobQueue::new());
        queue.push(7).unwrap();
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
        assert_eq!(queue.push(8), Err(8));
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
        queue.push(1).unwrap();
        queue.push(2).unwrap();
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
        queue.push(2).unwrap();
        assert_eq!(worker.join().unwrap(), Some(2));
    }
}
