//! Loading an eBPF program (`bpf(BPF_PROG_LOAD)`, with the verifier's reasons when it is
//! refused) and attaching one to a reuseport group (`SO_ATTACH_REUSEPORT_EBPF`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::{bpf_call, bpf_obj_name, BpfInsn, BPF_OBJ_NAME_LEN, BPF_PROG_LOAD};

/// `SO_ATTACH_REUSEPORT_EBPF` (`asm-generic/socket.h`; 52 on every architecture Linux gives it
/// a generic number).
const SO_ATTACH_REUSEPORT_EBPF: libc::c_int = 52;

/// Size of the verifier log asked for when a load is refused, to explain why.
const BPF_LOG_SIZE: usize = 64 * 1024;

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
pub(crate) fn bpf_prog_load(
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
pub(crate) fn attach_reuseport_prog(
    socket: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
) -> io::Result<()> {
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
