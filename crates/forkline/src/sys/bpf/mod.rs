//! eBPF: loading a program with bpf(BPF_PROG_LOAD) and attaching one to a reuseport group
//! (`primary::migration`, `primary::steer`) or to the network namespace (`primary::lookup`), and the maps a steering program reads
//! (`BPF_MAP_CREATE`, `BPF_MAP_UPDATE_ELEM`, ...). No BPF library: the programs are a few
//! instructions assembled in Rust ([`BpfInsn`]). This file holds the `bpf(2)` call itself; the
//! instructions, the maps and the program loading each have a file of their own.

mod insn;
mod link;
mod map;
mod prog;

use std::io;

pub(crate) use insn::BpfInsn;
pub(crate) use link::attach_to_netns;
pub(crate) use map::{BpfMap, MappedWords, BPF_ANY, BPF_F_MMAPABLE};
pub(crate) use prog::{attach_reuseport_prog, bpf_prog_load};

/// `bpf(2)` commands (`enum bpf_cmd` in `linux/bpf.h`).
const BPF_MAP_CREATE: libc::c_int = 0;
#[cfg(test)]
const BPF_MAP_LOOKUP_ELEM: libc::c_int = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
const BPF_MAP_DELETE_ELEM: libc::c_int = 3;
const BPF_PROG_LOAD: libc::c_int = 5;

/// `BPF_OBJ_NAME_LEN`: a program name, its NUL included.
const BPF_OBJ_NAME_LEN: usize = 16;

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
