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
//! malloc's locks.
//!
//! The supervisor is a copy-on-write copy of the gateway: left alone, it
//! would keep a private copy of every page the gateway changes later, up to
//! the gateway's whole memory at the time. So it first drops the anonymous
//! memory it never touches (heaps, other threads' stacks; see
//! [`release_memory`]): measured, about 0.3 MiB of its own instead of
//! several MiB.

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
        release_memory();
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

/// Lets go of the gateway's anonymous memory that this process never
/// touches, so that the gateway writing to it later makes no copies here:
/// each private, writable, anonymous mapping of `/proc/self/maps` (the
/// heap, malloc's arenas, other threads' stacks), except this thread's
/// stack and thread-local block, the kernel's special mappings, and the
/// zero-filled data (`.bss`) that follows a file mapping.
unsafe fn release_memory() {
    // SAFETY: reads this process's map, then drops pages of mappings that
    // no code of this process uses from here on (it runs only the loop of
    // `supervise`, on this stack, with its thread block for errno).
    unsafe {
        let fd = libc::open(
            c"/proc/self/maps".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return;
        }
        let marker = 0u8;
        let keep = [
            std::ptr::addr_of!(marker) as usize,
            libc::__errno_location() as usize,
        ];
        let mut buf = [0u8; 8192];
        let mut len = 0;
        let mut previous: Option<Mapping> = None;
        loop {
            let read = libc::read(fd, buf.as_mut_ptr().add(len).cast(), buf.len() - len);
            if read <= 0 {
                break;
            }
            len += read as usize;
            let mut start = 0;
            while let Some(end) = buf[start..len].iter().position(|&b| b == b'\n') {
                if let Some(mapping) = Mapping::parse(&buf[start..start + end]) {
                    if mapping.droppable(&keep, previous.as_ref()) {
                        libc::madvise(
                            mapping.start as *mut libc::c_void,
                            mapping.end - mapping.start,
                            libc::MADV_DONTNEED,
                        );
                    }
                    previous = Some(mapping);
                }
                start += end + 1;
            }
            buf.copy_within(start..len, 0);
            len -= start;
            if len == buf.len() {
                break; // a line longer than the buffer: keep the rest
            }
        }
        libc::close(fd);
    }
}

/// One line of `/proc/self/maps`, as far as [`release_memory`] needs it.
struct Mapping {
    start: usize,
    end: usize,
    /// `rw-p`-like: writable and private.
    writable_private: bool,
    /// Backed by a file (inode not 0).
    file: bool,
    /// A kernel mapping kept as it is: `[stack]`, `[vdso]`, `[vvar]`, …
    special: bool,
}

impl Mapping {
    /// Parses `start-end perms offset dev inode [path]`.
    fn parse(line: &[u8]) -> Option<Mapping> {
        let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
        let range = fields.next()?;
        let dash = range.iter().position(|&b| b == b'-')?;
        let start = hex(&range[..dash])?;
        let end = hex(&range[dash + 1..])?;
        let perms = fields.next()?;
        let _offset = fields.next()?;
        let _device = fields.next()?;
        let inode = fields.next()?;
        let path = fields.next().unwrap_or(b"");
        let special =
            path.starts_with(b"[") && !(path.starts_with(b"[heap]") || path.starts_with(b"[anon"));
        Some(Mapping {
            start,
            end,
            writable_private: perms.get(1) == Some(&b'w') && perms.get(3) == Some(&b'p'),
            file: inode.iter().any(|&b| b != b'0'),
            special,
        })
    }

    /// Whether the pages of this mapping can go.
    fn droppable(&self, keep: &[usize], previous: Option<&Mapping>) -> bool {
        let bss = previous.is_some_and(|p| p.file && p.end == self.start);
        self.writable_private
            && !self.file
            && !self.special
            && !bss
            && self.end > self.start
            && !keep.iter().any(|&a| (self.start..self.end).contains(&a))
    }
}

/// A hexadecimal address.
fn hex(digits: &[u8]) -> Option<usize> {
    let mut value: usize = 0;
    for &d in digits {
        let digit = (d as char).to_digit(16)?;
        value = value.checked_mul(16)?.checked_add(digit as usize)?;
    }
    (!digits.is_empty()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_lines_parse() {
        let heap =
            Mapping::parse(b"55d0c3a00000-55d0c3a21000 rw-p 00000000 00:00 0          [heap]")
                .expect("parses");
        assert_eq!((heap.start, heap.end), (0x55d0c3a00000, 0x55d0c3a21000));
        assert!(heap.writable_private && !heap.file && !heap.special);
        assert!(heap.droppable(&[], None));
        assert!(
            !heap.droppable(&[0x55d0c3a00010], None),
            "holds a kept address"
        );

        let data = Mapping::parse(b"7f00-8f00 rw-p 00021000 08:01 1234 /usr/lib/libc.so.6")
            .expect("parses");
        assert!(data.file && !data.droppable(&[], None));
        let bss = Mapping::parse(b"8f00-9f00 rw-p 00000000 00:00 0").expect("parses");
        assert!(!bss.droppable(&[], Some(&data)), "the .bss after a file");
        assert!(bss.droppable(&[], None));

        let stack =
            Mapping::parse(b"7ffc0000-7ffd0000 rw-p 00000000 00:00 0 [stack]").expect("parses");
        assert!(!stack.droppable(&[], None));
        let text = Mapping::parse(b"1000-2000 r-xp 00000000 08:01 99 /bin/x").expect("parses");
        assert!(!text.droppable(&[], None));
        assert!(Mapping::parse(b"garbage").is_none());
    }
}
