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

pub mod control;
pub mod error;
pub mod primary;
pub mod protocol;
mod role;
#[allow(unsafe_code)]
mod sys;
pub mod worker;

pub use error::{Error, Result};
pub use primary::Migration;
pub use primary::{
    accept_coalesce_from_env, auto_accept_threads, check_accept_coalesce, check_steered_workers,
    Backoff, Balance, Cluster, ClusterBuilder, ClusterOptions, Event, EventStream, ListenSpec,
    LogFormat, OutputLine, OutputStream, Readiness, ReplaceFailure, Replacement, RestartPolicy,
    Shutdown, SlotStatus, Stats, WorkerHandle, WorkerState, WorkerStats, WorkerStdio,
    DEFAULT_ACCEPT_COALESCE, DEFAULT_SETTLE_TIME, ENV_ACCEPT_COALESCE_US, MAX_ACCEPT_COALESCE,
};
pub use protocol::{Mode, SocketKind};
pub use role::{role, Role};
pub use worker::Worker;
