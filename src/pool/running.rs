//! Which workers are inside a backend call, since when, and how many
//! worker-seconds the pool has spent in backend calls.
//!
//! The busy-seconds total includes the part of each call still running, so
//! a scrape during a 10 s call sees it grow, and `rate()` of it is the true
//! mean number of calls running at once. It never decreases: a finished
//! call's time moves from "running" to "finished" under one lock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::cancel::CancelSignal;

/// The running calls of one pool.
pub(crate) struct Running {
    state: Mutex<State>,
    /// Workers in a call, readable without the lock.
    busy: AtomicUsize,
}

struct State {
    /// Per worker: when its call started, and the call's cancel signal (so a
    /// shutdown whose grace ran out can stop it; a task pool stops its
    /// tasks itself).
    slots: Vec<Option<(Instant, Option<CancelSignal>)>>,
    /// Time of the calls that have finished.
    finished: Duration,
}

impl Running {
    pub(crate) fn new(workers: usize) -> Self {
        Running {
            state: Mutex::new(State {
                slots: vec![None; workers],
                finished: Duration::ZERO,
            }),
            busy: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics under this lock; the state stays consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Worker `index` starts a call; returns when.
    pub(crate) fn begin(&self, index: usize, cancel: Option<&CancelSignal>) -> Instant {
        let now = Instant::now();
        if let Some(slot) = self.lock().slots.get_mut(index) {
            *slot = Some((now, cancel.cloned()));
        }
        self.busy.fetch_add(1, Ordering::Relaxed);
        now
    }

    /// Worker `index` ends its call; returns how long it took.
    pub(crate) fn end(&self, index: usize) -> Duration {
        let now = Instant::now();
        let mut state = self.lock();
        let took = match state.slots.get_mut(index).and_then(Option::take) {
            Some((started, _)) => now.saturating_duration_since(started),
            None => Duration::ZERO,
        };
        state.finished += took;
        drop(state);
        self.busy.fetch_sub(1, Ordering::Relaxed);
        took
    }

    /// Workers inside a call right now.
    pub(crate) fn busy(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }

    /// Worker-seconds spent in calls, the running ones up to now included.
    pub(crate) fn busy_seconds(&self) -> f64 {
        let now = Instant::now();
        let state = self.lock();
        let running: Duration = state
            .slots
            .iter()
            .flatten()
            .map(|(started, _)| now.saturating_duration_since(*started))
            .sum();
        (state.finished + running).as_secs_f64()
    }

    /// Signals every running call to stop; returns how many there were.
    pub(crate) fn cancel_all(&self) -> usize {
        let state = self.lock();
        let mut count = 0;
        for (_, cancel) in state.slots.iter().flatten() {
            if let Some(cancel) = cancel {
                cancel.cancel();
            }
            count += 1;
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_seconds_count_running_calls_and_never_decrease() {
        let running = Running::new(2);
        let a = CancelSignal::new();
        running.begin(0, Some(&a));
        running.begin(1, Some(&CancelSignal::new()));
        assert_eq!(running.busy(), 2);
        let mut last = 0.0;
        for _ in 0..100 {
            let now = running.busy_seconds();
            assert!(now >= last);
            last = now;
        }
        let took = running.end(0);
        assert!(running.busy_seconds() >= took.as_secs_f64());
        assert!(running.busy_seconds() >= last);
        assert_eq!(running.busy(), 1);
        assert_eq!(running.cancel_all(), 1);
        assert!(!a.is_cancelled());
    }
}
