//! A key's limits at run time: a token bucket for its request rate and a
//! semaphore for its calls in flight. Both are checked before a call is
//! admitted to a model's queue, so a key over its limits never takes a
//! place there.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::keys::KeyEntry;
use crate::error::Error;

/// A key's rate and concurrency limits.
pub(crate) struct Limits {
    rate: Option<Rate>,
    concurrency: Option<(Arc<Semaphore>, u32)>,
}

struct Rate {
    limiter: DefaultDirectRateLimiter,
    per_second: f64,
    burst: u32,
}

/// Holds one of a key's concurrent calls until dropped.
pub(crate) type CallPermit = Option<OwnedSemaphorePermit>;

impl Limits {
    pub(crate) fn new(entry: &KeyEntry) -> Limits {
        let rate = entry.rate_per_second.map(|per_second| {
            // Validated: above 0 and at most MAX_RATE, so the period is
            // at least a microsecond.
            let burst = entry
                .burst
                .unwrap_or_else(|| per_second.ceil().clamp(1.0, f64::from(u32::MAX)) as u32);
            let period = Duration::from_secs_f64(1.0 / per_second).max(Duration::from_nanos(1));
            let quota = Quota::with_period(period)
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
            Rate {
                limiter: RateLimiter::direct(quota),
                per_second,
                burst,
            }
        });
        let concurrency = entry
            .max_concurrency
            .map(|n| (Arc::new(Semaphore::new(n as usize)), n));
        Limits { rate, concurrency }
    }

    /// Takes a place for one call, or says which limit it is over.
    pub(crate) fn admit(&self) -> Result<CallPermit, Error> {
        let permit = match &self.concurrency {
            Some((semaphore, limit)) => match semaphore.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => return Err(Error::ConcurrencyLimited { limit: *limit }),
            },
            None => None,
        };
        if let Some(rate) = &self.rate
            && rate.limiter.check().is_err()
        {
            return Err(Error::RateLimited {
                per_second: rate.per_second,
                burst: rate.burst,
            });
        }
        Ok(permit)
    }

    /// Calls in flight under the concurrency limit (for tests and logs).
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> u32 {
        self.concurrency.as_ref().map_or(0, |(s, n)| {
            n - u32::try_from(s.available_permits()).unwrap_or(*n)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> KeyEntry {
        KeyEntry::new("t", "0".repeat(64))
    }

    #[test]
    fn concurrency_is_exact_and_permits_come_back() {
        let limits = Limits::new(&KeyEntry {
            max_concurrency: Some(2),
            ..entry()
        });
        let a = limits.admit().unwrap();
        let _b = limits.admit().unwrap();
        assert_eq!(limits.in_flight(), 2);
        let e = limits.admit().unwrap_err();
        assert!(e.to_string().contains("2 calls"), "{e}");
        drop(a);
        assert!(limits.admit().is_ok());
    }

    #[test]
    fn the_rate_allows_a_burst_then_refuses() {
        let limits = Limits::new(&KeyEntry {
            rate_per_second: Some(0.5),
            burst: Some(3),
            ..entry()
        });
        for _ in 0..3 {
            limits.admit().unwrap();
        }
        let e = limits.admit().unwrap_err();
        assert!(e.to_string().contains("0.5 calls per second"), "{e}");
    }
}
