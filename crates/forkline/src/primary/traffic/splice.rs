//! Relay between two TCP sockets for proxy mode. Small messages (a keep-alive request, a short
//! response) are copied through a small buffer: one read and one write, the fewest syscalls.
//! Once a direction carries bulk data (a read fills the buffer) it switches to splice(2): bytes
//! go socket → pipe → socket inside the kernel, never through user space.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{splice, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per splice call (the default pipe capacity).
const CHUNK: usize = 64 * 1024;
/// Copy buffer for small messages; a read that fills it switches the direction to splice.
const SMALL: usize = 16 * 1024;

/// Copies both directions until each side has sent EOF (or an error), half-closing as it goes,
/// like `tokio::io::copy_bidirectional`. Returns the bytes moved each way.
pub(crate) async fn relay(a: &TcpStream, b: &TcpStream) -> io::Result<(u64, u64)> {
    // If one direction fails (a reset), the other is abandoned too.
    tokio::try_join!(one_way(a, b), one_way(b, a))
}

/// Moves bytes from `from` to `to` until `from` reaches EOF, then shuts down `to`'s write side.
async fn one_way(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let result = copy_then_splice(from, to).await;
    shut_write(to);
    result
}

async fn copy_then_splice(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let mut buf = vec![0u8; SMALL];
    let mut total = 0u64;
    loop {
        from.readable().await?;
        let n = match from.try_read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(total);
        }
        write_all(to, &buf[..n]).await?;
        total += n as u64;
        if n == buf.len() {
            return Ok(total + splice_rest(from, to).await?);
        }
    }
}

/// Writes all of `data` to `to`.
async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Moves the rest of a bulk transfer through a private pipe with splice, until EOF.
async fn splice_rest(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let (pipe_read, pipe_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
            .map_err(io::Error::from)?;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        let n = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice(from.as_fd(), None, pipe_write.as_fd(), None, CHUNK, flags)
                    .map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return Ok(total);
        }
        drain_pipe(&pipe_read, to, n, flags).await?;
        total += n as u64;
    }
}

/// Moves exactly `len` bytes already in the pipe out to `to`.
async fn drain_pipe(
    pipe_read: &OwnedFd,
    to: &TcpStream,
    mut len: usize,
    flags: SpliceFFlags,
) -> io::Result<()> {
    while len > 0 {
        to.writable().await?;
        match to.try_io(Interest::WRITABLE, || {
            splice(pipe_read.as_fd(), None, to.as_fd(), None, len, flags).map_err(io::Error::from)
        }) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => len -= n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn shut_write(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
}
