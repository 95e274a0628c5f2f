//! The only module with `unsafe`: fd passing over SOCK_SEQPACKET, child-process setup that runs
//! between fork and exec, and a few raw syscalls. Everything else in forkline calls these safe
//! wrappers.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;

use nix::cmsg_space;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType, UnixAddr,
};

/// Most fds placed in one child (listeners plus the IPC socket); `pre_exec` cannot allocate.
const MAX_PLACED_FDS: usize = 64;

/// Most fds the kernel accepts in one SCM_RIGHTS message (SCM_MAX_FD).
pub const MAX_FDS_PER_PACKET: usize = 253;

/// A connected pair of CLOEXEC SOCK_SEQPACKET Unix sockets: one message per packet.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    Ok((a, b))
}

/// Sends one packet carrying `data` and, as SCM_RIGHTS, `fds`. `nonblocking` adds MSG_DONTWAIT.
/// Never raises SIGPIPE (MSG_NOSIGNAL).
pub fn send_packet(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[RawFd],
    nonblocking: bool,
) -> io::Result<()> {
    if fds.len() > MAX_FDS_PER_PACKET {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} fds in one packet (max {MAX_FDS_PER_PACKET})", fds.len()),
        ));
    }
    let iov = [IoSlice::new(data)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    let mut flags = MsgFlags::MSG_NOSIGNAL;
    if nonblocking {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    let sent = sendmsg::<UnixAddr>(sock.as_raw_fd(), &iov, cmsgs, flags, None)?;
    if sent != data.len() {
        return Err(io::Error::other("short write on a SOCK_SEQPACKET socket"));
    }
    Ok(())
}

/// Receives one packet into `buf`, appending any passed fds (received CLOEXEC) to `fds`.
/// Returns the packet length; `Ok(0)` means the peer closed the socket. A packet larger than
/// `buf` or with more fds than fit (MSG_TRUNC / MSG_CTRUNC) is an `InvalidData` error, and the
/// fds that did arrive are closed.
pub fn recv_packet(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    nonblocking: bool,
) -> io::Result<usize> {
    let mut cmsg_buf = cmsg_space!([RawFd; MAX_FDS_PER_PACKET]);
    let mut iov = [IoSliceMut::new(buf)];
    let mut flags = MsgFlags::MSG_CMSG_CLOEXEC;
    if nonblocking {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    let msg = recvmsg::<UnixAddr>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg_buf), flags)?;
    let len = msg.bytes;
    let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
    let ctruncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    let mut received = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for fd in raw {
                // SAFETY: the kernel just installed `fd` in our table for this message; nothing
                // else knows about it, so we are its sole owner.
                received.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if truncated || ctruncated {
        drop(received);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            if truncated {
                "packet larger than the receive buffer (MSG_TRUNC)"
            } else {
                "fds dropped by the kernel (MSG_CTRUNC): RLIMIT_NOFILE reached?"
            },
        ));
    }
    fds.extend(received);
    Ok(len)
}

/// Duplicates `fd` to a new CLOEXEC descriptor.
pub fn dup_cloexec(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

/// Takes ownership of an fd number inherited from the parent (e.g. `FORKLINE_IPC_FD`) and marks
/// it CLOEXEC so it does not leak into programs this process runs.
///
/// Returns an error if `fd` is not open.
pub fn adopt_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    // SAFETY: F_GETFD only reads the flags of `fd`; an invalid fd yields EBADF, no UB.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    fcntl(borrowed, FcntlArg::F_GETFD)?;
    fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    // SAFETY: the fd is open (F_GETFD succeeded) and was handed to this process to own by the
    // parent through the environment; the caller adopts it exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Arranges for `cmd`'s child, between fork and exec, to:
/// - place each `(fd, target)` at fd number `target` (dup2; the copy is not CLOEXEC),
/// - receive SIGKILL when the thread that spawned it dies (PR_SET_PDEATHSIG), and exit at once
///   if the parent is already gone by the time that is armed,
/// - start with an empty signal mask.
///
/// The spawning thread must live as long as the child should (see `primary::spawner`).
pub fn prepare_child(
    cmd: &mut std::process::Command,
    fds: Vec<(OwnedFd, RawFd)>,
) -> io::Result<()> {
    if fds.len() > MAX_PLACED_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} fds to place in a worker (max {MAX_PLACED_FDS})",
                fds.len()
            ),
        ));
    }
    let parent = nix::unistd::getpid().as_raw();
    let placements: Vec<(RawFd, RawFd)> = fds.iter().map(|(f, t)| (f.as_raw_fd(), *t)).collect();
    // The highest target; sources at or below it are first moved above it so that placing one
    // fd never clobbers the source of another.
    let ceiling = placements.iter().map(|(_, t)| *t).max().unwrap_or(0);
    // Keep the parent's copies alive until the Command is dropped (after spawn).
    let keep_alive = fds;
    // SAFETY: the closure only calls async-signal-safe syscalls (fcntl, dup2, prctl, getppid,
    // sigprocmask, _exit) on plain integers captured by value; it does not allocate or lock.
    unsafe {
        cmd.pre_exec(move || {
            let _ = &keep_alive;
            let mut moved = [0 as RawFd; MAX_PLACED_FDS];
            for (i, (src, _)) in placements.iter().enumerate() {
                let high = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, ceiling + 1);
                if high < 0 {
                    return Err(io::Error::last_os_error());
                }
                moved[i] = high;
            }
            for (i, (_, target)) in placements.iter().enumerate() {
                if libc::dup2(moved[i], *target) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            Ok(())
        });
    }
    Ok(())
}

/// Sends `signal` to process `pid`; `ESRCH` (already gone) is not an error.
pub fn signal_pid(pid: u32, signal: nix::sys::signal::Signal) -> io::Result<()> {
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Sends `signal` to every process of the group `pgid`; `ESRCH` (none left) is not an error.
pub fn signal_group(pgid: u32, signal: nix::sys::signal::Signal) -> io::Result<()> {
    match nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid as i32), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// True when the peer of the connected socket `fd` has shut its end down (POLLRDHUP or
/// POLLHUP now), so a zero-length read was a close and not an empty packet.
pub fn peer_hung_up(fd: BorrowedFd<'_>) -> bool {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid `pollfd` for an fd the caller keeps open, a count of 1 and no timeout:
    // poll only writes `revents`.
    let ready = unsafe { libc::poll(&mut pollfd, 1, 0) };
    ready < 0 || pollfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Registers an owned fd with tokio's reactor.
pub fn async_fd(
    fd: OwnedFd,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is a valid open descriptor that it alone closes, and its `as_raw_fd`
    // always returns that same number, for as long as the `AsyncFd` owns it.
    unsafe {
        Ok(tokio::io::unix::AsyncFd::register_with_interest(
            fd, interest,
        )?)
    }
}
