//! Active health: a task per model that probes each upstream
//! (`GET {url}/{health_path}`) at once and then every
//! `health_interval_ms`, so that an upstream that is down takes no calls,
//! and a model whose upstreams are all down turns NOT_SERVING, even when no
//! call comes.
//!
//! A probe counts any answer below 500 as up (a 401 or a 404 still shows a
//! server that is there; the calls' errors say what is wrong), and a 5xx,
//! a timeout or a connect failure as down. The upstreams of a model are
//! probed together, each probe bounded by the interval (1 to 5 s).
//!
//! The task is started on the runtime the gateway runs on, which may not
//! exist yet when the factory is made (an embedder may build a gateway
//! before its runtime): [`Prober::start`] is called from every entry point
//! (the factory's construction, `asynchronous()`, `is_up()`, each call) and
//! starts the task the first time one of them runs inside a runtime. The
//! task holds the model's state weakly, and ends when the factory is
//! dropped (its [`StopProbing`] guard).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio_util::sync::{CancellationToken, DropGuard};

use super::Shared;

/// Starts the probe task once, when a runtime is there to run it.
pub(super) struct Prober {
    started: AtomicBool,
    stop: CancellationToken,
    interval: Duration,
}

/// Held by the factory: dropping it ends the probe task.
pub(super) struct StopProbing(#[allow(dead_code)] DropGuard);

impl Prober {
    /// A prober for probes every `interval`, and the guard that stops it.
    pub(super) fn new(interval: Duration) -> (Prober, StopProbing) {
        let stop = CancellationToken::new();
        let guard = StopProbing(stop.clone().drop_guard());
        let prober = Prober {
            started: AtomicBool::new(false),
            stop,
            interval,
        };
        (prober, guard)
    }

    /// Whether the probe task was started.
    #[cfg(test)]
    pub(super) fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Starts the probe task of `shared` if it has not started and this
    /// thread is inside a tokio runtime. Cheap once started.
    pub(super) fn start(&self, shared: &Arc<Shared>) {
        if self.started.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(run(
            Arc::downgrade(shared),
            self.stop.clone(),
            self.interval,
        ));
    }
}

/// Probes until stopped, or until the model's state is gone.
async fn run(shared: Weak<Shared>, stop: CancellationToken, interval: Duration) {
    // What each upstream's last probe found, to warn once per change.
    let mut last: Vec<Found> = Vec::new();
    loop {
        let Some(model) = shared.upgrade() else {
            return;
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = probe_all(&model, &mut last, interval) => {}
        }
        drop(model);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// What a probe found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Found {
    /// Not probed yet.
    Nothing,
    /// An answer below 500, of this status.
    Answer(u16),
    /// No answer, or a 5xx.
    Failure,
}

/// Probes every upstream at once and records what each probe found.
async fn probe_all(model: &Shared, last: &mut Vec<Found>, interval: Duration) {
    let upstreams = model.upstreams.all();
    last.resize(upstreams.len(), Found::Nothing);
    let probes = upstreams
        .iter()
        .map(|upstream| model.http.probe(&upstream.target.probe, interval));
    let results = futures_util::future::join_all(probes).await;
    for (i, result) in results.into_iter().enumerate() {
        let upstream = &upstreams[i];
        let target = &upstream.target;
        match result {
            Ok(status) => {
                if matches!(status, 401 | 403) && last[i] != Found::Answer(status) {
                    tracing::warn!(
                        model = %model.name,
                        upstream = %upstream.name,
                        url = %target.shown,
                        status,
                        "the upstream refuses the gateway's credentials; every call to it will fail"
                    );
                }
                last[i] = Found::Answer(status);
                model.upstreams.set_probe(i, true, Instant::now());
            }
            Err(why) => {
                if last[i] != Found::Failure {
                    tracing::warn!(
                        model = %model.name,
                        upstream = %upstream.name,
                        url = %target.shown,
                        why = %target.secrets.scrub(&why),
                        "the upstream's probe failed"
                    );
                }
                last[i] = Found::Failure;
                model.upstreams.set_probe(i, false, Instant::now());
            }
        }
    }
}
