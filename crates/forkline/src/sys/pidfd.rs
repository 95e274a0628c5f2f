//! Process fds (`pidfd_open`, Linux 5.3) and taking a copy of another process's fd through one
//! (`pidfd_getfd`, Linux 5.6): how the primary gets hold of the listening socket a proxy-mode
//! worker bound itself, to steer connections to it in the kernel.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// An fd referring to process `pid` (`pidfd_open`), CLOEXEC.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: a plain syscall with two integer arguments; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a non-negative return of pidfd_open is a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A copy, in this process, of the process's fd `target` (`pidfd_getfd`; CLOEXEC). Needs the
/// right to ptrace that process (the primary's own children, or root).
pub(crate) fn pidfd_getfd(pidfd: BorrowedFd<'_>, target: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: a plain syscall with integer arguments (an fd borrowed for the call, a number in
    // the other process's table, no flags); it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a non-negative return of pidfd_getfd is a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn takes_a_copy_of_a_socket_of_a_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let pidfd = pidfd_open(std::process::id()).unwrap();
        let copy = pidfd_getfd(pidfd.as_fd(), listener.as_raw_fd()).unwrap();
        let address = socket2::SockRef::from(&copy).local_addr().unwrap();
        assert_eq!(address.as_socket(), listener.local_addr().ok());
        assert!(pidfd_getfd(pidfd.as_fd(), 1 << 20).is_err());
    }
}
