//! How long a model's backend calls take lately: what deadline-aware
//! admission predicts a newcomer's queue wait from.
//!
//! An exponentially weighted mean of the backend times of successful calls,
//! kept in one atomic so that recording is lock-free on the worker and
//! reading it is one load on the admission path. Until a few calls have
//! been seen there is no estimate, and nothing is refused on a guess.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Weight of the newest sample, in 1/[`WEIGHT_SCALE`]: about the last 8
/// calls dominate, so the estimate follows a backend that slows down.
const NEW_SAMPLE_WEIGHT: u64 = 2;
const WEIGHT_SCALE: u64 = 16;
/// Samples needed before the estimate is used.
const MIN_SAMPLES: u64 = 4;
/// The mean sits in the low 48 bits (µs, enough for 8.9 years), the sample
/// count (saturating) in the high 16.
const MEAN_BITS: u32 = 48;
const MEAN_MASK: u64 = (1 << MEAN_BITS) - 1;

/// The recent mean backend time of one pool.
#[derive(Debug, Default)]
pub(crate) struct BackendEstimate {
    packed: AtomicU64,
}

impl BackendEstimate {
    /// Records the backend time of a successful call.
    pub(crate) fn observe(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros())
            .unwrap_or(MEAN_MASK)
            .min(MEAN_MASK);
        // Lost updates under a race only drop a sample; the mean stays sane.
        let old = self.packed.load(Ordering::Relaxed);
        let (mean, count) = (old & MEAN_MASK, old >> MEAN_BITS);
        let mean = if count == 0 {
            sample
        } else {
            (mean * (WEIGHT_SCALE - NEW_SAMPLE_WEIGHT) + sample * NEW_SAMPLE_WEIGHT) / WEIGHT_SCALE
        };
        let count = (count + 1).min(u64::from(u16::MAX));
        self.packed
            .store((count << MEAN_BITS) | mean, Ordering::Relaxed);
    }

    /// The mean backend time, once enough calls were seen.
    pub(crate) fn mean(&self) -> Option<Duration> {
        let packed = self.packed.load(Ordering::Relaxed);
        (packed >> MEAN_BITS >= MIN_SAMPLES).then(|| Duration::from_micros(packed & MEAN_MASK))
    }

    /// The least a call that finds `ahead` calls queued before it will wait
    /// for a worker, on `workers` workers: every full round of `workers`
    /// calls ahead must run to the end first. Calls already running are
    /// not counted (they may be about to finish), so the figure errs short.
    pub(crate) fn least_wait(&self, ahead: usize, workers: usize) -> Option<Duration> {
        let mean = self.mean()?;
        let rounds = u32::try_from(ahead / workers.max(1)).unwrap_or(u32::MAX);
        Some(mean.saturating_mul(rounds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn no_estimate_before_enough_samples() {
        let e = BackendEstimate::default();
        for _ in 0..MIN_SAMPLES - 1 {
            e.observe(100 * MS);
        }
        assert_eq!(e.mean(), None);
        assert_eq!(e.least_wait(100, 1), None);
        e.observe(100 * MS);
        assert_eq!(e.mean(), Some(100 * MS));
    }

    #[test]
    fn the_wait_counts_whole_rounds_ahead() {
        let e = BackendEstimate::default();
        for _ in 0..MIN_SAMPLES {
            e.observe(100 * MS);
        }
        assert_eq!(e.least_wait(0, 1), Some(Duration::ZERO));
        assert_eq!(e.least_wait(3, 4), Some(Duration::ZERO));
        assert_eq!(e.least_wait(5, 1), Some(500 * MS));
        assert_eq!(e.least_wait(8, 4), Some(200 * MS));
    }

    #[test]
    fn the_mean_follows_a_slower_backend() {
        let e = BackendEstimate::default();
        for _ in 0..MIN_SAMPLES {
            e.observe(10 * MS);
        }
        for _ in 0..40 {
            e.observe(1000 * MS);
        }
        let mean = e.mean().unwrap();
        assert!(mean > 900 * MS && mean <= 1000 * MS, "{mean:?}");
    }
}
