//! The `SK_LOOKUP` program of a kernel-steered proxy, instruction by instruction: for a new TCP
//! connection to the public address, take the next turn among the ready workers and assign the
//! connection to that worker's own listening socket; anything else, and any miss, passes on to
//! the kernel's usual lookup (the primary's listener, which relays).

use crate::primary::traffic::migration::SK_PASS;
use crate::primary::traffic::steer::program::{BPF_FUNC_MAP_LOOKUP_ELEM, COUNTER_OFFSET};
use crate::sys::BpfInsn;

/// `BPF_PROG_TYPE_SK_LOOKUP` (`linux/bpf.h`).
pub(crate) const BPF_PROG_TYPE_SK_LOOKUP: u32 = 30;
/// `BPF_SK_LOOKUP` (`enum bpf_attach_type`).
pub(crate) const BPF_SK_LOOKUP: u32 = 36;
/// `BPF_MAP_TYPE_SOCKMAP` (`linux/bpf.h`).
pub(crate) const BPF_MAP_TYPE_SOCKMAP: u32 = 15;
/// Helper `bpf_sk_release`.
const BPF_FUNC_SK_RELEASE: i32 = 86;
/// Helper `bpf_sk_assign`.
const BPF_FUNC_SK_ASSIGN: i32 = 124;

/// Offsets in `struct bpf_sk_lookup`, the program's context.
const FAMILY: i16 = 8;
const PROTOCOL: i16 = 12;
/// `local_ip4`, in network byte order.
const LOCAL_IP4: i16 = 40;
/// `local_port`, in host byte order.
const LOCAL_PORT: i16 = 60;

/// What the program matches: new connections to this IPv4 address (any, when unspecified) and
/// port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PublicAddress {
    /// The address, or `None` for `0.0.0.0`.
    pub(crate) ip: Option<std::net::Ipv4Addr>,
    /// The port.
    pub(crate) port: u16,
}

/// The program over the state map `state` (`n: u32`, padding, `counter: u64`, as steer mode's),
/// the turn map `keys` (`n` indexes into `socks`, in turn order) and the socket map `socks`
/// (the workers' listening sockets). Registers: r6 the context, r7 the socket found.
pub(crate) fn program(public: PublicAddress, state: i32, keys: i32, socks: i32) -> Vec<BpfInsn> {
    let mut insns = vec![
        // r6 = ctx
        BpfInsn::mov64_reg(6, 1),
        // Not the public port, not TCP, not IPv4: pass.
        BpfInsn::load32(2, 6, LOCAL_PORT),
        BpfInsn::jne_imm(2, i32::from(public.port), Jump::Pass),
        BpfInsn::load32(2, 6, PROTOCOL),
        BpfInsn::jne_imm(2, libc::IPPROTO_TCP, Jump::Pass),
        BpfInsn::load32(2, 6, FAMILY),
        BpfInsn::jne_imm(2, libc::AF_INET, Jump::Pass),
    ];
    if let Some(ip) = public.ip {
        insns.extend([
            BpfInsn::load32(2, 6, LOCAL_IP4),
            // As the kernel keeps it: the address's bytes in memory order.
            BpfInsn::mov32_imm(3, u32::from_ne_bytes(ip.octets()) as i32),
            BpfInsn::jne_reg(2, 3, Jump::Pass),
        ]);
    }
    insns.extend(lookup(state, -4, 0));
    insns.extend([
        // r1 = n; none ready: pass.
        BpfInsn::load32(1, 0, 0),
        BpfInsn::jeq_imm(1, 0, Jump::Pass),
        // r2 = counter++ % n — this connection's turn.
        BpfInsn::mov64_imm(2, 1),
        BpfInsn::atomic_fetch_add64(0, COUNTER_OFFSET, 2),
        BpfInsn::mod64_reg(2, 1),
        // The turn's socket index: keys[turn].
        BpfInsn::store32_reg(10, -8, 2),
    ]);
    insns.extend(lookup(keys, -8, -1));
    insns.extend([BpfInsn::load32(2, 0, 0), BpfInsn::store32_reg(10, -12, 2)]);
    // r0 = the socket at that index, referenced (or NULL: its worker's socket closed).
    insns.extend(lookup(socks, -12, -1));
    insns.extend([
        BpfInsn::mov64_reg(7, 0),
        // bpf_sk_assign(ctx, sk, 0): the connection goes to that socket (an error leaves it to
        // the usual lookup).
        BpfInsn::mov64_reg(1, 6),
        BpfInsn::mov64_reg(2, 7),
        BpfInsn::mov64_imm(3, 0),
        BpfInsn::call(BPF_FUNC_SK_ASSIGN),
        // bpf_sk_release(sk): the reference the lookup took.
        BpfInsn::mov64_reg(1, 7),
        BpfInsn::call(BPF_FUNC_SK_RELEASE),
    ]);
    let pass = insns.len();
    insns.extend([BpfInsn::mov64_imm(0, SK_PASS), BpfInsn::exit()]);
    resolve(insns, pass)
}

/// A jump to the program's end, resolved once its length is known (`resolve`).
struct Jump;

impl Jump {
    /// The placeholder offset of a jump to `PASS`.
    #[allow(non_upper_case_globals)]
    const Pass: i16 = i16::MIN;
}

/// `r0 = bpf_map_lookup_elem(map, r10 + key_at)`, then to `PASS` when NULL; `key` is stored at
/// `key_at` first, unless it is -1 (the caller stored it).
fn lookup(map: i32, key_at: i16, key: i32) -> Vec<BpfInsn> {
    let [map_lo, map_hi] = BpfInsn::load_map_fd(1, map);
    let mut insns = Vec::new();
    if key >= 0 {
        insns.push(BpfInsn::store32_imm(10, key_at, key));
    }
    insns.extend([
        map_lo,
        map_hi,
        BpfInsn::mov64_reg(2, 10),
        BpfInsn::add64_imm(2, i32::from(key_at)),
        BpfInsn::call(BPF_FUNC_MAP_LOOKUP_ELEM),
        BpfInsn::jeq_imm(0, 0, Jump::Pass),
    ]);
    insns
}

/// Replaces every jump to `Jump::Pass` by its distance to instruction `pass`.
fn resolve(mut insns: Vec<BpfInsn>, pass: usize) -> Vec<BpfInsn> {
    for (at, insn) in insns.iter_mut().enumerate() {
        if insn.off() == Jump::Pass {
            insn.set_off((pass - at - 1) as i16);
        }
    }
    insns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_lands_on_pass() {
        let public = PublicAddress {
            ip: Some(std::net::Ipv4Addr::LOCALHOST),
            port: 8000,
        };
        let insns = program(public, 3, 4, 5);
        let pass = insns.len() - 2;
        assert_eq!(insns[pass], BpfInsn::mov64_imm(0, SK_PASS));
        let jumps = insns
            .iter()
            .enumerate()
            .filter(|(_, i)| i.is_jump())
            .map(|(at, i)| at as i64 + 1 + i64::from(i.off()))
            .collect::<Vec<_>>();
        assert!(jumps.len() >= 7, "{jumps:?}");
        assert!(jumps.iter().all(|&to| to == pass as i64), "{jumps:?}");
    }
}
