//! Gives the memory of a connection flood back to the system once it is
//! over.
//!
//! Each gRPC connection costs tens of KiB (HTTP/2 buffers, hyper and h2
//! state, its task). When thousands close, glibc's allocator keeps most of
//! those pages: freed chunks sit inside its heaps, so the process's RSS
//! stays where the flood took it. `malloc_trim(0)` hands the free pages
//! back (it also releases free pages in the middle of each heap). It costs
//! a walk of the heaps under their locks, so it runs only after the number
//! of open connections has fallen by [`TRIM_AFTER_DROP`] from a peak, off
//! the runtime threads. Other allocators and systems: nothing to do here.

use std::time::Duration;

use crate::connection::ConnectionCap;

/// How often the connection count is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Connections that must have closed since the peak before trimming: below
/// this, what could be handed back is not worth the walk.
const TRIM_AFTER_DROP: usize = 1000;

/// Trims the allocator's free memory whenever the open connections of
/// `cap` have fallen by [`TRIM_AFTER_DROP`] from their peak; runs until
/// aborted.
pub(crate) async fn trim_after_floods(cap: ConnectionCap) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    // The open count at the last trim, while the flood is still ebbing.
    let mut ebbing_from: Option<usize> = None;
    loop {
        tick.tick().await;
        let peak = cap.take_peak();
        let open = cap.open_now();
        let fell = peak.saturating_sub(open) >= TRIM_AFTER_DROP;
        // Once a flood is ebbing, trim at each look until it stops: what
        // closed since the last trim would otherwise stay with us.
        let ebbing = ebbing_from.is_some_and(|before| open < before);
        if fell || ebbing {
            tracing::debug!(
                peak,
                open,
                "connections fell from a peak; returning free memory"
            );
            cap.sweep();
            let _ = tokio::task::spawn_blocking(trim).await;
            ebbing_from = Some(open);
        } else {
            ebbing_from = None;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own heaps
    // under their locks, and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
