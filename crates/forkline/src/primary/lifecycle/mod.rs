//! The life of worker processes: slot state, supervision, spawning, readiness, replacing,
//! recycling, shutdown, the keeper and the orphan reaper, each worker's IPC channel, notify
//! socket and output, and the binds of plain programs that join forkline's socket.

pub(crate) mod bind_trap;
pub(crate) mod forensics;
pub(crate) mod ipc;
pub(crate) mod keeper;
pub(crate) mod keeper_watch;
pub(crate) mod node_ipc;
pub(crate) mod notice;
pub(crate) mod notify;
pub(crate) mod notify_dir;
pub(crate) mod output;
pub(crate) mod output_buffer;
pub(crate) mod readiness;
pub(crate) mod reaper;
pub(crate) mod recycle;
pub(crate) mod reload;
pub(crate) mod replace;
pub(crate) mod shutdown;
pub(crate) mod slots;
pub(crate) mod spawn;
pub(crate) mod spawner;
pub(crate) mod supervisor;
