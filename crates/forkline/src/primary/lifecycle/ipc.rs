//! Serving one worker's IPC channel: the handshake (`hello` → `welcome`, after which the queue
//! of packets for the worker starts to flow), `listen` requests, acks and load reports,
//! messages, and the worker's own `disconnecting`. Every packet a worker sent is read before
//! its exit is handled, so nothing it said last is lost.

use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use nix::sys::signal::Signal;
use tokio::process::Child;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::primary::core::Core;
use crate::primary::event::Event;
use crate::primary::handle::{ExitInfo, Outgoing, WorkerHandle, WorkerShared, WorkerState};
use crate::primary::lifecycle::output_buffer::OutputStream;
use crate::primary::options::{Balance, Readiness};
use crate::primary::traffic::dispatch::dispatcher::Dispatcher;
use crate::primary::traffic::listeners::ListenKey;
use crate::primary::{lifecycle::readiness, task};
use crate::protocol::channel::{encode, AsyncChannel, Packet};
use crate::protocol::{FromWorker, Mode, SocketKind, ToWorker, MAX_PACKET, PROTOCOL_VERSION};

/// Most packets read from a dead worker's channel: what it can have queued, with room to spare.
const MAX_DRAINED: usize = 10_000;

/// Serves the worker's channel until the process exits, then reads what it left queued.
/// Returns how the process ended.
pub(crate) async fn serve(
    core: &Core,
    worker: &WorkerHandle,
    mut child: Child,
    channel: Arc<AsyncChannel>,
) -> ExitInfo {
    let mut open = true;
    let status = loop {
        tokio::select! {
            // The exit first: a worker that floods its channel cannot hide it (what it sent is
            // read below anyway).
            biased;
            status = child.wait() => break status,
            packet = channel.recv(), if open => match packet {
                Ok(Some(packet)) => on_packet(core, worker, &channel, packet).await,
                // Empty, oversized (MSG_TRUNC) or with fds cut off (MSG_CTRUNC): the worker
                // is killed, and nothing more it sends is read.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    worker_error(core, worker, format!("bad packet: {e}"));
                    open = false;
                }
                Ok(None) | Err(_) => {
                    open = false;
                    disconnected(core, worker);
                }
            },
        }
    };
    // The process is gone, so everything it sent is in the socket already.
    let mut drained = 0;
    while open && drained < MAX_DRAINED {
        match channel.try_recv() {
            Ok(Some(packet)) => on_packet(core, worker, &channel, packet).await,
            Ok(None) | Err(_) => break,
        }
        drained += 1;
    }
    channel.shutdown();
    exit_info(worker, status)
}

/// How the worker's process ended, from what waiting for it returned.
pub(crate) fn exit_info(
    worker: &WorkerHandle,
    status: std::io::Result<std::process::ExitStatus>,
) -> ExitInfo {
    match status {
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
    }
}

async fn on_packet(
    core: &Core,
    worker: &WorkerHandle,
    channel: &Arc<AsyncChannel>,
    packet: Packet,
) {
    match handle_packet(core, worker, channel, packet).await {
        Ok(()) => {}
        // The worker closed its channel (it disconnected, after asking for something): its
        // answer has nowhere to go, and nothing is wrong.
        Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            tracing::debug!(worker = worker.id(), "channel closed before the answer");
        }
        Err(e) => worker_error(core, worker, e.to_string()),
    }
}

/// A worker broke the protocol or its watchdog fired: log it, report it, kill its process
/// group (the restart policy replaces it).
pub(crate) fn worker_error(core: &Core, worker: &WorkerHandle, error: String) {
    worker.stop_for(crate::control::ExitReason::Protocol);
    tracing::error!(
        worker = worker.id(),
        pid = worker.pid(),
        %error,
        "worker broke the protocol; killing it"
    );
    core.events().emit(Event::WorkerError {
        worker: worker.clone(),
        error,
    });
    let _ = worker.signal_group(Signal::SIGKILL);
}

/// A message of the worker's own (Node's `process.send`, the library's `Worker::send`): a log
/// line naming the worker, a line in `forkline logs`, and `Event::Message`.
pub(crate) fn message_from_worker(core: &Core, worker: &WorkerHandle, payload: serde_json::Value) {
    tracing::info!(worker = worker.id(), pid = worker.pid(), message = %payload, "message from worker");
    core.output()
        .push_for(worker, OutputStream::Message, payload.to_string());
    core.events().emit(Event::Message {
        worker: worker.clone(),
        payload,
    });
}

/// The worker's channel closed: Node's `disconnect`.
pub(crate) fn disconnected(core: &Core, worker: &WorkerHandle) {
    if !worker.shared.connected.swap(false, Ordering::AcqRel) {
        return;
    }
    core.dispatcher().stop_new(worker);
    core.events().emit(Event::Disconnect {
        worker: worker.clone(),
    });
}

/// Sends the packets queued for the worker, in order.
///
/// Handoffs (`conns`) do not go through this queue: the dispatcher sends them directly, from
/// whichever runtime thread accepted. So a packet queued once the worker is draining (its
/// `disconnect`) first waits for the dispatcher: a handoff sent by a dispatcher that saw the
/// worker still taking connections, just before the stop, must reach the socket ahead of the
/// `disconnect`. Queued after it, it would be read by a worker that no longer listens, in the
/// instant before that worker exits, with nobody left to give it back.
///
/// The worker is held weakly: its handle owns the queue's sender, and the task ends when the
/// last handle is gone and the queue closes.
async fn write_queue(
    dispatcher: Arc<Dispatcher>,
    worker: Weak<WorkerShared>,
    channel: Arc<AsyncChannel>,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
) {
    while let Some(packet) = queue.recv().await {
        if let Some(shared) = worker.upgrade() {
            let worker = WorkerHandle { shared };
            if worker.state() == WorkerState::Draining {
                dispatcher.stop_new(&worker);
            }
        }
        if channel.send(&packet, &[]).await.is_err() {
            break;
        }
    }
}

async fn handle_packet(
    core: &Core,
    worker: &WorkerHandle,
    channel: &Arc<AsyncChannel>,
    packet: Packet,
) -> Result<()> {
    let message: FromWorker = packet.decode()?;
    let fds_expected = match &message {
        FromWorker::Returned { seqs, .. } => seqs.len(),
        _ => 0,
    };
    // At the primary's own fd limit the kernel delivers only the first fds.
    let fds_fit =
        packet.fds.len() == fds_expected || (packet.fds_cut && packet.fds.len() < fds_expected);
    if !fds_fit {
        return Err(Error::Protocol(format!(
            "{} fds with a packet that carries {fds_expected}",
            packet.fds.len()
        )));
    }
    match (&message, worker.speaks_protocol()) {
        (FromWorker::Hello { .. }, true) => {
            return Err(Error::Protocol("a second hello".into()));
        }
        (FromWorker::Hello { .. }, false) => {}
        (_, false) => return Err(Error::Protocol("first packet must be hello".into())),
        (_, true) => {}
    }
    match message {
        FromWorker::Hello { version, .. } => hello(core, worker, channel, version).await?,
        FromWorker::Listen {
            req,
            kind,
            address,
            mode,
            index,
        } => {
            let request = ListenRequest {
                req,
                kind,
                address,
                mode,
                index,
            };
            listen(core, worker, channel, request).await?
        }
        FromWorker::Ack {
            seqs,
            open,
            dropped,
        } => {
            if let Some(dropped) = dropped {
                tracing::warn!(
                    worker = worker.id(),
                    pid = worker.pid(),
                    dropped,
                    "worker at its open-file limit dropped connections"
                );
            }
            core.dispatcher().ack(worker, &seqs, open)
        }
        FromWorker::Load { open } => {
            core.dispatcher().report_load(worker, open);
            crate::primary::traffic::steering::report_load(core, worker, open);
        }
        FromWorker::Message { data } => message_from_worker(core, worker, data),
        FromWorker::Returned { listener, seqs } => core
            .dispatcher()
            .give_back(worker, listener, seqs.len(), packet.fds)
            .map_err(Error::Protocol)?,
        FromWorker::Disconnecting => {
            worker
                .shared
                .exited_after_disconnect
                .store(true, Ordering::Release);
            core.dispatcher().stop_new(worker);
            // The fence the worker waits for before it closes the channel: nothing is handed
            // to it after this (`stop_new` took it off every listener under the dispatcher's
            // lock, and only a later `listen`, read after this packet, adds one back), so what
            // it received before can still be given back.
            let _ = worker.send_packet(&ToWorker::Disconnect);
        }
    }
    Ok(())
}

/// Answers `hello` with `welcome`, then lets the packets queued for the worker flow: sent
/// before the handshake, they come after it, in order.
async fn hello(
    core: &Core,
    worker: &WorkerHandle,
    channel: &Arc<AsyncChannel>,
    version: u32,
) -> Result<()> {
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
    if let Some(queue) = worker.take_outbox() {
        task::spawn(
            "ipc-writer",
            write_queue(
                core.dispatcher().clone(),
                Arc::downgrade(&worker.shared),
                channel.clone(),
                queue,
            ),
        );
    }
    if core.expect_protocol() {
        readiness::set_online(core, worker);
    }
    Ok(())
}

/// A worker's `listen` request.
struct ListenRequest {
    req: u64,
    kind: SocketKind,
    address: String,
    mode: Option<Mode>,
    index: u32,
}

/// Answers a `listen` request: binds (once per key), then hands out the socket (shared,
/// reuseport) or registers the worker for handoffs (round-robin).
async fn listen(
    core: &Core,
    worker: &WorkerHandle,
    channel: &Arc<AsyncChannel>,
    request: ListenRequest,
) -> Result<()> {
    let ListenRequest {
        req,
        kind,
        address,
        mode,
        index,
    } = request;
    let mode = crate::primary::traffic::steering::effective(
        core,
        effective_mode(kind, mode.unwrap_or(core.opts().mode)),
    );
    let key = ListenKey {
        kind,
        address: address.clone(),
        mode,
        index,
    };
    let bound = core
        .listeners()
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
            let (error, errno) = match e {
                Error::Listen { source, .. } => (source.to_string(), errno_of(&source)),
                other => (other.to_string(), None),
            };
            let reply = encode(&ToWorker::ListenError { req, error, errno })?;
            channel.send(&reply, &[]).await?;
            return Ok(());
        }
    };
    if fresh {
        tracing::info!(address = %listener.local, mode = mode.as_str(), "listening");
    }
    listener.hold(worker.unique_id());
    let reply = encode(&ToWorker::Listening {
        req,
        listener: listener.id,
        mode,
        address: listener.local.clone(),
        report_load: core.opts().balance == Balance::LeastConn,
        ack_every: core.opts().ack_every(),
    })?;
    match &socket {
        Some(socket) => channel.send(&reply, &[socket.as_raw_fd()]).await?,
        None => channel.send(&reply, &[]).await?,
    }
    if mode == Mode::RoundRobin {
        core.dispatcher().add_target(
            worker,
            crate::primary::traffic::dispatch::sink::Sink::Forkline(channel.clone()),
            listener.id,
        );
        if fresh {
            crate::primary::traffic::dispatch::accept::start_accepting(core, &listener);
        }
    }
    // Steer mode: a worker ready already is steered to from now on (before `listening`).
    crate::primary::traffic::steering::listening(worker, &listener);
    core.events().emit(Event::Listening {
        worker: worker.clone(),
        address: listener.local.clone(),
    });
    if core.opts().readiness == Readiness::Listen {
        readiness::set_ready(core, worker);
    }
    Ok(())
}

/// The errno a bind error stands for (what a Node worker's `queryServer` or a trapped
/// `bind()` is answered with); EINVAL when it carries none.
pub(crate) fn bind_errno(error: &Error) -> i32 {
    match error {
        Error::Listen { source, .. } | Error::Io(source) => {
            errno_of(source).unwrap_or(libc::EINVAL)
        }
        _ => libc::EINVAL,
    }
}

/// The OS error number behind a bind error, or the one its kind stands for (a live Unix socket
/// found by forkline itself is EADDRINUSE).
pub(crate) fn errno_of(error: &std::io::Error) -> Option<i32> {
    use std::io::ErrorKind;
    error.raw_os_error().or(match error.kind() {
        ErrorKind::AddrInUse => Some(libc::EADDRINUSE),
        ErrorKind::AddrNotAvailable => Some(libc::EADDRNOTAVAIL),
        ErrorKind::PermissionDenied => Some(libc::EACCES),
        ErrorKind::AlreadyExists => Some(libc::EEXIST),
        ErrorKind::InvalidInput => Some(libc::EINVAL),
        _ => None,
    })
}

/// The mode a listener of `kind` really gets: UDP cannot be handed off per connection (nor
/// steered: forkline's program is for TCP), and SO_REUSEPORT means nothing for Unix sockets.
pub(crate) fn effective_mode(kind: SocketKind, wanted: Mode) -> Mode {
    match (kind, wanted) {
        (SocketKind::Udp, Mode::Reuseport | Mode::Steer) => Mode::Reuseport,
        (SocketKind::Udp, _) => Mode::Shared,
        (SocketKind::Unix, Mode::Reuseport | Mode::Steer) => Mode::Shared,
        (_, Mode::Proxy) => Mode::RoundRobin,
        (_, mode) => mode,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
