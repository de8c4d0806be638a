//! The gRPC listener's accepted connections: each takes a slot under the
//! connection cap or is closed at once, and each closes itself once it has
//! had no call in flight for its idle timeout, or once a newcomer took its
//! place before it started a call.
//!
//! The idle close is a read that returns end-of-file: hyper then ends the
//! connection and drops the socket. A GOAWAY would be politer, but tonic
//! keeps each connection's hyper handle to itself; since by definition no
//! call is in flight, a client loses nothing but a race with a call it
//! sends at that very moment, which gRPC clients retry on a new connection.
//!
//! With TLS, an accepted connection (holding its slot) gets its handshake
//! in a task of its own ([`tls::handshake`]), so a slow or silent client
//! holds up no other; the stream yields it once the handshake is done. The
//! idle close then works under TLS: the end-of-file is the TCP stream's,
//! and rustls reports it to hyper as the end of the connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::connection::activity::{Activity, ConnectionInfo, IdleTimeouts};
use crate::connection::tls::{self, Handshake, PeerIdentity, ServerTls};
use crate::connection::{ConnectionCap, Slot, is_connection_error};

/// How long accepting pauses after an error such as running out of file
/// descriptors (accepting again at once would spin).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Connections refused (or handed to a handshake task) in one poll before
/// the accept loop yields, so that a flood cannot keep its task from giving
/// way to others.
const REFUSALS_PER_POLL: usize = 64;

/// The accepted connections of a listener, as tonic's `incoming` stream.
pub(crate) struct Incoming {
    listener: TcpListener,
    cap: ConnectionCap,
    timeouts: IdleTimeouts,
    pause: Option<Pin<Box<Sleep>>>,
    /// With TLS: the configs, and the handshakes in progress (each holds
    /// its connection's slot, so there are at most `max_connections`;
    /// aborted when the stream is dropped).
    tls: Option<(Arc<ServerTls>, JoinSet<Handshake>)>,
}

impl Incoming {
    /// Accepts on `listener` under `cap`, closing idle connections after
    /// `timeouts`, with a TLS handshake first when `tls` is given.
    pub(crate) fn new(
        listener: TcpListener,
        cap: ConnectionCap,
        timeouts: IdleTimeouts,
        tls: Option<Arc<ServerTls>>,
    ) -> Self {
        Incoming {
            listener,
            cap,
            timeouts,
            pause: None,
            tls: tls.map(|tls| (tls, JoinSet::new())),
        }
    }
}

impl Stream for Incoming {
    type Item = io::Result<ServerIo>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let mut refused = 0;
        loop {
            if let Some((_, handshakes)) = &mut this.tls {
                while let Poll::Ready(Some(done)) = handshakes.poll_join_next(cx) {
                    match done {
                        Ok(Handshake::Tls(stream)) => {
                            return Poll::Ready(Some(Ok(ServerIo::Tls(stream))));
                        }
                        Ok(Handshake::Closed) => {}
                        Err(e) => tracing::warn!(error = %e, "a TLS handshake task failed"),
                    }
                }
            }
            if let Some(pause) = &mut this.pause {
                ready!(pause.as_mut().poll(cx));
                this.pause = None;
            }
            match ready!(this.listener.poll_accept(cx)) {
                Ok((stream, _peer)) => {
                    let Some(slot) = this.cap.admit() else {
                        // Full of connections with calls: closed at once,
                        // the client fails fast instead of waiting.
                        drop(stream);
                        refused += 1;
                        if refused == REFUSALS_PER_POLL {
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                        continue;
                    };
                    // Small gRPC messages go out at once (Nagle off).
                    let _ = stream.set_nodelay(true);
                    let io = LimitedIo::new(stream, slot, this.timeouts);
                    let Some((tls, handshakes)) = &mut this.tls else {
                        return Poll::Ready(Some(Ok(ServerIo::Plain(io))));
                    };
                    let tls = tls.clone();
                    handshakes.spawn(async move { tls::handshake(&tls, io).await });
                    refused += 1;
                    if refused == REFUSALS_PER_POLL {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "gRPC listener cannot accept; pausing");
                    this.pause = Some(Box::pin(tokio::time::sleep(ACCEPT_PAUSE)));
                }
            }
        }
    }
}

/// An accepted gRPC connection: holds its slot under the cap, and reads
/// end-of-file once it has been idle past its timeout.
pub(crate) struct LimitedIo {
    stream: TcpStream,
    info: ConnectionInfo,
    timeouts: IdleTimeouts,
    /// Fires at or before the idle deadline, to look again (see
    /// `idle_expired`).
    idle_timer: Pin<Box<Sleep>>,
    closed: bool,
    /// Until its first call, a newcomer may take the connection's place.
    may_be_evicted: bool,
    slot: Slot,
}

impl LimitedIo {
    fn new(stream: TcpStream, slot: Slot, timeouts: IdleTimeouts) -> LimitedIo {
        let activity = Activity::new();
        let deadline = activity
            .idle_deadline(&timeouts)
            .unwrap_or_else(|| Instant::now() + timeouts.idle);
        let tcp = TcpConnectInfo {
            local_addr: stream.local_addr().ok(),
            remote_addr: stream.peer_addr().ok(),
        };
        LimitedIo {
            stream,
            info: ConnectionInfo {
                tcp,
                activity: Arc::clone(&activity),
                peer: None,
            },
            timeouts,
            idle_timer: Box::pin(tokio::time::sleep_until(deadline)),
            closed: false,
            may_be_evicted: true,
            slot,
        }
    }

    /// The client's address, for logs.
    pub(crate) fn remote_addr(&self) -> Option<std::net::SocketAddr> {
        self.info.tcp.remote_addr
    }

    /// The first bytes the client sent, left to be read again.
    pub(crate) async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.peek(buf).await
    }

    /// Records the client-certificate identity found in the handshake.
    pub(crate) fn set_peer(&mut self, peer: Option<PeerIdentity>) {
        self.info.peer = peer;
    }

    /// Whether a newcomer took this connection's place before its first
    /// call (see `ConnectionCap`).
    fn evicted(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.may_be_evicted {
            return false;
        }
        if self.info.activity.called() && self.slot.mark_started() {
            self.may_be_evicted = false;
            return false;
        }
        if self.slot.poll_evicted(cx) {
            tracing::debug!(peer = ?self.info.tcp.remote_addr, "gRPC connection without calls made way for a new one");
            return true;
        }
        false
    }

    /// Whether the connection has been idle past its timeout; otherwise
    /// keeps the timer armed so that the task wakes when it may have been.
    ///
    /// The deadline moves later with every call, so the timer is not reset
    /// on each one: when it fires, the deadline is looked up again and the
    /// timer rearmed for it (or, with a call in flight, one idle timeout
    /// on). Only a deadline earlier than the timer's (an idle timeout
    /// shorter than the first-call one) moves it up at once.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let activity = &self.info.activity;
        if let Some(deadline) = activity.idle_deadline(&self.timeouts)
            && deadline < self.idle_timer.deadline()
        {
            self.idle_timer.as_mut().reset(deadline);
        }
        while self.idle_timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            match activity.idle_deadline(&self.timeouts) {
                Some(deadline) if deadline <= now => {
                    let reason = if activity.called() {
                        "idle"
                    } else {
                        "first_call"
                    };
                    tracing::debug!(reason, peer = ?self.info.tcp.remote_addr, "closing an idle gRPC connection");
                    self.slot.closed_by_limit(reason);
                    return true;
                }
                Some(deadline) => self.idle_timer.as_mut().reset(deadline),
                None => self.idle_timer.as_mut().reset(now + self.timeouts.idle),
            }
        }
        false
    }
}

impl Connected for LimitedIo {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

impl AsyncRead for LimitedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closed || this.evicted(cx) || this.idle_expired(cx) {
            this.closed = true;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// A connection as tonic gets it: plain, or after its TLS handshake.
// The TLS state (over a kilobyte) is boxed so that plain connections do
// not carry its size; a plain one stays inline, as before TLS existed.
#[allow(clippy::large_enum_variant)]
pub(crate) enum ServerIo {
    /// A plain-text listener's connection.
    Plain(LimitedIo),
    /// A TLS listener's connection, handshake done.
    Tls(Box<tokio_rustls::server::TlsStream<LimitedIo>>),
}

impl Connected for ServerIo {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        match self {
            ServerIo::Plain(io) => io.info.clone(),
            ServerIo::Tls(stream) => stream.get_ref().0.info.clone(),
        }
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(io) => Pin::new(io).poll_read(cx, buf),
            ServerIo::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(io) => Pin::new(io).poll_write(cx, buf),
            ServerIo::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            ServerIo::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerIo::Plain(io) => io.is_write_vectored(),
            ServerIo::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(io) => Pin::new(io).poll_flush(cx),
            ServerIo::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(io) => Pin::new(io).poll_shutdown(cx),
            ServerIo::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
