//! The primary side: the `Cluster` handle and builder, worker handles, events, and the
//! machinery behind them (spawning, supervision, listeners, round-robin dispatch, output).

mod builder;
mod cluster;
mod core;
mod event;
mod handle;
mod lifecycle;
mod ops;
mod options;
mod procfs;
mod start;
mod status;
mod task;
mod traffic;

pub use builder::ClusterBuilder;
pub use cluster::Cluster;
pub use event::{Event, EventStream, ReplaceFailure, Replacement};
pub use handle::{WorkerHandle, WorkerState};
pub use lifecycle::output_buffer::{OutputLine, OutputStream, DEFAULT_OUTPUT_BUFFER};
pub use options::{
    Backoff, Balance, ClusterOptions, ListenSpec, LogFormat, Readiness, RestartPolicy, WorkerStdio,
    DEFAULT_ACCEPT_COALESCE, DEFAULT_SETTLE_TIME, MAX_ACCEPT_COALESCE,
};
pub use status::Shutdown;
pub use traffic::migration::Migration;

/// See `forkline::cli_support`.
pub(crate) mod cli_support {
    pub use super::builder::resolve_program;
    pub use super::ops::upgrade_state::{
        ENV_UPGRADE_CONTROL_FD, ENV_UPGRADE_FD, ENV_UPGRADE_METRICS_FD,
    };
    pub use super::options::{
        accept_coalesce_from_env, auto_accept_threads, check_accept_coalesce,
        check_steered_workers, ENV_ACCEPT_COALESCE_US,
    };
    pub use super::traffic::migration::ENV_TEST_NO_BPF;
}
