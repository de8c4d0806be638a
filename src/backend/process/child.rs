//! One worker process: spawning it, writing its stdin, reading its stdout
//! lines and the tail of its stderr on two helper threads, and ending it.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::ProcessConfig;

/// Longest line a worker may write; a longer one is a protocol error (and
/// keeps a broken worker from filling the gateway's memory).
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;
/// Bytes of stderr kept for error messages.
const STDERR_TAIL_BYTES: usize = 2048;
/// Lines buffered between the stdout reader thread and the backend.
const LINE_BUFFER: usize = 256;
/// How long a worker gets to exit after its stdin closes, before it is
/// killed.
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

/// A running worker process.
pub struct Child {
    process: std::process::Child,
    stdin: Option<ChildStdin>,
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
        let mut process = command.spawn()?;
        let missing = || io::Error::other("the child's pipes were not set up");
        let stdin = process.stdin.take().ok_or_else(missing)?;
        let stdout = process.stdout.take().ok_or_else(missing)?;
        let stderr = process.stderr.take().ok_or_else(missing)?;

        let (tx, lines) = sync_channel(LINE_BUFFER);
        let tail = Arc::new(Mutex::new(Tail::default()));
        let name = format!("{model}-{worker}");
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
            process,
            stdin: Some(stdin),
            lines,
            stderr: tail,
        })
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Writes one line (with its newline) to the worker.
    pub fn send(&mut self, line: &str) -> io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe))?;
        stdin.write_all(line.as_bytes())?;
        stdin.flush()
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

    /// The last lines the worker wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .text()
    }

    /// The exit status, waiting up to `wait` for the process to end.
    pub fn exit_status(&mut self, wait: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + wait;
        loop {
            match self.process.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(5)),
                _ => return None,
            }
        }
    }

    /// Kills the worker and reaps it.
    pub fn kill(&mut self) {
        self.stdin = None;
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // Closing stdin asks a well-behaved worker to exit; then it is
        // killed. Runs on a worker thread, so the short wait blocks nothing
        // async.
        self.stdin = None;
        if self.exit_status(EXIT_WAIT).is_none() {
            self.kill();
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
        let Ok(line) = line else { return };
        tracing::debug!(model, worker, "worker stderr: {line}");
        tail.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
    }
}

/// The last [`STDERR_TAIL_BYTES`] of stderr, in whole lines.
#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
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
