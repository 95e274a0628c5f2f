//! Serving a Node worker's own cluster channel (`../shared/NODE_PROTOCOL.md`): an unmodified
//! Node program started with `NODE_UNIQUE_ID` and `NODE_CHANNEL_FD` is a `cluster` worker, and
//! every `server.listen(...)` it makes asks this primary (`queryServer`). The primary answers
//! with a listening socket it owns — the shared one, or the worker's own `SO_REUSEPORT` socket
//! in reuseport and steer modes — so the kernel (and forkline's BPF steering) balances Node
//! workers with no primary on the connection path. Also `online`, `listening`, `close`,
//! `exitedAfterDisconnect`, `disconnect`, and messages both ways (`process.send`).
//!
//! In round-robin mode the primary accepts and hands each connection to the worker's server
//! with Node's `newconn` (`newconn.rs`); the servers themselves are `listen.rs`.
//!
//! The channel is a stream socket of newline-delimited JSON. A message that carries a socket
//! (`NODE_HANDLE`) sends it with the line's first byte; the worker acknowledges it, and until
//! then nothing else is written (Node's own rule for handles in flight).

mod listen;
mod newconn;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::process::Child;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use crate::primary::core::Core;
use crate::primary::handle::{ExitInfo, WorkerHandle};
use crate::primary::lifecycle::{ipc, readiness};
use crate::primary::traffic::dispatch::sink::Handoff;
use crate::primary::traffic::listeners::BoundListener;
use crate::protocol::ToWorker;

/// Longest line read from a Node worker (a message it sends); a longer one breaks the protocol.
const MAX_LINE: usize = 1 << 20;

/// Lines read from a dead worker's channel at the most: what it can have left queued.
const MAX_DRAINED: usize = 10_000;

/// A line for the worker, with the socket it carries, if any.
struct Outgoing {
    line: String,
    socket: Option<Arc<OwnedFd>>,
    /// Times the worker answered NACK (the fd did not arrive: it is at its fd limit).
    nacks: u8,
}

/// NACKs after which a handle is given up (Node's own `MAX_HANDLE_RETRANSMISSIONS`).
const MAX_NACKS: u8 = 3;

/// One Node worker's channel, as the primary serves it.
struct Channel<'a> {
    core: &'a Core,
    worker: &'a WorkerHandle,
    writer: OwnedWriteHalf,
    /// The primary's own `seq`, one per message it starts.
    seq: u64,
    /// Lines waiting while a socket is in flight (not acknowledged yet).
    queued: VecDeque<Outgoing>,
    /// A socket was sent and the worker has not acknowledged it yet.
    in_flight: Option<Outgoing>,
    /// The worker's servers, by the key the primary gave each.
    servers: HashMap<String, Arc<BoundListener>>,
    /// The key of the worker's server of each listener (by its id).
    keys: HashMap<u64, String>,
    /// Where the dispatcher sends this worker's connections (round-robin).
    handoffs: UnboundedSender<Handoff>,
    /// Connections sent with `newconn` and not answered yet, by the `seq` of that message.
    handed: HashMap<u64, newconn::Handed>,
}

/// Serves the worker's Node channel until the process exits, then reads what it left queued.
/// Returns how the process ended.
pub(crate) async fn serve(
    core: &Core,
    worker: &WorkerHandle,
    mut child: Child,
    stream: std::os::unix::net::UnixStream,
) -> ExitInfo {
    let (reader, writer) = match stream
        .set_nonblocking(true)
        .and_then(|()| UnixStream::from_std(stream))
    {
        Ok(stream) => stream.into_split(),
        Err(e) => {
            ipc::worker_error(core, worker, format!("node channel: {e}"));
            return wait(worker, &mut child).await;
        }
    };
    let mut lines = LineReader::new(reader);
    let mut outbox = worker.take_outbox();
    let (handoffs, mut handoff_queue) = unbounded_channel();
    let mut channel = Channel {
        core,
        worker,
        writer,
        seq: 0,
        queued: VecDeque::new(),
        in_flight: None,
        servers: HashMap::new(),
        keys: HashMap::new(),
        handoffs,
        handed: HashMap::new(),
    };
    let mut open = true;
    let status = loop {
        tokio::select! {
            biased;
            status = child.wait() => break status,
            // Cancel-safe: a read that loses the race reads nothing, and a line read in part
            // stays in the reader's buffer for the next turn.
            read = lines.fill(), if open => match read {
                Ok(true) => {
                    while let Some(line) = lines.next_line() {
                        channel.on_line(&line).await;
                    }
                    if lines.overlong() {
                        ipc::worker_error(core, worker, "node channel: line too long".into());
                        open = false;
                    }
                }
                Ok(false) | Err(_) => {
                    open = false;
                    ipc::disconnected(core, worker);
                    // Nothing can be accepted on a closed channel.
                    channel.give_back_all(&mut handoff_queue);
                }
            },
            Some(handoff) = handoff_queue.recv(), if open => channel.newconn(handoff).await,
            packet = next_packet(&mut outbox), if open => match packet {
                Some(packet) => channel.relay_queued(&packet).await,
                None => outbox = None,
            },
        }
    };
    // The process is gone: everything it sent is in the socket already.
    let mut drained = 0;
    while open && drained < MAX_DRAINED {
        match tokio::time::timeout(std::time::Duration::ZERO, lines.fill()).await {
            Ok(Ok(true)) => {
                while let Some(line) = lines.next_line() {
                    channel.on_line(&line).await;
                }
            }
            _ => break,
        }
        drained += 1;
    }
    channel.give_back_all(&mut handoff_queue);
    ipc::exit_info(worker, status)
}

/// The next packet the rest of the primary queued for the worker (messages, `disconnect`).
async fn next_packet(
    outbox: &mut Option<tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>>,
) -> Option<Vec<u8>> {
    match outbox {
        Some(queue) => queue.recv().await,
        None => std::future::pending().await,
    }
}

/// Newline-delimited lines off the channel, read without losing any to a lost race.
struct LineReader {
    reader: OwnedReadHalf,
    buf: Vec<u8>,
}

impl LineReader {
    fn new(reader: OwnedReadHalf) -> LineReader {
        LineReader {
            reader,
            buf: Vec::new(),
        }
    }

    /// Reads what is there (cancel-safe); false at end of file.
    async fn fill(&mut self) -> io::Result<bool> {
        self.buf.reserve(8192);
        Ok(self.reader.read_buf(&mut self.buf).await? > 0)
    }

    /// The next complete line, if one is buffered.
    fn next_line(&mut self) -> Option<String> {
        let end = self.buf.iter().position(|&b| b == b'\n')?;
        let line: Vec<u8> = self.buf.drain(..=end).collect();
        Some(String::from_utf8_lossy(&line).into_owned())
    }

    /// True when more than [`MAX_LINE`] bytes wait without a newline.
    fn overlong(&self) -> bool {
        self.buf.len() > MAX_LINE
    }
}

async fn wait(worker: &WorkerHandle, child: &mut Child) -> ExitInfo {
    let status = child.wait().await;
    ipc::exit_info(worker, status)
}

impl Channel<'_> {
    /// One line from the worker.
    async fn on_line(&mut self, line: &str) {
        let line = line.trim_end_matches('\n');
        if line.is_empty() {
            return;
        }
        let message: Value = match serde_json::from_str(line) {
            Ok(message) => message,
            Err(e) => {
                ipc::worker_error(
                    self.core,
                    self.worker,
                    format!("node channel: bad JSON: {e}"),
                );
                return;
            }
        };
        let internal = message["cmd"]
            .as_str()
            .filter(|cmd| cmd.len() > 5 && cmd.starts_with("NODE_"))
            .map(str::to_string);
        match internal.as_deref() {
            None => self.user_message(message),
            Some("NODE_HANDLE_ACK") => self.acknowledged().await,
            Some("NODE_HANDLE_NACK") => self.refused().await,
            // A socket the worker sent (`process.send(m, socket)`): its fd was not taken (a
            // plain read drops it), the message is delivered, and the worker hears ACK so its
            // queue moves on.
            Some("NODE_HANDLE") => {
                self.write_now(json!({"cmd": "NODE_HANDLE_ACK"}).to_string(), None)
                    .await;
                self.user_message(message["msg"].clone());
            }
            Some("NODE_CLUSTER") => self.cluster_message(&message).await,
            Some(_) => {}
        }
    }

    /// A message of the program's own (`process.send`).
    fn user_message(&self, payload: Value) {
        ipc::message_from_worker(self.core, self.worker, payload);
    }

    async fn cluster_message(&mut self, message: &Value) {
        let seq = message["seq"].clone();
        match message["act"].as_str() {
            Some("online") => {
                self.worker
                    .shared
                    .speaks_protocol
                    .store(true, Ordering::Release);
                readiness::set_online(self.core, self.worker);
            }
            Some("queryServer") => self.query_server(message, seq).await,
            Some("listening") => self.listening(message),
            Some("close") => self.close(message),
            Some("exitedAfterDisconnect") => {
                self.worker
                    .shared
                    .exited_after_disconnect
                    .store(true, Ordering::Release);
                self.core
                    .transition(self.worker, crate::primary::handle::WorkerState::Draining);
                let reply = self.cluster_reply(json!({"ack": seq}));
                self.send(reply, None).await;
            }
            // A reply to what the primary sent: `accepted` of a `newconn`.
            None => self.settle(message),
            Some(_) => {}
        }
    }

    /// What the rest of the primary queued for the worker, in Node's words.
    async fn relay_queued(&mut self, packet: &[u8]) {
        match serde_json::from_slice::<ToWorker>(packet) {
            Ok(ToWorker::Message { data }) => self.send(data, None).await,
            Ok(ToWorker::Disconnect) => {
                let line = self.cluster_reply(json!({"act": "disconnect"}));
                self.send(line, None).await;
            }
            _ => {}
        }
    }

    /// A `NODE_CLUSTER` message of the primary's, with its `seq`.
    fn cluster_reply(&mut self, mut fields: Value) -> Value {
        self.seq += 1;
        fields["cmd"] = json!("NODE_CLUSTER");
        fields["seq"] = json!(self.seq);
        fields
    }

    /// Sends `message` (with `socket`), or queues it behind a socket in flight.
    async fn send(&mut self, message: Value, socket: Option<Arc<OwnedFd>>) {
        let outgoing = Outgoing {
            line: message.to_string(),
            socket,
            nacks: 0,
        };
        if self.in_flight.is_some() {
            self.queued.push_back(outgoing);
            return;
        }
        self.write(outgoing).await;
    }

    /// Writes at once, ahead of the queue (an acknowledgement is never queued).
    async fn write_now(&mut self, line: String, socket: Option<Arc<OwnedFd>>) {
        self.write(Outgoing {
            line,
            socket,
            nacks: 0,
        })
        .await;
    }

    async fn write(&mut self, outgoing: Outgoing) {
        let result = match &outgoing.socket {
            Some(socket) => self.write_with(&outgoing.line, socket).await,
            None => {
                let mut bytes = outgoing.line.clone().into_bytes();
                bytes.push(b'\n');
                self.writer.write_all(&bytes).await
            }
        };
        if let Err(e) = result {
            tracing::debug!(worker = self.worker.id(), error = %e, "node channel: write failed");
            return;
        }
        if outgoing.socket.is_some() {
            self.in_flight = Some(outgoing);
        }
    }

    /// Writes `line` with `socket` attached to its first byte.
    async fn write_with(&mut self, line: &str, socket: &OwnedFd) -> io::Result<()> {
        let bytes = format!("{line}\n").into_bytes();
        let stream: &UnixStream = self.writer.as_ref();
        stream
            .async_io(Interest::WRITABLE, || {
                crate::sys::send_packet(stream.as_fd(), &bytes[..1], &[socket.as_raw_fd()], true)
            })
            .await?;
        self.writer.write_all(&bytes[1..]).await
    }

    /// The worker took the socket in flight: what waited behind it goes out.
    async fn acknowledged(&mut self) {
        self.in_flight = None;
        while self.in_flight.is_none() {
            let Some(next) = self.queued.pop_front() else {
                break;
            };
            self.write(next).await;
        }
    }

    /// The worker did not get the socket in flight: it is sent again, up to [`MAX_NACKS`]
    /// times; then it is given up (a connection goes to another worker) and the queue moves on.
    async fn refused(&mut self) {
        let Some(mut again) = self.in_flight.take() else {
            return;
        };
        again.nacks += 1;
        if again.nacks < MAX_NACKS {
            self.write(again).await;
            return;
        }
        tracing::warn!(
            worker = self.worker.id(),
            pid = self.worker.pid(),
            "node channel: the worker refused a socket {MAX_NACKS} times (at its fd limit?); given up"
        );
        if let Some(socket) = again.socket.take() {
            drop(again);
            self.give_up_handoff(&socket);
        }
        self.acknowledged().await;
    }
}
