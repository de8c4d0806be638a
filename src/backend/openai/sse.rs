//! The server-sent events of a streaming answer: the `data` of each event,
//! decoded by the sse-stream crate (multi-line `data:` fields joined with
//! newlines, CR, LF and CRLF line ends, comments skipped, as the spec
//! says), behind a bound on the size of one event.
//!
//! The parser keeps an event's lines until the blank line that ends it, so
//! an upstream that never sends one could fill memory; [`Bounded`] counts
//! the bytes of the event being read and fails the stream past
//! [`MAX_EVENT_BYTES`] (a line is part of an event, so this bounds lines
//! too). sse-stream rather than eventsource-stream: it appends each chunk
//! once where eventsource-stream re-parses the unfinished line on every
//! chunk (quadratic in a long line), and its dependencies are already in
//! the tree.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sse_stream::SseByteStream;

/// Longest event (its lines, without line ends) an upstream may send.
pub(super) const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Why a stream of events ended early.
#[derive(Debug)]
pub(super) enum SseError<E> {
    /// Reading the body failed.
    Read(E),
    /// An event was longer than the bound.
    TooLong,
    /// The bytes are not an event stream (invalid UTF-8 in a field).
    Invalid(String),
}

/// The `data` of each event of `body`, in order; events without data
/// (comments, `retry:` alone) are skipped. Ends after its first error.
pub(super) fn data<S, E>(body: S) -> impl Stream<Item = Result<String, SseError<E>>> + Send
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    SseByteStream::new(Bounded::new(body, MAX_EVENT_BYTES)).filter_map(|event| async move {
        match event {
            Ok(event) => event.data.map(Ok),
            Err(sse_stream::Error::Body(error)) => {
                Some(Err(match error.downcast::<Overflow<E>>() {
                    Ok(overflow) => match *overflow {
                        Overflow::Read(error) => SseError::Read(error),
                        Overflow::TooLong => SseError::TooLong,
                    },
                    Err(other) => SseError::Invalid(other.to_string()),
                }))
            }
            Err(other) => Some(Err(SseError::Invalid(other.to_string()))),
        }
    })
}

/// What [`Bounded`] fails with: its source's error, or the bound.
#[derive(Debug)]
enum Overflow<E> {
    Read(E),
    TooLong,
}

impl<E: std::fmt::Display> std::fmt::Display for Overflow<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Overflow::Read(error) => error.fmt(f),
            Overflow::TooLong => write!(f, "an event is longer than {MAX_EVENT_BYTES} bytes"),
        }
    }
}

impl<E: std::error::Error> std::error::Error for Overflow<E> {}

/// Passes chunks through while counting the bytes of the current event
/// (since the last blank line); fails once they pass `max`.
struct Bounded<S> {
    inner: S,
    max: usize,
    /// Bytes of the event being read, line ends excluded.
    event: usize,
    /// Bytes of the line being read.
    line: usize,
    /// The last byte was a CR (so an LF now ends nothing more).
    after_cr: bool,
    failed: bool,
}

impl<S> Bounded<S> {
    fn new(inner: S, max: usize) -> Self {
        Bounded {
            inner,
            max,
            event: 0,
            line: 0,
            after_cr: false,
            failed: false,
        }
    }

    /// Counts a chunk; false when the event went past the bound.
    fn tally(&mut self, chunk: &[u8]) -> bool {
        for &byte in chunk {
            match byte {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    if self.line == 0 {
                        self.event = 0; // a blank line ends the event
                    }
                    self.line = 0;
                    self.after_cr = byte == b'\r';
                }
                _ => {
                    self.after_cr = false;
                    self.line += 1;
                    self.event += 1;
                    if self.event > self.max {
                        return false;
                    }
                }
            }
        }
        true
    }
}

impl<S, E> Stream for Bounded<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, Overflow<E>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        match this.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if this.tally(&chunk) {
                    Poll::Ready(Some(Ok(chunk)))
                } else {
                    this.failed = true;
                    Poll::Ready(Some(Err(Overflow::TooLong)))
                }
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(Overflow::Read(error)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    /// The data of the events of `chunks`, or the first error.
    async fn parse(chunks: &[&[u8]]) -> Vec<Result<String, String>> {
        let chunks: Vec<Result<Bytes, std::io::Error>> = chunks
            .iter()
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        data(futures_util::stream::iter(chunks))
            .map(|item| {
                item.map_err(|e| match e {
                    SseError::TooLong => "too long".to_string(),
                    SseError::Read(e) => format!("read: {e}"),
                    SseError::Invalid(e) => format!("invalid: {e}"),
                })
            })
            .collect()
            .await
    }

    #[tokio::test]
    async fn events_are_split_joined_and_skipped_as_the_spec_says() {
        let got = parse(&[
            b": comment\n\ndata: {\"a\":\ndata:  1}\n\n",
            b"data: x\r\n\r\nretry: 10\n\nevent: e\ndata: ",
            b"y\rdata:z\r\r",
        ])
        .await;
        let want = ["{\"a\":\n 1}", "x", "y\nz"];
        assert_eq!(got, want.map(|s| Ok(s.to_string())));
    }

    #[tokio::test]
    async fn an_event_split_anywhere_reads_the_same() {
        let text = b"data: one\n\ndata: two\ndata: three\n\n";
        for cut in 1..text.len() {
            let got = parse(&[&text[..cut], &text[cut..]]).await;
            assert_eq!(
                got,
                [Ok("one".to_string()), Ok("two\nthree".to_string())],
                "cut at {cut}"
            );
        }
    }

    #[tokio::test]
    async fn an_endless_line_or_event_fails_at_the_bound() {
        let long = vec![b'x'; MAX_EVENT_BYTES];
        let mut line = b"data: ".to_vec();
        line.extend_from_slice(&long);
        let got = parse(&[b"data: ok\n\n", &line]).await;
        assert_eq!(got, [Ok("ok".to_string()), Err("too long".to_string())]);
        // Many short lines with no blank line between: one endless event.
        let lines = b"data: x\n".repeat(MAX_EVENT_BYTES / 7 + 1);
        let got = parse(&[&lines]).await;
        assert_eq!(got, [Err("too long".to_string())]);
        // The same lines as separate events are fine.
        let events = b"data: x\n\n".repeat(1000);
        assert_eq!(parse(&[&events]).await.len(), 1000);
    }

    #[test]
    fn crlf_is_one_line_end() {
        let mut bounded = Bounded::new(
            futures_util::stream::empty::<Result<Bytes, Infallible>>(),
            4,
        );
        // "ab\r\n" then "cd\r\n": two lines of one event, 4 bytes: fits.
        assert!(bounded.tally(b"ab\r\ncd\r\n"));
        assert!(!bounded.tally(b"e"));
        let mut bounded = Bounded::new(
            futures_util::stream::empty::<Result<Bytes, Infallible>>(),
            4,
        );
        assert!(bounded.tally(b"abcd\r\n\r\nabcd\n\nabcd"));
    }
}
