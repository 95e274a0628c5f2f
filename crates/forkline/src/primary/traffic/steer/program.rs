//! The steering programs, instruction by instruction: strict round-robin and least-conn over a
//! group's socket array, and the constants they share with the maps.

use crate::primary::traffic::migration::SK_PASS;
use crate::sys::BpfInsn;

/// `BPF_MAP_TYPE_ARRAY` (`linux/bpf.h`).
pub(crate) const BPF_MAP_TYPE_ARRAY: u32 = 2;
/// `BPF_MAP_TYPE_REUSEPORT_SOCKARRAY` (`linux/bpf.h`).
pub(crate) const BPF_MAP_TYPE_REUSEPORT_SOCKARRAY: u32 = 20;
/// Helper `bpf_map_lookup_elem` (`enum bpf_func_id`).
pub(crate) const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
/// Helper `bpf_sk_select_reuseport` (`enum bpf_func_id`).
pub(crate) const BPF_FUNC_SK_SELECT_REUSEPORT: i32 = 82;

/// Most sockets one group steers between (the size of its socket array).
pub(crate) const MAX_SOCKETS: u32 = 4096;

/// Most sockets a least-conn group steers between: the program scans every count, and the
/// kernel's verifier follows each step of that scan at load time (refusing a program whose
/// paths hold more than 8,192 branches, two per step; 1,024 steps took 0.4 s to verify, 256
/// take about 0.1 s). A power of two (see `MASK`).
pub(crate) const LEAST_CONN_MAX_SOCKETS: u32 = 256;

/// Bytes of the state map's one value: `n: u32`, 4 bytes of padding, `counter: u64`.
pub(crate) const STATE_SIZE: u32 = 16;
/// Offset of `counter` in the state value.
pub(crate) const COUNTER_OFFSET: i16 = 8;

/// The steering program, instruction by instruction, over the state map `state` and the socket
/// array `socks` (their fds, which the kernel replaces by the maps at load time). At entry r1
/// is the context (`struct sk_reuseport_md *`); r10 is the read-only frame pointer, below which
/// the program keeps two 4-byte keys on its stack.
pub(crate) fn program(state: i32, socks: i32) -> Vec<BpfInsn> {
    // Index of the last instruction block, `r0 = SK_PASS; exit`, which every path ends in.
    const PASS: i16 = 21;
    let mut insns = state_lookup(state, PASS).to_vec();
    insns.extend([
        // 8: r1 = *(u32 *)(r0 + 0) — n, the sockets in the array.
        BpfInsn::load32(1, 0, 0),
        // 9: if r1 == 0 goto PASS — no ready worker: let the kernel hash.
        BpfInsn::jeq_imm(1, 0, PASS - 9 - 1),
        // 10: r2 = 1
        BpfInsn::mov64_imm(2, 1),
        // 11: r2 = atomic_fetch_add((u64 *)(r0 + 8), r2) — take a turn: r2 = counter++.
        BpfInsn::atomic_fetch_add64(0, COUNTER_OFFSET, 2),
        // 12: r2 %= r1 — idx = turn % n.
        BpfInsn::mod64_reg(2, 1),
    ]);
    // 13-22: select the socket at idx (r2), then PASS (21).
    insns.extend(select_and_pass(2, socks));
    debug_assert_eq!(insns[PASS as usize], BpfInsn::mov64_imm(0, SK_PASS));
    insns
}

/// The last 10 instructions of both programs, with the socket array's key in register `key`:
/// select the socket at that index, then `PASS`, where every path ends.
fn select_and_pass(key: u8, socks: i32) -> [BpfInsn; 10] {
    let [socks_lo, socks_hi] = BpfInsn::load_map_fd(2, socks);
    [
        // +0: *(u32 *)(r10 - 8) = key — the socket array's key on the stack.
        BpfInsn::store32_reg(10, -8, key),
        // +1: r1 = r6 — the context.
        BpfInsn::mov64_reg(1, 6),
        // +2-3: r2 = &socket array.
        socks_lo,
        socks_hi,
        // +4: r3 = r10
        BpfInsn::mov64_reg(3, 10),
        // +5: r3 += -8 — r3 points to the key.
        BpfInsn::add64_imm(3, -8),
        // +6: r4 = 0 — flags.
        BpfInsn::mov64_imm(4, 0),
        // +7: bpf_sk_select_reuseport(ctx, socks, &key, 0) — selects the socket at the key; on
        // failure (the slot emptied as its socket closed) nothing is selected.
        BpfInsn::call(BPF_FUNC_SK_SELECT_REUSEPORT),
        // +8 (PASS): r0 = SK_PASS — the selected socket, or the kernel's hash without one.
        BpfInsn::mov64_imm(0, SK_PASS),
        // +9: exit
        BpfInsn::exit(),
    ]
}

/// The first 8 instructions of both programs: keep the context in r6 (a helper call clobbers
/// r1-r5), look the state map's one entry up (key 0, left on the stack at r10 - 4, where the
/// least-conn program looks its loads up with it too) into r0, and go to `pass` without one.
pub(crate) fn state_lookup(state: i32, pass: i16) -> [BpfInsn; 8] {
    let [state_lo, state_hi] = BpfInsn::load_map_fd(1, state);
    [
        // 0: r6 = r1
        BpfInsn::mov64_reg(6, 1),
        // 1: *(u32 *)(r10 - 4) = 0 — the key, 0, on the stack.
        BpfInsn::store32_imm(10, -4, 0),
        // 2-3: r1 = &state map.
        state_lo,
        state_hi,
        // 4-5: r2 = r10 - 4 — r2 points to the key.
        BpfInsn::mov64_reg(2, 10),
        BpfInsn::add64_imm(2, -4),
        // 6: r0 = bpf_map_lookup_elem(state, &key) — the value, or NULL.
        BpfInsn::call(BPF_FUNC_MAP_LOOKUP_ELEM),
        // 7: if r0 == NULL goto pass (never, for an array's key 0; the verifier wants it).
        BpfInsn::jeq_imm(0, 0, pass - 7 - 1),
    ]
}

/// The least-conn steering program over the state map `state` (as for [`program`]), the load
/// map `loads` (one value: `[u32; LEAST_CONN_MAX_SOCKETS]`, the open connections at each
/// index) and the socket array `socks`. Registers: r6 the context, r7 `n`, r8 where the scan
/// starts, r4 how many were looked at, r2 the index looked at, r9 the best index so far, r5
/// its load, r0 the loads.
pub(crate) fn least_conn_program(state: i32, loads: i32, socks: i32) -> Vec<BpfInsn> {
    const PASS: i16 = 51;
    const LOOP: i16 = 23;
    const NEXT: i16 = 35;
    const DONE: i16 = 37;
    // Indexes are masked with this before they address a count: a no-op (they are below
    // n <= LEAST_CONN_MAX_SOCKETS), which proves to the verifier that every access stays in
    // the value.
    const MASK: i32 = LEAST_CONN_MAX_SOCKETS as i32 - 1;
    let [loads_lo, loads_hi] = BpfInsn::load_map_fd(1, loads);
    let mut insns = state_lookup(state, PASS).to_vec();
    insns.extend([
        // 8: r7 = n
        BpfInsn::load32(7, 0, 0),
        // 9: if n == 0 goto PASS — no ready worker: let the kernel hash.
        BpfInsn::jeq_imm(7, 0, PASS - 9 - 1),
        // 10: if n > LEAST_CONN_MAX_SOCKETS goto PASS (never; bounds the scan for the
        // verifier).
        BpfInsn::jgt_imm(7, LEAST_CONN_MAX_SOCKETS as i32, PASS - 10 - 1),
        // 11: r8 = 1
        BpfInsn::mov64_imm(8, 1),
        // 12: r8 = atomic_fetch_add(counter, 1) — this connection's turn.
        BpfInsn::atomic_fetch_add64(0, COUNTER_OFFSET, 8),
        // 13: r8 %= n — where the scan starts.
        BpfInsn::mod64_reg(8, 7),
        // 14-15: r1 = &loads map.
        loads_lo,
        loads_hi,
        // 16-17: r2 = r10 - 4 (key 0 still there)
        BpfInsn::mov64_reg(2, 10),
        BpfInsn::add64_imm(2, -4),
        // 18: r0 = bpf_map_lookup_elem(loads, &key) — the counts.
        BpfInsn::call(BPF_FUNC_MAP_LOOKUP_ELEM),
        // 19: if r0 == NULL goto PASS
        BpfInsn::jeq_imm(0, 0, PASS - 19 - 1),
        // 20: r9 = r8 — the best so far: where the scan starts.
        BpfInsn::mov64_reg(9, 8),
        // 21: r5 = u32::MAX — its load, above any count.
        BpfInsn::mov32_imm(5, -1),
        // 22: r4 = 0 — looked at so far.
        BpfInsn::mov64_imm(4, 0),
        // 23 (LOOP): if r4 >= n goto DONE
        BpfInsn::jge_reg(4, 7, DONE - 23 - 1),
        // 24-27: r2 = (r8 + r4) % n & MASK — the index looked at (no branch to wrap around).
        BpfInsn::mov64_reg(2, 8),
        BpfInsn::add64_reg(2, 4),
        BpfInsn::mod64_reg(2, 7),
        BpfInsn::and64_imm(2, MASK),
        // 28-30: r3 = &loads[r2]
        BpfInsn::mov64_reg(3, 2),
        BpfInsn::lsh64_imm(3, 2),
        BpfInsn::add64_reg(3, 0),
        // 31: r1 = loads[r2]
        BpfInsn::load32(1, 3, 0),
        // 32: if r1 >= r5 goto NEXT — not fewer than the best: keep the best (the earlier).
        BpfInsn::jge_reg(1, 5, NEXT - 32 - 1),
        // 33-34: the best is now r2, with load r1.
        BpfInsn::mov64_reg(5, 1),
        BpfInsn::mov64_reg(9, 2),
        // 35 (NEXT): r4 += 1
        BpfInsn::add64_imm(4, 1),
        // 36: goto LOOP
        BpfInsn::ja(LOOP - 36 - 1),
        // 37 (DONE): r9 &= MASK
        BpfInsn::and64_imm(9, MASK),
        // 38-40: r3 = &loads[r9]
        BpfInsn::mov64_reg(3, 9),
        BpfInsn::lsh64_imm(3, 2),
        BpfInsn::add64_reg(3, 0),
        // 41-42: loads[r9] += 1 (atomic) — counted before its worker accepts it.
        BpfInsn::mov64_imm(1, 1),
        BpfInsn::atomic_add32(3, 0, 1),
    ]);
    // 43-52: select the socket at the chosen index (r9), then PASS (51).
    insns.extend(select_and_pass(9, socks));
    debug_assert_eq!(insns[PASS as usize], BpfInsn::mov64_imm(0, SK_PASS));
    debug_assert_eq!(insns[LOOP as usize], BpfInsn::jge_reg(4, 7, DONE - 23 - 1));
    debug_assert_eq!(insns[NEXT as usize], BpfInsn::add64_imm(4, 1));
    debug_assert_eq!(insns[DONE as usize], BpfInsn::and64_imm(9, MASK));
    insns
}
