//! `Cluster::stats()`: a snapshot of the cluster and each of its workers (the control
//! protocol's `Status`, one `SlotStatus` per slot), for status commands, the control socket
//! and monitoring.
//!
//! Nothing here runs on the connection path: the dispatcher keeps its counters as plain
//! integers under the lock it already takes once per batch, the proxy in a few relaxed
//! atomics, and a snapshot is taken only when someone asks (a scrape, `forkline status`).

use std::time::{Duration, Instant};

use crate::control::{SlotStatus, Status};
use crate::primary::core::Core;
use crate::primary::handle::WorkerState;
use crate::primary::procfs::{resident_bytes, ticks_per_second};
use crate::primary::traffic::counters::Traffic;

/// A snapshot of the cluster and each slot's worker, from a `traffic` snapshot already taken.
pub(crate) fn snapshot(core: &Core, traffic: &Traffic) -> Status {
    let now = Instant::now();
    let workers: Vec<SlotStatus> = core
        .slots()
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
            SlotStatus {
                uptime_secs: current.as_ref().map(|w| secs(w.uptime())),
                connections_in_flight: current
                    .as_ref()
                    .and_then(|w| traffic.in_flight.get(&w.unique_id()).copied())
                    .unwrap_or(0),
                connections_served: current.as_ref().map_or(0, |w| w.connections_served()),
                rss_bytes: slot.pid.and_then(resident_bytes),
                cpu: slot
                    .pid
                    .and_then(|_| crate::primary::lifecycle::spawn::slot_cpu(core, slot.slot)),
                cpu_seconds: cpu_ticks.map(|t| t as f64 / ticks_per_second()),
                cpu_percent,
                ..slot.status()
            }
        })
        .collect();
    Status {
        name: core.opts().name.clone(),
        pid: std::process::id(),
        mode: core.opts().mode,
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
