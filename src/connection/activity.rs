//! Calls in flight on each gRPC connection, so that a connection with none
//! for too long can be closed ([`super::incoming::LimitedIo`] does that).
//!
//! tonic puts each connection's [`ConnectionInfo`] (our `Connected` info)
//! into the extensions of every request it serves; [`CountCallsLayer`],
//! over the whole server, takes it from there and holds a [`CallGuard`]
//! from the request until its response body has ended (or is dropped: a
//! client reset). Bytes are not activity: a client's HTTP/2 PINGs do not
//! keep a connection without calls open, while a long call that sends
//! nothing for minutes does.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;
use tonic::codegen::http;
use tonic::transport::server::TcpConnectInfo;
use tower::{Layer, Service};

use crate::connection::tls::PeerIdentity;

/// How long a connection may go without a call in flight.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdleTimeouts {
    /// After its last call ended.
    pub(crate) idle: Duration,
    /// From its accept, while it has started no call yet.
    pub(crate) first_call: Duration,
}

/// The calls in flight on one connection and when that count last changed.
#[derive(Debug)]
pub(crate) struct Activity {
    /// When the connection was accepted: `last_change_ms` counts from here.
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds from `epoch` to the last call's start or end. Written
    /// before `in_flight` drops, so whoever reads `in_flight == 0` reads
    /// the end of the last call here.
    last_change_ms: AtomicU64,
    /// Whether any call has started: a connection that never started one
    /// gets the (shorter) first-call timeout.
    called: AtomicBool,
}

impl Activity {
    /// The state of a connection accepted now.
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_change_ms: AtomicU64::new(0),
            called: AtomicBool::new(false),
        })
    }

    /// Counts a call as in flight until the guard drops.
    pub(crate) fn start_call(self: &Arc<Activity>) -> CallGuard {
        self.called.store(true, Ordering::SeqCst);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.touch();
        CallGuard(self.clone())
    }

    /// Whether a call was ever started on this connection.
    pub(crate) fn called(&self) -> bool {
        self.called.load(Ordering::SeqCst)
    }

    /// When the connection will have been idle past its timeout, or
    /// `None` while a call is in flight.
    pub(crate) fn idle_deadline(&self, timeouts: &IdleTimeouts) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let timeout = if self.called() {
            timeouts.idle
        } else {
            timeouts.first_call
        };
        let last_change = Duration::from_millis(self.last_change_ms.load(Ordering::SeqCst));
        Some(self.epoch + last_change + timeout)
    }

    fn touch(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_change_ms.store(now, Ordering::SeqCst);
    }
}

/// One call in flight; dropping it ends the call for the idle count.
#[derive(Debug)]
pub(crate) struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What tonic puts in every request's extensions for our connections (in
/// place of its `TcpConnectInfo`, which [`CountCalls`] puts there too, so
/// that `Request::remote_addr` works).
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The connection's addresses.
    pub(crate) tcp: TcpConnectInfo,
    pub(crate) activity: Arc<Activity>,
    /// The client certificate's identity, on an mTLS connection whose
    /// client presented one.
    pub(crate) peer: Option<PeerIdentity>,
}

/// Counts every request as a call on its connection; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountCallsLayer;

impl<S> Layer<S> for CountCallsLayer {
    type Service = CountCalls<S>;

    fn layer(&self, inner: S) -> CountCalls<S> {
        CountCalls { inner }
    }
}

/// The service of [`CountCallsLayer`].
#[derive(Debug, Clone)]
pub struct CountCalls<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for CountCalls<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let info = request.extensions().get::<ConnectionInfo>();
        let guard = info.map(|info| info.activity.start_call());
        // tonic's `Request::remote_addr` looks for this.
        if let Some(tcp) = info.map(|info| info.tcp.clone()) {
            request.extensions_mut().insert(tcp);
        }
        CountedFuture {
            inner: self.inner.call(request),
            guard,
        }
    }
}

pin_project_lite::pin_project! {
    /// A response future holding its call's guard.
    pub struct CountedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<CallGuard>,
    }
}

impl<F, B, E> Future for CountedFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<CountedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let guard = this.guard.take();
        Poll::Ready(result.map(|response| response.map(|inner| CountedBody { inner, guard })))
    }
}

pin_project_lite::pin_project! {
    /// A response body holding its call's guard until the body ends.
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        guard: Option<CallGuard>,
    }
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if let Poll::Ready(None) = frame {
            // Ended: the call is over even if hyper keeps the body a while.
            this.guard.take();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: IdleTimeouts = IdleTimeouts {
        idle: Duration::from_secs(10),
        first_call: Duration::from_secs(1),
    };

    #[test]
    fn a_call_in_flight_holds_the_idle_deadline_off() {
        // Instants need a runtime's clock only when paused; this one is not.
        let accepted = Instant::now();
        let activity = Activity::new();
        let first = activity.idle_deadline(&TIMEOUTS).expect("idle at first");
        assert!(first >= accepted + TIMEOUTS.first_call, "{first:?}");
        assert!(first <= Instant::now() + TIMEOUTS.first_call);

        let call = activity.start_call();
        let second = activity.start_call();
        assert_eq!(activity.idle_deadline(&TIMEOUTS), None);
        drop(call);
        assert_eq!(activity.idle_deadline(&TIMEOUTS), None, "one call left");
        let ended = Instant::now();
        drop(second);
        let deadline = activity.idle_deadline(&TIMEOUTS).expect("idle again");
        // The idle timeout, not the first-call one, counted from the end
        // (to the millisecond the state keeps).
        assert!(deadline + Duration::from_millis(1) >= ended + TIMEOUTS.idle);
        assert!(deadline <= Instant::now() + TIMEOUTS.idle);
    }
}
