//! Asynchronous backends: calls that are waits on I/O (an HTTP upstream
//! that batches internally and wants hundreds of requests in flight) run as
//! tasks on the runtime, not one per worker thread.
//!
//! A model whose [`BackendFactory::asynchronous`] returns an
//! [`AsyncBackend`] gets the same pool in front of it (admission, bounded
//! queue, deadline, cancellation, metrics), but `workers` then means the
//! most calls in flight at once, each a task rather than a thread. A call
//! ends by dropping its future: when the client leaves, when the deadline
//! passes, or at a forced shutdown. A backend must therefore keep nothing
//! alive beyond its future (an HTTP request in flight is aborted when its
//! future is dropped).
//!
//! [`BackendFactory::asynchronous`]: crate::backend::BackendFactory::asynchronous

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::backend::{BackendError, Cancelled, Completion, GenerateParams};
use crate::error::Error;
use crate::outcome::StreamItem;

/// The future of one asynchronous backend call.
pub type BackendFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Completion, BackendError>> + Send + 'a>>;

/// A backend whose calls are futures. One instance serves every call of
/// its model at once (it is shared, not one per worker), so it holds only
/// what calls may share: a connection pool, the upstreams' health.
pub trait AsyncBackend: Send + Sync + 'static {
    /// Runs one call, emitting text through `ctx`. The gateway drops the
    /// future to cancel the call; no explicit cancellation check is needed.
    fn generate<'a>(
        &'a self,
        params: &'a GenerateParams,
        ctx: &'a mut AsyncContext,
    ) -> BackendFuture<'a>;
}

/// Where an asynchronous call's text goes, and its deadline.
pub struct AsyncContext {
    sink: Sink,
    deadline: Instant,
    streaming: bool,
    first_token: Option<Instant>,
}

enum Sink {
    /// Generate: the text is collected and sent once.
    Collect(String),
    /// GenerateStream: each piece goes to the client as it comes.
    Forward(mpsc::Sender<Result<StreamItem, Error>>),
}

impl AsyncContext {
    /// A context collecting the text of a Generate call.
    pub(crate) fn collect(deadline: Instant) -> Self {
        AsyncContext {
            sink: Sink::Collect(String::new()),
            deadline,
            streaming: false,
            first_token: None,
        }
    }

    /// A context forwarding each piece of a GenerateStream call.
    pub(crate) fn forward(tx: mpsc::Sender<Result<StreamItem, Error>>, deadline: Instant) -> Self {
        AsyncContext {
            sink: Sink::Forward(tx),
            deadline,
            streaming: true,
            first_token: None,
        }
    }

    /// Sends the next piece of text. A stream's client that does not read
    /// holds it back (back-pressure), up to the deadline; fails when the
    /// client has gone away or the deadline passed, so a backend can stop
    /// with `?`.
    pub async fn emit(&mut self, text: &str) -> Result<(), Cancelled> {
        if self.first_token.is_none() {
            self.first_token = Some(Instant::now());
        }
        match &mut self.sink {
            Sink::Collect(collected) => {
                collected.push_str(text);
                Ok(())
            }
            Sink::Forward(tx) => {
                let item = Ok(StreamItem::Text(text.to_string()));
                match tokio::time::timeout_at(self.deadline.into(), tx.send(item)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) | Err(_) => Err(Cancelled),
                }
            }
        }
    }

    /// Whether the client reads the text as it is produced (GenerateStream)
    /// or whole (Generate): a backend with both modes upstream picks one.
    pub fn is_streaming(&self) -> bool {
        self.streaming
    }

    /// When the call must be finished.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// When the first piece of text was emitted, if any.
    pub fn first_token_at(&self) -> Option<Instant> {
        self.first_token
    }

    /// The collected text of a Generate call (empty for streams).
    pub(crate) fn take_text(&mut self) -> String {
        match &mut self.sink {
            Sink::Collect(collected) => std::mem::take(collected),
            Sink::Forward(_) => String::new(),
        }
    }
}
