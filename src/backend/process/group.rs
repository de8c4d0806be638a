//! A worker's process group, as the gateway holds it: spawning the worker
//! in a group of its own (behind a [`supervisor`](super::supervisor) on
//! Linux), killing the whole group, and waiting for it with a bound.
//!
//! The group id is the pid `spawn` returned. It is only signalled while that
//! process is unreaped (a zombie at worst), so the id cannot have been
//! reused by an unrelated process: [`ProcessGroup`] checks for the exit
//! without reaping (`waitid` with `WNOWAIT`), kills, and only then reaps.

use std::io;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// How long a killed group's leader gets to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(1);
/// How often an exit is checked for while waiting.
const EXIT_POLL: Duration = Duration::from_millis(5);

/// A spawned worker and its process group.
pub(super) struct ProcessGroup {
    /// On Linux, the supervisor; elsewhere, the worker itself. Its pid is
    /// the group id.
    leader: Child,
    /// Set once `leader` is reaped: from then on the pid may be reused and
    /// is never signalled.
    status: Option<ExitStatus>,
    /// The gateway's end of the lifeline: the supervisor kills the group
    /// when it closes (with the gateway, or with this value).
    #[cfg(target_os = "linux")]
    _lifeline: std::os::fd::OwnedFd,
}

impl ProcessGroup {
    /// Spawns `command` in a process group of its own.
    pub(super) fn spawn(command: &mut Command) -> io::Result<ProcessGroup> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
            use std::os::unix::process::CommandExt;

            let mut fds = [0; 2];
            // SAFETY: pipe2 fills `fds` with two new descriptors, which are
            // then owned here.
            let (read, write) = unsafe {
                if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                    return Err(io::Error::last_os_error());
                }
                (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
            };
            let lifeline = read.as_raw_fd();
            // SAFETY: getpgrp cannot fail.
            let gateway_group = unsafe { libc::getpgrp() };
            // SAFETY: `split` is made for pre_exec: raw system calls only.
            unsafe {
                command.pre_exec(move || super::supervisor::split(lifeline, gateway_group));
            }
            let leader = command.spawn()?;
            drop(read);
            Ok(ProcessGroup {
                leader,
                status: None,
                _lifeline: write,
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            #[cfg(unix)]
            std::os::unix::process::CommandExt::process_group(command, 0);
            Ok(ProcessGroup {
                leader: command.spawn()?,
                status: None,
            })
        }
    }

    /// The group leader's pid, which is the group id.
    pub(super) fn pid(&self) -> u32 {
        self.leader.id()
    }

    /// The leader's stdio pipes, to be taken once after spawning.
    pub(super) fn leader(&mut self) -> &mut Child {
        &mut self.leader
    }

    /// Whether the leader has exited (without reaping it).
    fn exited(&mut self) -> bool {
        if self.status.is_some() {
            return true;
        }
        #[cfg(unix)]
        {
            let pid: libc::id_t = self.leader.id();
            // SAFETY: waitid only writes `info`; WNOWAIT leaves the child
            // unreaped, so its pid stays ours.
            unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
                let done = libc::waitid(libc::P_PID, pid, &mut info, flags);
                done != 0 || info.si_pid() != 0
            }
        }
        #[cfg(not(unix))]
        {
            self.reap();
            self.status.is_some()
        }
    }

    /// Waits up to `wait` for the leader to exit by itself, then kills what
    /// is left of the group and reaps the leader. The exit status, if it
    /// exited in time.
    pub(super) fn wait_exit(&mut self, wait: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + wait;
        while !self.exited() && Instant::now() < until {
            std::thread::sleep(EXIT_POLL);
        }
        let exited = self.exited();
        self.kill();
        if exited { self.status } else { None }
    }

    /// SIGKILLs the whole group and reaps the leader, waiting at most
    /// [`KILL_WAIT`].
    pub(super) fn kill(&mut self) {
        if self.status.is_some() {
            return;
        }
        #[cfg(unix)]
        if let Ok(pid) = libc::pid_t::try_from(self.leader.id()) {
            // SAFETY: the leader is unreaped, so `pid` is still its id and
            // its group's.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGKILL);
            }
        }
        #[cfg(not(unix))]
        let _ = self.leader.kill();
        let until = Instant::now() + KILL_WAIT;
        loop {
            self.reap();
            if self.status.is_some() || Instant::now() >= until {
                break;
            }
            std::thread::sleep(EXIT_POLL);
        }
        if self.status.is_none() {
            tracing::warn!(
                pid = self.pid(),
                "a killed worker process did not exit within {KILL_WAIT:?}"
            );
        }
    }

    fn reap(&mut self) {
        if self.status.is_none() {
            self.status = self.leader.try_wait().ok().flatten();
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}
