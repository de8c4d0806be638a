//! One HTTP exchange with the upstream, run on a helper thread that the
//! worker can walk away from.
//!
//! ureq blocks in `read` while the upstream thinks, and nothing can wake it
//! but its own timeout; a worker blocked there could not see that its call
//! was cancelled. So the exchange runs on a short-lived helper thread that
//! hands the worker what it reads, piece by piece, over a bounded channel,
//! and the worker waits on that channel in [`POLL`] steps, checking the
//! call's cancellation and deadline between them: a cancelled or expired
//! call frees its worker within one step.
//!
//! A helper left behind ends by itself: its request has a global timeout of
//! the call's remaining time, and a streaming helper stops at the next line
//! once told to. Helpers left behind are counted per model; beyond
//! [`MAX_ABANDONED`] a worker waits for its helper to end (at the latest at
//! the call's deadline) instead of leaving it, so a flood of cancelled calls
//! to a hung upstream cannot pile up threads and sockets.
//!
//! This is the proportionate fix for a blocking client; an async HTTP client
//! that can drop a request would make the helper unnecessary.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use crate::backend::{CallContext, Cancelled};

/// How often a waiting worker looks at its call's cancellation.
pub(super) const POLL: Duration = Duration::from_millis(20);
/// Helpers of one model that may still run after their worker left.
pub(super) const MAX_ABANDONED: usize = 64;
/// How long past the deadline a worker over the cap waits for its helper
/// (which times out at the deadline itself).
const HELPER_GRACE: Duration = Duration::from_secs(1);
/// Most bytes of an error response kept (for the log).
const ERROR_BODY_LIMIT: u64 = 64 * 1024;
/// Most bytes of a non-streaming response.
const RESPONSE_LIMIT: u64 = 64 * 1024 * 1024;
/// Longest line of an event stream.
const LINE_LIMIT: u64 = 1024 * 1024;
/// Lines a streaming helper may read ahead of the worker.
const READ_AHEAD: usize = 32;

/// What to send.
pub(super) struct Request {
    pub(super) agent: ureq::Agent,
    pub(super) url: String,
    /// `Bearer <key>`, if any.
    pub(super) authorization: Option<String>,
    pub(super) body: String,
    pub(super) streaming: bool,
    pub(super) deadline: Instant,
}

/// What the helper read.
pub(super) enum Piece {
    /// The upstream answered a status other than 200; the body is for the
    /// log only.
    Refused { status: u16, body: String },
    /// The whole body of a non-streaming answer.
    Body(String),
    /// One line of an event stream.
    Line(String),
    /// The event stream ended.
    End,
    /// The request or the response failed in transit.
    Failed(ureq::Error),
    /// The helper ended without saying why (it panicked).
    Gone,
}

/// State shared by a worker and its helper.
struct Link {
    /// Set by whichever of the two leaves first; the second one to leave
    /// settles the abandoned count.
    left: AtomicBool,
    /// Set when the worker no longer wants lines.
    stop: AtomicBool,
}

/// A running exchange, seen from the worker.
pub(super) struct Exchange {
    pieces: Receiver<Piece>,
    link: Arc<Link>,
    abandoned: Arc<AtomicUsize>,
    deadline: Instant,
}

impl Exchange {
    /// Starts the exchange on a helper thread named `thread_name`.
    pub(super) fn start(
        request: Request,
        abandoned: &Arc<AtomicUsize>,
        thread_name: String,
    ) -> io::Result<Exchange> {
        let (tx, pieces) = sync_channel(if request.streaming { READ_AHEAD } else { 1 });
        let link = Arc::new(Link {
            left: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let deadline = request.deadline;
        let helper = Helper {
            link: link.clone(),
            abandoned: abandoned.clone(),
        };
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || helper.run(request, &tx))?;
        Ok(Exchange {
            pieces,
            link,
            abandoned: abandoned.clone(),
            deadline,
        })
    }

    /// The next piece, or `Err` as soon as the call is cancelled or past
    /// its deadline.
    pub(super) fn next(&self, ctx: &CallContext<'_>) -> Result<Piece, Cancelled> {
        loop {
            if ctx.is_cancelled() {
                return Err(Cancelled);
            }
            match self.pieces.recv_timeout(POLL) {
                Ok(piece) => return Ok(piece),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(Piece::Gone),
            }
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.link.stop.store(true, Ordering::Release);
        if self.abandoned.load(Ordering::Acquire) >= MAX_ABANDONED {
            // Too many helpers left behind: wait for this one, draining what
            // it still sends; its own timeout ends it at the deadline.
            let until = self.deadline + HELPER_GRACE;
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                if let Err(RecvTimeoutError::Disconnected) = self.pieces.recv_timeout(left) {
                    break;
                }
            }
        }
        self.abandoned.fetch_add(1, Ordering::AcqRel);
        if self.link.left.swap(true, Ordering::AcqRel) {
            // The helper had already ended: nothing was left behind.
            self.abandoned.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The helper thread's side.
struct Helper {
    link: Arc<Link>,
    abandoned: Arc<AtomicUsize>,
}

impl Drop for Helper {
    fn drop(&mut self) {
        if self.link.left.swap(true, Ordering::AcqRel) {
            // The worker left first and counted this helper as abandoned.
            self.abandoned.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Helper {
    fn run(self, request: Request, tx: &SyncSender<Piece>) {
        // A failed send means the worker has gone: stop quietly.
        let _ = tx.send(match send(&request) {
            Err(error) => Piece::Failed(error),
            Ok(mut response) => {
                let status = response.status().as_u16();
                let body = response.body_mut();
                if status != 200 {
                    let text = body
                        .with_config()
                        .limit(ERROR_BODY_LIMIT)
                        .read_to_string()
                        .unwrap_or_default();
                    Piece::Refused { status, body: text }
                } else if !request.streaming {
                    match body.with_config().limit(RESPONSE_LIMIT).read_to_string() {
                        Ok(text) => Piece::Body(text),
                        Err(error) => Piece::Failed(error),
                    }
                } else {
                    let reader = BufReader::new(response.into_body().into_reader());
                    match self.forward_lines(reader, tx) {
                        Some(last) => last,
                        None => return,
                    }
                }
            }
        });
    }

    /// Sends each line of the stream; returns the last piece to send, or
    /// `None` when the worker went away (dropping the response closes the
    /// connection, which the upstream takes as an abort).
    fn forward_lines(&self, mut reader: impl BufRead, tx: &SyncSender<Piece>) -> Option<Piece> {
        loop {
            if self.link.stop.load(Ordering::Acquire) {
                return None;
            }
            let mut line = String::new();
            match (&mut reader).take(LINE_LIMIT).read_line(&mut line) {
                Ok(0) => return Some(Piece::End),
                Ok(_) if !line.ends_with('\n') && line.len() as u64 >= LINE_LIMIT => {
                    return Some(Piece::Failed(ureq::Error::Io(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("an event-stream line is longer than {LINE_LIMIT} bytes"),
                    ))));
                }
                Ok(_) => {
                    let trimmed = line.trim_end_matches(['\r', '\n']).to_string();
                    tx.send(Piece::Line(trimmed)).ok()?;
                }
                Err(error) => return Some(Piece::Failed(ureq::Error::Io(error))),
            }
        }
    }
}

/// Sends the request, bounded as a whole by the call's deadline.
fn send(request: &Request) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    let left = request.deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(ureq::Error::Timeout(ureq::Timeout::Global));
    }
    let mut builder = request
        .agent
        .post(&request.url)
        .config()
        .timeout_global(Some(left))
        .build()
        .header("content-type", "application/json");
    if let Some(authorization) = &request.authorization {
        builder = builder.header("authorization", authorization);
    }
    builder.send(request.body.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback server that accepts connections and never answers.
    fn hung_upstream() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            // Bounded: each test makes one connection or two.
            let held: Vec<_> = listener.incoming().take(8).collect();
            drop(held);
        });
        format!("http://{addr}/v1/chat/completions")
    }

    fn request(url: String, deadline: Instant) -> Request {
        Request {
            agent: ureq::Agent::new_with_defaults(),
            url,
            authorization: None,
            body: "{}".into(),
            streaming: false,
            deadline,
        }
    }

    /// Polls (bounded) until the count is `n`.
    fn wait_for_count(count: &AtomicUsize, n: usize) {
        let give_up = Instant::now() + Duration::from_secs(10);
        while count.load(Ordering::Acquire) != n {
            assert!(Instant::now() < give_up, "the count stayed at {count:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_helper_left_behind_is_counted_until_its_deadline_ends_it() {
        let abandoned = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + Duration::from_millis(300);
        let exchange =
            Exchange::start(request(hung_upstream(), deadline), &abandoned, "t".into()).unwrap();
        drop(exchange);
        assert_eq!(abandoned.load(Ordering::Acquire), 1);
        // The helper's own timeout (the deadline) ends it.
        wait_for_count(&abandoned, 0);
    }

    #[test]
    fn beyond_the_cap_a_worker_waits_for_its_helper() {
        let abandoned = Arc::new(AtomicUsize::new(MAX_ABANDONED));
        let deadline = Instant::now() + Duration::from_millis(300);
        let exchange =
            Exchange::start(request(hung_upstream(), deadline), &abandoned, "t".into()).unwrap();
        drop(exchange);
        // Dropping waited for the helper: nothing more was left behind, and
        // the wait ended with the helper, at the deadline.
        assert!(Instant::now() + Duration::from_millis(50) >= deadline);
        assert!(Instant::now() < deadline + HELPER_GRACE);
        assert_eq!(abandoned.load(Ordering::Acquire), MAX_ABANDONED);
    }
}
