//! Zero-copy relay between two TCP sockets with splice(2): bytes go socket → pipe → socket
//! inside the kernel, never through user space. Used by proxy mode.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{splice, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per splice call (the default pipe capacity).
const CHUNK: usize = 64 * 1024;

/// Copies both directions until each side has sent EOF (or an error), half-closing as it goes,
/// like `tokio::io::copy_bidirectional`. Returns the bytes moved each way.
pub(crate) async fn relay(a: &TcpStream, b: &TcpStream) -> io::Result<(u64, u64)> {
    // If one direction fails (a reset), the other is abandoned too.
    tokio::try_join!(one_way(a, b), one_way(b, a))
}

/// Moves bytes from `from` to `to` through a private pipe until `from` reaches EOF, then shuts
/// down `to`'s write side.
async fn one_way(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
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
                Err(e) => {
                    shut_write(to);
                    return Err(e);
                }
            }
        };
        if n == 0 {
            shut_write(to);
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
