//! Packets over SOCK_SEQPACKET Unix sockets, with descriptors passed as SCM_RIGHTS: the socket
//! pair, send, receive, peek, and whether the peer hung up. The IPC channel between the primary
//! and a worker (`protocol::channel`) and the keeper's socket are built on these.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::cmsg_space;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
    UnixAddr,
};

/// Most fds the kernel accepts in one SCM_RIGHTS message (SCM_MAX_FD).
pub(crate) const MAX_FDS_PER_PACKET: usize = 253;

/// A connected pair of CLOEXEC SOCK_SEQPACKET Unix sockets: one message per packet.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
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
pub(crate) fn send_packet(
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
/// Returns the packet length (`0`: the peer closed the socket, or an empty packet) and whether
/// the kernel cut fds off (MSG_CTRUNC: this process is at RLIMIT_NOFILE, so only the first
/// ones arrived, in order, and the kernel closed the rest). A packet larger than `buf`
/// (MSG_TRUNC) is an `InvalidData` error, and the fds that did arrive are closed.
pub(crate) fn recv_packet(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    nonblocking: bool,
) -> io::Result<(usize, bool)> {
    // Room for the most fds one packet may carry.
    let mut control = cmsg_space!([RawFd; MAX_FDS_PER_PACKET]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no iovecs, no control).
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.as_mut_ptr().cast();
    header.msg_controllen = control.capacity() as _;
    let mut flags = libc::MSG_CMSG_CLOEXEC;
    if nonblocking {
        flags |= libc::MSG_DONTWAIT;
    }
    // SAFETY: `header` points at one iovec over `buf` and at `control`'s allocation, with their
    // true lengths; both outlive the call, and the kernel writes only within them.
    let received = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut header, flags) };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    // Own every fd the kernel installed before anything can return early. At the fd limit
    // (MSG_CTRUNC) it installs the first ones and writes a header for just those, so walking
    // the headers it wrote is sound even then (nix refuses to, so this is by hand).
    let mut installed = Vec::new();
    // SAFETY: `header` was filled in by recvmsg: CMSG_FIRSTHDR/NXTHDR only return headers
    // inside the `msg_controllen` bytes the kernel wrote, or null.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&header) };
    while !cmsg.is_null() {
        // SAFETY: non-null headers from CMSG_FIRSTHDR/NXTHDR are within the written control
        // data and aligned for `cmsghdr`.
        let (level, kind, len) =
            unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type, (*cmsg).cmsg_len) };
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is plain arithmetic; CMSG_DATA points just past the header.
            let (empty, data) = unsafe { (libc::CMSG_LEN(0) as usize, libc::CMSG_DATA(cmsg)) };
            let count = len.saturating_sub(empty) / std::mem::size_of::<RawFd>();
            for i in 0..count {
                // SAFETY: the kernel wrote `count` fds after the header (within `len`); read
                // unaligned since CMSG_DATA need not be aligned for i32.
                let fd = unsafe { std::ptr::read_unaligned(data.cast::<RawFd>().add(i)) };
                // SAFETY: the kernel just installed `fd` in our table for this message;
                // nothing else knows about it, so we are its sole owner.
                installed.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: as above, `cmsg` is a header within the written control data.
        cmsg = unsafe { libc::CMSG_NXTHDR(&header, cmsg) };
    }
    if header.msg_flags & libc::MSG_TRUNC != 0 {
        drop(installed);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "packet larger than the receive buffer (MSG_TRUNC)",
        ));
    }
    fds.extend(installed);
    Ok((received as usize, header.msg_flags & libc::MSG_CTRUNC != 0))
}

/// Reads the next packet's bytes into `buf` without taking it off the socket (MSG_PEEK) and
/// without installing any fd it carries. `WouldBlock` when none is queued.
pub(crate) fn peek_packet(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    let mut iov = [IoSliceMut::new(buf)];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC;
    let msg = recvmsg::<UnixAddr>(sock.as_raw_fd(), &mut iov, None, flags)?;
    Ok(msg.bytes)
}

/// True when the peer of the connected socket `fd` has shut its end down (POLLRDHUP or
/// POLLHUP now), so a zero-length read was a close and not an empty packet.
pub(crate) fn peer_hung_up(fd: BorrowedFd<'_>) -> bool {
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
