//! An epoll instance of its own per accept thread, so that a ready socket wakes one thread
//! (`EPOLLEXCLUSIVE`) instead of all of them (`primary::dispatch`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// A private epoll instance holding one socket with `EPOLLEXCLUSIVE`: of the threads blocked
/// in `wait` on such instances of one socket, an event wakes one, not all. It also holds a
/// `wake` descriptor (not exclusive): once that is readable, every `wait` returns at once.
pub(crate) struct ExclusiveEpoll(OwnedFd);

impl ExclusiveEpoll {
    pub(crate) fn new(socket: &OwnedFd, wake: BorrowedFd<'_>) -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscalls on descriptors borrowed for the call; a returned descriptor
        // is new and owned here.
        unsafe {
            let fd = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let epoll = OwnedFd::from_raw_fd(fd);
            let mut event = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32,
                u64: 0,
            };
            if libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, socket.as_raw_fd(), &mut event) < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut event = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: 1,
            };
            if libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, wake.as_raw_fd(), &mut event) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Self(epoll))
        }
    }

    /// Waits up to `timeout_ms` for the socket to be readable or the wake descriptor to fire;
    /// true if either did.
    pub(crate) fn wait(&self, timeout_ms: i32) -> io::Result<bool> {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: one event's room, for the epoll descriptor owned here.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), &mut event, 1, timeout_ms) };
        match n {
            n if n > 0 => Ok(true),
            0 => Ok(false),
            _ => match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::Interrupted => Ok(false),
                e => Err(e),
            },
        }
    }
}
