//! The one deadline of a call: when it must be done, the budget it was set
//! from, and who set it.
//!
//! Made once, when the handler receives the call, and passed down by value
//! to admission, the queue, the worker, the stream and the backend, each of
//! which only asks it "expired?" and "how long is left?". The budget is the
//! smaller of the client's `grpc-timeout` and the model's `max_timeout_ms`
//! (the operator's cap), or the model's `timeout_ms` when the client sets
//! none; so no client can hold a worker longer than the operator allows.

use std::fmt;
use std::time::{Duration, Instant};

/// How much earlier than the client's grpc-timeout the gateway gives up, as
/// a fraction of the timeout, between [`MIN_CLIENT_MARGIN`] and
/// [`MAX_CLIENT_MARGIN`]. The client runs its own timer, started before the
/// request was sent: answering DEADLINE_EXCEEDED a little early is what
/// lets the client see DEADLINE_EXCEEDED from the server (with the stage it
/// expired in) rather than a local timeout. (tonic's server would run a
/// third timer on the header, answering CANCELLED "Timeout expired"; the
/// server takes the header away before tonic sees it: see [`Arrival`].)
const CLIENT_MARGIN_DIVISOR: u32 = 20;
/// Lower bound of the margin: two ticks of tokio's millisecond timer.
const MIN_CLIENT_MARGIN: Duration = Duration::from_millis(2);
/// Upper bound of the margin, for long timeouts.
const MAX_CLIENT_MARGIN: Duration = Duration::from_millis(20);
/// Stand-in for "no deadline" where an `Instant` would overflow; config
/// validation keeps every real budget far below it.
const FAR_FUTURE: Duration = Duration::from_secs(365 * 24 * 3600);

/// When a request's headers reached the server: put in its extensions by
/// the server's outermost layer, before the body is read, and the instant
/// its deadline counts from.
#[derive(Debug, Clone, Copy)]
pub struct Arrival(pub Instant);

/// The client's `grpc-timeout`, taken out of the headers by the server's
/// outermost layer (with [`Arrival`]), so that the gateway's own deadline
/// is the only server-side timer: tonic's would otherwise race it on a
/// loaded machine and answer CANCELLED instead of DEADLINE_EXCEEDED.
#[derive(Debug, Clone, Copy)]
pub struct ClientTimeout(pub Option<Duration>);

/// Who chose a call's budget: said in the error when it runs out, so a
/// client can tell its own timeout from the operator's cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineSource {
    /// The client's `grpc-timeout`.
    Client,
    /// The model's `timeout_ms`: the client set no timeout.
    ModelDefault,
    /// The model's `max_timeout_ms`, smaller than the client's timeout.
    OperatorCap,
}

/// When a call must be done. Cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    /// The instant the gateway gives up (a margin before the client does).
    at: Instant,
    /// The budget the deadline was set from, for messages.
    budget: Duration,
    source: DeadlineSource,
}

impl Deadline {
    /// The deadline of a call received at `received`: the client's timeout
    /// capped at `max`, or `default` when the client set none.
    pub fn for_call(
        received: Instant,
        client: Option<Duration>,
        default: Duration,
        max: Duration,
    ) -> Deadline {
        let (budget, source) = match client {
            Some(t) if t > max => (max, DeadlineSource::OperatorCap),
            Some(t) => (t, DeadlineSource::Client),
            None => (default.min(max), DeadlineSource::ModelDefault),
        };
        // Only the client's own timer races ours.
        let effective = match source {
            DeadlineSource::Client => {
                let margin =
                    (budget / CLIENT_MARGIN_DIVISOR).clamp(MIN_CLIENT_MARGIN, MAX_CLIENT_MARGIN);
                budget.saturating_sub(margin)
            }
            DeadlineSource::ModelDefault | DeadlineSource::OperatorCap => budget,
        };
        Deadline {
            at: received
                .checked_add(effective)
                .unwrap_or_else(|| received + FAR_FUTURE),
            budget,
            source,
        }
    }

    /// A deadline `budget` from now, set by the model: for tests and for
    /// embedders that call backends directly.
    pub fn after(budget: Duration) -> Deadline {
        let now = Instant::now();
        Deadline::for_call(now, None, budget, budget)
    }

    /// Whichever of the two comes first: a fallback's deadline never
    /// extends the first model's.
    pub fn earliest(self, other: Deadline) -> Deadline {
        if other.at < self.at { other } else { self }
    }

    /// The instant the call must be done by.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        Instant::now() >= self.at
    }

    /// Time left, zero once expired.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// The budget in whole milliseconds, for messages and worker requests.
    pub fn budget_ms(&self) -> u64 {
        u64::try_from(self.budget.as_millis()).unwrap_or(u64::MAX)
    }

    /// Who chose the budget.
    pub fn source(&self) -> DeadlineSource {
        self.source
    }
}

impl fmt::Display for Deadline {
    /// "deadline of 200 ms (the model's max_timeout_ms)".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "deadline of {} ms", self.budget_ms())?;
        match self.source {
            DeadlineSource::Client => Ok(()),
            DeadlineSource::ModelDefault => f.write_str(" (the model's timeout_ms)"),
            DeadlineSource::OperatorCap => f.write_str(" (capped by the model's max_timeout_ms)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_client_timeout_is_used_with_a_margin() {
        let now = Instant::now();
        let d = Deadline::for_call(now, Some(SECOND), 60 * SECOND, 300 * SECOND);
        assert_eq!(d.source(), DeadlineSource::Client);
        assert_eq!(d.budget_ms(), 1000);
        assert_eq!(d.at(), now + SECOND - Duration::from_millis(20));
    }

    #[test]
    fn the_operator_cap_bounds_the_client() {
        let now = Instant::now();
        let d = Deadline::for_call(now, Some(3600 * SECOND), 60 * SECOND, SECOND / 5);
        assert_eq!(d.source(), DeadlineSource::OperatorCap);
        assert_eq!(d.budget_ms(), 200);
        assert_eq!(d.at(), now + SECOND / 5);
        assert!(d.to_string().contains("max_timeout_ms"), "{d}");
    }

    #[test]
    fn without_a_client_timeout_the_model_default_applies() {
        let now = Instant::now();
        let d = Deadline::for_call(now, None, 2 * SECOND, 300 * SECOND);
        assert_eq!(d.source(), DeadlineSource::ModelDefault);
        assert_eq!(d.at(), now + 2 * SECOND);
        assert!(!d.expired());
        assert!(d.remaining() <= 2 * SECOND);
    }

    #[test]
    fn huge_budgets_do_not_overflow() {
        let d = Deadline::for_call(Instant::now(), Some(Duration::MAX), SECOND, Duration::MAX);
        assert!(!d.expired());
    }
}
