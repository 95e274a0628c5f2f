//! `ClusterBuilder`: Node's `setupPrimary` options as a builder, validated before any worker
//! starts so bad input gets an error naming the option.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::primary::cluster::Cluster;
use crate::primary::event::Event;
use crate::primary::options::{
    Backoff, Balance, ClusterOptions, ListenSpec, LogFormat, Readiness, RestartPolicy, WorkerStdio,
};
use crate::primary::status::Shutdown;
use crate::protocol::Mode;

/// Builds a [`Cluster`]. By default it runs `workers = cores` copies of the current executable
/// with the same arguments, restarting them with backoff.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    opts: ClusterOptions,
    exec_set: bool,
    args_set: bool,
    /// Set when the mode was chosen in code, so `FORKLINE_SCHED_POLICY` does not matter.
    mode_set: bool,
    /// `accept_coalesce` was called, so `FORKLINE_ACCEPT_COALESCE_US` is not consulted.
    coalesce_set: bool,
    expect_protocol: bool,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ClusterBuilder {
    /// A builder with the defaults.
    pub fn new() -> Self {
        Self {
            opts: ClusterOptions::default(),
            exec_set: false,
            args_set: false,
            mode_set: false,
            coalesce_set: false,
            expect_protocol: true,
        }
    }

    /// A builder starting from a full set of options (the CLI uses this).
    pub fn from_options(opts: ClusterOptions) -> Self {
        Self {
            opts,
            exec_set: true,
            args_set: true,
            mode_set: true,
            coalesce_set: false,
            expect_protocol: false,
        }
    }

    /// Number of workers to start (default: available cores).
    pub fn workers(mut self, n: usize) -> Self {
        self.opts.workers = n;
        self
    }

    /// Program each worker runs (default: the current executable, captured once at start).
    /// A bare name is looked up in `PATH`.
    pub fn exec(mut self, program: impl Into<PathBuf>) -> Self {
        self.opts.exec = program.into();
        self.exec_set = true;
        self
    }

    /// Arguments for the worker program (default: this process's arguments).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.opts.args = args.into_iter().map(Into::into).collect();
        self.args_set = true;
        self
    }

    /// Adds an environment variable for workers.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.opts.env.push((key.into(), value.into()));
        self
    }

    /// Working directory for workers.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.opts.cwd = Some(dir.into());
        self
    }

    /// What happens to worker stdout/stderr.
    pub fn stdio(mut self, stdio: WorkerStdio) -> Self {
        self.opts.stdio = stdio;
        self
    }

    /// How copied worker output is written: text lines (default) or JSON objects.
    pub fn log_format(mut self, format: LogFormat) -> Self {
        self.opts.log_format = format;
        self
    }

    /// Put a timestamp (RFC 3339, UTC) on each copied worker line (default false).
    pub fn log_timestamps(mut self, on: bool) -> Self {
        self.opts.log_timestamps = on;
        self
    }

    /// Bytes of recent worker output the primary keeps for `forkline logs` and
    /// `Cluster::recent_output` (default 256 KiB; 0 keeps none). Only output the primary copies
    /// (`WorkerStdio::Prefixed`, `WorkerStdio::Captured`) is kept.
    pub fn output_buffer(mut self, bytes: usize) -> Self {
        self.opts.output_buffer = bytes;
        self
    }

    /// A name used in log prefixes (`[NAME:ID PID]`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.opts.name = Some(name.into());
        self
    }

    /// Run workers as this user id.
    pub fn uid(mut self, uid: u32) -> Self {
        self.opts.uid = Some(uid);
        self
    }

    /// Run workers as this group id.
    pub fn gid(mut self, gid: u32) -> Self {
        self.opts.gid = Some(gid);
        self
    }

    /// Restart policy (default [`RestartPolicy::Always`]).
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.opts.restart = policy;
        self
    }

    /// Restart backoff settings.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.opts.backoff = backoff;
        self
    }

    /// Time workers get to finish after being asked to stop (default 30 s).
    pub fn graceful_timeout(mut self, timeout: Duration) -> Self {
        self.opts.graceful_timeout = timeout;
        self
    }

    /// On SIGTERM or SIGINT (with the primary's signals handled), a lame-duck period before
    /// the graceful stop (default zero): `/readyz` answers 503 at once so a load balancer
    /// takes the instance out, the workers keep serving for `delay`, then the graceful stop
    /// runs. A second SIGTERM/SIGINT ends the delay early; SIGQUIT stops at once. Use it
    /// instead of a Kubernetes `preStop` sleep.
    pub fn shutdown_delay(mut self, delay: Duration) -> Self {
        self.opts.shutdown_delay = delay;
        self
    }

    /// A command (run with `sh -c`) before a worker is killed for not answering — its
    /// watchdog went silent, or it outlived the graceful timeout — with `{pid}` and `{slot}`
    /// filled in: `py-spy dump --pid {pid}`, `kill -QUIT {pid}` (Go, the JVM), `gdb -batch -p
    /// {pid} -ex bt`. Its output, cut at 10 s, goes to the log and `forkline logs` as the
    /// worker's lines, after the worker's `/proc/PID/wchan` and kernel stack (which are kept
    /// even without a command).
    pub fn on_hang(mut self, command: impl Into<String>) -> Self {
        self.opts.on_hang = Some(command.into());
        self
    }

    /// Pin the worker of slot i to one CPU (default false): the i-th of the CPUs the primary
    /// may run on, round-robin over them; a replacement or restart runs on its slot's CPU.
    /// [`Cluster::status`](crate::Cluster::status) shows each slot's CPU.
    pub fn cpu_affinity(mut self, on: bool) -> Self {
        self.opts.cpu_affinity = on;
        self
    }

    /// Whether the primary handles TERM/INT/QUIT/HUP/TTIN/TTOU (default true).
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.opts.handle_signals = on;
        self
    }

    /// Default distribution mode for listeners (default: `FORKLINE_SCHED_POLICY`, else
    /// round-robin).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.opts.mode = mode;
        self.mode_set = true;
        self
    }

    /// Balancing strategy for round-robin mode.
    pub fn balance(mut self, balance: Balance) -> Self {
        self.opts.balance = balance;
        self
    }

    /// Unacknowledged handoffs allowed per worker (default 64).
    pub fn credit_window(mut self, window: usize) -> Self {
        self.opts.credit_window = window;
        self
    }

    /// Round-robin accept coalescing window (default 500 µs; `Duration::ZERO` turns it off).
    ///
    /// While each wake-up finds two connections or more queued (they arrive faster than the
    /// primary wakes up), the primary may accept at most `window` apart, taking everything
    /// queued at once. That saves the primary and the workers a context switch per
    /// connection, most of the primary's cost under many concurrent clients. It is used only
    /// while it pays: every few seconds the primary measures its accept rate for a moment with
    /// and without, and keeps coalescing only if it was clearly faster with it, so a few clients
    /// that each wait for their answer (whom a window would stall) and light traffic are never
    /// delayed. A connection after a quiet spell is handed out at once; under load, one waits
    /// at most `window` in the kernel's accept queue. At most 1 s. Without this call,
    /// `FORKLINE_ACCEPT_COALESCE_US` (microseconds, 0 for off) sets it.
    pub fn accept_coalesce(mut self, window: Duration) -> Self {
        self.opts.accept_coalesce = (!window.is_zero()).then_some(window);
        self.coalesce_set = true;
        self
    }

    /// Coalesce whenever connections queue up, without measuring whether it pays (default
    /// false). For loads known to be many independent clients, where the CPU saved matters
    /// more than up to one window of latency; with a few clients that each wait for their
    /// answer it cuts their throughput (half, with 4 clients and 500 µs, in
    /// `bench/RESULTS.md`).
    pub fn accept_coalesce_always(mut self, always: bool) -> Self {
        self.opts.accept_coalesce_always = always;
        self
    }

    /// Round-robin accept threads per listener (else `FORKLINE_ACCEPT_THREADS`, else
    /// `auto_accept_threads`: 1 below 4 workers, then
    /// one per 4 workers, 2 to 8, decided when the listener starts accepting from the workers
    /// the cluster keeps then; scaling later does not change it).
    ///
    /// With 1, a task on the primary's runtime accepts every connection and hands it off. With
    /// more, that many OS threads do, each blocked on the listening socket with
    /// `EPOLLEXCLUSIVE` (a connection wakes one of them) and feeding the same dispatcher: one
    /// credit window per worker and re-dispatch as with one, and one coalescing governor for
    /// them all. It lifts the ceiling a single accepting thread puts on round-robin: measured
    /// at 2 workers on 2 CPUs, 2 threads cut the busiest primary thread's CPU per connection
    /// to a quarter and the primary's total by a quarter (`bench/RESULTS.md`, "More than one
    /// accept thread").
    pub fn accept_threads(mut self, threads: usize) -> Self {
        self.opts.accept_threads = Some(threads);
        self
    }

    /// When a new worker counts as ready.
    pub fn readiness(mut self, readiness: Readiness, timeout: Duration) -> Self {
        self.opts.readiness = readiness;
        self.opts.ready_timeout = timeout;
        self
    }

    /// How long a replacement (rolling reload, recycling) must stay alive after it is ready
    /// before it takes over its slot and the old worker is stopped (default 1 s). A
    /// replacement that exits sooner is a failed replacement: the old worker keeps serving.
    pub fn settle_time(mut self, settle: Duration) -> Self {
        self.opts.settle_time = settle;
        self
    }

    /// Recycles a worker after it was handed `n` connections (round-robin and proxy modes),
    /// plus a per-worker random share of `jitter` so workers do not all recycle at once.
    pub fn max_requests(mut self, n: u64, jitter: u64) -> Self {
        self.opts.max_requests = Some(n);
        self.opts.max_requests_jitter = jitter;
        self
    }

    /// Recycles a worker whose resident memory stays above `bytes` (three samples, 1 s apart).
    pub fn max_memory(mut self, bytes: u64) -> Self {
        self.opts.max_memory = Some(bytes);
        self
    }

    /// Serves each worker a `NOTIFY_SOCKET` (systemd's notify protocol).
    pub fn notify_socket(mut self, on: bool) -> Self {
        self.opts.notify_socket = on;
        self
    }

    /// Kills and replaces a worker that goes `timeout` without sending `WATCHDOG=1` on its
    /// notify socket (sets `WATCHDOG_USEC` for it; needs [`notify_socket`](Self::notify_socket)).
    /// As with systemd's `WatchdogSec=`, the watchdog is armed once the worker is ready; its
    /// start-up is judged by the ready timeout.
    pub fn worker_timeout(mut self, timeout: Duration) -> Self {
        self.opts.worker_timeout = Some(timeout);
        self
    }

    /// Permissions for the Unix socket files the primary creates, e.g. `0o660` (default: what
    /// the umask leaves).
    pub fn unix_socket_mode(mut self, mode: u32) -> Self {
        self.opts.unix_mode = Some(mode);
        self
    }

    /// Owner (uid, gid) of the Unix socket files the primary creates (default: the primary's).
    pub fn unix_socket_owner(mut self, uid: u32, gid: u32) -> Self {
        self.opts.unix_owner = Some((uid, gid));
        self
    }

    /// TCP_NODELAY on the TCP listeners the primary binds, which every accepted connection
    /// inherits (default true, like systemd's `NoDelay=`): a worker that writes a response in
    /// pieces and never sets it itself is not delayed by Nagle's algorithm (40 ms a response
    /// on keep-alive connections).
    pub fn tcp_nodelay(mut self, on: bool) -> Self {
        self.opts.tcp_nodelay = on;
        self
    }

    /// Reuseport mode: how the connections queued on a worker's socket when it closes (the
    /// worker died, was stopped, or its slot went away) move to the other workers instead of
    /// being reset (default [`Migration::Auto`](crate::Migration::Auto): a BPF program if one
    /// can be loaded, else `net.ipv4.tcp_migrate_req`).
    /// [`Cluster::reuseport_migration`](crate::Cluster::reuseport_migration) says what was
    /// chosen.
    pub fn reuseport_migration(mut self, migration: crate::Migration) -> Self {
        self.opts.reuseport_migration = migration;
        self
    }

    /// Proxy mode: steer each new connection in the kernel straight to a ready worker's own
    /// listener (default true; `SK_LOOKUP`, Linux 5.12+ and `CAP_BPF`, round-robin only). The
    /// primary takes each worker's listener on its `$PORT` (`pidfd_getfd`) once it accepts,
    /// and relays only what the kernel does not steer; where BPF is refused, every connection
    /// is relayed, as with `false`. [`Cluster::steering`](crate::Cluster::steering) says which.
    pub fn proxy_in_kernel(mut self, on: bool) -> Self {
        self.opts.proxy_in_kernel = on;
        self
    }

    /// Shared, reuseport and steer modes, with plain programs (not the library's workers, not
    /// Node's channel): trap each worker's `bind()` (a seccomp user-notification filter,
    /// Linux 5.9+) and answer a bind of a TCP `listen` address with forkline's socket for that
    /// worker — the shared one, or its own `SO_REUSEPORT` socket in the steered group — so a
    /// program that binds its fixed port itself runs as N workers (default true). Other binds
    /// go on untouched. Such workers run with `no_new_privs` (no setuid programs in them); a
    /// bind made through io_uring is not trapped. Where the kernel refuses the filter, the
    /// workers run untrapped, said once in the log.
    pub fn trap_binds(mut self, on: bool) -> Self {
        self.opts.trap_binds = on;
        self
    }

    /// Proxy mode: how long a client may wait for some worker to be up before it is closed
    /// (default 5 s).
    pub fn proxy_queue_timeout(mut self, timeout: Duration) -> Self {
        self.opts.proxy_queue_timeout = timeout;
        self
    }

    /// Round-robin: connections handed to a worker that leaves them unread this long (it was
    /// stopped, or its event loop hangs) are taken back and handed to other workers, and that
    /// worker gets one connection at a time until it reads again (default 10 s).
    pub fn handoff_timeout(mut self, timeout: Duration) -> Self {
        self.opts.handoff_timeout = timeout;
        self
    }

    /// Serves a control socket at `path` (0600, its directory created 0700 if missing): one
    /// JSON request per line — status, reload, scale, restart, stop — from this user or root
    /// only (`docs/CONTROL.md`). A stale socket file is replaced; one a live cluster serves is
    /// an error.
    pub fn control_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.opts.control = Some(path.into());
        self
    }

    /// How long a new primary may take to start its workers and get them ready before an
    /// upgrade (`Cluster::upgrade`, SIGUSR2) is called failed (default 60 s).
    pub fn upgrade_timeout(mut self, timeout: Duration) -> Self {
        self.opts.upgrade_timeout = timeout;
        self
    }

    /// Sets `key=value` in a new primary's environment (`Cluster::upgrade`), for what this
    /// process took out of its own (a service manager's `NOTIFY_SOCKET`, say).
    pub fn upgrade_env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.opts.upgrade_env.push((key.into(), value.into()));
        self
    }

    /// Serves HTTP at `address` (`HOST:PORT`): Prometheus text at `/metrics` (every series
    /// named `forkline_…`), `/healthz` (200 while the primary runs) and `/readyz` (200 while at
    /// least one worker is ready, or every slot's with [`readyz_requires_all`](Self::readyz_requires_all)
    /// (Self::readyz_requires_all); 503 otherwise), for Kubernetes probes. An address in use is a
    /// start error naming it. Needs the `axum` feature (on by default).
    pub fn metrics(mut self, address: impl Into<String>) -> Self {
        self.opts.metrics = Some(address.into());
        self
    }

    /// With `true`, the metrics endpoint's `/readyz` answers 200 only while every slot's
    /// worker is ready, 503 otherwise (a slot restarting, a worker still starting). Default
    /// `false`: 200 while at least one worker is ready. Either way a replacement on trial
    /// (reload, recycling) does not count: the worker it would replace keeps its slot ready.
    pub fn readyz_requires_all(mut self, on: bool) -> Self {
        self.opts.readyz_requires_all = on;
        self
    }

    /// Makes the primary a child subreaper (default false): processes that workers' children
    /// leave behind are reparented to the primary instead of PID 1, and the primary reaps them.
    /// Running as PID 1 (a container's init) it reaps orphans either way.
    pub fn subreaper(mut self, on: bool) -> Self {
        self.opts.subreaper = on;
        self
    }

    /// Workers are unmodified Node programs (default false): each gets Node's own cluster
    /// channel (`cluster.isWorker` is true, `cluster.worker.id` is its slot), and every
    /// `server.listen(...)` it makes is answered with a socket of the primary's — the shared
    /// one, or its own `SO_REUSEPORT` socket in reuseport and steer modes; in round-robin mode
    /// the primary accepts and hands each connection to the worker's server with Node's
    /// `newconn`, one at a time. Messages go both ways (`Event::Message`,
    /// `WorkerHandle::send`). Proxy mode is refused with it (a proxied worker binds its own
    /// `$PORT`).
    pub fn node_ipc(mut self, on: bool) -> Self {
        self.opts.node_ipc = on;
        self
    }

    /// Binds `spec` up front and passes it to every worker by the systemd convention.
    pub fn listen(mut self, spec: ListenSpec) -> Self {
        self.opts.listeners.push(spec);
        self
    }

    /// Whether workers are expected to speak the protocol (true for library workers). When
    /// false, a worker is `online` as soon as it is started.
    pub fn expect_protocol(mut self, on: bool) -> Self {
        self.expect_protocol = on;
        self
    }

    /// The options as they stand.
    pub fn options(&self) -> &ClusterOptions {
        &self.opts
    }

    /// Validates the options and starts the workers. Must be called inside a tokio runtime.
    pub async fn start(self) -> Result<Cluster> {
        let opts = self.validated()?;
        Cluster::start(opts, self.expect_protocol).await
    }

    /// Starts the cluster on a new tokio runtime and calls `handler` for every event until it
    /// has shut down — the shape of a Node primary (`cluster.on('exit', ...)`).
    pub fn run_blocking<F>(self, handler: F) -> Result<Shutdown>
    where
        F: FnMut(&Cluster, &Event) + Send,
    {
        // One thread: the primary's work is short non-blocking steps (accept, hand off, relay),
        // and a single thread avoids cross-thread wake-ups and lock contention on that path.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let cluster = self.start().await?;
            Ok(cluster.run(handler).await)
        })
    }

    fn validated(&self) -> Result<ClusterOptions> {
        let mut opts = self.opts.clone();
        if opts.workers == 0 {
            return Err(Error::InvalidOption {
                field: "workers",
                reason: "must be at least 1".into(),
            });
        }
        if !self.mode_set {
            // Refuse a value that names no mode rather than silently use the default.
            crate::primary::options::mode_from_env()?;
        }
        if !self.exec_set {
            opts.exec = std::env::current_exe()?;
        }
        if !self.args_set {
            opts.args = std::env::args_os().skip(1).collect();
        }
        opts.exec = resolve_program(&opts.exec, opts.cwd.as_deref())?;
        if let Some(uid) = opts.uid {
            if nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .is_none()
            {
                return Err(Error::UnknownId {
                    kind: "uid",
                    id: uid,
                });
            }
        }
        if let Some(gid) = opts.gid {
            if nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
                .ok()
                .flatten()
                .is_none()
            {
                return Err(Error::UnknownId {
                    kind: "gid",
                    id: gid,
                });
            }
        }
        if let Some(cwd) = &opts.cwd {
            if !cwd.is_dir() {
                return Err(Error::InvalidOption {
                    field: "cwd",
                    reason: format!("{} is not a directory", cwd.display()),
                });
            }
        }
        if opts.readiness == Readiness::Notify || opts.worker_timeout.is_some() {
            opts.notify_socket = true;
        }
        if !self.coalesce_set {
            crate::primary::options::accept_coalesce_from_env()?;
        }
        if let Some(window) = opts.accept_coalesce {
            crate::primary::options::check_accept_coalesce(window)?;
        }
        if opts.mode == Mode::Steer && opts.balance == Balance::IpHash {
            return Err(Error::InvalidOption {
                field: "balance",
                reason: "steer mode balances round-robin or least-conn in the kernel; ip-hash \
                         needs the primary to pick (round-robin or proxy mode)"
                    .into(),
            });
        }
        crate::primary::options::check_steered_workers(opts.mode, opts.balance, opts.workers)?;
        if opts.accept_threads.is_none() {
            crate::primary::options::check_accept_threads_env()?;
        }
        if opts.accept_threads == Some(0) {
            return Err(Error::InvalidOption {
                field: "accept_threads",
                reason: "must be at least 1".into(),
            });
        }
        if opts.node_ipc && opts.mode == Mode::Proxy {
            return Err(Error::InvalidOption {
                field: "node_ipc",
                reason: "proxy mode relays to each worker's own port ($PORT), which a Node \
                         worker binds itself; Node's cluster channel works in round-robin, \
                         shared, reuseport and steer modes"
                    .into(),
            });
        }
        if opts.credit_window == 0 {
            return Err(Error::InvalidOption {
                field: "credit_window",
                reason: "must be at least 1".into(),
            });
        }
        Ok(opts)
    }
}

/// Finds `program` (a path, or a bare name looked up in `PATH`) and checks it is an executable
/// file, returning an absolute path.
pub fn resolve_program(program: &Path, cwd: Option<&Path>) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if program.as_os_str().is_empty() {
        return Err(Error::InvalidOption {
            field: "exec",
            reason: "empty program name".into(),
        });
    }
    let candidates: Vec<PathBuf> = if program.components().count() > 1 || program.is_absolute() {
        let base = cwd.map(Path::to_path_buf).unwrap_or_default();
        vec![base.join(program)]
    } else {
        std::env::var_os("PATH")
            .map(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(program))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut found_not_executable = None;
    for candidate in candidates {
        let Ok(meta) = std::fs::metadata(&candidate) else {
            continue;
        };
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            return Ok(std::path::absolute(&candidate).unwrap_or(candidate));
        }
        found_not_executable.get_or_insert(candidate);
    }
    match found_not_executable {
        Some(path) => Err(Error::ExecNotExecutable(path)),
        None => Err(Error::ExecNotFound(program.to_path_buf())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steer_mode_refuses_a_balance_it_cannot_do_in_the_kernel() {
        let builder = |balance| {
            ClusterBuilder::new()
                .exec("true")
                .mode(Mode::Steer)
                .balance(balance)
        };
        assert!(builder(Balance::RoundRobin).validated().is_ok());
        assert!(builder(Balance::LeastConn).validated().is_ok());
        match builder(Balance::IpHash).validated() {
            Err(Error::InvalidOption { field, reason }) => {
                assert_eq!(field, "balance");
                assert!(reason.contains("ip-hash needs the primary"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}
