//! The IPC channel over a SOCK_SEQPACKET socket: an async end for the primary (tokio `AsyncFd`)
//! and a blocking end for workers (driven by the worker's reader thread).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::wire::MAX_PACKET;
use crate::error::Error;
use crate::sys;

/// One received packet: its bytes and the fds that rode along.
#[derive(Debug)]
pub struct Packet {
    /// The packet's payload (JSON text).
    pub data: Vec<u8>,
    /// Passed fds, in order, owned and CLOEXEC.
    pub fds: Vec<OwnedFd>,
    /// The kernel cut fds off (this process is at its fd limit): `fds` holds only the first
    /// ones the sender passed; it closed the rest.
    pub fds_cut: bool,
}

impl Packet {
    /// Decodes the payload as a message of type `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.data).map_err(|e| {
            let shown = String::from_utf8_lossy(&self.data[..self.data.len().min(80)]).into_owned();
            Error::Protocol(format!("undecodable packet {shown:?}: {e}"))
        })
    }
}

/// Serializes `msg` to JSON, enforcing [`MAX_PACKET`].
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, Error> {
    let bytes = serde_json::to_vec(msg).map_err(|e| Error::Protocol(e.to_string()))?;
    if bytes.len() > MAX_PACKET {
        return Err(Error::MessageTooLarge {
            size: bytes.len(),
            limit: MAX_PACKET,
        });
    }
    Ok(bytes)
}

/// The primary's end of a worker's channel: non-blocking, driven by tokio.
#[derive(Debug)]
pub struct AsyncChannel {
    fd: AsyncFd<OwnedFd>,
    /// Receive buffer, reused: zeroing 64 KiB per packet showed up in profiles.
    recv_buf: std::sync::Mutex<Vec<u8>>,
}

impl AsyncChannel {
    /// Wraps a connected SEQPACKET socket, switching it to non-blocking mode.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let flags = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let mut flags = nix::fcntl::OFlag::from_bits_truncate(flags);
        flags.insert(nix::fcntl::OFlag::O_NONBLOCK);
        nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(Self {
            fd: sys::async_fd(fd, Interest::READABLE)?,
            recv_buf: std::sync::Mutex::new(vec![0u8; MAX_PACKET + 1]),
        })
    }

    /// Tries to send one packet now; `WouldBlock` when the socket buffer is full.
    pub fn try_send(&self, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
        sys::send_packet(self.fd.get_ref().as_fd(), data, fds, true)
    }

    /// Sends one packet, waiting for buffer space if needed.
    ///
    /// The channel is registered for reading only: registered for writing too, every packet
    /// the worker reads would wake the primary (the kernel signals write space each time a
    /// sent packet is freed). So the rare send that finds the buffer full waits on a
    /// registration of its own, made for that wait.
    pub async fn send(&self, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
        match self.try_send(data, fds) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return done,
        }
        let writable = sys::async_fd(self.fd.get_ref().try_clone()?, Interest::WRITABLE)?;
        loop {
            let mut guard = writable.writable().await?;
            match guard.try_io(|inner| sys::send_packet(inner.get_ref().as_fd(), data, fds, true)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one packet; `None` when the worker closed its end. An empty packet (which
    /// reads like a close, but the peer is still there) or one over the size limit is an
    /// `InvalidData` error: a protocol error, not a close.
    pub async fn recv(&self) -> io::Result<Option<Packet>> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut fds = Vec::new();
            let mut data = Vec::new();
            let mut fds_cut = false;
            match guard.try_io(|inner| {
                let mut buf = self.recv_buf.lock().unwrap();
                let (n, cut) = sys::recv_packet(inner.get_ref().as_fd(), &mut buf, &mut fds, true)?;
                data.extend_from_slice(&buf[..n]);
                fds_cut = cut;
                Ok(n)
            }) {
                Ok(Ok(0)) if self.peer_closed() => return Ok(None),
                Ok(Ok(0)) => return Err(empty_packet()),
                Ok(Ok(_)) => return Ok(Some(Packet { data, fds, fds_cut })),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one packet if one is queued now: `Ok(None)` when none is (or the worker closed
    /// its end).
    pub fn try_recv(&self) -> io::Result<Option<Packet>> {
        let mut fds = Vec::new();
        let mut buf = self.recv_buf.lock().unwrap();
        match sys::recv_packet(self.fd.get_ref().as_fd(), &mut buf, &mut fds, true) {
            Ok((0, _)) if self.peer_closed() => Ok(None),
            Ok((0, _)) => Err(empty_packet()),
            Ok((n, fds_cut)) => Ok(Some(Packet {
                data: buf[..n].to_vec(),
                fds,
                fds_cut,
            })),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Shuts both directions down, so the worker sees EOF even while fds are shared.
    pub fn shutdown(&self) {
        let _ = nix::sys::socket::shutdown(
            self.fd.get_ref().as_raw_fd(),
            nix::sys::socket::Shutdown::Both,
        );
    }

    /// True when the worker shut its end down (a zero-length read was a close, not an empty
    /// packet).
    fn peer_closed(&self) -> bool {
        sys::peer_hung_up(self.fd.get_ref().as_fd())
    }
}

fn empty_packet() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "an empty packet")
}

/// A worker's end of the channel: blocking calls, safe to share between threads (each packet is
/// sent atomically by the kernel).
#[derive(Debug)]
pub struct BlockingChannel {
    fd: OwnedFd,
    /// Receive buffer, reused (only the reader thread receives).
    recv_buf: std::sync::Mutex<Vec<u8>>,
}

impl BlockingChannel {
    /// Wraps the worker's end of the socket.
    pub fn new(fd: OwnedFd) -> Self {
        Self {
            fd,
            recv_buf: std::sync::Mutex::new(vec![0u8; MAX_PACKET + 1]),
        }
    }

    /// Sends one packet, blocking while the socket buffer is full.
    pub fn send(&self, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
        loop {
            match sys::send_packet(self.fd.as_fd(), data, fds, false) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// Sends one packet if the socket buffer has room now (`WouldBlock` otherwise).
    pub fn try_send(&self, data: &[u8]) -> io::Result<()> {
        sys::send_packet(self.fd.as_fd(), data, &[], true)
    }

    /// Encodes and sends a message.
    pub fn send_msg<T: Serialize>(&self, msg: &T) -> Result<(), Error> {
        let bytes = encode(msg)?;
        self.send(&bytes, &[]).map_err(Error::Io)
    }

    /// Receives one packet without blocking (`WouldBlock` when none is waiting).
    pub fn try_recv(&self) -> io::Result<Option<Packet>> {
        let mut buf = self.recv_buf.lock().unwrap();
        let mut fds = Vec::new();
        match sys::recv_packet(self.fd.as_fd(), &mut buf, &mut fds, true)? {
            (0, _) => Ok(None),
            (n, fds_cut) => Ok(Some(Packet {
                data: buf[..n].to_vec(),
                fds,
                fds_cut,
            })),
        }
    }

    /// A second descriptor for the same socket (to watch it for readiness).
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }

    /// Receives one packet, blocking; `None` when the primary closed its end.
    pub fn recv(&self) -> io::Result<Option<Packet>> {
        let mut buf = self.recv_buf.lock().unwrap();
        loop {
            let mut fds = Vec::new();
            match sys::recv_packet(self.fd.as_fd(), &mut buf, &mut fds, false) {
                Ok((0, _)) => return Ok(None),
                Ok((n, fds_cut)) => {
                    return Ok(Some(Packet {
                        data: buf[..n].to_vec(),
                        fds,
                        fds_cut,
                    }))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Shuts both directions down: the reader thread sees EOF and the primary sees the worker go.
    pub fn shutdown(&self) {
        let _ = nix::sys::socket::shutdown(self.fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
}
