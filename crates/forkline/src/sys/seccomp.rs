//! Trapping a worker's `bind()` with a seccomp user-notification filter (Linux 5.9+ for the
//! answer that replaces its socket): installed in the child between fork and exec, the filter
//! turns every `bind` of the program (and of the processes it starts: the filter is inherited
//! and permanent) into a notification the primary receives on a listener fd, which the child
//! sends the primary before it execs. The primary reads the address the program asked for and
//! either lets the call go on (`CONTINUE`) or installs a socket of its own on the program's fd
//! (`ADDFD` with `SETFD`) and answers 0: the program's `listen()` then succeeds on forkline's
//! socket. If the primary is gone, a trapped `bind` fails with `ENOSYS`; it never hangs.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;

/// `seccomp(2)` operation and flag (`linux/seccomp.h`).
const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_uint = 1 << 3;
/// Filter results.
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
/// `ioctl`s on the listener fd: `_IOWR('!', 0, struct seccomp_notif)`, `_IOWR('!', 1, struct
/// seccomp_notif_resp)`, `_IOW('!', 2, __u64)`, `_IOW('!', 3, struct seccomp_notif_addfd)`.
const SECCOMP_IOCTL_NOTIF_RECV: libc::c_ulong = 0xc050_2100;
const SECCOMP_IOCTL_NOTIF_SEND: libc::c_ulong = 0xc018_2101;
const SECCOMP_IOCTL_NOTIF_ID_VALID: libc::c_ulong = 0x4008_2102;
const SECCOMP_IOCTL_NOTIF_ADDFD: libc::c_ulong = 0x4018_2103;
/// The answer lets the call go on as if never trapped (Linux 5.5).
const SECCOMP_USER_NOTIF_FLAG_CONTINUE: u32 = 1;
/// `ADDFD` puts the fd at `newfd`, replacing what was there (Linux 5.9).
const SECCOMP_ADDFD_FLAG_SETFD: u32 = 1;

/// `AUDIT_ARCH_*` of this build's architecture, and its `bind` syscall number.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
const NR_BIND: u32 = libc::SYS_bind as u32;

/// Classic BPF opcodes the filter uses.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;
/// Offsets in `struct seccomp_data`: the syscall number, the architecture, and the low word
/// of the third argument (bind's address length; little-endian).
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
#[cfg(target_endian = "little")]
const DATA_ARG2_LOW: u32 = 16 + 2 * 8;
#[cfg(target_endian = "big")]
const DATA_ARG2_LOW: u32 = 16 + 2 * 8 + 4;
/// `sizeof(struct sockaddr_in)`, `sizeof(struct sockaddr_in6)` and `sizeof(struct
/// sockaddr_storage)` (what some programs pass for either).
const SOCKADDR_IN: u32 = 16;
const SOCKADDR_IN6: u32 = 28;
const SOCKADDR_STORAGE: u32 = 128;

/// The filter: on this architecture, a `bind` with an IPv4 or IPv6 address's length is a
/// notification; everything else (other binds: Unix, netlink; other calls) is allowed at once.
const FILTER: [libc::sock_filter; 10] = [
    stmt(BPF_LD_W_ABS, DATA_ARCH),
    jump(AUDIT_ARCH, 0, 7),
    stmt(BPF_LD_W_ABS, DATA_NR),
    jump(NR_BIND, 0, 5),
    stmt(BPF_LD_W_ABS, DATA_ARG2_LOW),
    jump(SOCKADDR_IN, 2, 0),
    jump(SOCKADDR_IN6, 1, 0),
    jump(SOCKADDR_STORAGE, 0, 1),
    stmt(BPF_RET_K, SECCOMP_RET_USER_NOTIF),
    stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
];

const fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: BPF_JEQ_K,
        jt,
        jf,
        k,
    }
}

/// Arranges for `cmd`'s child, between fork and exec, to set `no_new_privs`, install the bind
/// filter, and send its listener fd over `report` (a datagram or seqpacket socket's child end),
/// one byte with the fd; where the kernel refuses the filter, one byte without an fd (the
/// program then runs untrapped). Call it before any other `pre_exec` that moves fds (it uses
/// `report`'s number as it is now).
pub(crate) fn trap_binds(cmd: &mut std::process::Command, report: OwnedFd) {
    let report_fd = report.as_raw_fd();
    let keep_alive = report;
    // SAFETY: the closure only makes async-signal-safe syscalls (prctl, seccomp, sendmsg,
    // close) on integers and on memory of its own stack or of the filter constant; it does
    // not allocate or take a lock.
    unsafe {
        cmd.pre_exec(move || {
            let _ = &keep_alive;
            let listener = install_filter();
            let fd = if listener >= 0 { Some(listener) } else { None };
            send_one(report_fd, fd);
            if listener >= 0 {
                libc::close(listener);
            }
            libc::close(report_fd);
            Ok(())
        });
    }
}

/// Sets `no_new_privs` and installs [`FILTER`]; the listener fd, or -1.
///
/// # Safety
///
/// Async-signal-safe: to be called between fork and exec.
unsafe fn install_filter() -> RawFd {
    // SAFETY: plain prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return -1;
    }
    let program = libc::sock_fprog {
        len: FILTER.len() as libc::c_ushort,
        filter: FILTER.as_ptr().cast_mut(),
    };
    // SAFETY: `program` points to the filter constant, valid for the call; the kernel copies
    // it and only reads it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &program as *const libc::sock_fprog,
        )
    };
    fd as RawFd
}

/// Control-message room for one fd, aligned as `cmsghdr` wants.
#[repr(C, align(8))]
struct OneFdControl([u8; 24]);

/// Sends one byte on `socket`, with `fd` attached if any, using only the stack.
///
/// # Safety
///
/// Async-signal-safe: to be called between fork and exec.
unsafe fn send_one(socket: RawFd, fd: Option<RawFd>) {
    let mut byte = [b'f'];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = OneFdControl([0; 24]);
    // SAFETY: a zeroed msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic; the buffer is 24 bytes, exactly
        // CMSG_SPACE(4) on 64-bit Linux, aligned to 8, and the header and data written below
        // lie within it.
        unsafe {
            let space = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
            debug_assert!(space <= control.0.len());
            msg.msg_control = control.0.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let header = libc::CMSG_FIRSTHDR(&msg);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<RawFd>(), fd);
        }
    }
    // SAFETY: `msg` points to the iovec, byte and control buffer on this stack frame, all
    // valid for the call.
    unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) };
}

/// `struct seccomp_data`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SeccompData {
    /// The syscall number.
    pub(crate) nr: i32,
    /// Its `AUDIT_ARCH_*`.
    pub(crate) arch: u32,
    /// Where it was made.
    pub(crate) instruction_pointer: u64,
    /// Its arguments.
    pub(crate) args: [u64; 6],
}

/// `struct seccomp_notif`: one trapped call.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Notification {
    /// Its id, for the answer.
    pub(crate) id: u64,
    /// The thread that made it (in the primary's pid namespace).
    pub(crate) pid: u32,
    flags: u32,
    /// The call.
    pub(crate) data: SeccompData,
}

/// `struct seccomp_notif_resp`.
#[repr(C)]
struct Response {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}

/// `struct seccomp_notif_addfd`.
#[repr(C)]
struct AddFd {
    id: u64,
    flags: u32,
    srcfd: u32,
    newfd: u32,
    newfd_flags: u32,
}

/// Receives the next trapped call on `listener` (which must have one waiting, else this
/// blocks). `ENOENT`: the caller was gone before it could be received.
pub(crate) fn receive(listener: BorrowedFd<'_>) -> io::Result<Notification> {
    let mut notification = Notification::default();
    // SAFETY: RECV writes one `struct seccomp_notif` (80 bytes, the layout above, zeroed as the
    // kernel requires) into memory we own for the call.
    let rc = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            SECCOMP_IOCTL_NOTIF_RECV as _,
            &mut notification as *mut Notification,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(notification)
}

/// False when call `id` is no longer waiting for its answer (its thread died or got a signal
/// meanwhile: ENOENT); what was read of its memory is otherwise what it asked.
pub(crate) fn still_waiting(listener: BorrowedFd<'_>, id: u64) -> bool {
    // SAFETY: ID_VALID reads one u64 from memory we own for the call.
    let rc = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            SECCOMP_IOCTL_NOTIF_ID_VALID as _,
            &id as *const u64,
        )
    };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT)
}

/// Lets call `id` go on as if it had not been trapped.
pub(crate) fn continue_call(listener: BorrowedFd<'_>, id: u64) -> io::Result<()> {
    respond(
        listener,
        Response {
            id,
            val: 0,
            error: 0,
            flags: SECCOMP_USER_NOTIF_FLAG_CONTINUE,
        },
    )
}

/// Answers call `id` with `result` (a return value, or an errno it fails with).
pub(crate) fn answer(
    listener: BorrowedFd<'_>,
    id: u64,
    result: Result<i64, i32>,
) -> io::Result<()> {
    let (val, error) = match result {
        Ok(val) => (val, 0),
        Err(errno) => (0, -errno),
    };
    respond(
        listener,
        Response {
            id,
            val,
            error,
            flags: 0,
        },
    )
}

fn respond(listener: BorrowedFd<'_>, response: Response) -> io::Result<()> {
    // SAFETY: SEND reads one `struct seccomp_notif_resp` (24 bytes, the layout above) from
    // memory we own for the call.
    let rc = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            SECCOMP_IOCTL_NOTIF_SEND as _,
            &response as *const Response,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Installs `socket` in the trapped process at fd number `target`, replacing what was there
/// (`ADDFD` with `SETFD`); CLOEXEC there when `cloexec`.
pub(crate) fn replace_fd(
    listener: BorrowedFd<'_>,
    id: u64,
    socket: BorrowedFd<'_>,
    target: RawFd,
    cloexec: bool,
) -> io::Result<()> {
    let add = AddFd {
        id,
        flags: SECCOMP_ADDFD_FLAG_SETFD,
        srcfd: socket.as_raw_fd() as u32,
        newfd: target as u32,
        newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
    };
    // SAFETY: ADDFD reads one `struct seccomp_notif_addfd` (24 bytes, the layout above) from
    // memory we own for the call; `socket` is an open fd borrowed for it.
    let rc = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            SECCOMP_IOCTL_NOTIF_ADDFD as _,
            &add as *const AddFd,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
