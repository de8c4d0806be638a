//! The supervisor of a worker process (Linux): a small process between the
//! gateway and the worker that kills the worker's whole process group when
//! the gateway dies, SIGKILL included, or when the worker exits.
//!
//! [`split`] runs in `Command::pre_exec`, in the child that `spawn` forked.
//! That child makes a new process group, forks once more, and becomes the
//! supervisor; the grandchild returns to `spawn`'s code and execs the
//! worker, in the same group. So `spawn`'s pid is the supervisor's, which is
//! also the group id: the gateway kills the group with `kill(-pid)`.
//!
//! The supervisor holds nothing of the gateway's but the read end of a
//! *lifeline* pipe, whose write end only the gateway holds (close-on-exec,
//! so no worker inherits it). When the gateway dies its end closes, the
//! supervisor's `poll` sees the hang-up, and it SIGKILLs the group. When the
//! worker exits, the supervisor leaves the group, SIGKILLs what is left of
//! it (what the worker started), and exits with the worker's own status, so
//! the gateway can report it.
//!
//! Why a process of our own rather than `PR_SET_PDEATHSIG`: the death
//! signal reaches only the worker (not what it started), fires when the
//! spawning *thread* ends, and needs the worker to be ours to set; a
//! supervisor covers a worker in any language and its whole group.
//!
//! Everything here runs in the fork of a multi-threaded process: only raw
//! system calls, no allocation, no locks (a lock another thread held at the
//! fork stays locked forever). That is why the second fork is the raw
//! `clone` system call and not glibc's `fork()`, whose atfork handlers take
//! malloc's locks. The cost: the supervisor is a copy-on-write copy of the
//! gateway, so it keeps the pages the gateway changes later (bounded by the
//! gateway's memory at the time the worker was started).

use std::io;
use std::os::fd::RawFd;

use libc::{c_int, c_long, pid_t};

/// The supervisor's only descriptor: the lifeline's read end.
const LIFELINE: RawFd = 0;
/// How often the supervisor checks on the worker when the kernel has no
/// pidfd (before Linux 5.3) to wake it when the worker exits.
const POLL_WITHOUT_PIDFD_MS: c_int = 100;
/// The same with a pidfd: only a safety net.
const POLL_WITH_PIDFD_MS: c_int = 1000;
/// Most descriptors closed one by one where `close_range` is missing.
const MAX_FDS_TO_CLOSE: u64 = 1 << 20;

/// Splits the child `spawn` forked into the supervisor (never returns) and
/// the worker (returns `Ok`, and `spawn` execs it). `lifeline` is the read
/// end of the lifeline pipe; `gateway_group` the gateway's process group.
///
/// # Safety
/// Only from a `pre_exec` closure: it forks, and it must not allocate.
pub(super) unsafe fn split(lifeline: RawFd, gateway_group: pid_t) -> io::Result<()> {
    // SAFETY: plain system calls on this process.
    unsafe {
        if libc::setpgid(0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        // A raw fork: see the module docs for why not `libc::fork`.
        let pid = libc::syscall(libc::SYS_clone, c_long::from(libc::SIGCHLD), 0, 0, 0, 0);
        match pid {
            -1 => Err(io::Error::last_os_error()),
            0 => Ok(()),
            worker => supervise(worker as pid_t, lifeline, gateway_group),
        }
    }
}

/// The supervisor's life: wait for the gateway's death or the worker's.
unsafe fn supervise(worker: pid_t, lifeline: RawFd, gateway_group: pid_t) -> ! {
    // SAFETY: plain system calls on this process and its own descriptors.
    unsafe {
        if libc::dup2(lifeline, LIFELINE) != LIFELINE {
            libc::kill(0, libc::SIGKILL);
            libc::_exit(1);
        }
        close_from(LIFELINE + 1);
        reset_signals();
        let pidfd = libc::syscall(libc::SYS_pidfd_open, worker, 0) as c_int;
        let mut fds = [
            libc::pollfd {
                fd: LIFELINE,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: pidfd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let (count, timeout) = if pidfd >= 0 {
            (2, POLL_WITH_PIDFD_MS)
        } else {
            (1, POLL_WITHOUT_PIDFD_MS)
        };
        loop {
            fds[0].revents = 0;
            let ready = libc::poll(fds.as_mut_ptr(), count, timeout);
            if ready > 0 && fds[0].revents != 0 {
                // Nobody writes to the lifeline: readable or hung up, the
                // gateway is gone. The group is the worker, what it
                // started, and this process.
                libc::kill(0, libc::SIGKILL);
                libc::_exit(1);
            }
            let mut status: c_int = 0;
            match libc::waitpid(worker, &mut status, libc::WNOHANG) {
                0 => {}
                pid if pid == worker => end(Some(status), gateway_group),
                _ => end(None, gateway_group),
            }
        }
    }
}

/// The worker exited: kill what it left behind, then exit as it did.
unsafe fn end(status: Option<c_int>, gateway_group: pid_t) -> ! {
    // SAFETY: plain system calls on this process and its group.
    unsafe {
        let me = libc::getpid();
        // Step out of the group so as to outlive killing it; if that fails
        // the status is lost, the group is killed all the same.
        if libc::setpgid(0, gateway_group) != 0 {
            libc::kill(0, libc::SIGKILL);
        }
        libc::kill(-me, libc::SIGKILL);
        match status {
            Some(status) if libc::WIFEXITED(status) => libc::_exit(libc::WEXITSTATUS(status)),
            Some(status) if libc::WIFSIGNALED(status) => {
                // Die of the same signal, without a core dump of our own.
                let signal = libc::WTERMSIG(status);
                let no_core = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                libc::signal(signal, libc::SIG_DFL);
                libc::kill(me, signal);
                libc::_exit(128 + signal);
            }
            _ => libc::_exit(1),
        }
    }
}

/// Closes every descriptor from `first` up.
unsafe fn close_from(first: RawFd) {
    // SAFETY: closing descriptors of this process, which uses none of them.
    unsafe {
        let first = first as libc::c_uint;
        if libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) == 0 {
            return;
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        let last = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur.min(MAX_FDS_TO_CLOSE)
        } else {
            MAX_FDS_TO_CLOSE
        };
        for fd in u64::from(first)..last {
            libc::close(fd as c_int);
        }
    }
}

/// Drops the gateway's signal handlers (they would write to descriptors
/// this process no longer has) and ignores the signals meant to stop a
/// program: the supervisor lives exactly as long as the worker or the
/// gateway, whichever ends first.
unsafe fn reset_signals() {
    // SAFETY: setting dispositions of this process; SIGKILL and SIGSTOP
    // refuse, which is harmless.
    unsafe {
        for signal in 1..32 {
            libc::signal(signal, libc::SIG_DFL);
        }
        for signal in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
            libc::SIGPIPE,
        ] {
            libc::signal(signal, libc::SIG_IGN);
        }
    }
}
