//! The worker protocol's messages: one JSON object per SOCK_SEQPACKET packet, tagged by `type`.
//! `docs/PROTOCOL.md` is the language-neutral description of exactly these types.

use serde::{Deserialize, Serialize};

/// Protocol version spoken by this build; a worker sends it in `hello`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest packet either side sends or accepts, in bytes (the JSON text).
pub const MAX_PACKET: usize = 64 * 1024;

/// Environment variable holding the worker's stable slot number.
pub const ENV_WORKER_ID: &str = "FORKLINE_WORKER_ID";
/// Environment variable holding the fd number of the worker's IPC socket.
pub const ENV_IPC_FD: &str = "FORKLINE_IPC_FD";
/// Environment variable with Node-style scheduling policy (`rr`, `none`) or a forkline mode name.
pub const ENV_SCHED_POLICY: &str = "FORKLINE_SCHED_POLICY";

/// The kind of socket a `listen` request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SocketKind {
    /// A TCP stream listener (IPv4 or IPv6).
    Tcp,
    /// A Unix stream listener at a filesystem path.
    Unix,
    /// A UDP socket (shared or reuseport only).
    Udp,
}

/// How connections on one listener reach workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Mode {
    /// The primary accepts and passes each connection to a worker (Node's SCHED_RR).
    #[default]
    RoundRobin,
    /// Every worker accepts on one inherited socket (Node's SCHED_NONE).
    Shared,
    /// Every worker accepts on its own SO_REUSEPORT socket.
    Reuseport,
    /// Every worker listens on its own loopback port; the primary relays bytes (CLI only).
    Proxy,
    /// Every worker accepts on its own SO_REUSEPORT socket, and a BPF program forkline loads
    /// picks the socket of each new connection in the kernel (round-robin over the ready
    /// workers, or least-conn from their load reports). Falls back to reuseport, or
    /// round-robin for library workers, where BPF cannot be loaded.
    Steer,
}

impl Mode {
    /// Whether each worker accepts on a listening socket of its own (reuseport, steer).
    pub fn socket_per_worker(self) -> bool {
        matches!(self, Mode::Reuseport | Mode::Steer)
    }

    /// Whether workers accept connections themselves (shared, reuseport, steer) rather than
    /// the primary (round-robin, proxy).
    pub fn workers_accept(self) -> bool {
        matches!(self, Mode::Shared | Mode::Reuseport | Mode::Steer)
    }

    /// The canonical name (what `Display` writes and `FromStr` reads back).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::RoundRobin => "round-robin",
            Mode::Shared => "shared",
            Mode::Reuseport => "reuseport",
            Mode::Proxy => "proxy",
            Mode::Steer => "steer",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = crate::error::UnknownName;

    /// A mode's name, also Node's `rr` and `none`.
    fn from_str(s: &str) -> Result<Mode, Self::Err> {
        match s {
            "rr" | "round-robin" => Ok(Mode::RoundRobin),
            "none" | "shared" => Ok(Mode::Shared),
            "reuseport" => Ok(Mode::Reuseport),
            "proxy" => Ok(Mode::Proxy),
            "steer" => Ok(Mode::Steer),
            _ => Err(crate::error::UnknownName {
                what: "mode",
                name: s.to_string(),
                expected: "round-robin, shared, reuseport, proxy, steer",
            }),
        }
    }
}

/// A message from a worker to the primary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromWorker {
    /// First packet: the worker's protocol version and pid.
    Hello {
        /// Protocol version the worker speaks.
        version: u32,
        /// The worker's process id.
        pid: u32,
    },
    /// Ask for a listener on `address`.
    Listen {
        /// Request id, echoed in the answer.
        req: u64,
        /// Socket kind.
        kind: SocketKind,
        /// `HOST:PORT` (TCP/UDP) or a path (Unix).
        address: String,
        /// Mode wanted for this listener; `None` means the cluster's default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<Mode>,
        /// Which of this worker's open listeners of `address` this is (0 for the first): the
        /// primary shares a listener between workers by index, so a worker's second listener
        /// of an address is a listener of its own, as Node keys its handles.
        #[serde(default, skip_serializing_if = "is_zero")]
        index: u32,
    },
    /// Acknowledges handed-off connections: the worker now owns them.
    Ack {
        /// Sequence numbers from `conns` packets.
        seqs: Vec<u64>,
        /// Connections the worker has open now (for least-conn), if it tracks them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        open: Option<u64>,
        /// How many of `seqs` never reached the worker: it is at its fd limit, so the kernel
        /// cut their fds off the `conns` packet (and closed them).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dropped: Option<u64>,
    },
    /// The number of connections the worker has open (sent when it changes, for least-conn).
    Load {
        /// Open connections.
        open: u64,
    },
    /// A user message.
    Message {
        /// Any JSON value.
        data: serde_json::Value,
    },
    /// The worker is disconnecting on purpose and will close the channel.
    Disconnecting,
    /// Handed-off connections the worker will not serve, because it no longer listens on
    /// `listener` (it dropped the listener, or is disconnecting). Their fds ride along, one
    /// per seq, in order; the primary hands them to other workers and sends no more
    /// connections of `listener` to this worker. Counts as the `ack` of `seqs`.
    Returned {
        /// Listener id from `conns`.
        listener: u64,
        /// The sequence numbers of the returned connections.
        seqs: Vec<u64>,
    },
}

/// A message from the primary to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    /// Answer to `hello`.
    Welcome {
        /// Protocol version the primary speaks.
        version: u32,
        /// The worker's slot id.
        id: usize,
        /// Largest packet the primary accepts.
        max_packet: usize,
    },
    /// Fatal protocol error; the primary will stop the worker.
    Error {
        /// What went wrong.
        error: String,
    },
    /// Answer to `listen`. For `shared` and `reuseport`, the socket rides along as SCM_RIGHTS.
    Listening {
        /// Request id from `listen`.
        req: u64,
        /// The primary's id for this listener (used in `conns`).
        listener: u64,
        /// Mode in effect.
        mode: Mode,
        /// The bound address (the real port when 0 was asked for).
        address: String,
        /// Whether the primary wants `load` reports (least-conn balancing).
        #[serde(default)]
        report_load: bool,
        /// The worker may hold back its `ack`s until this many handed-off connections are
        /// unacknowledged (1: ack every `conns` packet). The primary asks for 1 when it balances
        /// by load, and for half its credit window (at most 32) otherwise, so acks cost little.
        #[serde(default = "one")]
        ack_every: u64,
    },
    /// Answer to `listen` when binding failed.
    ListenError {
        /// Request id from `listen`.
        req: u64,
        /// The error, naming the address.
        error: String,
        /// The OS error number (`EADDRINUSE`, `EACCES`, `EADDRNOTAVAIL`, ...), when there is
        /// one, so the worker can tell them apart (Node's `err.code`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        errno: Option<i32>,
    },
    /// Handed-off connections for a round-robin listener; one fd per seq, in order.
    Conns {
        /// Listener id from `listening`.
        listener: u64,
        /// One sequence number per fd, to be acknowledged.
        seqs: Vec<u64>,
        /// The client address of each connection (`HOST:PORT`), in the same order, so the
        /// worker need not ask the kernel; `""` where it is not known (the worker asks the
        /// kernel). Empty for Unix sockets.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        peers: Vec<String>,
    },
    /// A user message.
    Message {
        /// Any JSON value.
        data: serde_json::Value,
    },
    /// Stop accepting, finish current work and exit.
    Disconnect,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The default `ack_every`: acknowledge every `conns` packet (what a primary that does not send
/// the field expects).
fn one() -> u64 {
    1
}
