//! `Conn`: an accepted connection on its way to a worker.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::Instant;

/// An accepted connection waiting for (or travelling to) a worker.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) listener: u64,
    pub(crate) fd: OwnedFd,
    pub(crate) peer: Option<SocketAddr>,
    /// When its batch was accepted (or, for one taken back from a worker, when it was taken
    /// back): where its handoff latency starts.
    pub(crate) accepted: Instant,
    /// The Node worker (its unique id) that refused it with its server open (`accepted:
    /// false`, its `maxConnections`): it goes to another worker; refused by a second one too,
    /// it is closed rather than passed around for ever.
    pub(crate) refused_by: Option<u64>,
}
