//! Every setting of a cluster, with its default, as plain data. The builder fills it in and
//! validates it; the rest of the primary only reads it.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::{Mode, SocketKind};

/// What happens to a worker's stdout and stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkerStdio {
    /// The worker writes straight to the primary's stdout/stderr.
    #[default]
    Inherit,
    /// Each line is prefixed with `[worker ID pid PID]` (or `[NAME:ID PID]` when a name is set)
    /// and written whole, never interleaved mid-line.
    Prefixed,
    /// Copied line by line as written (no prefix, no timestamp; an object per line in the JSON
    /// format), and kept for `forkline logs`.
    Captured,
    /// Discarded.
    Null,
}

/// How the primary writes the worker output it copies (`Prefixed`, `Captured`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Lines of text: `[TIMESTAMP ][NAME:ID PID] line`.
    #[default]
    Text,
    /// One JSON object per line, shaped like tracing-subscriber's JSON format.
    Json,
}

/// When a worker that exited is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Always restart a worker that exits unless it was stopped on purpose.
    #[default]
    Always,
    /// Restart only after a non-zero exit code or a signal.
    OnFailure,
    /// Never restart (Node's behaviour): user code may `fork()` from its `exit` handler.
    Never,
}

/// Exponential backoff between restarts of a worker that keeps dying young.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first restart of a worker that died young.
    pub initial: Duration,
    /// Upper bound of the delay.
    pub max: Duration,
    /// A worker that lived at least this long counts as stable: its slot's backoff resets and
    /// it is restarted at once.
    pub min_uptime: Duration,
    /// After this many consecutive young deaths the slot is reported as crash-looping.
    pub crash_loop_after: u32,
    /// Give up on a slot after this many consecutive young deaths (`None`: never give up).
    pub max_restarts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(15),
            min_uptime: Duration::from_secs(5),
            crash_loop_after: 5,
            max_restarts: None,
        }
    }
}

/// How connections are balanced across workers when the primary picks (round-robin and proxy
/// modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Balance {
    /// Each worker in turn.
    #[default]
    RoundRobin,
    /// The worker with the fewest open connections (the first idle worker).
    LeastConn,
    /// Sticky: the same client address always reaches the same worker while it is up.
    IpHash,
}

impl Balance {
    /// The canonical name (what `Display` writes and `FromStr` reads back).
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round-robin",
            Balance::LeastConn => "least-conn",
            Balance::IpHash => "ip-hash",
        }
    }
}

impl std::fmt::Display for Balance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Balance {
    type Err = crate::error::UnknownName;

    /// `round-robin` (or `rr`), `least-conn` or `ip-hash`.
    fn from_str(s: &str) -> Result<Balance, Self::Err> {
        match s {
            "round-robin" | "rr" => Ok(Balance::RoundRobin),
            "least-conn" => Ok(Balance::LeastConn),
            "ip-hash" => Ok(Balance::IpHash),
            _ => Err(crate::error::UnknownName {
                what: "balance",
                name: s.to_string(),
                expected: "round-robin, least-conn, ip-hash",
            }),
        }
    }
}

/// ip-hash: the index, among `n` workers ordered by slot, that `client` sticks to.
pub(crate) fn sticky_index(client: Option<std::net::IpAddr>, n: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    client.hash(&mut hasher);
    (hasher.finish() % n.max(1) as u64) as usize
}

/// When a newly started worker counts as ready (gates rolling reloads and the primary's own
/// `READY=1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Readiness {
    /// Ready once online (a library worker's handshake) — or at once for a program that does
    /// not speak the protocol.
    #[default]
    Online,
    /// Ready once it listens (library worker) or once its `PORT` accepts (proxy mode).
    Listen,
    /// Ready when it sends `READY=1` on `NOTIFY_SOCKET`.
    Notify,
    /// Ready after a fixed delay.
    Delay(Duration),
    /// Ready as soon as it is started.
    None,
}

/// A listener the primary binds before starting workers and hands to each at spawn time, by the
/// systemd convention (`LISTEN_FDS`, fds from 3). Used by the CLI for programs that do not speak
/// the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSpec {
    /// Socket kind.
    pub kind: SocketKind,
    /// `HOST:PORT` or a Unix socket path.
    pub address: String,
    /// Its name in `LISTEN_FDNAMES` (`None`: made from the address, `:` replaced by `_`, since
    /// systemd does not allow `:` in a name).
    pub name: Option<String>,
}

impl ListenSpec {
    /// A TCP listener on `address`, named by its address.
    pub fn tcp(address: impl Into<String>) -> ListenSpec {
        ListenSpec {
            kind: SocketKind::Tcp,
            address: address.into(),
            name: None,
        }
    }
}

/// A name for `LISTEN_FDNAMES` made from an address: systemd's names are printable ASCII
/// without `:`, at most 255 bytes.
pub(crate) fn fd_name_for(address: &str) -> String {
    let name: String = address
        .chars()
        .map(|c| {
            if c == ':' || !c.is_ascii_graphic() {
                '_'
            } else {
                c
            }
        })
        .collect();
    name.chars().take(255).collect()
}

/// All settings of a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of workers started at once.
    pub workers: usize,
    /// The program each worker runs.
    pub exec: PathBuf,
    /// Its arguments (not including argv\[0\]).
    pub args: Vec<OsString>,
    /// Extra environment variables for workers.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory of workers.
    pub cwd: Option<PathBuf>,
    /// What happens to worker output.
    pub stdio: WorkerStdio,
    /// How copied worker output is written.
    pub log_format: LogFormat,
    /// Put a timestamp on each copied worker line.
    pub log_timestamps: bool,
    /// Bytes of recent worker output kept for `forkline logs` (0 keeps none).
    pub output_buffer: usize,
    /// A name for log prefixes and status (`[NAME:ID PID]`).
    pub name: Option<String>,
    /// Run workers as this user id.
    pub uid: Option<u32>,
    /// Run workers as this group id.
    pub gid: Option<u32>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Restart backoff.
    pub backoff: Backoff,
    /// How long workers get to finish after being asked to stop, before SIGKILL.
    pub graceful_timeout: Duration,
    /// On SIGTERM/SIGINT, how long the cluster stays a lame duck before the graceful stop:
    /// `/readyz` answers 503 at once, and the workers keep serving meanwhile (default zero:
    /// the graceful stop begins at once).
    pub shutdown_delay: Duration,
    /// A command run before a worker is killed for not answering (its watchdog went silent,
    /// or it outlived the graceful timeout), `{pid}` and `{slot}` filled in: its output (at
    /// most 10 s of it) goes to the log and `forkline logs`, after the worker's
    /// `/proc/PID/wchan` and kernel stack.
    pub on_hang: Option<String>,
    /// Pin the worker of slot i to one CPU: the i-th of the CPUs the primary may run on
    /// (round-robin over them); a replacement runs on its slot's CPU (default false).
    pub cpu_affinity: bool,
    /// Whether the primary handles SIGTERM/SIGINT/SIGQUIT/SIGHUP/SIGTTIN/SIGTTOU itself.
    pub handle_signals: bool,
    /// Default distribution mode for listeners.
    pub mode: Mode,
    /// Balancing strategy when the primary picks the worker.
    pub balance: Balance,
    /// Connections handed to one worker and not yet acknowledged, at most.
    pub credit_window: usize,
    /// Round-robin accept coalescing: under load, and while it pays, accept at most this far
    /// apart (`None`: wake up for every connection; default `DEFAULT_ACCEPT_COALESCE`).
    pub accept_coalesce: Option<Duration>,
    /// Coalesce whenever connections queue, without the governor's measurements (default:
    /// off, or on when `FORKLINE_ACCEPT_COALESCE_ALWAYS` is set to anything but `0`, for
    /// benchmarks).
    pub accept_coalesce_always: bool,
    /// Round-robin accept loops per listener (at least 1; more than one run on threads of
    /// their own); `None`: as [`auto_accept_threads`] says for the number of workers.
    pub accept_threads: Option<usize>,
    /// Listeners bound up front and passed to every worker by the systemd convention.
    pub listeners: Vec<ListenSpec>,
    /// Already-bound sockets to use instead of binding `listeners` (socket activation): same
    /// order as `listeners`.
    pub inherited: Vec<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// The service manager's names for `inherited` (`LISTEN_FDNAMES`), same order, passed on to
    /// workers; a socket with no name (or an empty one) is named by its address.
    pub inherited_names: Vec<String>,
    /// When a new worker counts as ready.
    pub readiness: Readiness,
    /// How long a new worker may take to become ready.
    pub ready_timeout: Duration,
    /// How long a replacement (reload, recycling) must stay alive once ready before it takes
    /// over its slot and the old worker is stopped.
    pub settle_time: Duration,
    /// Recycle a worker after it accepted this many connections (round-robin/proxy counting).
    pub max_requests: Option<u64>,
    /// Random extra added to `max_requests` per worker, so they do not all recycle at once.
    pub max_requests_jitter: u64,
    /// Recycle a worker whose resident memory stays above this many bytes.
    pub max_memory: Option<u64>,
    /// Kill and replace a worker that goes this long without sending `WATCHDOG=1` on its notify
    /// socket (counted from its start, then from each ping).
    pub worker_timeout: Option<Duration>,
    /// Serve a `NOTIFY_SOCKET` to workers.
    pub notify_socket: bool,
    /// Permissions for Unix socket files the primary creates (e.g. `0o660`).
    pub unix_mode: Option<u32>,
    /// Owner (uid, gid) for Unix socket files the primary creates.
    pub unix_owner: Option<(u32, u32)>,
    /// TCP_NODELAY on the TCP listeners the primary binds, inherited by every connection
    /// (default true, like systemd's `NoDelay=`).
    pub tcp_nodelay: bool,
    /// Proxy mode: how long a client waits for some worker to be up before it is closed.
    pub proxy_queue_timeout: Duration,
    /// Round-robin: handoffs a worker leaves unread this long are taken back and handed to
    /// other workers (a stopped or hung worker).
    pub handoff_timeout: Duration,
    /// Serve Prometheus metrics and health probes over HTTP at this address (`HOST:PORT`).
    pub metrics: Option<String>,
    /// How long a new primary may take to get its workers ready (`Cluster::upgrade`).
    pub upgrade_timeout: Duration,
    /// Extra environment for a new primary (`Cluster::upgrade`), e.g. a `NOTIFY_SOCKET` this
    /// process took out of its own environment.
    pub upgrade_env: Vec<(OsString, OsString)>,
    /// `/readyz` answers 200 only while every slot's worker is ready (default: while at least
    /// one is).
    pub readyz_requires_all: bool,
    /// Serve a control socket at this path (`forkline status`, `reload`, `scale`, `stop`).
    pub control: Option<PathBuf>,
    /// Make the primary a child subreaper (PR_SET_CHILD_SUBREAPER): what workers leave behind
    /// is reparented to it, and reaped. As PID 1 it reaps orphans either way.
    pub subreaper: bool,
    /// Workers are Node programs that speak Node's own cluster protocol (`NODE_UNIQUE_ID`,
    /// `NODE_CHANNEL_FD`): every `server.listen(...)` asks the primary, which answers with its
    /// socket (shared, reuseport and steer modes) or hands it connections one `newconn` at a
    /// time (round-robin mode).
    pub node_ipc: bool,
    /// Proxy mode: steer each new connection in the kernel straight to a ready worker's own
    /// listener (`SK_LOOKUP`, Linux 5.12+, with `CAP_BPF`; round-robin only), the relay only
    /// taking what it misses (default true). Where the kernel refuses, every connection is
    /// relayed, said once in the log.
    pub proxy_in_kernel: bool,
    /// Shared, reuseport and steer modes, plain programs: a worker's own `bind()` of a TCP
    /// `--listen` address gets forkline's socket for it instead of EADDRINUSE (a seccomp
    /// user-notification filter, Linux 5.9+; it sets `no_new_privs` on such workers). Default
    /// true; where the kernel refuses, the program runs untrapped, said once in the log.
    pub trap_binds: bool,
    /// Reuseport mode: how the queues of a closing worker's socket move to the other workers
    /// instead of being reset (default [`Migration::Auto`](crate::Migration::Auto)).
    pub reuseport_migration: crate::Migration,
}

/// The most handoffs a worker may hold unacknowledged before it acks. A full IPC buffer pauses
/// a worker until its next ack, so a full buffer must always hold more than this: with the
/// default socket buffer (~200 KiB) it holds well over a hundred `conns` packets.
const MAX_ACK_EVERY: u64 = 32;

impl ClusterOptions {
    /// How many handed-off connections a worker may hold before it acks: 1 under least-conn
    /// (the acks carry the load reports), otherwise half the credit window, at most 32.
    pub(crate) fn ack_every(&self) -> u64 {
        if self.balance == Balance::LeastConn {
            1
        } else {
            (self.credit_window as u64 / 2).clamp(1, MAX_ACK_EVERY)
        }
    }
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            exec: PathBuf::new(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            stdio: WorkerStdio::default(),
            log_format: LogFormat::default(),
            log_timestamps: false,
            output_buffer: crate::primary::lifecycle::output_buffer::DEFAULT_OUTPUT_BUFFER,
            name: None,
            uid: None,
            gid: None,
            restart: RestartPolicy::default(),
            backoff: Backoff::default(),
            graceful_timeout: Duration::from_secs(30),
            shutdown_delay: Duration::ZERO,
            on_hang: None,
            cpu_affinity: false,
            handle_signals: true,
            // A bad value is reported when the builder validates (`mode_from_env` again).
            mode: mode_from_env().ok().flatten().unwrap_or_default(),
            balance: Balance::default(),
            credit_window: 64,
            // A bad value is reported when the builder validates (`accept_coalesce_from_env`).
            accept_coalesce: accept_coalesce_from_env()
                .ok()
                .flatten()
                .unwrap_or(Some(DEFAULT_ACCEPT_COALESCE)),
            accept_coalesce_always: std::env::var("FORKLINE_ACCEPT_COALESCE_ALWAYS")
                .is_ok_and(|v| !v.is_empty() && v != "0"),
            accept_threads: accept_threads_from_env(),
            listeners: Vec::new(),
            inherited: Vec::new(),
            inherited_names: Vec::new(),
            readiness: Readiness::default(),
            ready_timeout: Duration::from_secs(30),
            settle_time: DEFAULT_SETTLE_TIME,
            max_requests: None,
            max_requests_jitter: 0,
            max_memory: None,
            worker_timeout: None,
            notify_socket: false,
            unix_mode: None,
            unix_owner: None,
            tcp_nodelay: true,
            proxy_queue_timeout: Duration::from_secs(5),
            handoff_timeout: Duration::from_secs(10),
            subreaper: false,
            node_ipc: false,
            proxy_in_kernel: true,
            trap_binds: true,
            control: None,
            upgrade_timeout: Duration::from_secs(60),
            upgrade_env: Vec::new(),
            metrics: None,
            readyz_requires_all: false,
            reuseport_migration: crate::Migration::Auto,
        }
    }
}

/// How long a replacement must stay up once ready before it commits, unless set: 1 s.
pub const DEFAULT_SETTLE_TIME: Duration = Duration::from_secs(1);

/// The accept coalescing window unless something sets another: 500 µs.
pub const DEFAULT_ACCEPT_COALESCE: Duration = Duration::from_micros(500);

/// The longest accept coalescing window allowed.
pub const MAX_ACCEPT_COALESCE: Duration = Duration::from_secs(1);

/// An error naming `accept_coalesce` if `window` is longer than `MAX_ACCEPT_COALESCE`.
pub fn check_accept_coalesce(window: Duration) -> crate::error::Result<()> {
    if window > MAX_ACCEPT_COALESCE {
        return Err(crate::error::Error::InvalidOption {
            field: "accept_coalesce",
            reason: format!("must be at most {MAX_ACCEPT_COALESCE:?}"),
        });
    }
    Ok(())
}

/// Environment variable that sets the accept coalescing window, in microseconds (0: off).
pub const ENV_ACCEPT_COALESCE_US: &str = "FORKLINE_ACCEPT_COALESCE_US";

/// The window set by `FORKLINE_ACCEPT_COALESCE_US`, if set (`Some(None)` for 0: off); an error
/// naming the variable if it is not a number of microseconds up to `MAX_ACCEPT_COALESCE`.
pub fn accept_coalesce_from_env() -> crate::error::Result<Option<Option<Duration>>> {
    let Ok(value) = std::env::var(ENV_ACCEPT_COALESCE_US) else {
        return Ok(None);
    };
    let window = value
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_micros)
        .filter(|w| *w <= MAX_ACCEPT_COALESCE)
        .ok_or_else(|| crate::error::Error::InvalidOption {
            field: ENV_ACCEPT_COALESCE_US,
            reason: format!(
                "`{value}` is not a number of microseconds from 0 to {}",
                MAX_ACCEPT_COALESCE.as_micros()
            ),
        })?;
    Ok(Some((!window.is_zero()).then_some(window)))
}

/// The mode named by `FORKLINE_SCHED_POLICY` (`rr`, `none`, or a mode name), if set; an error
/// naming the variable if it names no mode.
pub(super) fn mode_from_env() -> crate::error::Result<Option<Mode>> {
    use crate::protocol::wire::ENV_SCHED_POLICY;
    match std::env::var(ENV_SCHED_POLICY) {
        Ok(value) => {
            value
                .parse::<Mode>()
                .ok()
                .map(Some)
                .ok_or_else(|| crate::error::Error::InvalidOption {
                    field: ENV_SCHED_POLICY,
                    reason: format!(
                    "unknown mode `{value}` (expected rr, none, round-robin, shared, reuseport, \
                     steer or proxy)"
                ),
                })
        }
        Err(_) => Ok(None),
    }
}

/// How many round-robin accept threads a listener gets when the number is not set: one below 4
/// workers (the single accept task); from 4 on, one per 4 workers, at least 2, at most 8 and
/// at most the CPUs. Measured (`bench/RESULTS.md`, "More than one accept thread"): at 2
/// workers on 2 CPUs two threads cost the primary a quarter less CPU per connection than one,
/// and its busiest thread a quarter as much; more threads follow the projection (one thread
/// keeps up with about 4 workers' connections), not a measurement.
pub fn auto_accept_threads(workers: usize) -> usize {
    accept_threads_for(
        workers,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    )
}

/// [`auto_accept_threads`] on a machine with `cpus` CPUs.
fn accept_threads_for(workers: usize, cpus: usize) -> usize {
    if workers < 4 {
        return 1;
    }
    (workers / 4).clamp(2, 8).min(cpus).max(1)
}

/// `FORKLINE_ACCEPT_THREADS`, the round-robin accept loops per listener, if set to a number of
/// at least 1 (for programs that do not call the builder's `accept_threads`; another value is
/// refused by the builder, see [`check_accept_threads_env`]).
pub(super) fn accept_threads_from_env() -> Option<usize> {
    std::env::var("FORKLINE_ACCEPT_THREADS")
        .ok()?
        .parse()
        .ok()
        .filter(|n| *n >= 1)
}

/// An error naming `FORKLINE_ACCEPT_THREADS` when it is set to anything but a number of at
/// least 1.
pub(crate) fn check_accept_threads_env() -> crate::error::Result<()> {
    match std::env::var("FORKLINE_ACCEPT_THREADS") {
        Ok(value) if accept_threads_from_env().is_none() => Err(crate::Error::InvalidOption {
            field: "FORKLINE_ACCEPT_THREADS",
            reason: format!("{value:?} is not a number of at least 1"),
        }),
        _ => Ok(()),
    }
}

/// An error naming `workers` when steer mode's least-conn would steer between more than
/// `LEAST_CONN_MAX_SOCKETS` of them (at start, and when scaling).
pub fn check_steered_workers(
    mode: Mode,
    balance: Balance,
    workers: usize,
) -> crate::error::Result<()> {
    let most = crate::primary::traffic::steer::program::LEAST_CONN_MAX_SOCKETS as usize;
    if mode == Mode::Steer && balance == Balance::LeastConn && workers > most {
        return Err(crate::Error::InvalidOption {
            field: "workers",
            reason: format!("steer mode's least-conn steers between at most {most} workers"),
        });
    }
    Ok(())
}

/// The connection limit of one worker: `max_requests` plus a per-worker share of the jitter.
pub(crate) fn request_limit(max_requests: u64, jitter: u64, seq: u64, pid: u32) -> u64 {
    if jitter == 0 {
        return max_requests;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&(seq, pid), &mut hasher);
    max_requests + std::hash::Hasher::finish(&hasher) % (jitter + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_threads_grow_with_the_workers_within_the_cpus() {
        assert_eq!(accept_threads_for(1, 64), 1);
        assert_eq!(accept_threads_for(3, 64), 1);
        assert_eq!(accept_threads_for(4, 64), 2);
        assert_eq!(accept_threads_for(8, 64), 2);
        assert_eq!(accept_threads_for(16, 64), 4);
        assert_eq!(accept_threads_for(64, 64), 8);
        assert_eq!(accept_threads_for(16, 2), 2);
        assert_eq!(accept_threads_for(8, 1), 1);
    }
}
