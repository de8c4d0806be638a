//! What travels between an RPC handler and a worker: the job and its reply
//! channel, and the worker's side of that channel.
//!
//! Every send from a worker thread is a race: a stream's client may stop
//! reading (HTTP/2 window at zero, buffer full), and a worker waiting for
//! room would then be held for as long as the connection lives. So a send
//! waits at most until the call's deadline or cancellation
//! ([`send_within`]), and the worker is freed either way.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use crate::backend::{Cancelled, GenerateParams, TokenSink};
use crate::cancel::CancelSignal;
use crate::deadline::Deadline;
use crate::error::Error;
use crate::outcome::{CallResult, StreamItem};

/// How often a worker waiting for a stream's client to read checks for
/// cancellation (the deadline wakes it exactly; a read wakes it at once).
const CANCEL_POLL: Duration = Duration::from_millis(20);

/// The channel of a streaming call.
pub(crate) type StreamSender = mpsc::Sender<Result<StreamItem, Error>>;

/// How the worker answers.
pub(crate) enum Reply {
    /// Generate: the text is collected and sent once.
    Whole(oneshot::Sender<CallResult>),
    /// GenerateStream: each piece of text is sent as it comes (with
    /// back-pressure: a slow reader slows the backend, up to the deadline),
    /// then the end.
    Stream(StreamSender),
}

impl Reply {
    /// Sends the final result from the worker; a caller that has gone away,
    /// stopped reading past the deadline, or cancelled is given up on.
    pub(crate) fn finish(self, result: CallResult, cancel: &CancelSignal, deadline: &Deadline) {
        match self {
            Reply::Whole(tx) => {
                let _ = tx.send(result);
            }
            Reply::Stream(tx) => {
                let item = result.map(StreamItem::Done);
                let _ = send_within(&tx, item, cancel, deadline);
            }
        }
    }

    /// Sends the final result of a call that never ran, without blocking:
    /// for code on the async runtime (a shutdown cutting off the queue).
    /// Such a stream has sent nothing yet, so its buffer has room.
    pub(crate) fn finish_unstarted(self, result: CallResult) {
        match self {
            Reply::Whole(tx) => {
                let _ = tx.send(result);
            }
            Reply::Stream(tx) => {
                let _ = tx.try_send(result.map(StreamItem::Done));
            }
        }
    }
}

/// A call waiting for, or running on, a worker.
pub(crate) struct Job {
    pub(crate) params: GenerateParams,
    /// Set when the caller no longer wants the result.
    pub(crate) cancel: CancelSignal,
    /// Queue wait plus run must end by then.
    pub(crate) deadline: Deadline,
    /// When the handler received the call (time to first token counts
    /// from here).
    pub(crate) received: Instant,
    /// When the job entered the queue.
    pub(crate) admitted: Instant,
    pub(crate) reply: Reply,
    /// The handler's span, so the worker's logs belong to the request.
    pub(crate) span: tracing::Span,
    /// The call's place in the pool (running or waiting): released when the
    /// job is dropped, whether it ran, was removed from the queue, or was
    /// cut off.
    pub(crate) _permit: OwnedSemaphorePermit,
}

/// The sink of a Generate call: collects the text.
pub(crate) struct Collect(pub(crate) String);

impl TokenSink for Collect {
    fn emit(&mut self, text: &str) -> Result<(), Cancelled> {
        self.0.push_str(text);
        Ok(())
    }
}

/// The sink of a GenerateStream call: forwards each piece, waiting while
/// the client's buffer is full, up to the deadline.
pub(crate) struct Forward<'a> {
    pub(crate) tx: &'a StreamSender,
    pub(crate) cancel: &'a CancelSignal,
    pub(crate) deadline: &'a Deadline,
}

impl TokenSink for Forward<'_> {
    fn emit(&mut self, text: &str) -> Result<(), Cancelled> {
        let item = Ok(StreamItem::Text(text.to_string()));
        send_within(self.tx, item, self.cancel, self.deadline).map_err(|_| Cancelled)
    }
}

/// Why a send from a worker gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendStop {
    /// The receiver is gone: the client left.
    Gone,
    /// The call was cancelled while the worker waited.
    Cancelled,
    /// The deadline came while the client was not reading.
    Expired,
}

/// Sends `item` from a worker thread, waiting while the channel is full,
/// but never past the call's deadline or cancellation. The fast path is one
/// `try_send`; only a full buffer parks the thread.
pub(crate) fn send_within<T>(
    tx: &mpsc::Sender<T>,
    item: T,
    cancel: &CancelSignal,
    deadline: &Deadline,
) -> Result<(), SendStop> {
    let item = match tx.try_send(item) {
        Ok(()) => return Ok(()),
        Err(mpsc::error::TrySendError::Closed(_)) => return Err(SendStop::Gone),
        Err(mpsc::error::TrySendError::Full(item)) => item,
    };
    // Wait for room the way `blocking_send` does (a waker that unparks this
    // thread), but with the deadline and cancellation in the race.
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut reserve = pin!(tx.reserve());
    loop {
        match reserve.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(permit)) => {
                permit.send(item);
                return Ok(());
            }
            Poll::Ready(Err(_)) => return Err(SendStop::Gone),
            Poll::Pending => {}
        }
        if cancel.is_cancelled() {
            return Err(SendStop::Cancelled);
        }
        let left = deadline.remaining();
        if left.is_zero() {
            return Err(SendStop::Expired);
        }
        std::thread::park_timeout(left.min(CANCEL_POLL));
    }
}

/// Wakes a parked worker thread.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_to_a_full_channel_ends_at_the_deadline() {
        let (tx, _rx) = mpsc::channel(1);
        let cancel = CancelSignal::new();
        let deadline = Deadline::after(Duration::from_millis(50));
        assert_eq!(send_within(&tx, 1, &cancel, &deadline), Ok(()));
        let start = Instant::now();
        assert_eq!(
            send_within(&tx, 2, &cancel, &deadline),
            Err(SendStop::Expired)
        );
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_send_to_a_full_channel_ends_on_cancel() {
        let (tx, _rx) = mpsc::channel(1);
        let cancel = CancelSignal::new();
        let deadline = Deadline::after(Duration::from_secs(60));
        send_within(&tx, 1, &cancel, &deadline).unwrap();
        let canceller = {
            let cancel = cancel.clone();
            std::thread::spawn(move || cancel.cancel())
        };
        assert_eq!(
            send_within(&tx, 2, &cancel, &deadline),
            Err(SendStop::Cancelled)
        );
        canceller.join().unwrap();
    }

    #[test]
    fn a_read_makes_room_and_wakes_the_sender() {
        let (tx, mut rx) = mpsc::channel(1);
        let cancel = CancelSignal::new();
        let deadline = Deadline::after(Duration::from_secs(60));
        send_within(&tx, 1, &cancel, &deadline).unwrap();
        let reader = std::thread::spawn(move || {
            let first = rx.blocking_recv();
            let second = rx.blocking_recv();
            (first, second)
        });
        assert_eq!(send_within(&tx, 2, &cancel, &deadline), Ok(()));
        drop(tx);
        assert_eq!(reader.join().unwrap(), (Some(1), Some(2)));
    }

    #[test]
    fn a_closed_channel_is_gone() {
        let (tx, rx) = mpsc::channel::<u8>(1);
        drop(rx);
        let deadline = Deadline::after(Duration::from_secs(1));
        assert_eq!(
            send_within(&tx, 1, &CancelSignal::new(), &deadline),
            Err(SendStop::Gone)
        );
    }
}
