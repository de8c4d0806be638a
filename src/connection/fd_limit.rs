//! The process's limit on open file descriptors (`RLIMIT_NOFILE`).
//!
//! Every connection, on either listener, and every worker process's pipes
//! take descriptors from one budget. Many systems start programs with a
//! soft limit of 1,024 and a far higher hard limit; a server may raise its
//! own soft limit to the hard one without privileges, so [`raise`] does
//! that at start-up, and [`grpc_connection_budget`] keeps the gRPC
//! connection cap under what is left once `/metrics` and the workers have
//! their share.

use std::io;

/// Descriptors kept for everything but connections: listeners, logs, the
/// runtime, and slack.
const RESERVED: u64 = 256;
/// Descriptors kept per worker: a worker process's stdin, stdout and stderr
/// pipes, and one for a replacement being started.
const PER_WORKER: u64 = 4;

/// The soft and hard limits after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FdLimit {
    /// The limit in force.
    pub(crate) soft: u64,
    /// The most the soft limit may be raised to.
    pub(crate) hard: u64,
}

/// Raises the soft limit to the hard limit; returns both as they are
/// afterwards.
#[cfg(unix)]
pub(crate) fn raise() -> io::Result<FdLimit> {
    let before = get()?;
    let hard = before.rlim_max;
    if before.rlim_cur < hard {
        // An "unlimited" hard limit cannot be the soft one for files
        // (Linux caps it at fs.nr_open, macOS at OPEN_MAX): try less.
        let targets = [hard, hard.min(1 << 20), hard.min(10_240)];
        let raised = targets.into_iter().any(|target| {
            let limit = libc::rlimit {
                rlim_cur: target,
                rlim_max: hard,
            };
            // SAFETY: setrlimit reads the struct we pass; it lives across the call.
            target > before.rlim_cur && unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0
        });
        if !raised {
            return Err(io::Error::last_os_error());
        }
    }
    let after = get()?;
    Ok(FdLimit {
        soft: after.rlim_cur as u64,
        hard: after.rlim_max as u64,
    })
}

#[cfg(unix)]
fn get() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass, which outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

/// No descriptor limit to raise off Unix.
#[cfg(not(unix))]
pub(crate) fn raise() -> io::Result<FdLimit> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "no RLIMIT_NOFILE",
    ))
}

/// The most gRPC connections the descriptor limit `soft` leaves room for,
/// after the `/metrics` cap and `workers` worker processes have theirs.
pub(crate) fn grpc_connection_budget(
    soft: u64,
    metrics_connections: usize,
    workers: usize,
) -> usize {
    let kept = RESERVED + metrics_connections as u64 + PER_WORKER * workers as u64;
    // At least one connection, so that a tiny limit still serves something.
    usize::try_from(soft.saturating_sub(kept).max(1)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let limit = raise().expect("getrlimit/setrlimit work here");
        assert_eq!(limit.soft, limit.hard);
    }

    #[test]
    fn the_budget_leaves_room_for_metrics_and_workers() {
        assert_eq!(grpc_connection_budget(1024, 64, 16), 1024 - 256 - 64 - 64);
        assert_eq!(grpc_connection_budget(100, 64, 16), 1);
    }
}
