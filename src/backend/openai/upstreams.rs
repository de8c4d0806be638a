//! The upstreams of one model, and which one takes the next request:
//! balancing, passive ejection and active health, without any I/O (time
//! and randomness are passed in, so the rules are tested on their own).
//!
//! - **Up**: an upstream takes requests while it passes its probe
//!   ([`Upstreams::set_probe`], from [`super::health`]) and is not ejected.
//! - **Balancing**: least outstanding requests by power of two choices.
//!   Two distinct up upstreams are drawn at random, each with a chance
//!   proportional to its weight, and the one with fewer requests in flight
//!   per unit of weight wins (the first drawn on a tie). Drawing by weight
//!   makes the weights hold when nothing is in flight; comparing load makes
//!   a slow replica take less under load. No lock is taken: the counts are
//!   atomics, read without ordering (a stale count only makes a choice a
//!   little worse).
//! - **Passive ejection**: `eject_after` consecutive failures (connect
//!   errors, 5xx) eject an upstream for `eject_ms`, doubled for each further
//!   ejection without a success in between, up to [`MAX_EJECT_MS`]. When
//!   the ejection ends the upstream takes requests again (half-open): its
//!   next failure ejects it again at once, its next success forgives it.
//!   Failures of requests sent before the ejection are not counted again.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::MAX_EJECT_MS;
use crate::metrics::upstream::{Code, UpstreamMetrics};

/// The upstreams of one model; `T` is what the HTTP side needs of each.
pub(super) struct Upstreams<T> {
    model: String,
    list: Vec<Upstream<T>>,
    /// Consecutive failures that eject.
    eject_after: u32,
    /// The first ejection's length.
    eject_first: Duration,
    /// Instants are stored as nanoseconds since this one, in atomics.
    epoch: Instant,
}

/// One upstream and its state.
pub(super) struct Upstream<T> {
    /// The configured name: logs and the `upstream` label.
    pub(super) name: String,
    /// Relative share of requests, >= 1.
    weight: u32,
    /// What the HTTP side needs (URLs, secrets).
    pub(super) target: T,
    /// Requests in flight (each an [`InFlight`]).
    outstanding: AtomicUsize,
    /// The last probe passed (true until one fails).
    probe_up: AtomicBool,
    /// Ejected until this many ns after the epoch (0: never ejected).
    ejected_until: AtomicU64,
    passive: Mutex<Passive>,
    /// The state last published (gauge, log), to publish changes once.
    shown_up: AtomicBool,
    metrics: UpstreamMetrics,
}

/// Passive health: what recent requests said.
#[derive(Default)]
struct Passive {
    /// Consecutive failures since the last success.
    failures: u32,
    /// Ejections since the last success (the back-off doubles with each).
    ejections: u32,
    /// When the last ejection began: failures of requests sent before it
    /// are old news.
    ejected_at: Option<Instant>,
}

/// What a request said about its upstream's health (timeouts, broken
/// streams and cancelled calls say nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// It answered (any status below 500).
    Answered,
    /// It could not be reached, or answered 5xx.
    Failed,
}

impl<T> Upstreams<T> {
    /// `(name, weight, target)` of each upstream, all up.
    pub(super) fn new(
        model: &str,
        list: Vec<(String, u32, T)>,
        eject_after: u32,
        eject_first: Duration,
    ) -> Self {
        let list = list
            .into_iter()
            .map(|(name, weight, target)| Upstream {
                metrics: UpstreamMetrics::new(model, &name),
                name,
                weight: weight.max(1),
                target,
                outstanding: AtomicUsize::new(0),
                probe_up: AtomicBool::new(true),
                ejected_until: AtomicU64::new(0),
                passive: Mutex::new(Passive::default()),
                shown_up: AtomicBool::new(true),
            })
            .collect();
        Upstreams {
            model: model.to_string(),
            list,
            eject_after: eject_after.max(1),
            eject_first,
            epoch: Instant::now(),
        }
    }

    /// Every upstream, in configuration order.
    pub(super) fn all(&self) -> &[Upstream<T>] {
        &self.list
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether upstream `i` takes requests at `now`.
    fn is_up(&self, i: usize, now: Instant) -> bool {
        let upstream = &self.list[i];
        upstream.probe_up.load(Ordering::Acquire)
            && upstream.ejected_until.load(Ordering::Acquire) <= self.nanos(now)
    }

    /// Whether any upstream takes requests at `now`; publishes each one's
    /// state if it changed (an ejection ends with no event of its own).
    pub(super) fn any_up(&self, now: Instant) -> bool {
        let mut any = false;
        for i in 0..self.list.len() {
            any |= self.publish(i, now);
        }
        any
    }

    /// Sets the gauge and logs when upstream `i` went up or down; returns
    /// whether it is up.
    fn publish(&self, i: usize, now: Instant) -> bool {
        let up = self.is_up(i, now);
        let upstream = &self.list[i];
        if upstream.shown_up.swap(up, Ordering::AcqRel) != up {
            upstream.metrics.set_up(up);
            if up {
                tracing::info!(model = %self.model, upstream = %upstream.name, "the upstream takes calls again");
            } else {
                tracing::warn!(model = %self.model, upstream = %upstream.name, "the upstream takes no calls");
            }
        }
        up
    }

    /// Picks an up upstream not in `tried` (power of two choices, by
    /// weight and load) and counts a request in flight to it, for a call
    /// due by `deadline`; `None` when no such upstream is up.
    pub(super) fn pick(
        &self,
        tried: &[usize],
        now: Instant,
        deadline: Instant,
        rng: &mut fastrand::Rng,
    ) -> Option<InFlight<'_, T>> {
        let up: Vec<usize> = (0..self.list.len())
            .filter(|i| !tried.contains(i) && self.publish(*i, now))
            .collect();
        let weight = |i: usize| u64::from(self.list[i].weight);
        let chosen = match up.as_slice() {
            [] => return None,
            [only] => *only,
            _ => {
                let total: u64 = up.iter().map(|&i| weight(i)).sum();
                let a = draw(&up, rng.u64(0..total), None, weight);
                let b = draw(&up, rng.u64(0..total - weight(a)), Some(a), weight);
                let load = |i: usize| self.list[i].outstanding.load(Ordering::Relaxed) as u64;
                // b / w(b) < a / w(a), without division.
                if load(b) * weight(a) < load(a) * weight(b) {
                    b
                } else {
                    a
                }
            }
        };
        let upstream = &self.list[chosen];
        upstream.outstanding.fetch_add(1, Ordering::Relaxed);
        upstream.metrics.started();
        Some(InFlight {
            upstreams: self,
            index: chosen,
            sent: now,
            deadline,
            code: None,
        })
    }

    /// Records the probe's finding for upstream `i`.
    pub(super) fn set_probe(&self, i: usize, up: bool, now: Instant) {
        self.list[i].probe_up.store(up, Ordering::Release);
        self.publish(i, now);
    }

    /// Records what a request to upstream `i`, sent at `sent`, said about
    /// its health.
    fn record(&self, i: usize, verdict: Verdict, sent: Instant, now: Instant) {
        let upstream = &self.list[i];
        let mut passive = upstream
            .passive
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if passive.ejected_at.is_some_and(|at| sent < at) {
            return; // sent before the last ejection: already counted
        }
        match verdict {
            Verdict::Answered => {
                passive.failures = 0;
                passive.ejections = 0;
            }
            Verdict::Failed => {
                passive.failures = passive.failures.saturating_add(1);
                if passive.failures < self.eject_after {
                    return;
                }
                passive.ejections = passive.ejections.saturating_add(1);
                // Half-open once the ejection ends: one more failure ejects.
                passive.failures = self.eject_after - 1;
                passive.ejected_at = Some(now);
                let backoff = ejection(self.eject_first, passive.ejections);
                upstream
                    .ejected_until
                    .store(self.nanos(now + backoff), Ordering::Release);
                drop(passive);
                tracing::warn!(
                    model = %self.model,
                    upstream = %upstream.name,
                    failures = self.eject_after,
                    ejected_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                    "the upstream failed repeatedly; ejected"
                );
                self.publish(i, now);
            }
        }
    }
}

/// The ejection after `ejections` in a row: `first`, doubled for each
/// one after the first, at most [`MAX_EJECT_MS`].
fn ejection(first: Duration, ejections: u32) -> Duration {
    let max = Duration::from_millis(MAX_EJECT_MS);
    let doublings = ejections.saturating_sub(1).min(16);
    first.saturating_mul(1 << doublings).min(max.max(first))
}

/// The entry of `up` (skipping `skip`) where `ticket`, a number below
/// their total weight, falls.
fn draw(
    up: &[usize],
    mut ticket: u64,
    skip: Option<usize>,
    weight: impl Fn(usize) -> u64,
) -> usize {
    let mut last = up[0];
    for &i in up.iter().filter(|&&i| Some(i) != skip) {
        if ticket < weight(i) {
            return i;
        }
        ticket -= weight(i);
        last = i;
    }
    last
}

/// One request in flight to one upstream: counted in its outstanding
/// requests while alive; dropping it counts the request, by its code (if
/// none was set, the call's future was dropped: `timeout` past the
/// deadline, `cancelled` before it).
pub(super) struct InFlight<'a, T> {
    upstreams: &'a Upstreams<T>,
    index: usize,
    sent: Instant,
    deadline: Instant,
    code: Option<Code>,
}

impl<'a, T> InFlight<'a, T> {
    /// The upstream's index (for the list of those tried).
    pub(super) fn index(&self) -> usize {
        self.index
    }

    /// The upstream.
    pub(super) fn upstream(&self) -> &'a Upstream<T> {
        &self.upstreams.list[self.index]
    }

    /// Sets the code the request is counted under when it ends.
    pub(super) fn set_code(&mut self, code: Code) {
        self.code = Some(code);
    }

    /// Records what the request said about the upstream's health.
    pub(super) fn verdict(&self, verdict: Verdict) {
        self.upstreams
            .record(self.index, verdict, self.sent, Instant::now());
    }
}

impl<T> Drop for InFlight<'_, T> {
    fn drop(&mut self) {
        let upstream = &self.upstreams.list[self.index];
        upstream.outstanding.fetch_sub(1, Ordering::Relaxed);
        let code = self.code.unwrap_or_else(|| {
            Code::Other(if Instant::now() >= self.deadline {
                "timeout"
            } else {
                "cancelled"
            })
        });
        upstream.metrics.finished(code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(weights: &[u32], eject_after: u32) -> Upstreams<()> {
        let list = weights
            .iter()
            .enumerate()
            .map(|(i, w)| (format!("u{i}"), *w, ()))
            .collect();
        Upstreams::new("upstreams-test", list, eject_after, Duration::from_secs(1))
    }

    fn far(now: Instant) -> Instant {
        now + Duration::from_secs(3600)
    }

    fn ms(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn weights_hold_when_nothing_is_in_flight() {
        let upstreams = set(&[1, 3], 3);
        let mut rng = fastrand::Rng::with_seed(7);
        let now = Instant::now();
        let mut counts = [0usize; 2];
        for _ in 0..4000 {
            let in_flight = upstreams.pick(&[], now, far(now), &mut rng).expect("up");
            counts[in_flight.index()] += 1;
        }
        // 1000 and 3000 expected.
        assert!((800..1200).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn the_less_loaded_replica_takes_the_next_request() {
        let upstreams = set(&[1, 1], 3);
        let mut rng = fastrand::Rng::with_seed(1);
        let now = Instant::now();
        let held: Vec<_> = (0..10)
            .map(|_| upstreams.pick(&[], now, far(now), &mut rng).expect("up"))
            .collect();
        // With two upstreams both are always drawn: the load evens out.
        let on_first = held.iter().filter(|f| f.index() == 0).count();
        assert_eq!(on_first, 5);
        drop(held);
        assert!(
            upstreams
                .all()
                .iter()
                .all(|u| u.outstanding.load(Ordering::Relaxed) == 0)
        );
    }

    #[test]
    fn tried_and_down_upstreams_are_skipped() {
        let upstreams = set(&[1, 1, 1], 3);
        let mut rng = fastrand::Rng::with_seed(3);
        let now = Instant::now();
        upstreams.set_probe(1, false, now);
        for _ in 0..50 {
            let in_flight = upstreams
                .pick(&[0], now, far(now), &mut rng)
                .expect("u2 is up");
            assert_eq!(in_flight.index(), 2);
        }
        assert!(upstreams.pick(&[0, 2], now, far(now), &mut rng).is_none());
        assert!(upstreams.any_up(now));
        upstreams.set_probe(0, false, now);
        upstreams.set_probe(2, false, now);
        assert!(!upstreams.any_up(now));
        upstreams.set_probe(1, true, now);
        assert!(upstreams.any_up(now));
    }

    #[test]
    fn failures_eject_and_the_backoff_doubles_until_a_success() {
        let upstreams = set(&[1], 3);
        let start = Instant::now();
        let fail = |at: Instant| upstreams.record(0, Verdict::Failed, at, at);
        fail(start);
        fail(start);
        assert!(upstreams.is_up(0, start));
        fail(ms(start, 1));
        // Ejected for 1 s.
        assert!(!upstreams.is_up(0, ms(start, 2)));
        assert!(!upstreams.any_up(ms(start, 999)));
        // A request sent before the ejection failing now is not counted.
        upstreams.record(0, Verdict::Failed, start, ms(start, 500));
        // Half-open after the back-off: one failure ejects again, for 2 s.
        assert!(upstreams.is_up(0, ms(start, 1001)));
        fail(ms(start, 1100));
        assert!(!upstreams.is_up(0, ms(start, 3000)));
        assert!(upstreams.is_up(0, ms(start, 3101)));
        // A success forgives: three failures again before an ejection of 1 s.
        upstreams.record(0, Verdict::Answered, ms(start, 3200), ms(start, 3200));
        fail(ms(start, 3300));
        fail(ms(start, 3300));
        assert!(upstreams.is_up(0, ms(start, 3300)));
        fail(ms(start, 3300));
        assert!(!upstreams.is_up(0, ms(start, 4299)));
        assert!(upstreams.is_up(0, ms(start, 4301)));
    }

    #[test]
    fn the_backoff_is_capped() {
        let first = Duration::from_secs(5);
        assert_eq!(ejection(first, 1), first);
        assert_eq!(ejection(first, 2), Duration::from_secs(10));
        assert_eq!(ejection(first, 5), Duration::from_secs(60));
        assert_eq!(ejection(first, u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn a_dropped_request_counts_as_cancelled_and_leaves_the_count() {
        let upstreams = set(&[1], 1);
        let mut rng = fastrand::Rng::with_seed(0);
        let now = Instant::now();
        let mut in_flight = upstreams.pick(&[], now, far(now), &mut rng).expect("up");
        assert_eq!(upstreams.all()[0].outstanding.load(Ordering::Relaxed), 1);
        in_flight.set_code(Code::Status(200));
        in_flight.verdict(Verdict::Answered);
        drop(in_flight);
        assert_eq!(upstreams.all()[0].outstanding.load(Ordering::Relaxed), 0);
        assert!(upstreams.any_up(Instant::now()));
    }
}
