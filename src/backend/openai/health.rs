//! Whether an OpenAI-compatible upstream is up: set down by a call that
//! cannot connect, up by a call that got an answer, and both ways by a
//! periodic probe (`GET {base}/models`) on a background thread, so that a
//! model whose upstream is down turns NOT_SERVING even when no call comes.
//!
//! The probe counts any answer below 500 as up (a 401 or a 404 still shows
//! a server that is there; the calls' errors say what is wrong), and a 5xx,
//! a timeout or a connect failure as down. The thread holds no reference to
//! the factory: it waits on a channel whose sender the factory owns, so
//! dropping the factory wakes it and it ends (after the probe in flight, if
//! any, which is bounded by [`PROBE_TIMEOUT_MAX`]).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use super::failure::Secrets;

/// Longest a probe may take (and at least as long as the interval, up to
/// this, so that a slow but healthy upstream is not marked down).
const PROBE_TIMEOUT_MAX: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT_MIN: Duration = Duration::from_secs(1);

/// The upstream's state, shared by the factory, its backends and the probe.
pub(super) struct UpstreamHealth {
    up: AtomicBool,
    /// The gateway's model name, for the log.
    model: String,
    /// The upstream, redacted, for the log.
    upstream: String,
}

impl UpstreamHealth {
    /// Starts up: a model is SERVING until something shows otherwise.
    pub(super) fn new(model: &str, upstream: &str) -> Self {
        UpstreamHealth {
            up: AtomicBool::new(true),
            model: model.to_string(),
            upstream: upstream.to_string(),
        }
    }

    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Records that the upstream answered.
    pub(super) fn answered(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!(model = %self.model, upstream = %self.upstream, "the upstream is up again");
        }
    }

    /// Records that the upstream cannot be reached, and why (already
    /// scrubbed).
    pub(super) fn unreachable(&self, why: &str) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(model = %self.model, upstream = %self.upstream, why, "the upstream is down");
        }
    }
}

/// What the probe needs; it shares nothing with the factory but the health.
pub(super) struct ProbeTarget {
    pub(super) agent: ureq::Agent,
    /// `{base}/models`.
    pub(super) url: String,
    pub(super) authorization: Option<String>,
    pub(super) secrets: Secrets,
    pub(super) interval: Duration,
}

/// Owns the probe thread: dropping it stops the thread.
pub(super) struct Prober {
    _stop: mpsc::Sender<()>,
}

impl Prober {
    /// Starts the probe thread, which probes at once and then every
    /// `target.interval`.
    pub(super) fn start(target: ProbeTarget, health: Arc<UpstreamHealth>) -> io::Result<Prober> {
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name(format!("{}-probe", health.model))
            .spawn(move || run(&target, &health, &stopped))?;
        Ok(Prober { _stop: stop })
    }
}

fn run(target: &ProbeTarget, health: &UpstreamHealth, stopped: &mpsc::Receiver<()>) {
    let timeout = target.interval.clamp(PROBE_TIMEOUT_MIN, PROBE_TIMEOUT_MAX);
    let mut last_status = None;
    loop {
        match probe(target, timeout) {
            Ok(status) => {
                if matches!(status, 401 | 403) && last_status != Some(status) {
                    tracing::warn!(
                        model = %health.model,
                        upstream = %health.upstream,
                        status,
                        "the upstream refuses the gateway's credentials; every call will fail"
                    );
                }
                last_status = Some(status);
                health.answered();
            }
            Err(why) => {
                last_status = None;
                health.unreachable(&why);
            }
        }
        match stopped.recv_timeout(target.interval) {
            Err(RecvTimeoutError::Timeout) => {}
            // The factory was dropped (nothing is ever sent).
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// One probe: the status of an answer below 500, or why it failed.
fn probe(target: &ProbeTarget, timeout: Duration) -> Result<u16, String> {
    let mut request = target
        .agent
        .get(&target.url)
        .config()
        .timeout_global(Some(timeout))
        .build();
    if let Some(authorization) = &target.authorization {
        request = request.header("authorization", authorization);
    }
    match request.call() {
        Ok(response) if response.status().as_u16() < 500 => Ok(response.status().as_u16()),
        Ok(response) => Err(format!("the probe got HTTP {}", response.status().as_u16())),
        Err(error) => Err(target.secrets.scrub(&format!("the probe failed: {error}"))),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::time::Instant;

    use super::*;

    /// Whether a thread of this process has this name.
    fn thread_named(name: &str) -> bool {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(Result::ok)
            .any(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.trim_end() == name)
            })
    }

    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let give_up = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < give_up, "never: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_probe_marks_a_dead_upstream_down_and_stops_with_its_owner() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let health = Arc::new(UpstreamHealth::new("hp1", "upstream"));
        let target = ProbeTarget {
            agent: ureq::Agent::new_with_defaults(),
            url: format!("http://{closed}/v1/models"),
            authorization: None,
            secrets: Secrets::default(),
            interval: Duration::from_millis(100),
        };
        let prober = Prober::start(target, health.clone()).unwrap();
        wait_until("the upstream is down", || !health.is_up());
        assert!(thread_named("hp1-probe"));
        drop(prober);
        wait_until("the probe thread ended", || !thread_named("hp1-probe"));
    }
}
