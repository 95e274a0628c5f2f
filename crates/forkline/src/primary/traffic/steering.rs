//! How the cluster drives steer mode: the probe at start and its fallback, workers entering
//! the steered groups when ready, least-conn load reports, and what `Cluster::steering` says.

use std::sync::atomic::Ordering::Relaxed;

use crate::control::Steering;
use crate::primary::core::Core;
use crate::primary::handle::{WorkerHandle, WorkerState};
use crate::primary::traffic::listeners::BoundListener;
use crate::protocol::Mode;

/// What steer mode falls back to in this cluster when BPF is refused: round-robin in the
/// primary for library workers that listen through it (nothing bound up front), reuseport
/// otherwise (plain programs get their sockets at start).
fn fallback_mode(core: &Core) -> Mode {
    if core.expect_protocol() && core.prebound().is_empty() {
        Mode::RoundRobin
    } else {
        Mode::Reuseport
    }
}

/// At start in steer mode: decides whether BPF can be loaded, and logs the fallback if not.
pub(crate) fn probe_at_start(core: &Core) {
    let steerer = core.listeners().steerer();
    match steerer.probe() {
        Ok(()) => tracing::info!(
            "steer: the kernel steers new connections (BPF, {})",
            if steerer.by_load() {
                "least-conn"
            } else {
                "round-robin"
            }
        ),
        Err(e) => tracing::warn!(
            "steer: BPF refused ({e}); falling back to {} mode",
            fallback_mode(core)
        ),
    }
}

/// The mode a listener asked for in steer mode really gets: `Steer`, or, when BPF was
/// refused, round-robin for library workers that listen through the primary. (A steer
/// listener without BPF works as a reuseport one: the key stays, so a worker finds the
/// listener bound up front.)
pub(crate) fn effective(core: &Core, mode: Mode) -> Mode {
    let refused = core.listeners().steerer().status() == Some(false);
    if mode == Mode::Steer && refused && fallback_mode(core) == Mode::RoundRobin {
        return Mode::RoundRobin;
    }
    mode
}

/// What [`Cluster::steering`](crate::Cluster::steering) reports.
pub(crate) fn status(core: &Core) -> Option<Steering> {
    if core.opts().mode == Mode::Proxy {
        return Some(if core.proxy().in_kernel() {
            Steering::ProxyKernel
        } else {
            Steering::ProxyRelay
        });
    }
    let decided = core.listeners().steerer().status();
    if core.opts().mode != Mode::Steer && decided.is_none() {
        return None;
    }
    let by_load = core.listeners().steerer().by_load();
    Some(match (decided, fallback_mode(core)) {
        (Some(false), Mode::RoundRobin) => Steering::FallbackRoundRobin,
        (Some(false), _) => Steering::FallbackReuseport,
        _ if by_load => Steering::BpfLeastConn,
        _ => Steering::BpfRoundRobin,
    })
}

/// `worker` became ready: its slot's sockets enter the socket arrays of the steered listeners
/// it accepts on. Under least-conn, a worker that does not speak the protocol reports no
/// load: said once per cluster.
pub(crate) fn worker_ready(core: &Core, worker: &WorkerHandle) {
    let mut steered = false;
    for listener in core.listeners().all() {
        steered |= listener.steer.as_ref().is_some_and(|group| group.by_load());
        listener.steer_ready(worker.id(), worker.unique_id());
    }
    let steerer = core.listeners().steerer();
    if steered && !worker.speaks_protocol() && !steerer.said_no_reports.swap(true, Relaxed) {
        tracing::warn!(
            "steer: least-conn counts the connections workers report, and this program does \
             not report (it is not built on the forkline library): its workers are steered by \
             the connections sent to each, which is round-robin"
        );
    }
}

/// Least-conn: `worker` reports `open` connections; its slot's count in every steered
/// listener becomes that.
pub(crate) fn report_load(core: &Core, worker: &WorkerHandle, open: u64) {
    // Round-robin's least-conn reports too, once per closed connection: no steering group,
    // no walk over the listeners.
    let steerer = core.listeners().steerer();
    if !steerer.by_load() || steerer.status() != Some(true) {
        return;
    }
    for listener in core.listeners().all() {
        listener.steer_load(worker.id(), worker.unique_id(), open);
    }
}

/// `worker` listens on `listener` (a library worker): if it is ready already, its socket
/// enters the array now.
pub(crate) fn listening(worker: &WorkerHandle, listener: &BoundListener) {
    if worker.state() == WorkerState::Ready {
        listener.steer_ready(worker.id(), worker.unique_id());
    }
}
