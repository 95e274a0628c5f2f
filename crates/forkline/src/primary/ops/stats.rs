//! `Cluster::stats()`: a snapshot of the cluster and each of its workers, for status commands,
//! the control socket and monitoring. Also the connection counters' snapshot (`Traffic`) that
//! the dispatcher and the proxy hand out, and the small types behind it: the handoff latency
//! histogram, accept error kinds, and the CPU window of each worker.
//!
//! Nothing here runs on the connection path: the dispatcher keeps its counters as plain
//! integers under the lock it already takes once per batch, the proxy in a few relaxed
//! atomics, and a snapshot is taken only when someone asks (a scrape, `forkline status`).

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::primary::core::Core;
use crate::primary::handle::WorkerState;
use crate::primary::procfs::{resident_bytes, ticks_per_second};
use crate::primary::traffic::counters::Traffic;

/// The cluster at one moment.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// The cluster's name (`ClusterBuilder::name`), if it has one.
    pub name: Option<String>,
    /// The primary's process id.
    pub pid: u32,
    /// The distribution mode.
    pub mode: &'static str,
    /// Steer mode: how connections are steered (`Cluster::steering`): `bpf-round-robin`,
    /// `bpf-least-conn`, or the fallback taken where BPF was refused (`fallback-round-robin`,
    /// `fallback-reuseport`). `None` in other modes.
    pub steering: Option<&'static str>,
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
    /// Reuseport mode: how a closing worker's queued connections reach the others (`bpf`,
    /// `sysctl`) or not (`off`); `None` in other modes (or before the first socket).
    pub reuseport_migration: Option<&'static str>,
    /// Connections the primary accepted (round-robin and proxy modes; 0 in shared and
    /// reuseport modes, where the workers accept by themselves).
    pub accepted_total: u64,
    /// Connections handed to a worker: passed over its channel (round-robin) or connected to
    /// its port (proxy). A connection taken back and handed elsewhere counts once per handoff.
    /// 0 in shared and reuseport modes.
    pub handed_off_total: u64,
    /// Connections taken back from a worker and handed to another: round-robin, those a
    /// worker never read because it died or stopped reading, or gave back (its listener was
    /// dropped); proxy, a worker that refused the connection, so the next one got it. 0 in
    /// shared and reuseport modes.
    pub redispatched_total: u64,
    /// Failed `accept` calls of the primary (EMFILE, ENFILE, ENOBUFS, ...). 0 in shared and
    /// reuseport modes.
    pub accept_errors_total: u64,
    /// A rolling reload is in progress.
    pub reloading: bool,
}

/// One slot and its current worker.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
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
    /// Connections the current worker holds as far as the primary knows. Round-robin: handed
    /// to it and not acknowledged yet (the credit it uses). Acks come in batches (half the
    /// credit window, at most 32; every packet under least-conn), so up to a batch of
    /// connections the worker already took count here until its next ack. Proxy: relays open
    /// to it. 0 in shared and reuseport modes.
    pub connections_in_flight: u64,
    /// Connections handed to the current worker that it kept: `connections` less those taken
    /// back and served by another worker. 0 in shared and reuseport modes.
    pub connections_served: u64,
    /// Its resident memory, in bytes.
    pub rss_bytes: Option<u64>,
    /// CPU time it used (user and system, from `/proc/PID/stat`), in seconds.
    pub cpu_seconds: Option<f64>,
    /// Its CPU use, in percent of one CPU (100 = one core busy): over the time since the
    /// previous `stats()` call that was at least a second earlier (by any caller: a scrape,
    /// `forkline status`), or since it started on the first call.
    pub cpu_percent: Option<f64>,
    /// A replacement on trial beside it (reload, recycling).
    pub replacement_pid: Option<u32>,
    /// True while the slot keeps dying young.
    pub crash_loop: bool,
    /// True once the slot reached `max_restarts`.
    pub gave_up: bool,
}

/// A snapshot of the cluster and each slot's worker, from a `traffic` snapshot already taken.
pub(crate) fn snapshot(core: &Core, traffic: &Traffic) -> Stats {
    let now = Instant::now();
    let workers: Vec<WorkerStats> = core
        .status()
        .into_iter()
        .map(|slot| {
            let current = core.worker(slot.slot).filter(|w| w.pid() != 0);
            let cpu_ticks = slot
                .pid
                .and_then(crate::primary::procfs::stat)
                .map(|stat| stat.cpu_ticks);
            let cpu_percent = match (&current, cpu_ticks) {
                (Some(w), Some(ticks)) => w.shared.cpu.lock().unwrap().sample(
                    now,
                    ticks,
                    w.shared.started,
                    ticks_per_second(),
                ),
                _ => None,
            };
            WorkerStats {
                slot: slot.slot,
                pid: slot.pid,
                state: slot.state,
                uptime_secs: current.as_ref().map(|w| secs(w.uptime())),
                restarts: slot.restarts,
                connections: slot.connections,
                connections_in_flight: current
                    .as_ref()
                    .and_then(|w| traffic.in_flight.get(&w.unique_id()).copied())
                    .unwrap_or(0),
                connections_served: current.as_ref().map_or(0, |w| w.connections_served()),
                rss_bytes: slot.pid.and_then(resident_bytes),
                cpu_seconds: cpu_ticks.map(|t| t as f64 / ticks_per_second()),
                cpu_percent,
                replacement_pid: slot.replacement_pid,
                crash_loop: slot.crash_loop,
                gave_up: slot.gave_up,
            }
        })
        .collect();
    Stats {
        name: core.opts().name.clone(),
        pid: std::process::id(),
        mode: core.opts().mode.as_str(),
        steering: crate::primary::traffic::steering::status(core),
        addresses: core.listen_addresses(),
        uptime_secs: secs(core.started().elapsed()),
        target: core.target(),
        ready: workers
            .iter()
            .filter(|w| w.state == Some(WorkerState::Ready))
            .count(),
        workers,
        notify_rejected: core
            .counters()
            .notify_rejected
            .load(std::sync::atomic::Ordering::Relaxed),
        reuseport_migration: core.listeners().migration(),
        accepted_total: traffic.accepted,
        handed_off_total: traffic.handed_off,
        redispatched_total: traffic.redispatched,
        accept_errors_total: traffic.accept_errors.iter().sum(),
        reloading: core.is_reloading(),
    }
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}
