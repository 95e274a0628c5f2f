//! When a worker counts as online and as ready (see `Readiness`), and waiting for it. Online is
//! the handshake for a library worker, the start for a program that does not speak the
//! protocol; ready follows the cluster's readiness setting. The primary routes connections
//! (round-robin, proxy) only to ready workers, and a worker that is not ready within the ready
//! timeout is killed and replaced (a replacement on trial is judged by its trial instead).

use std::time::Instant;

use crate::primary::core::Core;
use crate::primary::event::Event;
use crate::primary::handle::{WorkerHandle, WorkerState};
use crate::primary::options::Readiness;
use crate::primary::task;
use nix::sys::signal::Signal;

/// Called once the process exists: a program that does not speak the protocol is online now,
/// and readiness by delay or none starts counting.
pub(crate) fn on_started(core: &Core, worker: &WorkerHandle) {
    let opts = &core.opts();
    if !core.expect_protocol() && !opts.node_ipc {
        set_online(core, worker);
        // A socket passed at spawn is listening already.
        let passed_socket = opts.mode.workers_accept() && !core.prebound().is_empty();
        if opts.readiness == Readiness::Listen && passed_socket {
            set_ready(core, worker);
        }
    }
    if !worker.on_trial() {
        enforce_ready_timeout(core, worker);
    }
    match opts.readiness {
        Readiness::Delay(delay) => {
            let (core, worker) = (core.arc(), worker.clone());
            task::spawn("readiness", async move {
                tokio::time::sleep(delay).await;
                set_ready(&core, &worker);
            });
        }
        Readiness::None => set_ready(core, worker),
        _ => {}
    }
}

/// Kills (and so replaces, by the restart policy) `worker` if it is not ready within the ready
/// timeout, with a log line and a `WorkerError` event.
fn enforce_ready_timeout(core: &Core, worker: &WorkerHandle) {
    let (core, worker) = (core.arc(), worker.clone());
    task::spawn("ready-timeout", async move {
        let timeout = core.opts().ready_timeout;
        if wait_ready(&core, &worker, Instant::now() + timeout).await != Waited::TimedOut {
            return;
        }
        let error = format!("not ready within {timeout:?}");
        tracing::error!(
            worker = worker.id(),
            pid = worker.pid(),
            "worker {error}; killing it (the restart policy replaces it)"
        );
        core.events().emit(Event::WorkerError {
            worker: worker.clone(),
            error,
        });
        let _ = worker
            .shared
            .kill_reason
            .set(crate::primary::lifecycle::slots::RestartReason::ReadyTimeout);
        worker.stop_for(crate::control::ExitReason::ReadyTimeout);
        let _ = worker.signal_group(Signal::SIGKILL);
    });
}

/// Marks `worker` online (once) and emits `online`.
pub(crate) fn set_online(core: &Core, worker: &WorkerHandle) {
    if !core.transition(worker, WorkerState::Online) {
        return;
    }
    if core.opts().readiness == Readiness::Online {
        set_ready(core, worker);
    }
}

/// Marks `worker` ready (once, and only while it is starting or online) and emits `ready`.
pub(crate) fn set_ready(core: &Core, worker: &WorkerHandle) {
    // Steer mode: the kernel may steer to it from now on (before `ready` is seen).
    let steer = || crate::primary::traffic::steering::worker_ready(core, worker);
    if !core.transition_then(worker, WorkerState::Ready, steer) {
        return;
    }
    // Round-robin may hand it connections now.
    core.dispatcher().wake();
    release_unclaimed_listeners(core, worker);
}

/// Listeners kept for this worker's slot (its predecessor held them and the slot restarted)
/// that it has not listened on once it has been ready for the settle time are released: the
/// new worker does not want them.
fn release_unclaimed_listeners(core: &Core, worker: &WorkerHandle) {
    let (core, worker) = (core.arc(), worker.clone());
    task::spawn("unclaimed-listeners", async move {
        tokio::time::sleep(core.opts().settle_time).await;
        if worker.is_dead() {
            return;
        }
        let released = core.listeners().release_awaiting(worker.id());
        core.forget_listeners(released);
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
pub(crate) async fn wait_ready(core: &Core, worker: &WorkerHandle, deadline: Instant) -> Waited {
    let waiting = || {
        matches!(worker.state(), WorkerState::Starting | WorkerState::Online) && !core.is_stopping()
    };
    core.wait_until(deadline, || !waiting()).await;
    match worker.state() {
        WorkerState::Ready => Waited::Ready,
        WorkerState::Exited | WorkerState::Draining => Waited::Gone,
        _ if core.is_stopping() => Waited::Stopping,
        _ => Waited::TimedOut,
    }
}
