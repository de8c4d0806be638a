//! The bounded FIFO in front of a model's workers.
//!
//! Unlike a plain channel, a job can leave from the middle: a call whose
//! client went away (or whose deadline passed) gives its place back at once,
//! instead of holding it until a worker reaches it. Removal marks the slot
//! empty (found by binary search on the job id, since ids only grow), and
//! empty slots are compacted away once they outnumber live jobs, so memory
//! stays bounded by the capacity.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// How many times an idle worker yields its core before it sleeps.
const POP_YIELDS: u32 = 3;

/// Why a job was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `capacity` jobs are already waiting.
    Full,
    /// The queue is closed: the gateway is shutting down.
    Closed,
}

/// A bounded, closable FIFO with removal by id. Workers block in `pop`.
pub(crate) struct JobQueue<T> {
    state: Mutex<State<T>>,
    /// Signalled when a job arrives or the queue closes.
    ready: Condvar,
    capacity: usize,
    /// Live jobs, mirrored out of the lock so gauges and ListModels read it
    /// without contending with workers.
    len: AtomicUsize,
}

struct State<T> {
    /// Jobs in arrival order with their ids; `None` marks a removed job.
    slots: VecDeque<(u64, Option<T>)>,
    /// The id the next job gets.
    next_id: u64,
    /// Slots that hold a job.
    live: usize,
    /// Workers in `pop` with no job (yielding or asleep): a job one of them
    /// is about to take does not wait, so it does not count against the
    /// capacity (and with a capacity of 0, only such a job is admitted).
    idle_workers: usize,
    /// Those of them asleep on the condition variable: the only ones a push
    /// must wake (a notify is a syscall even with nobody waiting).
    sleeping_workers: usize,
    closed: bool,
}

impl<T> JobQueue<T> {
    /// A queue that holds at most `capacity` waiting jobs. With a capacity
    /// of 0, a job is admitted only when a worker is idle to take it.
    pub(crate) fn new(capacity: usize) -> Self {
        JobQueue {
            state: Mutex::new(State {
                slots: VecDeque::new(),
                next_id: 0,
                live: 0,
                idle_workers: 0,
                sleeping_workers: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            capacity,
            len: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while holding this lock; if something ever did, the
        // state is still a consistent list of jobs.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a job, returning its id, or gives it back with the reason.
    pub(crate) fn push(&self, job: T) -> Result<u64, (T, Refusal)> {
        let mut state = self.lock();
        if state.closed {
            return Err((job, Refusal::Closed));
        }
        // Jobs that parked workers are about to take do not wait, so they
        // do not count against the capacity.
        if state.live >= self.capacity + state.idle_workers {
            return Err((job, Refusal::Full));
        }
        let id = state.next_id;
        state.next_id += 1;
        state.slots.push_back((id, Some(job)));
        state.live += 1;
        self.len.store(state.live, Ordering::Relaxed);
        // Yielding and busy workers find the job themselves.
        let wake = state.sleeping_workers > 0;
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
    pub(crate) fn pop(&self) -> Option<T> {
        let mut state = self.lock();
        loop {
            while let Some((_, slot)) = state.slots.pop_front() {
                if let Some(job) = slot {
                    state.live -= 1;
                    self.len.store(state.live, Ordering::Relaxed);
                    return Some(job);
                }
            }
            if state.closed {
                return None;
            }
            // Idle from here until a job is taken: admission counts this
            // worker whether it is yielding or asleep.
            state.idle_workers += 1;
            drop(state);
            for _ in 0..POP_YIELDS {
                std::thread::yield_now();
                if self.len.load(Ordering::Relaxed) > 0 {
                    break;
                }
            }
            state = self.lock();
            if state.live == 0 && !state.closed {
                state.sleeping_workers += 1;
                state = self
                    .ready
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                state.sleeping_workers -= 1;
            }
            state.idle_workers -= 1;
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

    /// Jobs waiting right now.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// The most jobs that may wait.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn fifo_with_bounded_capacity() {
        let queue = JobQueue::new(2);
        queue.push(1).unwrap();
        queue.push(2).unwrap();
        assert_eq!(queue.push(3).unwrap_err().1, Refusal::Full);
        assert_eq!(queue.pop(), Some(1));
        queue.push(3).unwrap();
        assert_eq!(queue.pop(), Some(2));
        assert_eq!(queue.pop(), Some(3));
    }

    #[test]
    fn an_idle_worker_takes_one_job_beyond_the_capacity() {
        let queue = JobQueue::new(1);
        // A worker in pop with no job, yielding or asleep.
        queue.lock().idle_workers = 1;
        queue.push(1).unwrap();
        queue.push(2).unwrap();
        assert_eq!(queue.push(3).unwrap_err().1, Refusal::Full);
    }

    #[test]
    fn removed_job_frees_its_place_and_is_skipped() {
        let queue = JobQueue::new(2);
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
        let queue = JobQueue::new(1);
        queue.push(0).unwrap();
        // A long-running job at the front; many callers come and go behind it.
        for i in 1..10_000 {
            let id = queue.push(i).unwrap_err();
            assert_eq!(id.1, Refusal::Full);
        }
        let first = queue.pop().unwrap();
        assert_eq!(first, 0);
        for i in 0..10_000 {
            let id = queue.push(i).unwrap();
            queue.remove(id).unwrap();
        }
        assert!(queue.lock().slots.len() <= 64 + 2);
    }

    #[test]
    fn close_wakes_idle_workers_after_the_queue_drains() {
        let queue = Arc::new(JobQueue::new(4));
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
        assert_eq!(queue.push(8).unwrap_err().1, Refusal::Closed);
        assert_eq!(worker.join().unwrap(), vec![7]);
    }

    #[test]
    fn zero_capacity_admits_only_for_an_idle_worker() {
        let queue = Arc::new(JobQueue::new(0));
        assert_eq!(queue.push(1).unwrap_err().1, Refusal::Full);
        let worker = {
            let queue = queue.clone();
            std::thread::spawn(move || queue.pop())
        };
        // Wait (bounded) until the worker is parked in pop.
        for _ in 0..10_000 {
            if queue.lock().idle_workers == 1 {
                break;
            }
            std::thread::yield_now();
        }
        queue.push(2).unwrap();
        assert_eq!(worker.join().unwrap(), Some(2));
    }
}
