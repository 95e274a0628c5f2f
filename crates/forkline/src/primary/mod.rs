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
mod task;
mod traffic;

pub use builder::{resolve_program, ClusterBuilder};
pub use cluster::{Cluster, Shutdown, SlotStatus};
pub use event::{Event, EventStream, ReplaceFailure, Replacement};
pub use handle::{WorkerHandle, WorkerState};
pub use lifecycle::output_buffer::{OutputLine, OutputStream, DEFAULT_OUTPUT_BUFFER};
pub use ops::stats::{Stats, WorkerStats};
pub use ops::upgrade::{ENV_UPGRADE_CONTROL_FD, ENV_UPGRADE_FD, ENV_UPGRADE_METRICS_FD};
pub use options::{
    accept_coalesce_from_env, auto_accept_threads, check_accept_coalesce, Backoff, Balance,
    ClusterOptions, ListenSpec, LogFormat, Readiness, RestartPolicy, WorkerStdio,
    DEFAULT_ACCEPT_COALESCE, DEFAULT_SETTLE_TIME, ENV_ACCEPT_COALESCE_US, MAX_ACCEPT_COALESCE,
};
pub use traffic::migration::{Migration, ENV_TEST_NO_BPF};
pub use traffic::steer::{
    check_workers as check_steered_workers, STEERING_BPF, STEERING_BPF_LEAST_CONN,
    STEERING_FALLBACK_REUSEPORT, STEERING_FALLBACK_ROUND_ROBIN,
};
