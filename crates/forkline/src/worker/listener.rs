//! Listeners obtained through the primary, blocking and tokio flavours, TCP and Unix. A listener
//! either receives handed-off connections (round-robin) or accepts on a socket the primary
//! passed (shared, reuseport). Either way `accept` returns `Ok(None)` once the primary asked the
//! worker to disconnect, after the connections already handed over have been taken.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use super::connection::Connection;
use super::{Handed, ListenReply, Worker};
use crate::error::{Error, Result};
use crate::protocol::Mode;

/// Where a listener's connections come from (blocking flavour).
#[derive(Debug)]
enum BlockingSource {
    Handoff(Mutex<mpsc::UnboundedReceiver<Handed>>),
    Socket(OwnedFd),
}

/// Where a listener's connections come from (tokio flavour).
#[derive(Debug)]
enum AsyncSource {
    Handoff(tokio::sync::Mutex<mpsc::UnboundedReceiver<Handed>>),
    Socket(AsyncFd<OwnedFd>),
}

/// The passed socket (shared, reuseport) or the handoff queue (round-robin).
type Parts = std::result::Result<OwnedFd, mpsc::UnboundedReceiver<Handed>>;

fn source_parts(reply: ListenReply, address: &str) -> Result<Parts> {
    match reply.mode {
        Mode::RoundRobin => reply.queue.map(Err).ok_or_else(|| Error::Listen {
            address: address.to_string(),
            source: io::Error::other("no handoff queue for a round-robin listener"),
        }),
        _ => {
            let socket = reply.socket.ok_or_else(|| Error::Listen {
                address: address.to_string(),
                source: io::Error::other("the primary passed no socket"),
            })?;
            // All forkline workers accept with poll + non-blocking accept, so the shared flag is
            // safe to set.
            socket2::SockRef::from(&socket).set_nonblocking(true)?;
            Ok(Ok(socket))
        }
    }
}

/// A source built from the primary's answer (see [`source_parts`]).
trait Source: Sized {
    fn from_parts(parts: Parts) -> Result<Self>;
}

impl Source for BlockingSource {
    fn from_parts(parts: Parts) -> Result<Self> {
        Ok(match parts {
            Err(queue) => BlockingSource::Handoff(Mutex::new(queue)),
            Ok(socket) => BlockingSource::Socket(socket),
        })
    }
}

impl Source for AsyncSource {
    fn from_parts(parts: Parts) -> Result<Self> {
        Ok(match parts {
            Err(queue) => AsyncSource::Handoff(tokio::sync::Mutex::new(queue)),
            Ok(socket) => {
                AsyncSource::Socket(crate::sys::async_fd(socket, tokio::io::Interest::READABLE)?)
            }
        })
    }
}

/// An accepted fd, whether it counts toward least-conn, and the client address if known.
type Accepted = (OwnedFd, bool, Option<SocketAddr>);

/// Accepts one connection from a socket without blocking; `None` if none is waiting. One
/// `accept4` sets the flags and yields the peer address, so no `fcntl` or `getpeername` follows.
fn try_accept(socket: &OwnedFd, nonblocking: bool) -> io::Result<Option<Accepted>> {
    let flags = libc::SOCK_CLOEXEC | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    loop {
        match socket2::SockRef::from(socket).accept4(flags) {
            Ok((conn, addr)) => return Ok(Some((conn.into(), false, addr.as_socket()))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        }
    }
}

impl BlockingSource {
    /// The next connection fd, whether it counts toward least-conn, and the client address if
    /// known; `None` after disconnect.
    fn accept(&self, worker: &Worker) -> io::Result<Option<Accepted>> {
        match self {
            BlockingSource::Handoff(rx) => {
                let handed = rx.lock().unwrap().blocking_recv();
                if let Some((fd, _)) = &handed {
                    socket2::SockRef::from(fd).set_nonblocking(false)?;
                }
                Ok(handed.map(|(fd, peer)| (fd, true, peer)))
            }
            BlockingSource::Socket(socket) => loop {
                if worker.is_disconnected() {
                    return Ok(None);
                }
                let mut fds = [
                    PollFd::new(socket.as_fd(), PollFlags::POLLIN),
                    PollFd::new(worker.shared.wake_read.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
                if fds[1].any().unwrap_or(false) {
                    return Ok(None);
                }
                if let Some(accepted) = try_accept(socket, false)? {
                    return Ok(Some(accepted));
                }
            },
        }
    }
}

impl AsyncSource {
    async fn accept(&self, worker: &Worker) -> io::Result<Option<Accepted>> {
        match self {
            // Handed-off connections arrive non-blocking already.
            AsyncSource::Handoff(rx) => Ok(rx
                .lock()
                .await
                .recv()
                .await
                .map(|(fd, peer)| (fd, true, peer))),
            AsyncSource::Socket(socket) => loop {
                if worker.is_disconnected() {
                    return Ok(None);
                }
                // Biased: when the socket is ready (the common case under load) the disconnect
                // future is never polled, so it costs nothing.
                let mut guard = tokio::select! {
                    biased;
                    guard = socket.readable() => guard?,
                    _ = worker.disconnected() => return Ok(None),
                };
                match guard.try_io(|inner| match try_accept(inner.get_ref(), true)? {
                    Some(accepted) => Ok(accepted),
                    None => Err(io::ErrorKind::WouldBlock.into()),
                }) {
                    Ok(result) => return result.map(Some),
                    Err(_would_block) => continue,
                }
            },
        }
    }
}

/// What every listener holds, whatever its flavour (blocking or tokio, `S`) and its socket
/// kind: its worker, the listen index it keeps open, where its connections come from, and the
/// mode the primary chose.
#[derive(Debug)]
struct Base<S> {
    worker: Worker,
    /// Held while the listener lives: its listen index (see `indexes`).
    _index: Option<super::indexes::ListenIndex>,
    source: S,
    mode: Mode,
}

impl<S: Source> Base<S> {
    fn new(worker: Worker, mut reply: ListenReply, address: &str) -> Result<Self> {
        let _index = reply.index.take();
        let mode = reply.mode;
        let source = S::from_parts(source_parts(reply, address)?)?;
        Ok(Self {
            worker,
            _index,
            source,
            mode,
        })
    }
}

impl<S> Base<S> {
    /// The worker's count of open connections, if this one counts toward it: a handed-off one
    /// does (the reader counted it as it arrived), and so does one accepted from a steer socket
    /// while the primary balances by load (counted here). Dropping the `Connection` uncounts
    /// it.
    fn counted(&self, handed_off: bool, steered: bool) -> Option<std::sync::Arc<super::Shared>> {
        let shared = &self.worker.shared;
        if handed_off {
            return Some(shared.clone());
        }
        if steered
            && shared
                .report_load
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            shared
                .open
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            return Some(shared.clone());
        }
        None
    }

    /// [`counted`](Self::counted) for a TCP listener, whose accepted connections are steered
    /// ones in `steer` mode.
    fn counted_tcp(&self, handed_off: bool) -> Option<std::sync::Arc<super::Shared>> {
        self.counted(handed_off, self.mode == Mode::Steer)
    }
}

/// A TCP listener through the primary (blocking API).
#[derive(Debug)]
pub struct TcpListener {
    base: Base<BlockingSource>,
    local: SocketAddr,
}

impl TcpListener {
    pub(crate) fn new(worker: Worker, reply: ListenReply, address: &str) -> Result<Self> {
        let local = parse_local(&reply.address, address)?;
        let base = Base::new(worker, reply, address)?;
        Ok(Self { base, local })
    }

    /// The next connection and its peer address; `Ok(None)` once the worker is disconnected.
    pub fn accept(&self) -> io::Result<Option<(Connection<std::net::TcpStream>, SocketAddr)>> {
        while let Some((fd, counts, peer)) = self.base.source.accept(&self.base.worker)? {
            let stream = Connection::new(
                std::net::TcpStream::from(fd),
                &self.base.worker.shared,
                self.base.counted_tcp(counts),
            );
            // A client that already reset has no peer address; skip it.
            if let Some(peer) = peer.or_else(|| stream.peer_addr().ok()) {
                return Ok(Some((stream, peer)));
            }
        }
        Ok(None)
    }

    /// Connections until the worker is disconnected.
    pub fn incoming(
        &self,
    ) -> impl Iterator<Item = io::Result<Connection<std::net::TcpStream>>> + '_ {
        std::iter::from_fn(move || self.accept().transpose().map(|r| r.map(|(s, _)| s)))
    }

    /// The address the cluster listens on (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The distribution mode in effect.
    pub fn mode(&self) -> Mode {
        self.base.mode
    }
}

/// A TCP listener through the primary (tokio API). Also usable with `axum::serve`.
#[derive(Debug)]
pub struct AsyncTcpListener {
    base: Base<AsyncSource>,
    local: SocketAddr,
}

impl AsyncTcpListener {
    pub(crate) fn new(worker: Worker, reply: ListenReply, address: &str) -> Result<Self> {
        let local = parse_local(&reply.address, address)?;
        let base = Base::new(worker, reply, address)?;
        Ok(Self { base, local })
    }

    /// The next connection and its peer address; `Ok(None)` once the worker is disconnected.
    pub async fn accept(
        &self,
    ) -> io::Result<Option<(Connection<tokio::net::TcpStream>, SocketAddr)>> {
        while let Some((fd, counts, peer)) = self.base.source.accept(&self.base.worker).await? {
            let stream = tokio::net::TcpStream::from_std(std::net::TcpStream::from(fd))?;
            if let Some(peer) = peer.or_else(|| stream.peer_addr().ok()) {
                return Ok(Some((
                    Connection::new(
                        stream,
                        &self.base.worker.shared,
                        self.base.counted_tcp(counts),
                    ),
                    peer,
                )));
            }
        }
        Ok(None)
    }

    /// The address the cluster listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The distribution mode in effect.
    pub fn mode(&self) -> Mode {
        self.base.mode
    }

    /// The worker this listener belongs to.
    pub fn worker(&self) -> &Worker {
        &self.base.worker
    }
}

/// A Unix stream listener through the primary (blocking API).
#[derive(Debug)]
pub struct UnixListener {
    base: Base<BlockingSource>,
    path: String,
}

impl UnixListener {
    pub(crate) fn new(worker: Worker, reply: ListenReply, address: &str) -> Result<Self> {
        let path = reply.address.clone();
        let base = Base::new(worker, reply, address)?;
        Ok(Self { base, path })
    }

    /// The next connection; `Ok(None)` once the worker is disconnected.
    pub fn accept(&self) -> io::Result<Option<Connection<std::os::unix::net::UnixStream>>> {
        Ok(self
            .base
            .source
            .accept(&self.base.worker)?
            .map(|(fd, counts, _)| {
                Connection::new(
                    std::os::unix::net::UnixStream::from(fd),
                    &self.base.worker.shared,
                    self.base.counted(counts, false),
                )
            }))
    }

    /// The socket path.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// A Unix stream listener through the primary (tokio API).
#[derive(Debug)]
pub struct AsyncUnixListener {
    base: Base<AsyncSource>,
    path: String,
}

impl AsyncUnixListener {
    pub(crate) fn new(worker: Worker, reply: ListenReply, address: &str) -> Result<Self> {
        let path = reply.address.clone();
        let base = Base::new(worker, reply, address)?;
        Ok(Self { base, path })
    }

    /// The next connection; `Ok(None)` once the worker is disconnected.
    pub async fn accept(&self) -> io::Result<Option<Connection<tokio::net::UnixStream>>> {
        match self.base.source.accept(&self.base.worker).await? {
            Some((fd, counts, _)) => {
                let stream =
                    tokio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(fd))?;
                Ok(Some(Connection::new(
                    stream,
                    &self.base.worker.shared,
                    self.base.counted(counts, false),
                )))
            }
            None => Ok(None),
        }
    }

    /// The socket path.
    pub fn path(&self) -> &str {
        &self.path
    }
}

fn parse_local(bound: &str, asked: &str) -> Result<SocketAddr> {
    bound.parse().map_err(|_| Error::Listen {
        address: asked.to_string(),
        source: io::Error::other(format!("primary reported an unparsable address {bound:?}")),
    })
}

#[cfg(feature = "axum")]
impl axum::serve::Listener for AsyncTcpListener {
    type Io = Connection<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match AsyncTcpListener::accept(self).await {
                Ok(Some(conn)) => return conn,
                // Disconnected: accept nothing more; axum's graceful shutdown (wired to
                // `Worker::disconnected`) ends the server.
                Ok(None) => std::future::pending::<()>().await,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
