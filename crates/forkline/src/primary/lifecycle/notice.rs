//! `WorkerNotice`: what the parts of the primary that watch a worker from the side (its notify
//! socket, the proxy's probe of its port) tell the worker's own supervision loop, which acts on
//! it. They never act on the worker's lifecycle themselves.

/// Something learnt about a worker, for its supervision loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WorkerNotice {
    /// It said `READY=1` on its notify socket.
    Ready,
    /// It said `STOPPING=1`: it is finishing its work.
    Stopping,
    /// Its own port (proxy mode) accepts connections.
    PortUp,
    /// It broke its side of a contract (watchdog silence): it is killed.
    Failed(String),
}
