//! `Connection`: a stream accepted through forkline. It derefs to the plain stream (std or
//! tokio) and, when dropped, tells the primary the worker has one connection fewer — the count
//! least-conn balancing steers by.

use std::io::{self, Read, Write};
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{reader, Shared};

/// An accepted stream: `std::net::TcpStream`, `tokio::net::TcpStream`, or their Unix
/// counterparts. Use it as the stream itself (it derefs and implements the I/O traits), or take
/// the stream out with [`into_inner`](Self::into_inner) (the worker then stops counting it).
pub struct Connection<S> {
    stream: Option<S>,
    counted: Option<Arc<Shared>>,
    /// The worker, while the connection is one of its live ones.
    live: Option<Arc<Shared>>,
}

impl<S> Connection<S> {
    /// `stream`, one of `worker`'s live connections, and counted for least-conn when
    /// `counted` is given.
    pub(crate) fn new(stream: S, worker: &Arc<Shared>, counted: Option<Arc<Shared>>) -> Self {
        worker.live.fetch_add(1, Ordering::AcqRel);
        Self {
            stream: Some(stream),
            counted,
            live: Some(worker.clone()),
        }
    }

    /// The stream, no longer counted as open by this worker.
    pub fn into_inner(mut self) -> S {
        self.release();
        self.stream.take().expect("stream present until drop")
    }

    fn release(&mut self) {
        if let Some(worker) = self.live.take() {
            worker.connection_ended();
        }
        if let Some(shared) = self.counted.take() {
            let _ = shared
                .open
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
            reader::report_load(&shared);
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Connection<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Connection").field(&self.stream).finish()
    }
}

impl<S> Drop for Connection<S> {
    fn drop(&mut self) {
        // Uncount it first, then close: the report is on its way to the primary before the
        // client sees the close, so a client that connects again at once is balanced by a
        // count that no longer holds this connection.
        self.release();
        drop(self.stream.take());
    }
}

impl<S> Deref for Connection<S> {
    type Target = S;
    fn deref(&self) -> &S {
        self.stream.as_ref().expect("stream present until drop")
    }
}

impl<S> DerefMut for Connection<S> {
    fn deref_mut(&mut self) -> &mut S {
        self.stream.as_mut().expect("stream present until drop")
    }
}

impl<S: Read> Read for Connection<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.deref_mut().read(buf)
    }
}

impl<S: Write> Write for Connection<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.deref_mut().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.deref_mut().flush()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Connection<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().deref_mut()).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Connection<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().deref_mut()).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().deref_mut()).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().deref_mut()).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().deref_mut()).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.deref().is_write_vectored()
    }
}
