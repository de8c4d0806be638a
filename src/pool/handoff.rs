//! The run slots of a task pool: `workers` of them, each handed by the
//! call that finishes with it straight to the next waiting call in fair
//! order ([`FairQueue`]).
//!
//! Not a `tokio::sync::Semaphore`: its waiters are served first come,
//! first served, and the order here is round robin between tenants. A free
//! slot is taken at once under the lock (no allocation); a call that must
//! wait queues a oneshot sender and awaits the slot's index on it.
//!
//! The hand-over is sent under the lock, and a waiter that goes away
//! (cancelled, deadline, abort) takes the lock to leave the queue: if it is
//! no longer there, the slot was already sent to it, and it passes the slot
//! on. So a slot is never lost to a waiter dropped at the moment it is
//! granted, and never given twice.

use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use super::Place;
use super::fair::{FairQueue, Key};
use crate::tenant::Caller;

/// A pool's run slots and the calls waiting for one.
pub(crate) struct RunSlots {
    state: Mutex<State>,
}

struct State {
    /// Slots nobody holds, by index (into the pool's `Running` table). Only
    /// non-empty while nobody waits: a freed slot goes to a waiter first.
    free: Vec<usize>,
    /// The calls waiting, each with where to send the slot it gets.
    waiting: FairQueue<oneshot::Sender<usize>>,
}

/// A slot held by a running call; dropping it hands it on.
pub(crate) struct RunSlot<'a> {
    slots: &'a RunSlots,
    index: usize,
}

/// A call's place among the waiters, while it waits.
struct Waiter<'a> {
    slots: &'a RunSlots,
    key: Key,
    rx: oneshot::Receiver<usize>,
    /// The slot arrived (or never will): nothing to give back on drop.
    settled: bool,
}

impl RunSlots {
    pub(crate) fn new(workers: usize) -> Self {
        RunSlots {
            state: Mutex::new(State {
                free: (0..workers).rev().collect(),
                waiting: FairQueue::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding this lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a slot: at once if one is free, else when the calls ahead
    /// in fair order have had theirs. `None` only if the pool is gone.
    pub(crate) async fn acquire(&self, caller: &Caller, priority: u32) -> Option<RunSlot<'_>> {
        let mut waiter = {
            let mut state = self.lock();
            if let Some(index) = state.free.pop() {
                return Some(RunSlot { slots: self, index });
            }
            let (tx, rx) = oneshot::channel();
            let key = state.waiting.push(caller, priority, tx);
            Waiter {
                slots: self,
                key,
                rx,
                settled: false,
            }
        };
        let granted = (&mut waiter.rx).await;
        waiter.settled = true;
        granted.ok().map(|index| RunSlot { slots: self, index })
    }

    /// How many waiting calls would get a slot before a new one of
    /// `place`.
    pub(crate) fn ahead(&self, place: Place<'_>) -> usize {
        self.lock().waiting.ahead(place.caller, place.priority)
    }

    /// Tenants with calls waiting.
    pub(crate) fn tenants(&self) -> usize {
        self.lock().waiting.tenants()
    }

    /// Gives slot `index` to the next waiter that is still there, or frees
    /// it.
    fn release(state: &mut State, index: usize) {
        while let Some(tx) = state.waiting.pop() {
            // Fails only if the waiter's receiver is gone, which happens
            // after it left the queue under this lock: not for a queued one.
            if tx.send(index).is_ok() {
                return;
            }
        }
        state.free.push(index);
    }
}

impl RunSlot<'_> {
    /// The slot's index in the pool's `Running` table.
    pub(crate) fn index(&self) -> usize {
        self.index
    }
}

impl Drop for RunSlot<'_> {
    fn drop(&mut self) {
        RunSlots::release(&mut self.slots.lock(), self.index);
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let mut state = self.slots.lock();
        if state.waiting.remove(self.key).is_some() {
            return;
        }
        // Granted while it was going away: the index was sent under the
        // lock, so it is in the channel now. Pass it on.
        if let Ok(index) = self.rx.try_recv() {
            RunSlots::release(&mut state, index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    fn caller(name: &str) -> Caller {
        Caller {
            tenant: Arc::from(name),
            ..Caller::anonymous()
        }
    }

    /// Polls a future once.
    fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_finishing_call_hands_its_slot_on_in_fair_order() {
        let slots = RunSlots::new(1);
        let (a, b) = (caller("a"), caller("b"));
        let Poll::Ready(Some(first)) = poll_once(pin!(slots.acquire(&a, 0))) else {
            panic!("a free slot is taken at once");
        };
        let mut a1 = pin!(slots.acquire(&a, 0));
        let mut a2 = pin!(slots.acquire(&a, 0));
        let mut b1 = pin!(slots.acquire(&b, 0));
        assert!(poll_once(a1.as_mut()).is_pending());
        assert!(poll_once(a2.as_mut()).is_pending());
        assert!(poll_once(b1.as_mut()).is_pending());
        assert_eq!(slots.tenants(), 2);
        drop(first);
        let Poll::Ready(Some(slot)) = poll_once(a1.as_mut()) else {
            panic!("a1 was next");
        };
        assert!(poll_once(a2.as_mut()).is_pending());
        drop(slot);
        // B's call goes before A's second.
        assert!(poll_once(a2.as_mut()).is_pending());
        let Poll::Ready(Some(slot)) = poll_once(b1.as_mut()) else {
            panic!("b1 was next");
        };
        assert_eq!(slot.index(), 0);
    }

    #[test]
    fn a_waiter_dropped_as_it_is_granted_passes_the_slot_on() {
        let slots = RunSlots::new(1);
        let anon = Caller::anonymous();
        let first = match poll_once(pin!(slots.acquire(&anon, 0))) {
            Poll::Ready(Some(slot)) => slot,
            _ => panic!("a free slot is taken at once"),
        };
        let mut granted = Box::pin(slots.acquire(&anon, 0));
        let mut next = pin!(slots.acquire(&anon, 0));
        assert!(poll_once(granted.as_mut()).is_pending());
        assert!(poll_once(next.as_mut()).is_pending());
        // The slot is sent to `granted`, which goes away before it sees it.
        drop(first);
        drop(granted);
        let Poll::Ready(Some(_held)) = poll_once(next.as_mut()) else {
            panic!("the slot was passed on");
        };
        // A queued waiter that leaves gives back nothing it did not get.
        let mut gone = Box::pin(slots.acquire(&anon, 0));
        assert!(poll_once(gone.as_mut()).is_pending());
        drop(gone);
        assert_eq!(slots.lock().waiting.len(), 0);
        assert!(slots.lock().free.is_empty());
    }
}
