//! The life of a worker, read top to bottom: spawn it, serve its IPC channel, notice its exit,
//! and decide whether and when its slot restarts (exponential backoff, crash-loop detection).
//! Also the primary's signal handling (gunicorn's conventions).

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::process::Child;
use tokio::sync::mpsc;

use super::cluster::Cluster;
use super::event::Event;
use super::handle::{WorkerHandle, WorkerState};
use super::listeners::ListenKey;
use super::notify::{self, Notice};
use super::options::{Readiness, RestartPolicy, WorkerStdio};
use super::{output, proxy, spawner};
use crate::error::{Error, Result};
use crate::protocol::channel::{encode, AsyncChannel, Packet};
use crate::protocol::wire::{ENV_IPC_FD, ENV_WORKER_ID};
use crate::protocol::{FromWorker, Mode, SocketKind, ToWorker, MAX_PACKET, PROTOCOL_VERSION};
use crate::sys;

/// First fd number given to a worker (after stdin/stdout/stderr), as in systemd.
const FIRST_FD: RawFd = 3;

/// Registers a new worker in `slot` and starts its life task. Returns at once.
pub(crate) fn start_worker(cluster: &Cluster, slot: usize) -> Result<WorkerHandle> {
    let handle = {
        let mut state = cluster.inner.state.lock().unwrap();
        if state.stopping {
            return Err(Error::ShutDown);
        }
        state.next_seq += 1;
        let handle = WorkerHandle::new(slot, state.next_seq);
        let entry = state.slots.entry(slot).or_default();
        entry.current = Some(handle.clone());
        entry.restart_at = None;
        state.live.insert(handle.unique_id(), handle.clone());
        handle
    };
    let cluster = cluster.clone();
    let worker = handle.clone();
    tokio::spawn(async move { live(cluster, worker).await });
    Ok(handle)
}

/// The whole life of one worker process.
async fn live(cluster: Cluster, worker: WorkerHandle) {
    let (status, was_connected, worker_end) = match spawn(&cluster, &worker).await {
        Ok((child, channel, worker_end)) => {
            let (status, connected) = serve(&cluster, &worker, child, channel).await;
            (status, connected, Some(worker_end))
        }
        Err(e) => {
            tracing::error!(worker = worker.id(), error = %e, "could not start worker");
            let status = ExitInfo {
                code: Some(127),
                signal: None,
            };
            (status, false, None)
        }
    };
    finish(&cluster, &worker, status, was_connected, worker_end);
    schedule_restart(&cluster, &worker, status).await;
}

#[derive(Debug, Clone, Copy)]
struct ExitInfo {
    code: Option<i32>,
    signal: Option<i32>,
}

/// Starts the process with its IPC channel and listeners in place. Also returns the primary's
/// copy of the worker's end of the channel, read back when the worker dies (see `dispatch`).
async fn spawn(
    cluster: &Cluster,
    worker: &WorkerHandle,
) -> Result<(Child, Arc<AsyncChannel>, OwnedFd)> {
    let opts = &cluster.inner.opts;
    let (primary_end, worker_end) = sys::seqpacket_pair()?;
    let mut command = std::process::Command::new(&opts.exec);
    command.args(&opts.args);
    // What the primary itself inherited from systemd is not the worker's.
    for inherited in [
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
        "LISTEN_PID",
        "NOTIFY_SOCKET",
    ] {
        command.env_remove(inherited);
    }
    let mut placed = prebound_sockets(cluster, worker, &mut command)?;
    let ipc_fd = FIRST_FD + placed.len() as RawFd;
    let worker_end_copy = sys::dup_cloexec(worker_end.as_fd())?;
    placed.push((worker_end, ipc_fd));
    command.env(ENV_WORKER_ID, worker.id().to_string());
    command.env(ENV_IPC_FD, ipc_fd.to_string());
    let notify = match &cluster.inner.notify_dir {
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
    command.stdin(Stdio::null());
    match opts.stdio {
        WorkerStdio::Inherit => {}
        WorkerStdio::Null => {
            command.stdout(Stdio::null()).stderr(Stdio::null());
        }
        WorkerStdio::Prefixed => {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
    }
    sys::prepare_child(&mut command, placed)?;
    let mut child = spawner::spawn(command).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::ExecNotFound(opts.exec.clone()),
        std::io::ErrorKind::PermissionDenied => Error::ExecNotExecutable(opts.exec.clone()),
        _ => Error::Io(e),
    })?;
    let pid = child.id().unwrap_or(0);
    worker.shared.pid.store(pid, Ordering::Release);
    if let Some(max) = opts.max_requests {
        let limit = super::recycle::request_limit(max, opts.max_requests_jitter, worker);
        worker.shared.request_limit.store(limit, Ordering::Relaxed);
        let _ = worker
            .shared
            .limit_reached
            .set(cluster.inner.limit_reached.clone());
    }
    if opts.stdio == WorkerStdio::Prefixed {
        let prefix = output::prefix(opts.name.as_deref(), worker.id(), pid);
        if let Some(out) = child.stdout.take() {
            tokio::spawn(output::pump(out, prefix.clone(), output::Sink::Stdout));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(output::pump(err, prefix, output::Sink::Stderr));
        }
    }
    if let Some(socket) = notify {
        tokio::spawn(serve_notify(cluster.clone(), worker.clone(), socket));
    }
    if opts.mode == Mode::Proxy && !cluster.inner.prebound.is_empty() {
        let port = cluster.inner.proxy.port_for(worker)?;
        cluster.inner.proxy.add(worker, port);
        let (cluster, worker) = (cluster.clone(), worker.clone());
        tokio::spawn(async move {
            if proxy::wait_port(port, &worker).await {
                cluster.inner.proxy.set_up(&worker);
                if cluster.inner.opts.readiness == Readiness::Listen {
                    set_ready(&cluster, &worker);
                }
            }
        });
    }
    let channel = Arc::new(AsyncChannel::new(primary_end)?);
    let (outbox, queue) = mpsc::unbounded_channel();
    let _ = worker.shared.outbox.set(outbox);
    tokio::spawn(write_queue(channel.clone(), queue));
    worker.shared.connected.store(true, Ordering::Release);
    tracing::info!(worker = worker.id(), pid, "worker started");
    cluster.inner.events.emit(Event::Fork {
        worker: worker.clone(),
    });
    if !cluster.inner.expect_protocol {
        set_online(cluster, worker);
        // A socket passed at spawn is listening already.
        let passed_socket = matches!(opts.mode, Mode::Shared | Mode::Reuseport)
            && !cluster.inner.prebound.is_empty();
        if opts.readiness == Readiness::Listen && passed_socket {
            set_ready(cluster, worker);
        }
    }
    if let Readiness::Delay(delay) = opts.readiness {
        let (cluster, worker) = (cluster.clone(), worker.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            set_ready(&cluster, &worker);
        });
    }
    if opts.readiness == Readiness::None {
        set_ready(cluster, worker);
    }
    Ok((child, channel, worker_end_copy))
}

/// Places the listeners bound up front, by the mode:
/// - `shared` / `reuseport`: the sockets as fds 3.. with `LISTEN_FDS`, `LISTEN_FDNAMES`, `PORT`;
/// - `round-robin`: no fds (the primary accepts); `FORKLINE_LISTEN` names the addresses for a
///   library worker to `listen` on, and `PORT` the first port;
/// - `proxy`: no fds; `PORT` is the worker's own loopback port.
fn prebound_sockets(
    cluster: &Cluster,
    worker: &WorkerHandle,
    command: &mut std::process::Command,
) -> Result<Vec<(OwnedFd, RawFd)>> {
    let inner = &cluster.inner;
    let mut placed = Vec::new();
    if inner.prebound.is_empty() {
        return Ok(placed);
    }
    let first_port = inner.prebound[0].local.rsplit(':').next().unwrap_or("");
    match inner.opts.mode {
        Mode::Proxy => {
            command.env("PORT", inner.proxy.port_for(worker)?.to_string());
        }
        Mode::RoundRobin => {
            let addresses: Vec<&str> = inner
                .opts
                .listeners
                .iter()
                .map(|l| l.address.as_str())
                .collect();
            command.env("FORKLINE_LISTEN", addresses.join(","));
            if first_port.parse::<u16>().is_ok() {
                command.env("PORT", first_port);
            }
        }
        Mode::Shared | Mode::Reuseport => {
            let mut names = Vec::new();
            for (index, listener) in inner.prebound.iter().enumerate() {
                let socket = listener.socket_for(worker.id())?;
                placed.push((
                    sys::dup_cloexec(socket.as_fd())?,
                    FIRST_FD + placed.len() as RawFd,
                ));
                let name = inner
                    .opts
                    .inherited_names
                    .get(index)
                    .filter(|n| !n.is_empty());
                names.push(name.cloned().unwrap_or_else(|| listener.local.clone()));
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

/// Serves a worker's notify socket: readiness, watchdog pings, status.
async fn serve_notify(cluster: Cluster, worker: WorkerHandle, socket: tokio::net::UnixDatagram) {
    let timeout = cluster.inner.opts.worker_timeout;
    let mut last_ping = std::time::Instant::now();
    let mut buf = vec![0u8; 4096];
    let tick = timeout.map_or(Duration::from_millis(500), |t| {
        (t / 4).max(Duration::from_millis(10))
    });
    while !worker.is_dead() {
        match tokio::time::timeout(tick, socket.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                for notice in notify::parse(&buf[..n]) {
                    match notice {
                        Notice::Ready => set_ready(&cluster, &worker),
                        Notice::Watchdog => last_ping = std::time::Instant::now(),
                        Notice::Status(status) => {
                            tracing::info!(worker = worker.id(), pid = worker.pid(), %status, "worker status");
                        }
                        Notice::Stopping => worker.set_state(WorkerState::Draining),
                    }
                }
            }
            Ok(Err(_)) => break,
            Err(_elapsed) => {}
        }
        if let Some(timeout) = timeout {
            if last_ping.elapsed() > timeout && !worker.is_dead() {
                worker_error(
                    &cluster,
                    &worker,
                    format!("watchdog: no WATCHDOG=1 for {timeout:?}"),
                );
                break;
            }
        }
    }
    if let Ok(addr) = socket.local_addr() {
        if let Some(path) = addr.as_pathname() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Sends queued packets in order.
async fn write_queue(channel: Arc<AsyncChannel>, mut queue: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(packet) = queue.recv().await {
        if channel.send(&packet, &[]).await.is_err() {
            break;
        }
    }
}

/// Serves the worker's channel until the process exits. Returns its exit and whether the
/// channel was still open at exit.
async fn serve(
    cluster: &Cluster,
    worker: &WorkerHandle,
    mut child: Child,
    channel: Arc<AsyncChannel>,
) -> (ExitInfo, bool) {
    let mut channel_open = true;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            packet = channel.recv(), if channel_open => match packet {
                Ok(Some(packet)) => {
                    if let Err(e) = handle_packet(cluster, worker, &channel, packet).await {
                        worker_error(cluster, worker, e.to_string());
                    }
                }
                Ok(None) | Err(_) => {
                    channel_open = false;
                    disconnected(cluster, worker);
                }
            },
        }
    };
    let info = match status {
        Ok(status) => ExitInfo {
            code: status.code(),
            signal: status.signal(),
        },
        Err(e) => {
            tracing::error!(worker = worker.id(), error = %e, "waiting for worker failed");
            ExitInfo {
                code: None,
                signal: None,
            }
        }
    };
    channel.shutdown();
    (info, channel_open)
}

/// A worker broke the protocol: log it, report it, kill it (the restart policy replaces it).
fn worker_error(cluster: &Cluster, worker: &WorkerHandle, error: String) {
    tracing::error!(
        worker = worker.id(),
        pid = worker.pid(),
        %error,
        "worker broke the protocol; killing it"
    );
    cluster.inner.events.emit(Event::WorkerError {
        worker: worker.clone(),
        error,
    });
    let _ = worker.signal(Signal::SIGKILL);
}

fn disconnected(cluster: &Cluster, worker: &WorkerHandle) {
    worker.shared.connected.store(false, Ordering::Release);
    cluster.inner.dispatcher.stop_new(worker);
    cluster.inner.events.emit(Event::Disconnect {
        worker: worker.clone(),
    });
}

async fn handle_packet(
    cluster: &Cluster,
    worker: &WorkerHandle,
    channel: &Arc<AsyncChannel>,
    packet: Packet,
) -> Result<()> {
    if !packet.fds.is_empty() {
        return Err(Error::Protocol("workers may not send fds".into()));
    }
    let message: FromWorker = packet.decode()?;
    if !worker.speaks_protocol() && !matches!(message, FromWorker::Hello { .. }) {
        return Err(Error::Protocol("first packet must be hello".into()));
    }
    match message {
        FromWorker::Hello { version, .. } => {
            if version != PROTOCOL_VERSION {
                let error = format!(
                    "unsupported protocol version {version}; this primary speaks {PROTOCOL_VERSION}"
                );
                let reply = encode(&ToWorker::Error {
                    error: error.clone(),
                })?;
                let _ = channel.send(&reply, &[]).await;
                return Err(Error::Protocol(error));
            }
            let reply = encode(&ToWorker::Welcome {
                version: PROTOCOL_VERSION,
                id: worker.id(),
                max_packet: MAX_PACKET,
            })?;
            channel.send(&reply, &[]).await?;
            worker.shared.speaks_protocol.store(true, Ordering::Release);
            if cluster.inner.expect_protocol {
                set_online(cluster, worker);
            }
        }
        FromWorker::Listen {
            req,
            kind,
            address,
            mode,
        } => listen(cluster, worker, channel, req, kind, address, mode).await?,
        FromWorker::Ack { seqs, open } => cluster.inner.dispatcher.ack(worker, &seqs, open),
        FromWorker::Load { open } => cluster.inner.dispatcher.report_load(worker, open),
        FromWorker::Message { data } => cluster.inner.events.emit(Event::Message {
            worker: worker.clone(),
            payload: data,
        }),
        FromWorker::Disconnecting => {
            worker
                .shared
                .exited_after_disconnect
                .store(true, Ordering::Release);
            cluster.inner.dispatcher.stop_new(worker);
        }
    }
    Ok(())
}

/// Answers a `listen` request: binds (once per key), then hands out the socket (shared,
/// reuseport) or registers the worker for handoffs (round-robin).
async fn listen(
    cluster: &Cluster,
    worker: &WorkerHandle,
    channel: &Arc<AsyncChannel>,
    req: u64,
    kind: SocketKind,
    address: String,
    mode: Option<Mode>,
) -> Result<()> {
    let mode = effective_mode(kind, mode.unwrap_or(cluster.inner.opts.mode));
    let key = ListenKey {
        kind,
        address: address.clone(),
        mode,
    };
    let bound = cluster
        .inner
        .listeners
        .get_or_bind(key)
        .and_then(|(listener, fresh)| {
            let socket = if mode == Mode::RoundRobin {
                None
            } else {
                Some(listener.socket_for(worker.id())?)
            };
            Ok((listener, fresh, socket))
        });
    let (listener, fresh, socket) = match bound {
        Ok(found) => found,
        Err(e) => {
            tracing::error!(worker = worker.id(), %address, error = %e, "listen failed");
            let error = match e {
                Error::Listen { source, .. } => source.to_string(),
                other => other.to_string(),
            };
            let reply = encode(&ToWorker::ListenError { req, error })?;
            channel.send(&reply, &[]).await?;
            return Ok(());
        }
    };
    if fresh {
        tracing::info!(address = %listener.local, mode = mode.name(), "listening");
    }
    let reply = encode(&ToWorker::Listening {
        req,
        listener: listener.id,
        mode,
        address: listener.local.clone(),
        report_load: cluster.inner.opts.balance == super::options::Balance::LeastConn,
        ack_every: cluster.inner.opts.ack_every(),
    })?;
    match &socket {
        Some(socket) => channel.send(&reply, &[socket.as_raw_fd()]).await?,
        None => channel.send(&reply, &[]).await?,
    }
    if mode == Mode::RoundRobin {
        cluster
            .inner
            .dispatcher
            .add_target(worker, channel, listener.id);
        if fresh {
            start_round_robin(cluster, &listener);
        }
    }
    cluster.inner.events.emit(Event::Listening {
        worker: worker.clone(),
        address: listener.local.clone(),
    });
    if cluster.inner.opts.readiness == Readiness::Listen {
        set_ready(cluster, worker);
    }
    Ok(())
}

/// Starts the primary's accept loop for a round-robin listener.
pub(crate) fn start_round_robin(cluster: &Cluster, listener: &super::listeners::BoundListener) {
    if let Some(socket) = listener.socket.clone() {
        let dispatcher = cluster.inner.dispatcher.clone();
        let stop = cluster.inner.stop_accepting.subscribe();
        let id = listener.id;
        let coalesce = cluster.inner.opts.accept_coalesce;
        let always = cluster.inner.opts.accept_coalesce_always;
        tokio::spawn(async move {
            if let Err(e) = dispatcher
                .accept_loop(id, socket, coalesce, always, stop)
                .await
            {
                tracing::error!(error = %e, "accept loop failed");
            }
        });
    }
}

/// Starts the proxy's accept loop for a listener bound up front.
pub(crate) fn start_proxy(cluster: &Cluster, listener: &super::listeners::BoundListener) {
    if let Some(socket) = listener.socket.clone() {
        let table = cluster.inner.proxy.clone();
        let balance = cluster.inner.opts.balance;
        let stop = cluster.inner.stop_accepting.subscribe();
        let kind = listener.kind;
        tokio::spawn(async move {
            if let Err(e) = proxy::accept_loop(table, balance, kind, socket, stop).await {
                tracing::error!(error = %e, "proxy accept loop failed");
            }
        });
    }
}

/// The mode a listener of `kind` really gets: UDP cannot be handed off per connection, and
/// SO_REUSEPORT means nothing for Unix sockets.
fn effective_mode(kind: SocketKind, wanted: Mode) -> Mode {
    match (kind, wanted) {
        (SocketKind::Udp, Mode::Reuseport) => Mode::Reuseport,
        (SocketKind::Udp, _) => Mode::Shared,
        (SocketKind::Unix, Mode::Reuseport) => Mode::Shared,
        (_, Mode::Proxy) => Mode::RoundRobin,
        (_, mode) => mode,
    }
}

pub(crate) fn set_online(cluster: &Cluster, worker: &WorkerHandle) {
    if worker.state() != WorkerState::Starting {
        return;
    }
    worker.set_state(WorkerState::Online);
    cluster.inner.events.emit(Event::Online {
        worker: worker.clone(),
    });
    cluster.inner.changed.notify_waiters();
    if cluster.inner.opts.readiness == Readiness::Online {
        set_ready(cluster, worker);
    }
}

/// Marks `worker` ready (once).
pub(crate) fn set_ready(cluster: &Cluster, worker: &WorkerHandle) {
    match worker.state() {
        WorkerState::Starting | WorkerState::Online => {}
        _ => return,
    }
    worker.set_state(WorkerState::Ready);
    cluster.inner.events.emit(Event::Ready {
        worker: worker.clone(),
    });
    cluster.inner.changed.notify_waiters();
}

/// Records the exit: Node's `disconnect` (if the channel was still open) then `exit`.
fn finish(
    cluster: &Cluster,
    worker: &WorkerHandle,
    info: ExitInfo,
    was_connected: bool,
    worker_end: Option<OwnedFd>,
) {
    worker.shared.dead.store(true, Ordering::Release);
    worker.set_state(WorkerState::Exited);
    if was_connected {
        disconnected(cluster, worker);
    }
    cluster
        .inner
        .dispatcher
        .remove_target(worker, worker_end.as_ref());
    cluster.inner.proxy.remove(worker);
    let planned = worker.exited_after_disconnect();
    let log_level_error = !planned && (info.code != Some(0) || info.signal.is_some());
    if log_level_error {
        tracing::warn!(worker = worker.id(), pid = worker.pid(), code = ?info.code, signal = ?info.signal, "worker died");
    } else {
        tracing::info!(worker = worker.id(), pid = worker.pid(), code = ?info.code, signal = ?info.signal, "worker exited");
    }
    cluster
        .inner
        .state
        .lock()
        .unwrap()
        .live
        .remove(&worker.unique_id());
    cluster.inner.events.emit(Event::Exit {
        worker: worker.clone(),
        code: info.code,
        signal: info.signal,
        exited_after_disconnect: planned,
    });
    cluster.inner.changed.notify_waiters();
}

/// Decides whether the slot restarts and after what delay, then restarts it.
async fn schedule_restart(cluster: &Cluster, worker: &WorkerHandle, info: ExitInfo) {
    let opts = &cluster.inner.opts;
    let failed = info.code != Some(0) || info.signal.is_some();
    let wanted = match opts.restart {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => failed,
        RestartPolicy::Never => false,
    };
    let slot_id = worker.id();
    let delay = {
        let mut state = cluster.inner.state.lock().unwrap();
        let still_current = state
            .slots
            .get(&slot_id)
            .and_then(|s| s.current.as_ref())
            .is_some_and(|w| w == worker);
        if state.stopping || !still_current || worker.exited_after_disconnect() || !wanted {
            drop(state);
            if still_current {
                release_slot_sockets(cluster, slot_id);
            }
            return;
        }
        let backoff = opts.backoff;
        let slot = state.slots.entry(slot_id).or_default();
        if worker.uptime() >= backoff.min_uptime {
            slot.failures = 0;
            slot.crash_loop = false;
        } else {
            slot.failures += 1;
        }
        if backoff.max_restarts.is_some_and(|max| slot.failures > max) {
            slot.gave_up = true;
            let failures = slot.failures;
            drop(state);
            tracing::error!(
                slot = slot_id,
                failures,
                "worker keeps dying; giving up on this slot"
            );
            release_slot_sockets(cluster, slot_id);
            cluster.inner.events.emit(Event::GaveUp {
                id: slot_id,
                failures,
            });
            return;
        }
        let delay = backoff_delay(slot.failures, backoff.initial, backoff.max);
        slot.crash_loop = slot.failures >= backoff.crash_loop_after;
        slot.restarts += 1;
        slot.restart_at = Some(Instant::now() + delay);
        let (failures, crash_loop) = (slot.failures, slot.crash_loop);
        drop(state);
        if crash_loop {
            tracing::error!(slot = slot_id, failures, ?delay, "worker is crash-looping");
        }
        cluster.inner.events.emit(Event::Restarting {
            id: slot_id,
            delay,
            failures,
            crash_loop,
        });
        delay
    };
    if !delay.is_zero() {
        // The slot's reuseport socket must not hold connections nobody will accept for a while.
        release_slot_sockets(cluster, slot_id);
        let mut stop = cluster.inner.stop_accepting.subscribe();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
    let still_wanted = {
        let state = cluster.inner.state.lock().unwrap();
        !state.stopping
            && state
                .slots
                .get(&slot_id)
                .is_some_and(|s| s.restart_at.is_some())
    };
    if still_wanted {
        if let Err(e) = start_worker(cluster, slot_id) {
            tracing::error!(slot = slot_id, error = %e, "restart failed");
        }
    }
}

/// `initial * 2^(failures-1)`, capped at `max`; zero for a worker that was stable.
pub(crate) fn backoff_delay(failures: u32, initial: Duration, max: Duration) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(31));
    initial.saturating_mul(factor).min(max)
}

/// Forgets the reuseport sockets of `slot` (no immediate replacement will accept on them).
pub(crate) fn release_slot_sockets(cluster: &Cluster, slot: usize) {
    for listener in cluster.inner.listeners.all() {
        if listener.mode == Mode::Reuseport {
            listener.release_slot(slot);
        }
    }
}

/// Handles the primary's signals like gunicorn: TERM/INT graceful stop, QUIT quick stop, HUP
/// rolling reload, TTIN/TTOU one worker more/less.
pub(crate) fn handle_signals(cluster: Cluster) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut ttin = signal(SignalKind::from_raw(libc::SIGTTIN))?;
    let mut ttou = signal(SignalKind::from_raw(libc::SIGTTOU))?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => cluster.shutdown(),
                _ = int.recv() => cluster.shutdown(),
                _ = quit.recv() => cluster.shutdown_now(),
                _ = hup.recv() => {
                    let cluster = cluster.clone();
                    tokio::spawn(async move {
                        if let Err(e) = cluster.reload().await {
                            tracing::error!(error = %e, "reload failed");
                        }
                    });
                }
                _ = ttin.recv() => {
                    let n = cluster.inner.state.lock().unwrap().target + 1;
                    let _ = cluster.scale(n);
                }
                _ = ttou.recv() => {
                    let n = cluster.inner.state.lock().unwrap().target;
                    if n > 1 {
                        let _ = cluster.scale(n - 1);
                    }
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let ms = Duration::from_millis;
        let cap = Duration::from_secs(15);
        assert_eq!(backoff_delay(0, ms(100), cap), Duration::ZERO);
        assert_eq!(backoff_delay(1, ms(100), cap), ms(100));
        assert_eq!(backoff_delay(2, ms(100), cap), ms(200));
        assert_eq!(backoff_delay(4, ms(100), cap), ms(800));
        assert_eq!(backoff_delay(40, ms(100), cap), cap);
    }

    #[test]
    fn udp_and_unix_fall_back_to_modes_that_work() {
        assert_eq!(
            effective_mode(SocketKind::Udp, Mode::RoundRobin),
            Mode::Shared
        );
        assert_eq!(
            effective_mode(SocketKind::Udp, Mode::Reuseport),
            Mode::Reuseport
        );
        assert_eq!(
            effective_mode(SocketKind::Unix, Mode::Reuseport),
            Mode::Shared
        );
        assert_eq!(effective_mode(SocketKind::Tcp, Mode::Shared), Mode::Shared);
    }
}
