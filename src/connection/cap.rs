//! A listener's cap on open connections, and who makes way when it is full.
//!
//! Every admitted connection holds a permit of the cap's semaphore through
//! its [`Slot`]. When none is left, the permit of the oldest connection
//! that has not yet started a call (or, on `/metrics`, a request) passes to
//! the newcomer, and that connection is told to close ([`Slot::evicted`]).
//! A connection that has started one is never evicted; when all have, the
//! newcomer is refused. So silent, preface-only or slowloris connections
//! can fill the cap only until a real client arrives, while connections
//! doing work keep their place.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use metrics::{Counter, Gauge, counter, gauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::metrics::{CONNECTIONS, CONNECTIONS_CLOSED_TOTAL, CONNECTIONS_REFUSED_TOTAL, recorder};

/// Below this many queued entries the queue of connections not yet started
/// is never swept.
const MIN_SWEEP: usize = 64;

/// A listener's cap on open connections; clones share it.
#[derive(Clone)]
pub(crate) struct ConnectionCap {
    listener: &'static str,
    max: usize,
    slots: Arc<Semaphore>,
    /// Admitted connections in accept order, oldest first, that had not
    /// started a call when last seen; entries of connections gone or
    /// started are dropped when met.
    not_started: Arc<Mutex<VecDeque<Weak<Standing>>>>,
    /// The most connections open at once since [`ConnectionCap::take_peak`].
    peak: Arc<AtomicUsize>,
    open: Gauge,
    refused: Counter,
    evicted: Counter,
}

/// What the cap and a connection share.
struct Standing {
    /// The connection's place; taken by a newcomer when it is evicted.
    permit: Mutex<Option<OwnedSemaphorePermit>>,
    started: AtomicBool,
    evict: CancellationToken,
}

impl ConnectionCap {
    /// A cap of `max` connections for the listener labelled `listener`.
    pub(crate) fn new(listener: &'static str, max: usize) -> ConnectionCap {
        // Handles made before the recorder is installed would record
        // nowhere.
        recorder();
        let max = max.min(Semaphore::MAX_PERMITS);
        let closed =
            |reason| counter!(CONNECTIONS_CLOSED_TOTAL, "listener" => listener, "reason" => reason);
        ConnectionCap {
            listener,
            max,
            slots: Arc::new(Semaphore::new(max)),
            not_started: Arc::default(),
            peak: Arc::new(AtomicUsize::new(0)),
            open: gauge!(CONNECTIONS, "listener" => listener),
            refused: counter!(
                CONNECTIONS_REFUSED_TOTAL,
                "listener" => listener,
                "reason" => "max_connections"
            ),
            evicted: closed("evicted"),
        }
    }

    /// A slot for a connection just accepted, or `None` (counted) when the
    /// listener is full of connections that have started calls, and this
    /// one must be closed.
    pub(crate) fn admit(&self) -> Option<Slot> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => match self.evict_oldest_not_started() {
                Some(permit) => permit,
                None => {
                    self.refused.increment(1);
                    return None;
                }
            },
        };
        let standing = Arc::new(Standing {
            permit: Mutex::new(Some(permit)),
            started: AtomicBool::new(false),
            evict: CancellationToken::new(),
        });
        self.queue(&standing);
        self.open.increment(1.0);
        self.peak.fetch_max(self.open_now(), Ordering::Relaxed);
        Some(Slot {
            evicted: Box::pin(standing.evict.clone().cancelled_owned()),
            standing,
            open: self.open.clone(),
            listener: self.listener,
        })
    }

    /// Connections holding a place now.
    pub(crate) fn open_now(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// The most connections open at once since the last call; starts the
    /// next period at the count open now.
    pub(crate) fn take_peak(&self) -> usize {
        self.peak.swap(self.open_now(), Ordering::Relaxed)
    }

    fn queue(&self, standing: &Arc<Standing>) {
        let mut queue = lock(&self.not_started);
        // Sweep out the connections gone or started once they outnumber
        // the open ones: the queue stays within twice the open count.
        if queue.len() >= MIN_SWEEP.max(2 * self.open_now()) {
            sweep(&mut queue);
        }
        queue.push_back(Arc::downgrade(standing));
    }

    /// Drops what the queue keeps of connections gone or started, and the
    /// room it no longer needs. A weak reference keeps its allocation
    /// alive, and thousands of those, scattered through the heap after a
    /// flood, keep the allocator from handing its pages back.
    pub(crate) fn sweep(&self) {
        let mut queue = lock(&self.not_started);
        sweep(&mut queue);
        let keep = MIN_SWEEP.max(2 * queue.len());
        queue.shrink_to(keep);
    }

    /// Takes the place of the oldest connection not yet started, telling it
    /// to close.
    fn evict_oldest_not_started(&self) -> Option<OwnedSemaphorePermit> {
        let mut queue = lock(&self.not_started);
        while let Some(entry) = queue.pop_front() {
            let Some(standing) = entry.upgrade() else {
                continue;
            };
            // Under the permit's lock, so that a connection starting now is
            // either started (kept) or evicted, never both.
            let mut permit = lock(&standing.permit);
            if standing.started.load(Ordering::Relaxed) {
                continue;
            }
            let Some(permit) = permit.take() else {
                continue;
            };
            standing.evict.cancel();
            self.evicted.increment(1);
            return Some(permit);
        }
        None
    }
}

fn sweep(queue: &mut VecDeque<Weak<Standing>>) {
    queue.retain(|entry| {
        entry
            .upgrade()
            .is_some_and(|s| !s.started.load(Ordering::Relaxed))
    });
}

/// Locks a mutex, also when a panic poisoned it: the data (a queue of weak
/// references, an optional permit) is valid in any state a panic leaves.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One open connection's place under its listener's cap; dropping it (when
/// the connection closes) frees the place.
pub(crate) struct Slot {
    standing: Arc<Standing>,
    /// Resolves when a newcomer took this connection's place.
    evicted: Pin<Box<WaitForCancellationFutureOwned>>,
    open: Gauge,
    listener: &'static str,
}

impl Slot {
    /// Marks the connection as having started a call: it keeps its place
    /// from now on. `false` if it was evicted already.
    pub(crate) fn mark_started(&self) -> bool {
        self.standing.mark_started()
    }

    /// A handle that marks the connection started, for its request handler.
    pub(crate) fn starter(&self) -> Starter {
        Starter(self.standing.clone())
    }

    /// Whether a newcomer has taken this connection's place; if not, the
    /// task is woken when one does.
    pub(crate) fn poll_evicted(&mut self, cx: &mut Context<'_>) -> bool {
        self.evicted.as_mut().poll(cx).is_ready()
    }

    /// Resolves when a newcomer has taken this connection's place.
    pub(crate) async fn evicted(&mut self) {
        std::future::poll_fn(|cx| match self.poll_evicted(cx) {
            true => Poll::Ready(()),
            false => Poll::Pending,
        })
        .await;
    }

    /// Counts this connection as closed by the server because of `reason`.
    pub(crate) fn closed_by_limit(&self, reason: &'static str) {
        counter!(CONNECTIONS_CLOSED_TOTAL, "listener" => self.listener, "reason" => reason)
            .increment(1);
    }
}

/// Marks a connection started; see [`Slot::starter`].
#[derive(Clone)]
pub(crate) struct Starter(Arc<Standing>);

impl Starter {
    /// See [`Slot::mark_started`].
    pub(crate) fn mark_started(&self) -> bool {
        self.0.mark_started()
    }
}

impl Standing {
    fn mark_started(&self) -> bool {
        if self.started.load(Ordering::Relaxed) {
            return true;
        }
        let permit = lock(&self.permit);
        if permit.is_some() {
            self.started.store(true, Ordering::Relaxed);
        }
        permit.is_some()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.decrement(1.0);
        // The permit (if no newcomer took it) goes back now, not when the
        // cap's queue lets go of its weak reference.
        lock(&self.standing.permit).take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evicted(slot: &mut Slot) -> bool {
        slot.poll_evicted(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[test]
    fn the_oldest_connection_not_started_makes_way_and_started_ones_keep_theirs() {
        let cap = ConnectionCap::new("test", 3);
        let mut first = cap.admit().expect("room");
        let mut second = cap.admit().expect("room");
        let mut third = cap.admit().expect("room");
        assert!(first.mark_started());
        assert_eq!(cap.open_now(), 3);

        // Full: the oldest not started (the second) makes way.
        let fourth = cap.admit().expect("in the place of the second");
        assert!(evicted(&mut second));
        assert!(!second.mark_started(), "an evicted connection cannot start");
        assert!(!evicted(&mut first) && !evicted(&mut third));
        assert_eq!(cap.open_now(), 3, "the permit passed on, none added");

        // Once all have started, a newcomer is refused.
        assert!(third.starter().mark_started());
        assert!(fourth.mark_started());
        assert!(cap.admit().is_none());
        drop(second);
        assert!(cap.admit().is_none(), "the evicted one's place is taken");
        drop(first);
        assert!(cap.admit().is_some(), "a closed connection's place is free");
    }
}
