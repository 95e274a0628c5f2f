//! Starting a worker process and the contract it starts with: its own process group, the IPC
//! socket at `FORKLINE_IPC_FD`, listeners by the systemd convention (`LISTEN_FDS`,
//! `LISTEN_FDNAMES`, fds from 3), `PORT`, `FORKLINE_WORKER_ID`, its `NOTIFY_SOCKET`, and the
//! user's environment, directory, user and group.

use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::Arc;

use tokio::process::Child;

use crate::error::{Error, Result};
use crate::primary::core::Core;
use crate::primary::handle::WorkerHandle;
use crate::primary::lifecycle::bind_trap;
use crate::primary::lifecycle::output_buffer::OutputStream;
use crate::primary::options::WorkerStdio;
use crate::primary::traffic::listeners::BoundListener;
use crate::primary::{
    lifecycle::notify, lifecycle::output, lifecycle::readiness, lifecycle::spawner, task,
    traffic::proxy,
};
use crate::protocol::channel::AsyncChannel;
use crate::protocol::wire::{ENV_IPC_FD, ENV_WORKER_ID};
use crate::protocol::Mode;
use crate::sys;

/// First fd number given to a worker (after stdin/stdout/stderr), as in systemd.
const FIRST_FD: RawFd = 3;

/// A started worker process.
pub(crate) struct Spawned {
    pub child: Child,
    pub channel: Channel,
}

/// The primary's end of a worker's channel.
pub(crate) enum Channel {
    /// forkline's own protocol (docs/PROTOCOL.md), on a SEQPACKET socket.
    Forkline(Arc<AsyncChannel>),
    /// Node's cluster protocol, on a stream socket.
    Node(std::os::unix::net::UnixStream),
}

/// Starts the process with its IPC channel and listeners in place, and the tasks that follow
/// it (output, notify socket, proxy port, readiness).
pub(crate) async fn spawn(core: &Core, worker: &WorkerHandle) -> Result<Spawned> {
    let opts = &core.opts();
    let node = opts.node_ipc;
    let (primary_end, worker_end) = if node {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        (OwnedFd::from(ours), OwnedFd::from(theirs))
    } else {
        sys::seqpacket_pair()?
    };
    let mut command = std::process::Command::new(&opts.exec);
    command.args(&opts.args);
    // What the primary itself inherited from systemd is not the worker's.
    for inherited in [
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
        "LISTEN_PID",
        "NOTIFY_SOCKET",
    ]
    .into_iter()
    .chain(crate::primary::ops::upgrade_state::UPGRADE_ENV)
    {
        command.env_remove(inherited);
    }
    let mut placed = prebound_sockets(core, worker, &mut command)?;
    let ipc_fd = FIRST_FD + placed.len() as RawFd;
    let worker_end_copy = sys::dup_cloexec(worker_end.as_fd())?;
    placed.push((worker_end, ipc_fd));
    command.env(ENV_WORKER_ID, worker.id().to_string());
    if node {
        // Node's own cluster worker: `cluster.isWorker`, `cluster.worker.id` is the slot, and
        // every `listen` asks this primary over the channel (JSON lines).
        command.env("NODE_UNIQUE_ID", worker.id().to_string());
        command.env("NODE_CHANNEL_FD", ipc_fd.to_string());
        command.env("NODE_CHANNEL_SERIALIZATION_MODE", "json");
    } else {
        command.env(ENV_IPC_FD, ipc_fd.to_string());
    }
    let notify = match &core.notify_dir() {
        Some(dir) => {
            let (socket, path) = dir.bind(worker.unique_id())?;
            command.env("NOTIFY_SOCKET", &path);
            if let Some(timeout) = opts.worker_timeout {
                command.env("WATCHDOG_USEC", timeout.as_micros().to_string());
            }
            Some(socket)
        }
        None => None,
    };
    for (key, value) in &opts.env {
        command.env(key, value);
    }
    if let Some(cwd) = &opts.cwd {
        command.current_dir(cwd);
    }
    if let Some(uid) = opts.uid {
        command.uid(uid);
    }
    if let Some(gid) = opts.gid {
        command.gid(gid);
    }
    // Its own process group: stop signals reach everything it starts, and a terminal's
    // Ctrl-C reaches only the primary, which stops the workers gracefully.
    command.process_group(0);
    command.stdin(Stdio::null());
    match opts.stdio {
        WorkerStdio::Inherit => {}
        WorkerStdio::Null => {
            command.stdout(Stdio::null()).stderr(Stdio::null());
        }
        WorkerStdio::Prefixed | WorkerStdio::Captured => {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
    }
    if let Some(cpu) = slot_cpu(core, worker.id()) {
        sys::pin_to_cpu(&mut command, cpu)?;
    }
    // Before the fds are placed: the trap reports on the fd it was given.
    let trap = if bind_trap::wanted(core) {
        bind_trap::prepare(core, &mut command)
    } else {
        None
    };
    sys::prepare_child(&mut command, placed)?;
    let mut child = spawner::spawn(command).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::ExecNotFound(opts.exec.clone()),
        std::io::ErrorKind::PermissionDenied => Error::ExecNotExecutable(opts.exec.clone()),
        _ => Error::Io(e),
    })?;
    let pid = child.id().unwrap_or(0);
    if let Some(count) = crate::primary::procfs::oom_kills() {
        let _ = worker.shared.oom_kills_at_start.set(count);
    }
    if let Some(listener) = trap.and_then(|ours| bind_trap::listener_from(core, ours)) {
        task::spawn(
            "bind-trap",
            bind_trap::serve(core.arc(), worker.clone(), listener),
        );
    }
    // Everything in its group dies with the primary, however the primary dies.
    if let Some(keeper) = &core.keeper() {
        keeper.watch(pid);
    }
    // Delivers a stop asked for before the process existed.
    worker.set_pid(pid);
    if let Some(max) = opts.max_requests {
        let limit = crate::primary::options::request_limit(
            max,
            opts.max_requests_jitter,
            worker.unique_id(),
            pid,
        );
        worker
            .shared
            .request_limit
            .store(limit, std::sync::atomic::Ordering::Relaxed);
        let _ = worker
            .shared
            .limit_reached
            .set(core.limit_reached().clone());
    }
    if let Some(out) = child.stdout.take() {
        let pump = output::pump(out, core.arc(), worker.id(), pid, OutputStream::Stdout);
        task::spawn("output", pump);
    }
    if let Some(err) = child.stderr.take() {
        let pump = output::pump(err, core.arc(), worker.id(), pid, OutputStream::Stderr);
        task::spawn("output", pump);
    }
    if let Some(socket) = notify {
        task::spawn("notify", notify::serve(core.arc(), worker.clone(), socket));
    }
    if opts.mode == Mode::Proxy && !core.prebound().is_empty() {
        proxy::watch_worker(core.proxy(), worker)?;
    }
    let channel = if node {
        worker
            .shared
            .speaks_protocol
            .store(true, std::sync::atomic::Ordering::Release);
        Channel::Node(std::os::unix::net::UnixStream::from(primary_end))
    } else {
        Channel::Forkline(Arc::new(AsyncChannel::new(primary_end)?))
    };
    tracing::info!(worker = worker.id(), pid, "worker started");
    core.events().emit(crate::primary::event::Event::Fork {
        worker: worker.clone(),
    });
    readiness::on_started(core, worker);
    if !node {
        let _ = worker.shared.worker_end.set(Arc::new(worker_end_copy));
    }
    Ok(Spawned { child, channel })
}

/// Places the listeners bound up front, by the mode:
/// - `shared` / `reuseport` / `steer`: the sockets as fds 3.. with `LISTEN_FDS`, `LISTEN_FDNAMES`, `PORT`;
/// - `round-robin`: no fds (the primary accepts); `FORKLINE_LISTEN` names the addresses for a
///   library worker to `listen` on, and `PORT` the first port;
/// - `proxy`: no fds; `PORT` is the worker's own loopback port.
fn prebound_sockets(
    core: &Core,
    worker: &WorkerHandle,
    command: &mut std::process::Command,
) -> Result<Vec<(OwnedFd, RawFd)>> {
    let mut placed = Vec::new();
    if core.prebound().is_empty() {
        return Ok(placed);
    }
    let first_port = core.prebound()[0].local.rsplit(':').next().unwrap_or("");
    match core.opts().mode {
        Mode::Proxy => {
            command.env("PORT", core.proxy().port_for(worker)?.to_string());
        }
        Mode::RoundRobin => {
            let addresses: Vec<&str> = core
                .opts()
                .listeners
                .iter()
                .map(|l| l.address.as_str())
                .collect();
            command.env("FORKLINE_LISTEN", addresses.join(","));
            if first_port.parse::<u16>().is_ok() {
                command.env("PORT", first_port);
            }
        }
        Mode::Shared | Mode::Reuseport | Mode::Steer => {
            let mut names = Vec::new();
            for (index, listener) in core.prebound().iter().enumerate() {
                let socket = listener.socket_for(worker.id())?;
                placed.push((
                    sys::dup_cloexec(socket.as_fd())?,
                    FIRST_FD + placed.len() as RawFd,
                ));
                let name = fd_name(core, index, listener);
                names.push(name);
            }
            command.env("LISTEN_FDS", names.len().to_string());
            command.env("LISTEN_FDNAMES", names.join(":"));
            if first_port.parse::<u16>().is_ok() {
                command.env("PORT", first_port);
            }
        }
    }
    Ok(placed)
}

/// The name of prebound listener `index` under `LISTEN_FDNAMES`: the service manager's name
/// for it, else the `--listen NAME=` given, else its address with `:` replaced.
pub(crate) fn fd_name(core: &Core, index: usize, listener: &BoundListener) -> String {
    let opts = &core.opts();
    let inherited = opts.inherited_names.get(index).filter(|n| !n.is_empty());
    let given = opts.listeners.get(index).and_then(|l| l.name.as_ref());
    inherited
        .or(given)
        .cloned()
        .unwrap_or_else(|| crate::primary::options::fd_name_for(&listener.local))
}

/// The CPU the worker of `slot` is pinned to, with `cpu_affinity`: the slot-th of the CPUs the
/// primary may run on, round-robin over them.
pub(crate) fn slot_cpu(core: &Core, slot: usize) -> Option<usize> {
    if !core.opts().cpu_affinity {
        return None;
    }
    let cpus = sys::allowed_cpus().ok()?;
    (!cpus.is_empty()).then(|| cpus[slot % cpus.len()])
}
