//! The worker side: connect to the primary over `FORKLINE_IPC_FD`, exchange messages, and listen
//! "through" the primary. One reader thread per process serves the channel; the blocking and the
//! tokio APIs are thin fronts over the same queues.

mod connection;
mod indexes;
mod listener;
mod reader;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

pub use connection::Connection;
pub use listener::{AsyncTcpListener, AsyncUnixListener, TcpListener, UnixListener};

use crate::error::{Error, Result};
use crate::protocol::channel::BlockingChannel;
use crate::protocol::wire::{ENV_IPC_FD, ENV_WORKER_ID};
use crate::protocol::{FromWorker, Mode, SocketKind, ToWorker, PROTOCOL_VERSION};
use crate::sys;

/// A handed-off connection and, when the primary knew it, the client's address.
pub(crate) type Handed = (OwnedFd, Option<std::net::SocketAddr>);

/// The answer to a `listen` request.
#[derive(Debug)]
pub(crate) struct ListenReply {
    pub mode: Mode,
    pub address: String,
    pub socket: Option<OwnedFd>,
    /// Round-robin: the queue of handed-off connections, registered by the reader thread
    /// before it reads the next packet, so no connection arrives before its queue exists.
    pub queue: Option<mpsc::UnboundedReceiver<Handed>>,
    /// The listen index this listener holds (set by the caller once the answer came).
    pub index: Option<indexes::ListenIndex>,
}

pub(crate) struct Shared {
    pub id: usize,
    pub channel: BlockingChannel,
    pub next_req: AtomicU64,
    pub replies: Mutex<HashMap<u64, oneshot::Sender<Result<ListenReply>>>>,
    /// Handed-off connections per round-robin listener.
    pub queues: Mutex<HashMap<u64, mpsc::UnboundedSender<Handed>>>,
    pub messages: Mutex<Option<mpsc::UnboundedReceiver<serde_json::Value>>>,
    pub disconnected: watch::Sender<bool>,
    /// Set when this worker closes the channel itself, so EOF is not "primary gone".
    pub closing: AtomicBool,
    /// Open connections, reported for least-conn balancing.
    pub open: AtomicU64,
    /// Connections accepted through forkline's listeners and still open (every one, counted
    /// for least-conn or not).
    pub live: AtomicU64,
    /// The primary asked this worker to disconnect: the channel closes once `live` is 0 (its
    /// servers' connections ended, as a Node worker's channel closes once its servers closed).
    pub close_when_idle: AtomicBool,
    pub report_load: AtomicBool,
    /// Read end of a pipe that becomes readable on disconnect (wakes blocking accepts).
    pub wake_read: OwnedFd,
    pub wake_write: Mutex<Option<OwnedFd>>,
    /// Open listeners per address (Node's per-call handle index).
    pub indexes: Arc<indexes::ListenIndexes>,
}

/// How long [`Worker::disconnect`] waits for the primary's answer before it closes the channel
/// anyway.
pub const DISCONNECT_FENCE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// This process's connection to its primary (Node's `cluster.worker`). Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("id", &self.id()).finish()
    }
}

static WORKER: OnceLock<Result<Worker, String>> = OnceLock::new();

/// Connects to the primary (once per process; later calls return the same handle).
///
/// Fails with [`Error::NotAWorker`] when this process was not started by a forkline primary.
pub fn connect() -> Result<Worker> {
    WORKER
        .get_or_init(|| Worker::handshake(ReaderKind::Thread).map_err(|e| e.to_string()))
        .clone()
        .map_err(Error::NotAWorker)
}

/// Like [`connect`], but serves the IPC channel from a task on the current tokio runtime
/// instead of a thread: handed-off connections reach the accept loop without a cross-thread
/// wake-up. The runtime must outlive the worker's use of forkline (it normally runs `main`).
pub async fn connect_async() -> Result<Worker> {
    WORKER
        .get_or_init(|| Worker::handshake(ReaderKind::Task).map_err(|e| e.to_string()))
        .clone()
        .map_err(Error::NotAWorker)
}

/// Where the IPC reader runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReaderKind {
    Thread,
    Task,
}

impl Worker {
    fn handshake(reader: ReaderKind) -> Result<Worker> {
        let id: usize = read_env(ENV_WORKER_ID)?;
        let fd: i32 = read_env(ENV_IPC_FD)?;
        let channel = BlockingChannel::new(
            sys::adopt_inherited_fd(fd)
                .map_err(|e| Error::NotAWorker(format!("{ENV_IPC_FD}={fd}: {e}")))?,
        );
        channel.send_msg(&FromWorker::Hello {
            version: PROTOCOL_VERSION,
            pid: std::process::id(),
        })?;
        match channel.recv()? {
            Some(packet) => match packet.decode::<ToWorker>()? {
                ToWorker::Welcome { .. } => {}
                ToWorker::Error { error } => return Err(Error::Protocol(error)),
                other => return Err(Error::Protocol(format!("expected welcome, got {other:?}"))),
            },
            None => return Err(Error::Protocol("primary closed the channel".into())),
        }
        let (wake_read, wake_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
        let (msg_tx, msg_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            id,
            channel,
            next_req: AtomicU64::new(1),
            replies: Mutex::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
            messages: Mutex::new(Some(msg_rx)),
            disconnected: watch::channel(false).0,
            closing: AtomicBool::new(false),
            open: AtomicU64::new(0),
            live: AtomicU64::new(0),
            close_when_idle: AtomicBool::new(false),
            report_load: AtomicBool::new(false),
            wake_read,
            wake_write: Mutex::new(Some(wake_write)),
            indexes: Arc::default(),
        });
        match reader {
            ReaderKind::Thread => reader::start(shared.clone(), msg_tx),
            ReaderKind::Task => reader::start_async(shared.clone(), msg_tx)?,
        }
        Ok(Worker { shared })
    }

    /// This worker's stable slot id (0..N-1).
    pub fn id(&self) -> usize {
        self.shared.id
    }

    /// Sends a message to the primary (any serde type, JSON on the wire).
    pub fn send<T: Serialize>(&self, msg: &T) -> Result<()> {
        let data = serde_json::to_value(msg).map_err(|e| Error::Protocol(e.to_string()))?;
        self.shared.channel.send_msg(&FromWorker::Message { data })
    }

    /// Takes the stream of messages from the primary (once; later calls get `None`). Messages
    /// are JSON values; decode them with [`decode`].
    pub fn messages(&self) -> Option<Messages> {
        self.shared
            .messages
            .lock()
            .unwrap()
            .take()
            .map(|rx| Messages { rx })
    }

    /// True once the primary asked this worker to stop (or it disconnected itself).
    pub fn is_disconnected(&self) -> bool {
        *self.shared.disconnected.borrow()
    }

    /// Resolves when the primary asks this worker to stop: stop accepting, finish, and exit.
    pub async fn disconnected(&self) {
        let mut rx = self.shared.disconnected.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Disconnects from the primary on purpose (Node's `worker.disconnect()`): listeners stop
    /// yielding connections, and the primary will not restart this worker when it exits.
    ///
    /// The channel closes one round trip later: the primary answers `disconnecting` with
    /// `disconnect` once it sends this worker nothing more, and the reader closes the channel
    /// then. Connections the primary handed over meanwhile are given back to it (they reach
    /// another worker), not lost with the channel. Without an answer within
    /// [`DISCONNECT_FENCE_TIMEOUT`] (a primary that predates it, or one that is stuck) the
    /// channel closes anyway.
    pub fn disconnect(&self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.mark_disconnected();
        if self
            .shared
            .channel
            .send_msg(&FromWorker::Disconnecting)
            .is_err()
        {
            // The primary is gone: nothing more will come.
            self.shared.channel.shutdown();
            return;
        }
        let shared = self.shared.clone();
        let _ = std::thread::Builder::new()
            .name("forkline-disconnect".into())
            .spawn(move || {
                std::thread::sleep(DISCONNECT_FENCE_TIMEOUT);
                shared.channel.shutdown();
            });
    }

    /// Listens on a TCP address through the primary (blocking API).
    pub fn listen(&self, address: &str) -> Result<TcpListener> {
        let reply = self.request_listen(SocketKind::Tcp, address, None)?;
        TcpListener::new(self.clone(), reply, address)
    }

    /// Listens on a TCP address with a specific mode for this listener.
    pub fn listen_with_mode(&self, address: &str, mode: Mode) -> Result<TcpListener> {
        let reply = self.request_listen(SocketKind::Tcp, address, Some(mode))?;
        TcpListener::new(self.clone(), reply, address)
    }

    /// Listens on a Unix socket path through the primary (blocking API).
    /// A relative path is this worker's: it is made absolute here, against the worker's own
    /// working directory, before the primary binds it.
    pub fn listen_unix(&self, path: &str) -> Result<UnixListener> {
        let path = absolute_path(path)?;
        let reply = self.request_listen(SocketKind::Unix, &path, None)?;
        UnixListener::new(self.clone(), reply, &path)
    }

    /// Listens on a TCP address through the primary (tokio API). Call inside a runtime.
    pub async fn listen_async(&self, address: &str) -> Result<AsyncTcpListener> {
        self.listen_async_with_mode(address, None).await
    }

    /// [`listen_async`](Self::listen_async) with a specific mode for this listener.
    pub async fn listen_async_with_mode(
        &self,
        address: &str,
        mode: Option<Mode>,
    ) -> Result<AsyncTcpListener> {
        let reply = self
            .request_listen_async(SocketKind::Tcp, address, mode)
            .await?;
        AsyncTcpListener::new(self.clone(), reply, address)
    }

    /// Listens on a Unix socket path through the primary (tokio API).
    /// A relative path is resolved against this worker's working directory.
    pub async fn listen_unix_async(&self, path: &str) -> Result<AsyncUnixListener> {
        let path = absolute_path(path)?;
        let reply = self
            .request_listen_async(SocketKind::Unix, &path, None)
            .await?;
        AsyncUnixListener::new(self.clone(), reply, &path)
    }

    /// Binds a UDP socket shared with the other workers (`shared` mode, or one SO_REUSEPORT
    /// socket per worker in `reuseport` mode).
    pub fn bind_udp(&self, address: &str) -> Result<std::net::UdpSocket> {
        let reply = self.request_listen(SocketKind::Udp, address, None)?;
        let socket = reply.socket.ok_or_else(|| {
            Error::Protocol(format!("no socket passed for udp listener {address}"))
        })?;
        Ok(std::net::UdpSocket::from(socket))
    }

    fn request_listen(
        &self,
        kind: SocketKind,
        address: &str,
        mode: Option<Mode>,
    ) -> Result<ListenReply> {
        let (index, answer) = self.send_listen(kind, address, mode)?;
        listen_answer(answer.blocking_recv(), address, index)
    }

    async fn request_listen_async(
        &self,
        kind: SocketKind,
        address: &str,
        mode: Option<Mode>,
    ) -> Result<ListenReply> {
        let (index, answer) = self.send_listen(kind, address, mode)?;
        listen_answer(answer.await, address, index)
    }

    /// The index of a new stream listener of `address`. UDP sockets are always index 0 (one
    /// shared socket): they are handed over as std sockets, whose drop forkline cannot see.
    fn listen_index(
        &self,
        kind: SocketKind,
        address: &str,
        mode: Option<Mode>,
    ) -> Option<indexes::ListenIndex> {
        (kind != SocketKind::Udp).then(|| self.shared.indexes.take(kind, address, mode))
    }

    /// Sends a `listen` request under a new listen index (the first half of
    /// [`request_listen`](Self::request_listen) and of its async twin): the index, and where the
    /// primary's answer will come.
    fn send_listen(
        &self,
        kind: SocketKind,
        address: &str,
        mode: Option<Mode>,
    ) -> Result<(
        Option<indexes::ListenIndex>,
        oneshot::Receiver<Result<ListenReply>>,
    )> {
        let index = self.listen_index(kind, address, mode);
        let req = self.shared.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.shared.replies.lock().unwrap().insert(req, tx);
        self.shared.channel.send_msg(&FromWorker::Listen {
            req,
            kind,
            address: address.to_string(),
            mode,
            index: index.as_ref().map_or(0, |i| i.get()),
        })?;
        Ok((index, rx))
    }
}

impl Shared {
    /// One connection through forkline's listeners fewer: the last one of a disconnected
    /// worker closes the channel.
    pub(crate) fn connection_ended(&self) {
        let before = self
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .unwrap_or(0);
        if before <= 1 {
            self.close_if_idle();
        }
    }

    /// Closes the channel if the primary asked for a disconnect and no connection is left.
    pub(crate) fn close_if_idle(&self) {
        if self.close_when_idle.load(Ordering::Acquire) && self.live.load(Ordering::Acquire) == 0 {
            self.closing.store(true, Ordering::Release);
            self.channel.shutdown();
        }
    }

    /// Stops every listener: queues close once drained, blocking accepts wake up.
    pub(crate) fn mark_disconnected(&self) {
        self.disconnected.send_replace(true);
        self.queues.lock().unwrap().clear();
        if let Some(fd) = self.wake_write.lock().unwrap().take() {
            let _ = nix::unistd::write(&fd, b"x");
        }
    }
}

/// Messages from the primary.
#[derive(Debug)]
pub struct Messages {
    rx: mpsc::UnboundedReceiver<serde_json::Value>,
}

impl Messages {
    /// The next message (tokio API); `None` after disconnect.
    pub async fn recv(&mut self) -> Option<serde_json::Value> {
        self.rx.recv().await
    }

    /// The next message, blocking; `None` after disconnect. Do not call inside a runtime.
    pub fn blocking_recv(&mut self) -> Option<serde_json::Value> {
        self.rx.blocking_recv()
    }
}

/// Decodes a message payload into a serde type.
pub fn decode<T: DeserializeOwned>(payload: serde_json::Value) -> Result<T> {
    serde_json::from_value(payload).map_err(|e| Error::Protocol(e.to_string()))
}

/// The primary's answer to `listen` (the second half of `request_listen`), holding `index`,
/// with the address asked for put into a bind error.
fn listen_answer(
    answer: std::result::Result<Result<ListenReply>, oneshot::error::RecvError>,
    address: &str,
    index: Option<indexes::ListenIndex>,
) -> Result<ListenReply> {
    let reply = answer.map_err(|_| Error::Protocol("the channel closed during listen (the worker was disconnected, or the primary went away)".into()))?;
    let mut reply = reply.map_err(|e| match e {
        Error::Listen { source, .. } => Error::Listen {
            address: address.to_string(),
            source,
        },
        other => other,
    })?;
    reply.index = index;
    Ok(reply)
}

/// `path` made absolute against this process's working directory.
fn absolute_path(path: &str) -> Result<String> {
    let absolute = std::path::absolute(path).map_err(|source| Error::Listen {
        address: path.to_string(),
        source,
    })?;
    absolute
        .into_os_string()
        .into_string()
        .map_err(|_| Error::Listen {
            address: path.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not UTF-8"),
        })
}

fn read_env<T: std::str::FromStr>(name: &str) -> Result<T> {
    let value = std::env::var(name).map_err(|_| Error::NotAWorker(format!("{name} is not set")))?;
    value
        .parse()
        .map_err(|_| Error::NotAWorker(format!("{name}={value:?} is not a number")))
}
