//! Reloading the TLS files without a restart: when one of them changes (its
//! modification time, size or inode, checked every `reload_interval_ms`),
//! and on SIGHUP. A reload that fails (a half-written file, a key that does
//! not match yet) is logged and counted, and the configs in use stay; the
//! next change or SIGHUP tries again.
//!
//! `stat` follows symbolic links, so the atomic swap of a Kubernetes
//! secret volume (a `..data` link moved to a new directory) is seen too.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::task::AbortOnDropHandle;

use super::ServerTls;

/// What is compared to tell that a file changed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// The stamps of the files, in the order `[cert, key, client_ca]`; `None`
/// for a file that cannot be read (a reload then reports why).
fn stamps(files: &[PathBuf]) -> Vec<Option<Stamp>> {
    files
        .iter()
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            #[cfg(unix)]
            let inode = std::os::unix::fs::MetadataExt::ino(&meta);
            #[cfg(not(unix))]
            let inode = 0;
            Some(Stamp {
                modified: meta.modified().ok(),
                len: meta.len(),
                inode,
            })
        })
        .collect()
}

/// Starts the reload task of `tls`: polls the files every `interval` (not
/// at all for zero) and listens for SIGHUP. Ends when the handle drops.
pub(crate) fn spawn(tls: Arc<ServerTls>, interval: Duration) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(watch(tls, interval)))
}

async fn watch(tls: Arc<ServerTls>, interval: Duration) {
    let files = tls.files();
    let mut seen = stamps(&files);
    let mut tick = (!interval.is_zero()).then(|| {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    });
    let mut hangup = Hangup::new();
    loop {
        let why = tokio::select! {
            () = next_tick(&mut tick) => "changed",
            () = hangup.next() => "sighup",
        };
        let now = stamps(&files);
        if why == "changed" && now == seen {
            continue;
        }
        seen = now;
        tls.reload(why);
    }
}

/// The next tick, or never when polling is off.
async fn next_tick(tick: &mut Option<tokio::time::Interval>) {
    match tick {
        Some(tick) => {
            tick.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// SIGHUP, where there is one.
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    fn new() -> Hangup {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signal = signal(SignalKind::hangup())
                .map_err(|e| {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; TLS files reload on change only");
                })
                .ok();
            Hangup { signal }
        }
        #[cfg(not(unix))]
        Hangup {}
    }

    /// Resolves on the next SIGHUP; never, without a signal to listen to.
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            if signal.recv().await.is_some() {
                return;
            }
            self.signal = None;
        }
        std::future::pending().await
    }
}
