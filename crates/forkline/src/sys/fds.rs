//! Owning descriptors: a CLOEXEC copy of one, one inherited from the parent by number, and one
//! registered with tokio's reactor.

use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Duplicates `fd` to a new CLOEXEC descriptor.
pub(crate) fn dup_cloexec(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

/// Takes ownership of an fd number inherited from the parent (e.g. `FORKLINE_IPC_FD`) and marks
/// it CLOEXEC so it does not leak into programs this process runs.
///
/// Returns an error if `fd` is not open.
pub(crate) fn adopt_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    // SAFETY: F_GETFD only reads the flags of `fd`; an invalid fd yields EBADF, no UB.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    fcntl(borrowed, FcntlArg::F_GETFD)?;
    fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    // SAFETY: the fd is open (F_GETFD succeeded) and was handed to this process to own by the
    // parent through the environment; the caller adopts it exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Registers an owned fd with tokio's reactor.
pub(crate) fn async_fd(
    fd: OwnedFd,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is a valid open descriptor that it alone closes, and its `as_raw_fd`
    // always returns that same number, for as long as the `AsyncFd` owns it.
    unsafe {
        Ok(tokio::io::unix::AsyncFd::register_with_interest(
            fd, interest,
        )?)
    }
}
