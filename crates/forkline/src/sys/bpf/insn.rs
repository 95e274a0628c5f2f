//! eBPF instructions, assembled in Rust: one constructor per instruction forkline's programs use.

/// One eBPF instruction, laid out as the kernel's `struct bpf_insn`: an opcode, the destination
/// and source registers (4 bits each), a signed offset and a signed immediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct BpfInsn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

impl BpfInsn {
    /// An instruction from its fields (`dst` and `src` are registers 0 to 10).
    pub(crate) const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
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
    pub(crate) const fn off(&self) -> i16 {
        self.off
    }

    /// Sets the instruction's offset (a jump whose target was known only later).
    pub(crate) fn set_off(&mut self, off: i16) {
        self.off = off;
    }

    /// True for a conditional or unconditional jump (`BPF_JMP` class, not a call or an exit).
    #[cfg(test)]
    pub(crate) const fn is_jump(&self) -> bool {
        self.code & 0x07 == 0x05 && !matches!(self.code & 0xf0, 0x80 | 0x90)
    }

    /// `dst = imm` (64-bit move: `BPF_ALU64 | BPF_MOV | BPF_K`).
    pub(crate) const fn mov64_imm(dst: u8, imm: i32) -> Self {
        Self::new(0x07 | 0xb0, dst, 0, 0, imm)
    }

    /// `exit`: return `r0` (`BPF_JMP | BPF_EXIT`).
    pub(crate) const fn exit() -> Self {
        Self::new(0x05 | 0x90, 0, 0, 0, 0)
    }

    /// `dst = src` (64-bit move: `BPF_ALU64 | BPF_MOV | BPF_X`).
    pub(crate) const fn mov64_reg(dst: u8, src: u8) -> Self {
        Self::new(0x07 | 0xb0 | 0x08, dst, src, 0, 0)
    }

    /// `dst += imm` (64-bit: `BPF_ALU64 | BPF_ADD | BPF_K`).
    pub(crate) const fn add64_imm(dst: u8, imm: i32) -> Self {
        Self::new(0x07, dst, 0, 0, imm)
    }

    /// `dst %= src`, unsigned 64-bit (`BPF_ALU64 | BPF_MOD | BPF_X`; the kernel defines
    /// `x % 0` as `x`).
    pub(crate) const fn mod64_reg(dst: u8, src: u8) -> Self {
        Self::new(0x07 | 0x90 | 0x08, dst, src, 0, 0)
    }

    /// `*(u32 *)(dst + off) = imm` (`BPF_ST | BPF_MEM | BPF_W`).
    pub(crate) const fn store32_imm(dst: u8, off: i16, imm: i32) -> Self {
        Self::new(0x02 | 0x60, dst, 0, off, imm)
    }

    /// `*(u32 *)(dst + off) = src` (`BPF_STX | BPF_MEM | BPF_W`).
    pub(crate) const fn store32_reg(dst: u8, off: i16, src: u8) -> Self {
        Self::new(0x03 | 0x60, dst, src, off, 0)
    }

    /// `dst = *(u32 *)(src + off)`, zero-extended (`BPF_LDX | BPF_MEM | BPF_W`).
    pub(crate) const fn load32(dst: u8, src: u8, off: i16) -> Self {
        Self::new(0x01 | 0x60, dst, src, off, 0)
    }

    /// `src = atomic_fetch_add((u64 *)(dst + off), src)`: adds `src` to the 64-bit word at
    /// `dst + off` atomically and leaves its previous value in `src` (`BPF_STX | BPF_ATOMIC |
    /// BPF_DW` with `imm = BPF_ADD | BPF_FETCH`; Linux 5.12+).
    pub(crate) const fn atomic_fetch_add64(dst: u8, off: i16, src: u8) -> Self {
        Self::new(0x03 | 0xc0 | 0x18, dst, src, off, 0x01)
    }

    /// `if dst == imm goto pc + 1 + off` (`BPF_JMP | BPF_JEQ | BPF_K`).
    pub(crate) const fn jeq_imm(dst: u8, imm: i32, off: i16) -> Self {
        Self::new(0x05 | 0x10, dst, 0, off, imm)
    }

    /// `if dst != imm goto pc + 1 + off` (`BPF_JMP | BPF_JNE | BPF_K`).
    pub(crate) const fn jne_imm(dst: u8, imm: i32, off: i16) -> Self {
        Self::new(0x05 | 0x50, dst, 0, off, imm)
    }

    /// `if dst != src goto pc + 1 + off` (`BPF_JMP | BPF_JNE | BPF_X`).
    pub(crate) const fn jne_reg(dst: u8, src: u8, off: i16) -> Self {
        Self::new(0x05 | 0x50 | 0x08, dst, src, off, 0)
    }

    /// `if dst > imm goto pc + 1 + off`, unsigned (`BPF_JMP | BPF_JGT | BPF_K`).
    pub(crate) const fn jgt_imm(dst: u8, imm: i32, off: i16) -> Self {
        Self::new(0x05 | 0x20, dst, 0, off, imm)
    }

    /// `if dst >= src goto pc + 1 + off`, unsigned (`BPF_JMP | BPF_JGE | BPF_X`).
    pub(crate) const fn jge_reg(dst: u8, src: u8, off: i16) -> Self {
        Self::new(0x05 | 0x30 | 0x08, dst, src, off, 0)
    }

    /// `goto pc + 1 + off` (`BPF_JMP | BPF_JA`).
    pub(crate) const fn ja(off: i16) -> Self {
        Self::new(0x05, 0, 0, off, 0)
    }

    /// `dst = imm` as a 32-bit move, zero-extended (`BPF_ALU | BPF_MOV | BPF_K`): `-1` gives
    /// `u32::MAX`.
    pub(crate) const fn mov32_imm(dst: u8, imm: i32) -> Self {
        Self::new(0x04 | 0xb0, dst, 0, 0, imm)
    }

    /// `dst += src` (64-bit: `BPF_ALU64 | BPF_ADD | BPF_X`).
    pub(crate) const fn add64_reg(dst: u8, src: u8) -> Self {
        Self::new(0x07 | 0x08, dst, src, 0, 0)
    }

    /// `dst &= imm` (64-bit: `BPF_ALU64 | BPF_AND | BPF_K`).
    pub(crate) const fn and64_imm(dst: u8, imm: i32) -> Self {
        Self::new(0x07 | 0x50, dst, 0, 0, imm)
    }

    /// `dst <<= imm` (64-bit: `BPF_ALU64 | BPF_LSH | BPF_K`).
    pub(crate) const fn lsh64_imm(dst: u8, imm: i32) -> Self {
        Self::new(0x07 | 0x60, dst, 0, 0, imm)
    }

    /// `*(u32 *)(dst + off) += src` atomically (`BPF_STX | BPF_ATOMIC | BPF_W` with
    /// `imm = BPF_ADD`).
    pub(crate) const fn atomic_add32(dst: u8, off: i16, src: u8) -> Self {
        Self::new(0x03 | 0xc0, dst, src, off, 0x00)
    }

    /// `call helper` (`BPF_JMP | BPF_CALL`): arguments in r1-r5, result in r0; r1-r5 are
    /// clobbered, r6-r9 kept.
    pub(crate) const fn call(helper: i32) -> Self {
        Self::new(0x05 | 0x80, 0, 0, 0, helper)
    }

    /// `dst = map` (`BPF_LD | BPF_DW | BPF_IMM` with `src = BPF_PSEUDO_MAP_FD`): the map's fd
    /// in the immediate, which the kernel replaces by the map's address at load time. Two
    /// instructions (a 64-bit immediate); the second carries the upper half, 0.
    pub(crate) const fn load_map_fd(dst: u8, map_fd: i32) -> [Self; 2] {
        [
            Self::new(0x18, dst, BPF_PSEUDO_MAP_FD, 0, map_fd),
            Self::new(0, 0, 0, 0, 0),
        ]
    }
}

/// `BPF_PSEUDO_MAP_FD`: the immediate of a 64-bit load is a map's fd.
const BPF_PSEUDO_MAP_FD: u8 = 1;
