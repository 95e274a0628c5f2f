//! Reuseport accept queues that migrate. In `reuseport` mode each worker accepts on its own
//! `SO_REUSEPORT` socket; when one of them closes (its worker died, was stopped, or its slot
//! went away), Linux resets the connections queued on it (established, not yet accepted) and
//! its half-open ones (SYN_RECV) — unless the group may migrate them, in which case the kernel
//! moves them to another socket of the group (Linux 5.14+). The group may migrate when:
//!
//! - **bpf**: an `SK_REUSEPORT` program loaded with `expected_attach_type =
//!   BPF_SK_REUSEPORT_SELECT_OR_MIGRATE` is attached to it. forkline's returns `SK_PASS`
//!   without selecting a socket, so the kernel picks one by hash, for new connections as
//!   without a program and for the requests of a closing socket. It only touches this
//!   cluster's sockets. It needs CAP_BPF (or CAP_SYS_ADMIN) and no seccomp filter against
//!   `bpf(2)`.
//! - **sysctl**: `net.ipv4.tcp_migrate_req=1`. It applies to every reuseport group of the
//!   network namespace. forkline sets it (and says so in one log line) only when no program
//!   could be loaded and the cluster asked for [`Migration::Auto`] or [`Migration::Sysctl`],
//!   and leaves it set when it exits (other clusters may rely on it).
//!
//! Otherwise (**off**) a closing socket's queue is reset. Either way, connections a worker
//! had already accepted die with it.
//!
//! The program is two instructions assembled here (`r0 = SK_PASS; exit`) and loaded with a
//! raw `bpf(BPF_PROG_LOAD)` (`sys::bpf_prog_load`), not with aya or libbpf-rs: those build
//! programs from an object file compiled by a BPF toolchain (clang, or bpf-linker on nightly
//! Rust), which forkline would then need at build time, for a program that fits on one line.
//! The loader takes any instruction slice, so a bigger program (one that steers with a
//! `REUSEPORT_SOCKARRAY` map) can reuse it; one that needs maps and relocations in earnest is
//! the point to move to aya.

use crate::control::MigrationStatus;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;

use crate::sys::{self, BpfInsn};

/// How forkline makes the queues of closing reuseport sockets migrate to the other workers'
/// sockets instead of being reset (`ClusterBuilder::reuseport_migration`). Decided once, when
/// the cluster binds its first reuseport TCP socket;
/// [`Cluster::reuseport_migration`](crate::Cluster::reuseport_migration) says what was chosen.
///
/// What each outcome guarantees: with `bpf` or `sysctl`, the connections queued on a closing
/// worker's socket (established, not yet accepted) and its half-open ones (SYN_RECV) move to
/// another worker's socket; with `off` they are reset. Connections a worker had already
/// accepted die with it in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Migration {
    /// BPF if a program can be loaded; else `net.ipv4.tcp_migrate_req`, if it is 1 or can be
    /// set to 1 (it is then set, for the whole network namespace); else off, with one log line
    /// saying how to enable it.
    #[default]
    Auto,
    /// A per-cluster BPF program only (no system-wide change); off, with a warning, if it
    /// cannot be loaded.
    Bpf,
    /// `net.ipv4.tcp_migrate_req` only: used if it is 1, set to 1 if it can be; else off.
    Sysctl,
    /// forkline does nothing. The kernel still migrates if `net.ipv4.tcp_migrate_req` is 1 in
    /// the network namespace (status then says `sysctl`).
    Off,
}

impl Migration {
    /// Parses `auto`, `bpf`, `sysctl` or `off`.
    pub fn parse(value: &str) -> Option<Migration> {
        match value {
            "auto" => Some(Migration::Auto),
            "bpf" => Some(Migration::Bpf),
            "sysctl" => Some(Migration::Sysctl),
            "off" => Some(Migration::Off),
            _ => None,
        }
    }

    /// The name [`parse`](Migration::parse) takes.
    pub fn name(self) -> &'static str {
        match self {
            Migration::Auto => "auto",
            Migration::Bpf => "bpf",
            Migration::Sysctl => "sysctl",
            Migration::Off => "off",
        }
    }
}

/// Test-only: when set (to anything), loading the BPF program fails as if `bpf(2)` were
/// refused (EPERM), so that the fallbacks can be tested on a machine where it is allowed.
pub const ENV_TEST_NO_BPF: &str = "FORKLINE_TEST_NO_BPF";

/// The per-namespace switch that makes every reuseport group migrate.
const TCP_MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// `BPF_PROG_TYPE_SK_REUSEPORT` (`linux/bpf.h`).
pub(super) const BPF_PROG_TYPE_SK_REUSEPORT: u32 = 21;
/// `BPF_SK_REUSEPORT_SELECT_OR_MIGRATE` (`linux/bpf.h`): the program is also run for the
/// requests of a closing socket, which makes its group migrate them.
pub(super) const BPF_SK_REUSEPORT_SELECT_OR_MIGRATE: u32 = 40;
/// `SK_PASS`: go on; with no socket selected, the kernel picks one by hash.
pub(super) const SK_PASS: i32 = 1;

/// The program: `r0 = SK_PASS; exit`.
const PASS_PROGRAM: [BpfInsn; 2] = [BpfInsn::mov64_imm(0, SK_PASS), BpfInsn::exit()];

/// The program's license. The kernel asks for a GPL-compatible one only from programs that
/// call GPL-only helpers; this one calls none (nor does the steering program).
pub(super) const LICENSE: &std::ffi::CStr = c"MIT OR Apache-2.0";

/// The cluster's one migration state, kept by the listener table: what was asked, and, from
/// the first reuseport TCP socket on, what was chosen.
#[derive(Debug)]
pub(crate) struct Migrator {
    wanted: Migration,
    chosen: OnceLock<Chosen>,
}

/// What was chosen.
#[derive(Debug)]
enum Chosen {
    /// The loaded program, kept to attach to every reuseport TCP socket the cluster binds (one
    /// fd for the cluster's life: a group formed again after all its sockets closed, or another
    /// address, gets it too).
    Bpf(OwnedFd),
    /// Nothing to attach: the sysctl decides (1 now, or forkline left it as it was).
    Kernel,
}

impl Migrator {
    /// Nothing chosen yet.
    pub(crate) fn new(wanted: Migration) -> Self {
        Self {
            wanted,
            chosen: OnceLock::new(),
        }
    }

    /// Sets up a reuseport TCP socket that has just started listening, so that its group
    /// migrates (attaching the program to a member sets it for the whole group; the same
    /// program again changes nothing). The first call chooses how, and logs it.
    pub(crate) fn prepare(&self, socket: BorrowedFd<'_>) -> io::Result<()> {
        match self.chosen.get_or_init(|| choose(self.wanted)) {
            Chosen::Bpf(prog) => sys::attach_reuseport_prog(socket, prog.as_fd()),
            Chosen::Kernel => Ok(()),
        }
    }

    /// `Bpf`, `Sysctl` (the sysctl is 1 now) or `Off`; `None` before the first reuseport TCP
    /// socket (not reuseport mode).
    pub(crate) fn status(&self) -> Option<MigrationStatus> {
        Some(match self.chosen.get()? {
            Chosen::Bpf(_) => MigrationStatus::Bpf,
            Chosen::Kernel if sysctl_on() => MigrationStatus::Sysctl,
            Chosen::Kernel => MigrationStatus::Off,
        })
    }
}

/// Chooses as `wanted` says (see [`Migration`]), logging the outcome in one line.
fn choose(wanted: Migration) -> Chosen {
    let bpf_error = match wanted {
        Migration::Auto | Migration::Bpf => match load_program() {
            Ok(prog) => {
                tracing::info!("reuseport: queues of closing sockets migrate (BPF program)");
                return Chosen::Bpf(prog);
            }
            Err(e) => Some(e),
        },
        Migration::Sysctl | Migration::Off => None,
    };
    let why = bpf_error
        .as_ref()
        .map(|e| format!("no BPF program ({e})"))
        .unwrap_or_else(|| format!("migration {}", wanted.name()));
    if matches!(wanted, Migration::Bpf | Migration::Off) {
        if sysctl_on() {
            tracing::info!(
                "reuseport: queues of closing sockets migrate (net.ipv4.tcp_migrate_req=1; {why})"
            );
        } else if wanted == Migration::Bpf {
            tracing::warn!(
                "reuseport: {why}: connections queued on a closing worker's socket are reset"
            );
        } else {
            tracing::info!(
                "reuseport: migration off: connections queued on a closing worker's socket are \
                 reset"
            );
        }
        return Chosen::Kernel;
    }
    if sysctl_on() {
        tracing::info!(
            "reuseport: queues of closing sockets migrate (net.ipv4.tcp_migrate_req=1; {why})"
        );
        return Chosen::Kernel;
    }
    match std::fs::write(TCP_MIGRATE_REQ, "1") {
        Ok(()) => tracing::warn!(
            "reuseport: {why}; set net.ipv4.tcp_migrate_req=1 for this network namespace \
             (every reuseport group in it now migrates; left set at exit)"
        ),
        Err(e) => tracing::warn!(
            "reuseport: connections queued on a closing worker's socket are reset: {why}, and \
             net.ipv4.tcp_migrate_req cannot be set ({e}); run with CAP_BPF, or \
             `sysctl -w net.ipv4.tcp_migrate_req=1`"
        ),
    }
    Chosen::Kernel
}

/// The error a BPF load gets when [`ENV_TEST_NO_BPF`] is set (as if `bpf(2)` were refused).
pub(super) fn refused_for_tests() -> io::Result<()> {
    if std::env::var_os(ENV_TEST_NO_BPF).is_some() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("refused by {ENV_TEST_NO_BPF}"),
        ));
    }
    Ok(())
}

/// Loads the program (refused when [`ENV_TEST_NO_BPF`] is set).
fn load_program() -> io::Result<OwnedFd> {
    refused_for_tests()?;
    sys::bpf_prog_load(
        BPF_PROG_TYPE_SK_REUSEPORT,
        BPF_SK_REUSEPORT_SELECT_OR_MIGRATE,
        &PASS_PROGRAM,
        LICENSE,
        "forkline_mig",
    )
}

/// True when `net.ipv4.tcp_migrate_req` is 1 in this network namespace.
fn sysctl_on() -> bool {
    std::fs::read_to_string(TCP_MIGRATE_REQ).is_ok_and(|v| v.trim() == "1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::{Domain, Protocol, Socket, Type};

    /// A TCP socket bound to 127.0.0.1:`port`, not listening.
    fn reuseport_socket(reuseport: bool, port: u16) -> Socket {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        socket.set_reuse_port(reuseport).unwrap();
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        socket.bind(&address.into()).unwrap();
        socket
    }

    #[test]
    fn names_round_trip() {
        for m in [
            Migration::Auto,
            Migration::Bpf,
            Migration::Sysctl,
            Migration::Off,
        ] {
            assert_eq!(Migration::parse(m.name()), Some(m));
        }
        assert_eq!(Migration::parse("on"), None);
    }

    #[test]
    fn the_program_is_two_instructions_as_the_kernel_lays_them_out() {
        // r0 = 1 (b7 00 0000 01000000), exit (95 00 0000 00000000).
        assert_eq!(std::mem::size_of::<BpfInsn>(), 8);
        assert_eq!(PASS_PROGRAM[0], BpfInsn::new(0xb7, 0, 0, 0, 1));
        assert_eq!(PASS_PROGRAM[1], BpfInsn::new(0x95, 0, 0, 0, 0));
    }

    #[test]
    fn the_program_loads_and_attaches_where_bpf_is_allowed() {
        let prog = match load_program() {
            Ok(prog) => prog,
            Err(e) => {
                // Not root, or seccomp: what the fallback is for.
                eprintln!("skipped: BPF not allowed here ({e})");
                return;
            }
        };
        let socket = reuseport_socket(true, 0);
        socket.listen(8).unwrap();
        sys::attach_reuseport_prog(socket.as_fd(), prog.as_fd()).unwrap();
        // A second member, attached once it listens (as `listeners::bind` does).
        let port = socket.local_addr().unwrap().as_socket().unwrap().port();
        let second = reuseport_socket(true, port);
        second.listen(8).unwrap();
        sys::attach_reuseport_prog(second.as_fd(), prog.as_fd()).unwrap();
        // Attached before `listen`, a socket cannot join the group.
        let third = reuseport_socket(true, port);
        sys::attach_reuseport_prog(third.as_fd(), prog.as_fd()).unwrap();
        let error = third.listen(8).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EADDRINUSE));
        // A socket without SO_REUSEPORT has no group to attach to.
        let plain = reuseport_socket(false, 0);
        let error = sys::attach_reuseport_prog(plain.as_fd(), prog.as_fd()).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn a_refused_program_carries_the_verifier_log() {
        // `exit` without setting r0: the verifier refuses to read an uninitialised register.
        let error = match sys::bpf_prog_load(
            BPF_PROG_TYPE_SK_REUSEPORT,
            BPF_SK_REUSEPORT_SELECT_OR_MIGRATE,
            &[BpfInsn::exit()],
            LICENSE,
            "forkline_bad",
        ) {
            Ok(_) => panic!("the verifier took a program that returns nothing"),
            Err(e) => e,
        };
        if error.raw_os_error() == Some(libc::EPERM) {
            eprintln!("skipped: BPF not allowed here");
            return;
        }
        assert!(error.to_string().contains("verifier"), "{error}");
    }
}
