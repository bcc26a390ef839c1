//! SIGTERM and SIGINT (shutdown or drain), SIGHUP (reload) and SIGUSR1 (drain) as an
//! ordinary readable descriptor (signalfd), so each is one more event of the mio loop: no
//! handler, no flag, no extra thread. What each does is control.rs.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub(super) struct ShutdownSignals {
    fd: OwnedFd,
}

impl ShutdownSignals {
    /// Blocks SIGTERM/SIGINT/SIGHUP/SIGUSR1 for this (single-threaded) process and opens a signalfd for them.
    /// Must run before any other thread exists, so every thread inherits the mask.
    pub(super) fn new() -> io::Result<ShutdownSignals> {
        // SAFETY: sigset operations on a zeroed local set; sigprocmask and signalfd only read it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            // SIGHUP reloads, SIGUSR1 drains (no longer their default: terminate).
            libc::sigaddset(&mut set, libc::SIGHUP);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(ShutdownSignals {
                fd: OwnedFd::from_raw_fd(fd),
            })
        }
    }

    /// The signal that arrived, if any (reads one siginfo).
    pub(super) fn take(&self) -> Option<i32> {
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading at most `size` bytes into a properly sized, owned struct.
        let read = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        (read == size as isize).then_some(info.ssi_signo as i32)
    }
}

impl AsRawFd for ShutdownSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
