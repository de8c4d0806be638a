//! One worker process: spawning it (in its own process group, see
//! [`group`](super::group)), writing its stdin on a writer thread, reading
//! its stdout lines and the tail of its stderr on two more, and ending it.
//!
//! Writes go through a thread so that a worker that stops reading its
//! stdin (a full pipe) blocks only that thread, never the call: the call
//! keeps its deadline and kills the process, which ends the write.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::ProcessConfig;

use super::group::ProcessGroup;

/// Longest line a worker may write; a longer one is a protocol error (and
/// keeps a broken worker from filling the gateway's memory).
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;
/// Bytes of stderr kept for the log.
const STDERR_TAIL_BYTES: usize = 2048;
/// Lines buffered between the stdout reader thread and the backend.
const LINE_BUFFER: usize = 256;
/// Lines waiting for the writer thread: a call writes its request and at
/// most a cancel line, so a full queue means the worker stopped reading.
const WRITE_BUFFER: usize = 4;
/// How long a worker gets to exit after its stdin closes, before its group
/// is killed.
const EXIT_WAIT: Duration = Duration::from_millis(300);

/// What reading the worker's stdout gave.
pub enum Received {
    /// A line, without its newline.
    Line(String),
    /// A line over [`MAX_LINE_BYTES`].
    TooLong,
    /// Nothing within the wait.
    Timeout,
    /// Stdout closed: the worker exited (or closed it).
    Closed,
}

/// Why a line could not be handed to the writer thread.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// Earlier lines are still unwritten: the worker is not reading.
    Stuck,
    /// The pipe is closed: the worker exited or closed its stdin.
    Closed,
}

/// A running worker process.
pub struct Child {
    group: ProcessGroup,
    /// Feeds the writer thread; `None` once stdin is closed.
    stdin: Option<SyncSender<String>>,
    /// Lines handed to the writer thread and not yet fully written.
    unwritten: Arc<AtomicUsize>,
    lines: Receiver<Result<String, ()>>,
    stderr: Arc<Mutex<Tail>>,
}

impl Child {
    /// Starts the configured command, with `INFERGATE_MODEL` and
    /// `INFERGATE_WORKER` set.
    pub fn spawn(config: &ProcessConfig, model: &str, worker: usize) -> io::Result<Child> {
        let (program, args) = config
            .command
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(&config.env)
            .env("INFERGATE_MODEL", model)
            .env("INFERGATE_WORKER", worker.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(cwd) = &config.cwd {
            command.current_dir(cwd);
        }
        let mut group = ProcessGroup::spawn(&mut command)?;
        let process = group.leader();
        let missing = || io::Error::other("the child's pipes were not set up");
        let stdin = process.stdin.take().ok_or_else(missing)?;
        let stdout = process.stdout.take().ok_or_else(missing)?;
        let stderr = process.stderr.take().ok_or_else(missing)?;

        let (tx, lines) = sync_channel(LINE_BUFFER);
        let (to_stdin, writes) = sync_channel(WRITE_BUFFER);
        let unwritten = Arc::new(AtomicUsize::new(0));
        let tail = Arc::new(Mutex::new(Tail::default()));
        let name = format!("{model}-{worker}");
        std::thread::Builder::new()
            .name(format!("{name}-in"))
            .spawn({
                let unwritten = unwritten.clone();
                move || write_lines(stdin, &writes, &unwritten)
            })?;
        std::thread::Builder::new()
            .name(format!("{name}-out"))
            .spawn(move || read_lines(stdout, tx))?;
        std::thread::Builder::new()
            .name(format!("{name}-err"))
            .spawn({
                let tail = tail.clone();
                let model = model.to_string();
                move || read_stderr(stderr, &tail, &model, worker)
            })?;
        Ok(Child {
            group,
            stdin: Some(to_stdin),
            unwritten,
            lines,
            stderr: tail,
        })
    }

    /// The process group's id: the supervisor's pid on Linux (the worker's
    /// own pid elsewhere).
    pub fn pid(&self) -> u32 {
        self.group.pid()
    }

    /// Hands one line (with its newline) to the writer thread, without
    /// waiting for it to be written.
    pub fn send(&mut self, line: String) -> Result<(), SendError> {
        let stdin = self.stdin.as_ref().ok_or(SendError::Closed)?;
        self.unwritten.fetch_add(1, Ordering::AcqRel);
        let sent = stdin.try_send(line);
        if sent.is_err() {
            self.unwritten.fetch_sub(1, Ordering::AcqRel);
        }
        match sent {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(SendError::Stuck),
            Err(TrySendError::Disconnected(_)) => Err(SendError::Closed),
        }
    }

    /// Whether lines handed to [`send`](Self::send) are still unwritten:
    /// the worker has not read them (yet).
    pub fn unread(&self) -> bool {
        self.unwritten.load(Ordering::Acquire) > 0
    }

    /// The next stdout line, waiting at most `wait`.
    pub fn recv(&self, wait: Duration) -> Received {
        match self.lines.recv_timeout(wait) {
            Ok(Ok(line)) => Received::Line(line),
            Ok(Err(())) => Received::TooLong,
            Err(RecvTimeoutError::Timeout) => Received::Timeout,
            Err(RecvTimeoutError::Disconnected) => Received::Closed,
        }
    }

    /// The last lines the worker wrote to stderr, for the log: waits up
    /// to `wait` for stderr to close, so a dead worker's last words are in.
    pub fn stderr_tail(&self, wait: Duration) -> String {
        let until = Instant::now() + wait;
        loop {
            let tail = self.stderr.lock().unwrap_or_else(PoisonError::into_inner);
            if tail.closed || Instant::now() >= until {
                return tail.text();
            }
            drop(tail);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The exit status, waiting up to `wait` for the process to end; then
    /// the group is killed either way.
    pub fn exit_status(&mut self, wait: Duration) -> Option<ExitStatus> {
        self.group.wait_exit(wait)
    }

    /// Kills the worker's whole process group and reaps it.
    pub fn kill(&mut self) {
        self.stdin = None;
        self.group.kill();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // Closing stdin asks a well-behaved worker to exit; then its group
        // is killed (whatever it started, too). Bounded by EXIT_WAIT: runs
        // on a worker thread, or wherever the backend is dropped.
        self.stdin = None;
        self.group.wait_exit(EXIT_WAIT);
    }
}

/// The writer thread: writes each line whole, until the channel or the pipe
/// closes. Dropping `stdin` at the end closes the worker's stdin.
fn write_lines(mut stdin: ChildStdin, lines: &Receiver<String>, unwritten: &AtomicUsize) {
    for line in lines {
        let written = stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.flush());
        unwritten.fetch_sub(1, Ordering::AcqRel);
        if written.is_err() {
            return;
        }
    }
}

fn read_lines(stdout: impl Read, tx: SyncSender<Result<String, ()>>) {
    let mut reader = BufReader::new(stdout);
    loop {
        let mut line = Vec::new();
        let limit = u64::try_from(MAX_LINE_BYTES).unwrap_or(u64::MAX) + 1;
        match (&mut reader).take(limit).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        } else if line.len() > MAX_LINE_BYTES {
            let _ = tx.send(Err(()));
            return;
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        if tx.send(Ok(line)).is_err() {
            return;
        }
    }
}

fn read_stderr(stderr: impl Read, tail: &Mutex<Tail>, model: &str, worker: usize) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        tracing::debug!(model, worker, "worker stderr: {line}");
        tail.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
    }
    tail.lock().unwrap_or_else(PoisonError::into_inner).closed = true;
}

/// The last [`STDERR_TAIL_BYTES`] of stderr, in whole lines.
#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
    /// Stderr has closed: nothing more will come.
    closed: bool,
}

impl Tail {
    fn push(&mut self, mut line: String) {
        if line.len() > STDERR_TAIL_BYTES {
            let mut cut = line.len() - STDERR_TAIL_BYTES;
            while !line.is_char_boundary(cut) {
                cut += 1;
            }
            line.drain(..cut);
        }
        self.bytes += line.len() + 1;
        self.lines.push_back(line);
        while self.bytes > STDERR_TAIL_BYTES {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.len() + 1,
                None => break,
            }
        }
    }

    fn text(&self) -> String {
        self.lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_lines() {
        let mut tail = Tail::default();
        for i in 0..1000 {
            tail.push(format!("line {i}"));
        }
        let text = tail.text();
        assert!(text.ends_with("line 999"));
        assert!(text.len() <= STDERR_TAIL_BYTES);
        tail.push("x".repeat(10_000));
        assert!(tail.text().len() <= STDERR_TAIL_BYTES);
    }
}
