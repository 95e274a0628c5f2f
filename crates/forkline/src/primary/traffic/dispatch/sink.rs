//! `Sink`: where the dispatcher sends a worker's connections — forkline's own channel (a
//! `conns` packet carrying up to a packet's worth of fds), or a Node worker's channel task (one
//! `newconn` at a time, which that task writes in Node's words and settles when the worker
//! answers `accepted`).

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use super::conn::Conn;
use crate::protocol::channel::AsyncChannel;

/// A connection on its way to a Node worker, with the dispatcher's seq for it (what the worker's
/// `accepted` acknowledges).
#[derive(Debug)]
pub(crate) struct Handoff {
    /// The dispatcher's seq of this connection.
    pub(crate) seq: u64,
    /// The connection.
    pub(crate) conn: Conn,
}

/// Where a worker's connections go.
#[derive(Clone)]
pub(crate) enum Sink {
    /// forkline's channel: `conns` packets, acknowledged in batches.
    Forkline(Arc<AsyncChannel>),
    /// A Node worker's channel task: Node's `newconn`, at most one in flight.
    Node(UnboundedSender<Handoff>),
}

impl Sink {
    /// How many connections the worker may hold unacknowledged: the credit window for
    /// forkline's channel, one for a Node worker (as Node's own primary does: its worker answers
    /// each `newconn` before it gets the next).
    pub(crate) fn window(&self, credit_window: usize) -> usize {
        match self {
            Sink::Forkline(_) => credit_window,
            Sink::Node(_) => 1,
        }
    }
}
