//! `Cluster::stats()`: a snapshot of the cluster and each of its workers, for status commands,
//! the control socket and monitoring.

use std::time::Duration;

use serde::Serialize;

use super::cluster::Cluster;
use super::handle::WorkerState;
use super::recycle::resident_bytes;

/// The cluster at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// The cluster's name (`ClusterBuilder::name`), if it has one.
    pub name: Option<String>,
    /// The primary's process id.
    pub pid: u32,
    /// The distribution mode.
    pub mode: &'static str,
    /// The addresses it listens on.
    pub addresses: Vec<String>,
    /// How long the primary has run, in seconds.
    pub uptime_secs: f64,
    /// The number of worker slots it keeps.
    pub target: usize,
    /// Workers ready to serve.
    pub ready: usize,
    /// One entry per slot.
    pub workers: Vec<WorkerStats>,
    /// Notify messages dropped because they came from outside a worker's process group.
    pub notify_rejected: u64,
}

/// One slot and its current worker.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStats {
    /// The slot (the worker's `FORKLINE_WORKER_ID`).
    pub slot: usize,
    /// The current worker's pid, while it runs.
    pub pid: Option<u32>,
    /// Its state.
    pub state: Option<WorkerState>,
    /// How long it has run, in seconds.
    pub uptime_secs: Option<f64>,
    /// The slot's restarts so far.
    pub restarts: u64,
    /// Connections handed to the current worker (round-robin, proxy).
    pub connections: u64,
    /// Its resident memory, in bytes.
    pub rss_bytes: Option<u64>,
    /// A replacement on trial beside it (reload, recycling).
    pub replacement_pid: Option<u32>,
    /// True while the slot keeps dying young.
    pub crash_loop: bool,
    /// True once the slot reached `max_restarts`.
    pub gave_up: bool,
}

impl Cluster {
    /// Rolling reloads so far: (finished, failed).
    pub fn reload_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.inner.reloads_ok.load(Relaxed),
            self.inner.reloads_failed.load(Relaxed),
        )
    }

    /// A snapshot of the cluster and each slot's worker.
    pub fn stats(&self) -> Stats {
        let workers: Vec<WorkerStats> = self
            .status()
            .into_iter()
            .map(|slot| {
                let current = self.worker(slot.id).filter(|w| w.pid() != 0);
                WorkerStats {
                    slot: slot.id,
                    pid: slot.pid,
                    state: slot.state,
                    uptime_secs: current.as_ref().map(|w| secs(w.uptime())),
                    restarts: slot.restarts,
                    connections: slot.connections,
                    rss_bytes: slot.pid.and_then(resident_bytes),
                    replacement_pid: slot.replacement_pid,
                    crash_loop: slot.crash_loop,
                    gave_up: slot.gave_up,
                }
            })
            .collect();
        Stats {
            name: self.inner.opts.name.clone(),
            pid: std::process::id(),
            mode: self.inner.opts.mode.name(),
            addresses: self.listen_addresses(),
            uptime_secs: secs(self.inner.started.elapsed()),
            target: self.target(),
            ready: workers
                .iter()
                .filter(|w| w.state == Some(WorkerState::Ready))
                .count(),
            workers,
            notify_rejected: self.notify_messages_rejected(),
        }
    }
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}
