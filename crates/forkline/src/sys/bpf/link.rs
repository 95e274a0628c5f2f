//! Attaching a program to the network namespace through a BPF link (`bpf(BPF_LINK_CREATE)`,
//! Linux 5.8; `BPF_SK_LOOKUP` programs, 5.9): the program stays attached while the link's fd is
//! open, so it goes when the process that holds it dies, however it dies.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::bpf_call;

/// `BPF_LINK_CREATE` (`enum bpf_cmd`).
const BPF_LINK_CREATE: libc::c_int = 28;

/// The `BPF_LINK_CREATE` part of `union bpf_attr`: the program, what it attaches to, how.
#[repr(C)]
struct BpfLinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// Attaches `prog` to the network namespace `netns` (an fd of `/proc/self/ns/net`) as
/// `attach_type`; the returned link fd (CLOEXEC) keeps it attached until it is closed.
pub(crate) fn attach_to_netns(
    prog: BorrowedFd<'_>,
    netns: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let attr = BpfLinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: netns.as_raw_fd() as u32,
        attach_type,
        flags: 0,
    };
    // SAFETY: `attr` is a fully initialised BPF_LINK_CREATE attribute holding two fds borrowed
    // for the call and no pointers; the kernel only reads it.
    let fd = unsafe { bpf_call(BPF_LINK_CREATE, &attr)? };
    // SAFETY: a non-negative return of BPF_LINK_CREATE is a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
