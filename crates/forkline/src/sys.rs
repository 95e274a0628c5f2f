//! The only module with `unsafe`: fd passing over SOCK_SEQPACKET, child-process setup that runs
//! between fork and exec, and a few raw syscalls. Everything else in forkline calls these safe
//! wrappers.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;

use nix::cmsg_space;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
    UnixAddr,
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
/// Returns the packet length (`0`: the peer closed the socket, or an empty packet) and whether
/// the kernel cut fds off (MSG_CTRUNC: this process is at RLIMIT_NOFILE, so only the first
/// ones arrived, in order, and the kernel closed the rest). A packet larger than `buf`
/// (MSG_TRUNC) is an `InvalidData` error, and the fds that did arrive are closed.
pub fn recv_packet(
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
pub fn peek_packet(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    let mut iov = [IoSliceMut::new(buf)];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC;
    let msg = recvmsg::<UnixAddr>(sock.as_raw_fd(), &mut iov, None, flags)?;
    Ok(msg.bytes)
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
    arrange_child(cmd, fds, true)
}

/// Like [`prepare_child`], for a child that must outlive this process (a new primary taking
/// over): the fds are placed and the signal mask emptied, with no death signal.
pub fn place_fds(cmd: &mut std::process::Command, fds: Vec<(OwnedFd, RawFd)>) -> io::Result<()> {
    arrange_child(cmd, fds, false)
}

fn arrange_child(
    cmd: &mut std::process::Command,
    fds: Vec<(OwnedFd, RawFd)>,
    die_with_parent: bool,
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
            if die_with_parent {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
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

// ---------------------------------------------------------------------------------------------
// eBPF: loading a program with bpf(BPF_PROG_LOAD) and attaching one to a reuseport group
// (`primary::migration`, `primary::steer`), and the maps a steering program reads
// (`BPF_MAP_CREATE`, `BPF_MAP_UPDATE_ELEM`, ...). No BPF library: the programs are a few
// instructions assembled in Rust.

/// `bpf(2)` commands (`enum bpf_cmd` in `linux/bpf.h`).
const BPF_MAP_CREATE: libc::c_int = 0;
#[cfg(test)]
const BPF_MAP_LOOKUP_ELEM: libc::c_int = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
const BPF_MAP_DELETE_ELEM: libc::c_int = 3;
const BPF_PROG_LOAD: libc::c_int = 5;

/// `SO_ATTACH_REUSEPORT_EBPF` (`asm-generic/socket.h`; 52 on every architecture Linux gives it
/// a generic number).
const SO_ATTACH_REUSEPORT_EBPF: libc::c_int = 52;

/// `BPF_OBJ_NAME_LEN`: a program name, its NUL included.
const BPF_OBJ_NAME_LEN: usize = 16;

/// Size of the verifier log asked for when a load is refused, to explain why.
const BPF_LOG_SIZE: usize = 64 * 1024;

/// One eBPF instruction, laid out as the kernel's `struct bpf_insn`: an opcode, the destination
/// and source registers (4 bits each), a signed offset and a signed immediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct BpfInsn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

impl BpfInsn {
    /// An instruction from its fields (`dst` and `src` are registers 0 to 10).
    pub const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        // `dst_reg:4, src_reg:4` bitfields: the first field takes the low bits on a
        // little-endian machine, the high bits on a big-endian one.
        #[cfg(target_endian = "little")]
        let regs = (dst & 0x0f) | (src << 4);
        #[cfg(target_endian = "big")]
        let regs = (dst << 4) | (src & 0x0f);
        Self {
            code,
            regs,
            off,
            imm,
        }
    }

    /// The instruction's offset (a jump's distance, a memory access's displacement).
    #[cfg(test)]
    pub const fn off(&self) -> i16 {
        self.off
    }

    /// `dst = imm` (64-bit move: `BPF_ALU64 | BPF_MOV | BPF_K`).
    pub const fn mov64_imm(dst: u8, imm: i32) -> Self {
        Self::new(0x07 | 0xb0, dst, 0, 0, imm)
    }

    /// `exit`: return `r0` (`BPF_JMP | BPF_EXIT`).
    pub const fn exit() -> Self {
        Self::new(0x05 | 0x90, 0, 0, 0, 0)
    }

    /// `dst = src` (64-bit move: `BPF_ALU64 | BPF_MOV | BPF_X`).
    pub const fn mov64_reg(dst: u8, src: u8) -> Self {
        Self::new(0x07 | 0xb0 | 0x08, dst, src, 0, 0)
    }

    /// `dst += imm` (64-bit: `BPF_ALU64 | BPF_ADD | BPF_K`).
    pub const fn add64_imm(dst: u8, imm: i32) -> Self {
        Self::new(0x07, dst, 0, 0, imm)
    }

    /// `dst %= src`, unsigned 64-bit (`BPF_ALU64 | BPF_MOD | BPF_X`; the kernel defines
    /// `x % 0` as `x`).
    pub const fn mod64_reg(dst: u8, src: u8) -> Self {
        Self::new(0x07 | 0x90 | 0x08, dst, src, 0, 0)
    }

    /// `*(u32 *)(dst + off) = imm` (`BPF_ST | BPF_MEM | BPF_W`).
    pub const fn store32_imm(dst: u8, off: i16, imm: i32) -> Self {
        Self::new(0x02 | 0x60, dst, 0, off, imm)
    }

    /// `*(u32 *)(dst + off) = src` (`BPF_STX | BPF_MEM | BPF_W`).
    pub const fn store32_reg(dst: u8, off: i16, src: u8) -> Self {
        Self::new(0x03 | 0x60, dst, src, off, 0)
    }

    /// `dst = *(u32 *)(src + off)`, zero-extended (`BPF_LDX | BPF_MEM | BPF_W`).
    pub const fn load32(dst: u8, src: u8, off: i16) -> Self {
        Self::new(0x01 | 0x60, dst, src, off, 0)
    }

    /// `src = atomic_fetch_add((u64 *)(dst + off), src)`: adds `src` to the 64-bit word at
    /// `dst + off` atomically and leaves its previous value in `src` (`BPF_STX | BPF_ATOMIC |
    /// BPF_DW` with `imm = BPF_ADD | BPF_FETCH`; Linux 5.12+).
    pub const fn atomic_fetch_add64(dst: u8, off: i16, src: u8) -> Self {
        Self::new(0x03 | 0xc0 | 0x18, dst, src, off, 0x01)
    }

    /// `if dst == imm goto pc + 1 + off` (`BPF_JMP | BPF_JEQ | BPF_K`).
    pub const fn jeq_imm(dst: u8, imm: i32, off: i16) -> Self {
        Self::new(0x05 | 0x10, dst, 0, off, imm)
    }

    /// `if dst > imm goto pc + 1 + off`, unsigned (`BPF_JMP | BPF_JGT | BPF_K`).
    pub const fn jgt_imm(dst: u8, imm: i32, off: i16) -> Self {
        Self::new(0x05 | 0x20, dst, 0, off, imm)
    }

    /// `if dst >= src goto pc + 1 + off`, unsigned (`BPF_JMP | BPF_JGE | BPF_X`).
    pub const fn jge_reg(dst: u8, src: u8, off: i16) -> Self {
        Self::new(0x05 | 0x30 | 0x08, dst, src, off, 0)
    }

    /// `goto pc + 1 + off` (`BPF_JMP | BPF_JA`).
    pub const fn ja(off: i16) -> Self {
        Self::new(0x05, 0, 0, off, 0)
    }

    /// `dst = imm` as a 32-bit move, zero-extended (`BPF_ALU | BPF_MOV | BPF_K`): `-1` gives
    /// `u32::MAX`.
    pub const fn mov32_imm(dst: u8, imm: i32) -> Self {
        Self::new(0x04 | 0xb0, dst, 0, 0, imm)
    }

    /// `dst += src` (64-bit: `BPF_ALU64 | BPF_ADD | BPF_X`).
    pub const fn add64_reg(dst: u8, src: u8) -> Self {
        Self::new(0x07 | 0x08, dst, src, 0, 0)
    }

    /// `dst &= imm` (64-bit: `BPF_ALU64 | BPF_AND | BPF_K`).
    pub const fn and64_imm(dst: u8, imm: i32) -> Self {
        Self::new(0x07 | 0x50, dst, 0, 0, imm)
    }

    /// `dst <<= imm` (64-bit: `BPF_ALU64 | BPF_LSH | BPF_K`).
    pub const fn lsh64_imm(dst: u8, imm: i32) -> Self {
        Self::new(0x07 | 0x60, dst, 0, 0, imm)
    }

    /// `*(u32 *)(dst + off) += src` atomically (`BPF_STX | BPF_ATOMIC | BPF_W` with
    /// `imm = BPF_ADD`).
    pub const fn atomic_add32(dst: u8, off: i16, src: u8) -> Self {
        Self::new(0x03 | 0xc0, dst, src, off, 0x00)
    }

    /// `call helper` (`BPF_JMP | BPF_CALL`): arguments in r1-r5, result in r0; r1-r5 are
    /// clobbered, r6-r9 kept.
    pub const fn call(helper: i32) -> Self {
        Self::new(0x05 | 0x80, 0, 0, 0, helper)
    }

    /// `dst = map` (`BPF_LD | BPF_DW | BPF_IMM` with `src = BPF_PSEUDO_MAP_FD`): the map's fd
    /// in the immediate, which the kernel replaces by the map's address at load time. Two
    /// instructions (a 64-bit immediate); the second carries the upper half, 0.
    pub const fn load_map_fd(dst: u8, map_fd: i32) -> [Self; 2] {
        [
            Self::new(0x18, dst, BPF_PSEUDO_MAP_FD, 0, map_fd),
            Self::new(0, 0, 0, 0, 0),
        ]
    }
}

/// `BPF_PSEUDO_MAP_FD`: the immediate of a 64-bit load is a map's fd.
const BPF_PSEUDO_MAP_FD: u8 = 1;

/// A BPF map this process created (`bpf(BPF_MAP_CREATE)`): its fd (CLOEXEC), and the key and
/// value sizes it was created with, which every access is checked against (the kernel copies
/// exactly that many bytes from, or to, the buffers it is given).
#[derive(Debug)]
pub struct BpfMap {
    fd: OwnedFd,
    key_size: usize,
    value_size: usize,
}

/// The `BPF_MAP_CREATE` part of `union bpf_attr`, up to `map_name`.
#[repr(C)]
struct BpfMapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; BPF_OBJ_NAME_LEN],
}

/// The `BPF_MAP_*_ELEM` part of `union bpf_attr`.
#[repr(C)]
struct BpfMapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `BPF_ANY`: create an element or update an existing one.
pub const BPF_ANY: u64 = 0;

/// `BPF_F_MMAPABLE`: an `ARRAY` map whose values this process can map into its memory
/// ([`BpfMap::map_words`]; Linux 5.5+).
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// `name` as a `BPF_OBJ_NAME_LEN` array: up to 15 of its bytes and a NUL.
fn bpf_obj_name(name: &str) -> [u8; BPF_OBJ_NAME_LEN] {
    let mut out = [0u8; BPF_OBJ_NAME_LEN];
    for (to, from) in out.iter_mut().zip(name.bytes().take(BPF_OBJ_NAME_LEN - 1)) {
        *to = from;
    }
    out
}

/// One `bpf(cmd, attr)` call whose success value is 0 or a new fd.
///
/// # Safety
///
/// `attr` must be a fully initialised attribute of `cmd`, and every pointer in it must point to
/// memory valid for the kernel's reads (and writes, for lookups) of the sizes the command
/// implies, for the duration of the call.
unsafe fn bpf_call<T>(cmd: libc::c_int, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: as the caller promises; the size passed is the attribute's own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

impl BpfMap {
    /// Creates a map (`bpf(BPF_MAP_CREATE)`) of `map_type` with `max_entries` entries of
    /// `key_size`-byte keys and `value_size`-byte values, named `name` (up to 15 bytes).
    pub fn create(
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        name: &str,
    ) -> io::Result<BpfMap> {
        Self::create_with_flags(map_type, key_size, value_size, max_entries, 0, name)
    }

    /// [`create`](Self::create) with `map_flags` (such as [`BPF_F_MMAPABLE`]).
    pub fn create_with_flags(
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        name: &str,
    ) -> io::Result<BpfMap> {
        let attr = BpfMapCreateAttr {
            map_type,
            key_size,
            value_size,
            max_entries,
            map_flags,
            inner_map_fd: 0,
            numa_node: 0,
            map_name: bpf_obj_name(name),
        };
        // SAFETY: `attr` is a fully initialised BPF_MAP_CREATE attribute with no pointers.
        let fd = unsafe { bpf_call(BPF_MAP_CREATE, &attr)? };
        // SAFETY: a non-negative return of BPF_MAP_CREATE is a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(BpfMap {
            fd,
            key_size: key_size as usize,
            value_size: value_size as usize,
        })
    }

    /// The map's fd (for `BpfInsn::load_map_fd`).
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Checks that `key` and `value` are exactly the map's sizes.
    fn check(&self, key: &[u8], value: Option<usize>) -> io::Result<()> {
        if key.len() != self.key_size || value.is_some_and(|len| len != self.value_size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "BPF map access of {} / {:?} bytes, the map has {} / {}",
                    key.len(),
                    value,
                    self.key_size,
                    self.value_size
                ),
            ));
        }
        Ok(())
    }

    /// Sets `key` to `value` (`bpf(BPF_MAP_UPDATE_ELEM)`, with `flags` such as [`BPF_ANY`]).
    /// For a `REUSEPORT_SOCKARRAY` the value is a socket's fd (a `u32` or `u64`), and the kernel
    /// stores the socket itself.
    pub fn update(&self, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
        self.check(key, Some(value.len()))?;
        let attr = BpfMapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value: value.as_ptr() as u64,
            flags,
        };
        // SAFETY: the key and value buffers are exactly the map's key and value sizes (checked
        // above) and outlive the call; the kernel only reads them.
        unsafe { bpf_call(BPF_MAP_UPDATE_ELEM, &attr)? };
        Ok(())
    }

    /// Removes `key` (`bpf(BPF_MAP_DELETE_ELEM)`).
    pub fn delete(&self, key: &[u8]) -> io::Result<()> {
        self.check(key, None)?;
        let attr = BpfMapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value: 0,
            flags: 0,
        };
        // SAFETY: the key buffer is exactly the map's key size (checked above) and outlives
        // the call; the kernel only reads it.
        unsafe { bpf_call(BPF_MAP_DELETE_ELEM, &attr)? };
        Ok(())
    }

    /// The value at `key` (`bpf(BPF_MAP_LOOKUP_ELEM)`), as many bytes as the map's values.
    /// Not every map type can be read from user space (a `REUSEPORT_SOCKARRAY` gives socket
    /// cookies, and only with a `u64` value size).
    #[cfg(test)]
    pub fn lookup(&self, key: &[u8]) -> io::Result<Vec<u8>> {
        self.check(key, None)?;
        let mut value = vec![0u8; self.value_size];
        let attr = BpfMapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the key buffer is exactly the map's key size, the value buffer exactly its
        // value size (the most the kernel writes), and both outlive the call.
        unsafe { bpf_call(BPF_MAP_LOOKUP_ELEM, &attr)? };
        Ok(value)
    }
}

impl BpfMap {
    /// Maps the values of an `ARRAY` map created with [`BPF_F_MMAPABLE`] into this process
    /// (`mmap`, shared): the first `words` 32-bit words of its values, which the program and
    /// this process then read and write in place, with no syscall per access.
    pub fn map_words(&self, words: usize) -> io::Result<MappedWords> {
        let len = words
            .checked_mul(4)
            .filter(|&len| len > 0 && len <= self.value_size)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "cannot map {words} words of a {}-byte value",
                        self.value_size
                    ),
                )
            })?;
        // SAFETY: a fresh shared mapping chosen by the kernel (no fixed address, so nothing
        // of this process is replaced) of the map's fd at offset 0; the kernel checks that the
        // map is mmapable and at least `len` long. The result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(MappedWords {
            ptr: ptr.cast(),
            words,
        })
    }
}

/// 32-bit words of a BPF map's values mapped into this process ([`BpfMap::map_words`]),
/// accessed atomically: a BPF program updates the same memory with atomic instructions.
#[derive(Debug)]
pub struct MappedWords {
    ptr: *mut std::sync::atomic::AtomicU32,
    words: usize,
}

// SAFETY: the mapping is plain shared memory, reached only through atomics, and lives until
// `drop`, which needs `&mut self`: any thread may use or drop it.
unsafe impl Send for MappedWords {}
// SAFETY: as above; every access is an atomic operation.
unsafe impl Sync for MappedWords {}

impl MappedWords {
    /// The word at `index`; `None` past the end.
    fn word(&self, index: usize) -> Option<&std::sync::atomic::AtomicU32> {
        // SAFETY: `index < words`, so the pointer stays inside the mapping, which is
        // 4-byte aligned (page aligned) and lives as long as `self`.
        (index < self.words).then(|| unsafe { &*self.ptr.add(index) })
    }

    /// Sets the word at `index` (ignored past the end).
    pub fn store(&self, index: usize, value: u32) {
        if let Some(word) = self.word(index) {
            word.store(value, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Subtracts `value` from the word at `index` (ignored past the end), atomically with the
    /// program's own additions.
    pub fn subtract(&self, index: usize, value: u32) {
        if let Some(word) = self.word(index) {
            word.fetch_sub(value, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The word at `index` (0 past the end).
    pub fn load(&self, index: usize) -> u32 {
        self.word(index)
            .map_or(0, |word| word.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl Drop for MappedWords {
    fn drop(&mut self) {
        // SAFETY: the mapping `map_words` made, of exactly this length, unmapped once; no
        // reference into it outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.words * 4) };
    }
}

/// The `BPF_PROG_LOAD` part of the kernel's `union bpf_attr`, up to `expected_attach_type`. The
/// kernel takes a shorter attribute than its own and reads the fields it lacks as zero.
#[repr(C)]
struct BpfProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; BPF_OBJ_NAME_LEN],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Loads an eBPF program (`bpf(BPF_PROG_LOAD)`) of `prog_type` with `expected_attach_type`, named
/// `name` (up to 15 of its bytes, as `bpftool prog` shows it) under `license`. The program fd is
/// always CLOEXEC (the kernel opens it so). When the kernel refuses the program for any reason
/// but privilege (EPERM), the load is tried once more with a verifier log, and the error
/// carries its last lines.
pub fn bpf_prog_load(
    prog_type: u32,
    expected_attach_type: u32,
    insns: &[BpfInsn],
    license: &std::ffi::CStr,
    name: &str,
) -> io::Result<OwnedFd> {
    let insn_cnt = u32::try_from(insns.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many BPF instructions"))?;
    let prog_name = bpf_obj_name(name);
    let mut attr = BpfProgLoadAttr {
        prog_type,
        insn_cnt,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name,
        prog_ifindex: 0,
        expected_attach_type,
    };
    let error = match prog_load(&attr) {
        Ok(fd) => return Ok(fd),
        Err(e) => e,
    };
    if error.raw_os_error() == Some(libc::EPERM) {
        return Err(error);
    }
    let mut log = vec![0u8; BPF_LOG_SIZE];
    attr.log_level = 1;
    attr.log_size = log.len() as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    let again = prog_load(&attr);
    let text = String::from_utf8_lossy(&log[..log.iter().position(|&b| b == 0).unwrap_or(0)])
        .trim()
        .to_string();
    match again {
        Ok(fd) => Ok(fd),
        Err(e) if text.is_empty() => Err(e),
        Err(e) => {
            let tail: Vec<&str> = text.lines().rev().take(4).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(io::Error::new(
                e.kind(),
                format!("{e}; verifier: {}", tail.join(" / ")),
            ))
        }
    }
}

/// One `bpf(BPF_PROG_LOAD)` call.
fn prog_load(attr: &BpfProgLoadAttr) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid, fully initialised BPF_PROG_LOAD attribute; the instructions,
    // license and log buffer it points to outlive the call (the caller's borrows), and the
    // kernel writes only into the log buffer, within `log_size`.
    let fd = unsafe { bpf_call(BPF_PROG_LOAD, attr)? };
    // SAFETY: a non-negative return of BPF_PROG_LOAD is a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Attaches the eBPF program `prog` to the reuseport group of `socket`
/// (`SO_ATTACH_REUSEPORT_EBPF`): on a listening socket, it replaces its group's program; on
/// one not yet listening, it is kept for the group that socket forms (and such a socket can
/// no longer join an existing group: `listen` fails with EADDRINUSE). The group keeps a
/// reference to the program, so `prog` may be closed afterwards.
pub fn attach_reuseport_prog(socket: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let value: libc::c_int = prog.as_raw_fd();
    // SAFETY: `socket` is an open fd borrowed for the call, and the option value is a valid
    // `c_int` whose exact size is passed; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_EBPF,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The keeper process (`primary::keeper`): a plain fork of the primary, with no exec, that kills
// the worker process groups it was told about once the primary's end of its socket closes.

/// The keeper's socket, once it has moved it.
const KEEPER_FD: RawFd = 3;

/// Slots in the keeper's table of watched process groups (the keeper cannot allocate); a watch
/// beyond it is dropped.
pub const KEEPER_MAX_GROUPS: usize = 4096;

/// The keeper's command name (`/proc/PID/comm`, `ps`), set once its setup is complete.
pub const KEEPER_NAME: &std::ffi::CStr = c"forkline-keeper";

/// Signals the keeper ignores: job control, terminal hang-up, the stop and control signals an
/// operator or a supervisor sends to the primary (or to its process group), and SIGPIPE.
pub const KEEPER_IGNORED_SIGNALS: [libc::c_int; 9] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGPIPE,
];

/// Forks the keeper and returns its pid. `sock` is the keeper's end of a SOCK_SEQPACKET pair;
/// the child keeps it (as fd 3) and closes every other descriptor it inherited, the primary's
/// end included, so the keeper sees end-of-file as soon as the primary's end is closed or shut
/// down. The caller closes its copy of `sock` after this returns.
///
/// The child never returns from here: it runs [`keeper_main`], which makes only
/// async-signal-safe system calls (the primary is multi-threaded), and ends in `_exit`.
pub fn fork_keeper(sock: BorrowedFd<'_>) -> io::Result<u32> {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};

    let sock = sock.as_raw_fd();
    let primary_pgid = nix::unistd::getpgrp().as_raw();
    // Block every signal across the fork, so that no handler of the primary's (tokio's, which
    // writes to the primary's wake-up pipe) can run in the child before the child has reset the
    // dispositions. Signals sent to the process meanwhile go to the primary's other threads or
    // wait, pending, until the mask is restored.
    let mut saved = SigSet::empty();
    pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut saved),
    )?;
    // SAFETY: the child runs only `keeper_main`, which makes async-signal-safe system calls on
    // integers and stack arrays (no allocation, no locks, no std I/O, no panics) and never
    // returns (it ends in `_exit`), so the state the fork copied from the primary's other
    // threads (locks held, allocator state) is never touched in the child.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: this is the child of `fork`, as `keeper_main` requires.
        unsafe { keeper_main(sock, primary_pgid) }
    }
    let fork_error = io::Error::last_os_error();
    // Cannot fail: the arguments are valid (and the mask was set the same way just above).
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&saved), None);
    if pid < 0 {
        return Err(fork_error);
    }
    Ok(pid as u32)
}

/// The keeper's whole life, in the child of [`fork_keeper`]. `sock` is its socket, and
/// `primary_pgid` the primary's process group at fork time (never killed).
///
/// Setup: its own process group; the signals of [`KEEPER_IGNORED_SIGNALS`] ignored and every
/// other catchable one at its default action; stdin, stdout and stderr on /dev/null; every other
/// descriptor closed except `sock`, moved to fd 3; cwd `/`; the name [`KEEPER_NAME`]; an empty
/// signal mask. Then it reads 4-byte packets (a native-endian `i32`: `+pgid` watches a group,
/// `-pgid` forgets it) into a fixed table; on end-of-file or an error other than EINTR it
/// SIGKILLs every watched group and exits with status 0.
///
/// # Safety
///
/// Call only in the child of `fork`, and nowhere else: it takes over the process and exits it.
unsafe fn keeper_main(sock: RawFd, primary_pgid: libc::pid_t) -> ! {
    // SAFETY: everything in this block is a raw system call (or a libc helper on plain memory,
    // such as sigemptyset) on integers and pointers to live stack values or static C strings:
    // async-signal-safe, as a forked child of a multi-threaded process requires. Nothing
    // allocates, locks or formats, and indexing goes through `get`/iterators, so nothing can
    // panic; the block ends in `_exit`.
    unsafe {
        // Its own process group: a signal to the primary's group (Ctrl-C on a terminal, a
        // supervisor's killpg) does not reach it.
        libc::setpgid(0, 0);

        // Signal dispositions: handlers are inherited across fork, and the primary's would
        // write to descriptors that are about to be closed (or reused).
        let mut action: libc::sigaction = std::mem::zeroed();
        libc::sigemptyset(&mut action.sa_mask);
        for signal in 1..=64 {
            if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                continue;
            }
            action.sa_sigaction = if KEEPER_IGNORED_SIGNALS.contains(&signal) {
                libc::SIG_IGN
            } else {
                libc::SIG_DFL
            };
            // Fails harmlessly (EINVAL) for the signals the C library reserves.
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }

        // Descriptors: the socket to fd 3 (dup2 replaces whatever was there, possibly the
        // primary's end), then everything above 3 closed, the primary's end included.
        if sock != KEEPER_FD && libc::dup2(sock, KEEPER_FD) < 0 {
            libc::_exit(1);
        }
        let first = (KEEPER_FD + 1) as libc::c_uint;
        if libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        ) != 0
        {
            // No close_range (Linux < 5.9): close up to the descriptor limit, bounded.
            let mut limit: libc::rlimit = std::mem::zeroed();
            let mut last: libc::c_int = 1 << 20;
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
                && limit.rlim_cur < last as libc::rlim_t
            {
                last = limit.rlim_cur as libc::c_int;
            }
            let mut fd = first as libc::c_int;
            while fd < last {
                libc::close(fd);
                fd += 1;
            }
        }
        // stdin, stdout and stderr to /dev/null (this also replaces a copy of the sockets that
        // sat on 0-2); without /dev/null, closed.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        for target in 0..3 {
            if null < 0 {
                libc::close(target);
            } else if null != target {
                libc::dup2(null, target);
            }
        }
        if null > 2 {
            libc::close(null);
        }
        // Do not pin the primary's working directory (a mount point, say).
        libc::chdir(c"/".as_ptr());
        libc::prctl(libc::PR_SET_NAME, KEEPER_NAME.as_ptr(), 0, 0, 0);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());

        let me = libc::getpid();
        let mut groups: [libc::pid_t; KEEPER_MAX_GROUPS] = [0; KEEPER_MAX_GROUPS];
        let mut len = 0usize;
        loop {
            let mut message = [0u8; 4];
            let got = libc::recv(KEEPER_FD, message.as_mut_ptr().cast(), message.len(), 0);
            if got == 4 {
                let value = i32::from_ne_bytes(message);
                if value > 1 {
                    // Watch. Never process group 1 (kill(-1) is every process), its own group
                    // or the primary's.
                    let known = groups.iter().take(len).any(|&g| g == value);
                    if !known && value != me && value != primary_pgid {
                        if let Some(slot) = groups.get_mut(len) {
                            *slot = value;
                            len += 1;
                        }
                    }
                } else if value < 0 && value != i32::MIN {
                    // Forget: the last entry takes its place.
                    let group = -value;
                    if let Some(at) = groups.iter().take(len).position(|&g| g == group) {
                        len -= 1;
                        let last = groups.get(len).copied().unwrap_or(0);
                        if let Some(slot) = groups.get_mut(at) {
                            *slot = last;
                        }
                    }
                }
            } else if got > 0 || (got < 0 && *libc::__errno_location() == libc::EINTR) {
                // A packet of another size (never sent by the primary), or a signal: go on.
            } else {
                // 0: end-of-file, the primary's end is closed (the primary exited or was
                // killed) or shut down. Negative: the socket is unusable.
                break;
            }
        }
        for &group in groups.iter().take(len) {
            libc::kill(-group, libc::SIGKILL);
        }
        libc::_exit(0)
    }
}

/// A private epoll instance holding one socket with `EPOLLEXCLUSIVE`: of the threads blocked
/// in `wait` on such instances of one socket, an event wakes one, not all. It also holds a
/// `wake` descriptor (not exclusive): once that is readable, every `wait` returns at once.
pub struct ExclusiveEpoll(OwnedFd);

impl ExclusiveEpoll {
    pub fn new(socket: &OwnedFd, wake: BorrowedFd<'_>) -> io::Result<Self> {
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
    pub fn wait(&self, timeout_ms: i32) -> io::Result<bool> {
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
