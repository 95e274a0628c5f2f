//! forkline's error type: every failure names the thing it is about.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in forkline's library API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An option has a value that can never work.
    #[error("invalid option `{field}`: {reason}")]
    InvalidOption {
        /// The option's name.
        field: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// The worker program does not exist.
    #[error("worker program not found: {0}")]
    ExecNotFound(PathBuf),
    /// The worker program exists but may not be executed.
    #[error("worker program is not executable: {0}")]
    ExecNotExecutable(PathBuf),
    /// A uid or gid that names no user or group on this system.
    #[error("unknown {kind} {id}")]
    UnknownId {
        /// `"uid"` or `"gid"`.
        kind: &'static str,
        /// The numeric id.
        id: u32,
    },
    /// A message that would not fit in one IPC packet.
    #[error("message of {size} bytes exceeds the IPC limit of {limit} bytes")]
    MessageTooLarge {
        /// Encoded size in bytes.
        size: usize,
        /// The limit ([`crate::protocol::MAX_PACKET`]).
        limit: usize,
    },
    /// The peer broke the worker protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The worker is not (or no longer) connected.
    #[error("worker {0} is not connected")]
    NotConnected(usize),
    /// Binding or using a listener failed.
    #[error("{address}: {source}")]
    Listen {
        /// The address, as asked for.
        address: String,
        /// The cause.
        source: io::Error,
    },
    /// This process is not a forkline worker (no `FORKLINE_WORKER_ID` / `FORKLINE_IPC_FD`).
    #[error("not running as a forkline worker: {0}")]
    NotAWorker(String),
    /// The cluster has shut down.
    #[error("the cluster has shut down")]
    ShutDown,
    /// A rolling reload stopped: the replacement for `slot` failed, so the slot's old worker
    /// was kept and the slots after it were not reloaded.
    #[error("reload failed at slot {slot}: the new worker {reason}; the old worker keeps serving")]
    ReloadFailed {
        /// The slot whose replacement failed.
        slot: usize,
        /// What went wrong with the replacement.
        reason: crate::primary::ReplaceFailure,
    },
    /// A new primary did not take over (`Cluster::upgrade`); the running one carries on.
    #[error("upgrade failed: {reason}; the running primary carries on")]
    UpgradeFailed {
        /// What went wrong (`the new primary (pid 12) exited with code 1`).
        reason: String,
    },
    /// An operating-system error.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A name that names no choice: `"fast"` as a [`Mode`](crate::Mode) or a
/// [`Balance`](crate::Balance) (what their `FromStr` returns).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{name}` (expected one of: {expected})")]
pub struct UnknownName {
    /// What was being named (`"mode"`).
    pub what: &'static str,
    /// The name given.
    pub name: String,
    /// The names that are known, comma-separated.
    pub expected: &'static str,
}

/// forkline's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
