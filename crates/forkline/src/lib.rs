//! forkline: run a server on every core. A Rust take on Node.js's `cluster` module.
//!
//! A program calls [`role()`] to learn whether it is the primary or a worker. The primary builds
//! a [`Cluster`] (which by default forks the current executable once per core) and watches its
//! [`Event`]s; each worker calls [`worker::connect()`] and listens *through* the primary, which
//! spreads connections across workers in one of several [`Mode`]s.
//!
//! ```no_run
//! use forkline::{role, Cluster, Event, Role};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     match role() {
//!         Role::Primary => {
//!             let done = Cluster::builder().workers(2).run_blocking(|_cluster, event| {
//!                 if let Event::Online { worker } = event {
//!                     println!("worker {} online (pid {})", worker.id(), worker.pid());
//!                 }
//!             })?;
//!             std::process::exit(done.exit_code());
//!         }
//!         Role::Worker(_) => {
//!             let worker = forkline::worker::connect()?;
//!             let listener = worker.listen("127.0.0.1:8080")?;
//!             for conn in listener.incoming() {
//!                 let mut conn = conn?;
//!                 std::io::Write::write_all(&mut *conn, b"hello\n")?;
//!             }
//!             Ok(())
//!         }
//!     }
//! }
//! ```

// Unsafe code lives in `sys` alone, each block with a `// SAFETY:` note.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]
#![warn(unreachable_pub)]

pub mod control;
pub mod error;
mod primary;
pub mod protocol;
mod role;
#[allow(unsafe_code)]
mod sys;
pub mod worker;

pub use control::{ExitReason, LastExit, MigrationStatus, SlotStatus, Status, Steering};
pub use error::{Error, Result, UnknownName};
pub use primary::{
    Backoff, Balance, Cluster, ClusterBuilder, ClusterOptions, Event, EventStream, ListenSpec,
    LogFormat, Migration, OutputLine, OutputStream, Readiness, ReplaceFailure, Replacement,
    RestartPolicy, Shutdown, WorkerHandle, WorkerState, WorkerStdio, DEFAULT_ACCEPT_COALESCE,
    DEFAULT_OUTPUT_BUFFER, DEFAULT_SETTLE_TIME, MAX_ACCEPT_COALESCE,
};
pub use protocol::{Mode, SocketKind};
pub use role::{role, Role};
pub use worker::Worker;

/// The signals [`WorkerHandle::kill`] sends (nix's, re-exported so a program needs no nix of
/// its own); `Event::Exit`'s `signal` is the same number (`Signal::SIGKILL as i32`).
pub use nix::sys::signal::Signal;

/// What the `forkline` command shares with the library beyond its API: the checks and
/// environment variables both honour, and the names of an upgrade's variables. Not part of the
/// library's API: it may change in any release.
#[doc(hidden)]
pub mod cli_support {
    pub use crate::primary::cli_support::*;
}
