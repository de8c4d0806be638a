//! A cancellation signal that synchronous code can both poll and wait on.
//!
//! tokio-util's `CancellationToken` can only be awaited; a backend running on
//! a worker thread needs to *sleep until cancelled or a timeout*, without
//! spinning and without a runtime. [`CancelSignal`] is a flag with a condition
//! variable: setting it wakes every waiter at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// Set once, by the gateway, when nobody wants the call's result any more
/// (the client left, or its deadline passed). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct CancelSignal {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Read without the lock on the hot path; written under it, so that a
    /// waiter that checked the flag cannot miss the notification.
    cancelled: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl CancelSignal {
    /// A signal that is not set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the signal and wakes everything waiting on it.
    pub fn cancel(&self) {
        // A poisoned lock only means a waiter panicked; the flag is still ours.
        let _guard = self.inner.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.inner.cancelled.store(true, Ordering::Release);
        self.inner.wake.notify_all();
    }

    /// Whether the signal is set.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::Acquire)
    }

    /// Blocks until `until` or until the signal is set; `true` if cancelled.
    pub fn wait_until(&self, until: Instant) -> bool {
        let mut guard = self.inner.lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.is_cancelled() {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            guard = match self.inner.wake.wait_timeout(guard, until - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn wait_returns_at_timeout_when_not_cancelled() {
        let signal = CancelSignal::new();
        let start = Instant::now();
        assert!(!signal.wait_until(start + Duration::from_millis(20)));
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn cancel_wakes_a_waiter_early() {
        let signal = CancelSignal::new();
        let waiter = {
            let signal = signal.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                (
                    signal.wait_until(start + Duration::from_secs(30)),
                    start.elapsed(),
                )
            })
        };
        signal.cancel();
        let (cancelled, waited) = waiter.join().unwrap();
        assert!(cancelled);
        assert!(waited < Duration::from_secs(10));
        assert!(signal.is_cancelled());
    }
}
