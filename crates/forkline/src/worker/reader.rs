//! The worker's reader: the only reader of the IPC channel. It routes handed-off connections to
//! their listener's queue (acknowledging them in batches of the primary's `ack_every`), answers
//! pending `listen` requests, forwards messages, and exits the process when the primary is
//! gone. It runs as a thread (`connect`) or, to save a thread hop per batch of connections, as a
//! task on the caller's tokio runtime (`connect_async`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{ListenReply, Shared};
use crate::error::Error;
use crate::protocol::channel::Packet;
use crate::protocol::{FromWorker, Mode, ToWorker};

/// What only the reader keeps: where user messages go (none after `disconnect`), and the
/// handoffs it has not acknowledged yet with how many may wait (the primary's `ack_every`).
struct ReaderState {
    messages: Option<mpsc::UnboundedSender<serde_json::Value>>,
    unacked: Vec<u64>,
    ack_every: u64,
    /// Handoffs lost at the fd limit since the last ack.
    dropped: u64,
}

impl ReaderState {
    fn new(messages: mpsc::UnboundedSender<serde_json::Value>) -> Self {
        Self {
            messages: Some(messages),
            unacked: Vec::new(),
            ack_every: 1,
            dropped: 0,
        }
    }
}

pub(crate) fn start(shared: Arc<Shared>, messages: mpsc::UnboundedSender<serde_json::Value>) {
    std::thread::Builder::new()
        .name("forkline-ipc".into())
        .spawn(move || run(shared, messages))
        .expect("failed to start the forkline IPC reader thread");
}

/// Starts the reader as a task on the current tokio runtime.
pub(crate) fn start_async(
    shared: Arc<Shared>,
    messages: mpsc::UnboundedSender<serde_json::Value>,
) -> std::io::Result<()> {
    let readiness = crate::sys::async_fd(
        shared.channel.try_clone_fd()?,
        tokio::io::Interest::READABLE,
    )?;
    tokio::spawn(async move {
        let mut state = ReaderState::new(messages);
        loop {
            let received = match readiness.readable().await {
                Ok(mut guard) => match guard.try_io(|_| shared.channel.try_recv()) {
                    Ok(received) => received,
                    Err(_would_block) => continue,
                },
                Err(e) => Err(e),
            };
            if !handle(&shared, received, &mut state) {
                return;
            }
        }
    });
    Ok(())
}

fn run(shared: Arc<Shared>, messages: mpsc::UnboundedSender<serde_json::Value>) {
    let mut state = ReaderState::new(messages);
    while handle(&shared, shared.channel.recv(), &mut state) {}
}

/// Handles one receive result; false when the reader should stop.
fn handle(
    shared: &Shared,
    received: std::io::Result<Option<Packet>>,
    state: &mut ReaderState,
) -> bool {
    match received {
        Ok(Some(packet)) => {
            if let Err(e) = route(shared, packet, state) {
                eprintln!("forkline worker {}: {e}", shared.id);
            }
            true
        }
        Ok(None) | Err(_) => {
            if shared.closing.load(Ordering::Acquire) {
                // Disconnected: a `listen` still waiting for its answer gets none (the primary's
                // answer, if it sent one, found the channel closed) and fails now.
                shared.replies.lock().unwrap().clear();
                return false;
            }
            // The primary is gone: a worker never outlives it.
            eprintln!(
                "forkline worker {}: the primary closed the IPC channel; exiting",
                shared.id
            );
            std::process::exit(1);
        }
    }
}

fn route(shared: &Shared, packet: Packet, state: &mut ReaderState) -> Result<(), Error> {
    let message: ToWorker = packet.decode()?;
    let mut fds = packet.fds.into_iter();
    match message {
        ToWorker::Conns {
            listener,
            seqs,
            peers,
        } => {
            let queue = shared.queues.lock().unwrap().get(&listener).cloned();
            let mut taken = 0u64;
            let mut dropped = 0u64;
            let mut returned = (Vec::new(), Vec::new());
            let mut peers = peers.iter().map(|p| p.parse().ok());
            for seq in seqs {
                let peer = peers.next().flatten();
                // At the fd limit the kernel delivers only the first fds of a packet.
                let Some(fd) = fds.next() else {
                    dropped += 1;
                    state.unacked.push(seq);
                    continue;
                };
                let refused = match &queue {
                    Some(queue) => queue.send((fd, peer)).err().map(|back| back.0 .0),
                    None => Some(fd),
                };
                match refused {
                    None => {
                        taken += 1;
                        state.unacked.push(seq);
                    }
                    Some(fd) => {
                        returned.0.push(seq);
                        returned.1.push(fd);
                    }
                }
            }
            if dropped > 0 {
                // Those clients see their connection closed; the worker goes on.
                eprintln!(
                    "forkline worker {}: at its open-file limit; {dropped} connection(s) dropped",
                    shared.id
                );
                state.dropped += dropped;
            }
            if !returned.0.is_empty() {
                // The listener was dropped (its queue is closed) or never known: the
                // connections go back to the primary, which serves them elsewhere.
                shared.queues.lock().unwrap().remove(&listener);
                give_back(shared, listener, returned)?;
            }
            let open = if shared.report_load.load(Ordering::Relaxed) {
                Some(shared.open.fetch_add(taken, Ordering::AcqRel) + taken)
            } else {
                None
            };
            if open.is_some() || state.dropped > 0 || state.unacked.len() as u64 >= state.ack_every
            {
                send_ack(shared, state, open)?;
            }
        }
        ToWorker::Listening {
            req,
            listener,
            mode,
            address,
            report_load,
            ack_every,
        } => {
            if report_load {
                shared.report_load.store(true, Ordering::Relaxed);
            }
            state.ack_every = ack_every.max(1);
            let queue = (mode == Mode::RoundRobin).then(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                if !*shared.disconnected.borrow() {
                    shared.queues.lock().unwrap().insert(listener, tx);
                }
                rx
            });
            reply(
                shared,
                req,
                Ok(ListenReply {
                    mode,
                    address,
                    socket: fds.next(),
                    queue,
                    index: None,
                }),
            );
        }
        ToWorker::ListenError { req, error, errno } => {
            // The OS error itself when the primary sent its number: `kind()` and
            // `raw_os_error()` then work as for a bind in this process.
            let source = match errno {
                Some(errno) => std::io::Error::from_raw_os_error(errno),
                None => std::io::Error::other(error),
            };
            reply(
                shared,
                req,
                Err(Error::Listen {
                    address: String::new(),
                    source,
                }),
            )
        }
        ToWorker::Message { data } => {
            if let Some(tx) = &state.messages {
                let _ = tx.send(data);
            }
        }
        ToWorker::Disconnect => {
            // Whatever was held back: the primary's count of this worker's credit stays true.
            send_ack(shared, state, None)?;
            shared.mark_disconnected();
            state.messages = None;
            if shared.closing.load(Ordering::Acquire) {
                // The answer to this worker's own `disconnecting`: the primary sends nothing
                // after it, so the channel closes now (the next read sees the end).
                shared.channel.shutdown();
            } else {
                // The primary's own `disconnect`, its last packet: the listeners yield nothing
                // new, and the channel closes once the connections they gave have ended — as a
                // Node worker's closes once its servers closed (their connections ended) —
                // while other work of the worker (a client connection, a timer) may go on.
                shared.close_when_idle.store(true, Ordering::Release);
                shared.close_if_idle();
            }
        }
        ToWorker::Error { error } => return Err(Error::Protocol(error)),
        ToWorker::Welcome { .. } => return Err(Error::Protocol("unexpected welcome".into())),
    }
    Ok(())
}

/// Sends connections of `listener` back to the primary with their fds.
fn give_back(
    shared: &Shared,
    listener: u64,
    (seqs, fds): (Vec<u64>, Vec<std::os::fd::OwnedFd>),
) -> Result<(), Error> {
    use std::os::fd::AsRawFd;
    let packet = crate::protocol::channel::encode(&FromWorker::Returned { listener, seqs })?;
    let raw: Vec<i32> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    shared.channel.send(&packet, &raw)?;
    Ok(())
}

/// Acknowledges (and forgets) the held-back handoffs, if any, with the count of those that
/// were dropped at the fd limit.
fn send_ack(shared: &Shared, state: &mut ReaderState, open: Option<u64>) -> Result<(), Error> {
    if state.unacked.is_empty() && open.is_none() {
        return Ok(());
    }
    let seqs = std::mem::take(&mut state.unacked);
    let dropped = std::mem::take(&mut state.dropped);
    shared.channel.send_msg(&FromWorker::Ack {
        seqs,
        open,
        dropped: (dropped > 0).then_some(dropped),
    })?;
    Ok(())
}

fn reply(shared: &Shared, req: u64, answer: Result<ListenReply, Error>) {
    if let Some(tx) = shared.replies.lock().unwrap().remove(&req) {
        let _ = tx.send(answer);
    }
}

/// Tells the primary how many connections are open (least-conn), if it asked. Never waits: it
/// runs as a connection closes, and a primary slow to read must not hold the close up. A report
/// that finds the channel full is skipped; the next one carries the count again.
pub(crate) fn report_load(shared: &Shared) {
    if shared.report_load.load(Ordering::Relaxed) {
        let open = shared.open.load(Ordering::Acquire);
        if let Ok(packet) = crate::protocol::channel::encode(&FromWorker::Load { open }) {
            let _ = shared.channel.try_send(&packet);
        }
    }
}
