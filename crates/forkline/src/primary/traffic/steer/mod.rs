//! Steer mode: every worker accepts on its own `SO_REUSEPORT` socket, as in reuseport mode,
//! but the kernel picks the socket of each new connection with a BPF program forkline loads,
//! instead of a hash of the connection's addresses: strict round-robin over the sockets of the
//! workers that are ready, or (`--balance least-conn`) the one whose worker has the fewest
//! open connections. No primary on the connection path, any program as a worker.
//!
//! Per listener (one reuseport group), forkline creates:
//! - a `REUSEPORT_SOCKARRAY` map, index → socket, kept dense: indices `0..n` hold the sockets
//!   of the slots whose worker is ready ([`SteerGroup::worker_ready`]); when one leaves, the
//!   last takes its index;
//! - an `ARRAY` map of one entry, `{ n: u32, _: u32, counter: u64 }`: the number of sockets
//!   in the first map, and the round-robin counter the program bumps;
//! - the program ([`program`]): `idx = counter++ % n` (an atomic fetch-and-add), then
//!   `bpf_sk_select_reuseport(ctx, sockarray, &idx, 0)`; with no socket (n is 0, or the one at
//!   `idx` just closed) it returns `SK_PASS` without selecting, and the kernel hashes as it
//!   would without a program. It is loaded with `expected_attach_type =
//!   BPF_SK_REUSEPORT_SELECT_OR_MIGRATE`, so it also picks the socket for the queued
//!   connections of a closing one: no queue is lost when a worker goes (see `migration.rs`).
//!
//! Least-conn adds a third map, `ARRAY` of one `[u32; MAX_SOCKETS]` value mapped into the
//! primary (`BPF_F_MMAPABLE`): the open connections of the worker at each index. The program
//! ([`least_conn_program`]) scans the `n` counts starting at `counter++ % n` and picks the
//! first smallest (so ties go round-robin), adds 1 to its count at once (a burst does not pile
//! onto one worker before it reports), and selects its socket. Library workers report their
//! open connections when one closes (`load`), and the primary writes the report over the
//! count — no syscall, the memory is shared. A plain program reports nothing: its count is
//! the connections steered to it, which makes least-conn round-robin for it (logged once).
//!
//! Readiness gates the map: a socket enters only once its worker is ready, and leaves when the
//! slot has no ready worker any more (it exited, its slot was released), so no connection
//! queues on a worker that is not accepting yet — which reuseport mode cannot promise.
//! A socket kept for an immediate restart stays in the group, out of the map: what was queued
//! on it waits for the replacement, nothing new arrives meanwhile.
//!
//! The round-robin program is 23 instructions, the least-conn one 53, assembled here and loaded with `sys::bpf_prog_load`, like
//! migration's: aya and libbpf-rs load programs from an ELF object built by a BPF toolchain
//! (clang, or bpf-linker on nightly Rust), which forkline would then need at build time, and
//! they would bring a loader (and, for libbpf-rs, a C library) for two maps and one program
//! whose every instruction is written down below. The kernel's verifier checks the program
//! at load time; a refusal carries its log.
//!
//! Where BPF cannot be loaded (no CAP_BPF, seccomp, an old kernel), steer mode falls back —
//! once, with one log line, and [`Cluster::steering`](crate::Cluster::steering) says so: to
//! round-robin in the primary for library workers (a cluster with no listener bound up front),
//! to reuseport otherwise.

pub(crate) mod group;
pub(crate) mod program;
