//! When a worker counts as online and as ready (see `Readiness`), and waiting for it. Online is
//! the handshake for a library worker, the start for a program that does not speak the
//! protocol; ready follows the cluster's readiness setting. The primary routes connections
//! (round-robin, proxy) only to ready workers, and a worker that is not ready within the ready
//! timeout is killed and replaced (a replacement on trial is judged by its trial instead).

use std::time::Instant;

use crate::primary::cluster::Cluster;
use crate::primary::event::Event;
use crate::primary::handle::{WorkerHandle, WorkerState};
use crate::primary::options::Readiness;
use crate::primary::task;
use nix::sys::signal::Signal;

/// Called once the process exists: a program that does not speak the protocol is online now,
/// and readiness by delay or none starts counting.
pub(crate) fn on_started(cluster: &Cluster, worker: &WorkerHandle) {
    let opts = &cluster.inner.opts;
    if !cluster.inner.expect_protocol {
        set_online(cluster, worker);
        // A socket passed at spawn is listening already.
        let passed_socket = opts.mode.workers_accept() && !cluster.inner.prebound.is_empty();
        if opts.readiness == Readiness::Listen && passed_socket {
            set_ready(cluster, worker);
        }
    }
    if !worker.on_trial() {
        enforce_ready_timeout(cluster, worker);
    }
    match opts.readiness {
        Readiness::Delay(delay) => {
            let (cluster, worker) = (cluster.clone(), worker.clone());
            task::spawn("readiness", async move {
                tokio::time::sleep(delay).await;
                set_ready(&cluster, &worker);
            });
        }
        Readiness::None => set_ready(cluster, worker),
        _ => {}
    }
}

/// Kills (and so replaces, by the restart policy) `worker` if it is not ready within the ready
/// timeout, with a log line and a `WorkerError` event.
fn enforce_ready_timeout(cluster: &Cluster, worker: &WorkerHandle) {
    let (cluster, worker) = (cluster.clone(), worker.clone());
    task::spawn("ready-timeout", async move {
        let timeout = cluster.inner.opts.ready_timeout;
        if wait_ready(&cluster, &worker, Instant::now() + timeout).await != Waited::TimedOut {
            return;
        }
        let error = format!("not ready within {timeout:?}");
        tracing::error!(
            worker = worker.id(),
            pid = worker.pid(),
            "worker {error}; killing it (the restart policy replaces it)"
        );
        cluster.inner.events.emit(Event::WorkerError {
            worker: worker.clone(),
            error,
        });
        let _ = worker
            .shared
            .kill_reason
            .set(crate::primary::lifecycle::slots::RestartReason::ReadyTimeout);
        let _ = worker.signal_group(Signal::SIGKILL);
    });
}

/// Marks `worker` online (once) and emits `online`.
pub(crate) fn set_online(cluster: &Cluster, worker: &WorkerHandle) {
    if worker.state() != WorkerState::Starting {
        return;
    }
    worker.set_state(WorkerState::Online);
    cluster.inner.events.emit(Event::Online {
        worker: worker.clone(),
    });
    cluster.inner.changed.notify_waiters();
    if cluster.inner.opts.readiness == Readiness::Online {
        set_ready(cluster, worker);
    }
}

/// Marks `worker` ready (once, and only while it is starting or online) and emits `ready`.
pub(crate) fn set_ready(cluster: &Cluster, worker: &WorkerHandle) {
    match worker.state() {
        WorkerState::Starting | WorkerState::Online => {}
        _ => return,
    }
    worker.set_state(WorkerState::Ready);
    // Steer mode: the kernel may steer to it from now on (before `ready` is seen).
    crate::primary::traffic::steer::worker_ready(cluster, worker);
    cluster.inner.events.emit(Event::Ready {
        worker: worker.clone(),
    });
    cluster.inner.changed.notify_waiters();
    // Round-robin may hand it connections now.
    cluster.inner.dispatcher.wake();
    release_unclaimed_listeners(cluster, worker);
}

/// Listeners kept for this worker's slot (its predecessor held them and the slot restarted)
/// that it has not listened on once it has been ready for the settle time are released: the
/// new worker does not want them.
fn release_unclaimed_listeners(cluster: &Cluster, worker: &WorkerHandle) {
    let (cluster, worker) = (cluster.clone(), worker.clone());
    task::spawn("unclaimed-listeners", async move {
        tokio::time::sleep(cluster.inner.opts.settle_time).await;
        if worker.is_dead() {
            return;
        }
        let released = cluster.inner.listeners.release_awaiting(worker.id());
        crate::primary::lifecycle::supervisor::forget_listeners(&cluster, released);
    });
}

/// How waiting for a worker to be ready ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    Ready,
    /// It exited, or was asked to stop, first.
    Gone,
    /// The cluster began to stop.
    Stopping,
    /// The deadline passed.
    TimedOut,
}

/// Waits until `worker` is ready, bounded by `deadline`.
pub(crate) async fn wait_ready(
    cluster: &Cluster,
    worker: &WorkerHandle,
    deadline: Instant,
) -> Waited {
    let waiting = || {
        matches!(worker.state(), WorkerState::Starting | WorkerState::Online)
            && !cluster.is_stopping()
    };
    cluster.inner.wait_until(deadline, || !waiting()).await;
    match worker.state() {
        WorkerState::Ready => Waited::Ready,
        WorkerState::Exited | WorkerState::Draining => Waited::Gone,
        _ if cluster.is_stopping() => Waited::Stopping,
        _ => Waited::TimedOut,
    }
}
