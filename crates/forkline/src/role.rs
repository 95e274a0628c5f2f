//! Which side of the cluster this process is on, read from the environment once.

use crate::protocol::wire::ENV_WORKER_ID;

/// Whether this process is the primary or one of its workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not started by a forkline primary (no `FORKLINE_WORKER_ID`).
    Primary,
    /// A worker, with its stable slot id (0..N-1, inherited by its replacements).
    Worker(usize),
}

impl Role {
    /// True for the primary (Node's `cluster.isPrimary`).
    pub fn is_primary(self) -> bool {
        matches!(self, Role::Primary)
    }

    /// True for a worker (Node's `cluster.isWorker`).
    pub fn is_worker(self) -> bool {
        matches!(self, Role::Worker(_))
    }
}

/// This process's role, from `FORKLINE_WORKER_ID` (like Node's `NODE_UNIQUE_ID`).
///
/// An unparsable id counts as primary, so a stray variable cannot turn a program into a worker
/// that then fails to find its channel.
pub fn role() -> Role {
    match std::env::var(ENV_WORKER_ID)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(id) => Role::Worker(id),
        None => Role::Primary,
    }
}
