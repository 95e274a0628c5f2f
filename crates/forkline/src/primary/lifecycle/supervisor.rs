//! The supervision loop of every worker, read top to bottom: start it in its slot, run the
//! process and serve its channel until it exits, record the exit, then ask the slot state
//! (`slots`) what happens next — restart after a backoff delay, release the slot, give up —
//! and do it. Also the two ways workers are stopped on purpose: scaling down, and a graceful
//! stop that ends in SIGKILL after the graceful timeout.

use std::time::Instant;

use nix::sys::signal::Signal;

use crate::error::{Error, Result};
use crate::primary::cluster::Cluster;
use crate::primary::core::State;
use crate::primary::event::Event;
use crate::primary::handle::{ExitInfo, WorkerHandle, WorkerState};
use crate::primary::lifecycle::slots::{ExitFacts, OnExit, Refused, RestartReason, Seq};
use crate::primary::traffic::listeners::BoundListener;
use crate::primary::{lifecycle::ipc, lifecycle::spawn, task};

/// How a new worker gets its slot.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start {
    /// This slot: the first workers, and scaling up.
    Slot(usize),
    /// The lowest free slot (Node's `fork()`).
    Fork,
    /// The restart booked for `slot` with `ticket`.
    Restart { slot: usize, ticket: u64 },
}

/// Registers a new worker as its slot's current worker and starts its life. Returns at once.
pub(crate) fn start_worker(cluster: &Cluster, start: Start) -> Result<WorkerHandle> {
    let worker = {
        let mut state = cluster.inner.state();
        let seq = state.next_seq + 1;
        let slot = match start {
            Start::Slot(slot) => state.slots.assign(slot, seq).then_some(slot),
            Start::Fork => state.slots.claim(seq),
            Start::Restart { slot, ticket } => {
                state.slots.take_restart(slot, ticket, seq).then_some(slot)
            }
        };
        let Some(slot) = slot else {
            return Err(Error::ShutDown);
        };
        register(cluster, &mut state, slot, seq)
    };
    task::spawn("worker", live(cluster.clone(), worker.clone()));
    Ok(worker)
}

/// Starts a replacement on trial beside `slot`'s current worker (`expected`, if given, must be
/// that worker). Returns the replacement and the worker it would replace.
pub(crate) fn start_candidate(
    cluster: &Cluster,
    slot: usize,
    expected: Option<Seq>,
) -> std::result::Result<(WorkerHandle, WorkerHandle), Refused> {
    let (fresh, old) = {
        let mut state = cluster.inner.state();
        let old = state
            .worker(state.slots.current(slot))
            .filter(|w| !w.is_dead() && expected.is_none_or(|seq| seq == w.unique_id()))
            .ok_or(Refused::NothingToReplace)?;
        let seq = state.next_seq + 1;
        state.slots.begin_replace(slot, old.unique_id(), seq)?;
        let fresh = register(cluster, &mut state, slot, seq);
        fresh.set_on_trial(true);
        (fresh, old)
    };
    task::spawn("worker", live(cluster.clone(), fresh.clone()));
    Ok((fresh, old))
}

fn register(cluster: &Cluster, state: &mut State, slot: usize, seq: Seq) -> WorkerHandle {
    state.next_seq = seq;
    let worker = WorkerHandle::new(slot, seq, cluster.inner.expect_protocol);
    state.live.insert(seq, worker.clone());
    worker
}

/// The whole life of one worker process.
async fn live(cluster: Cluster, worker: WorkerHandle) {
    let exit = run(&cluster, &worker).await;
    let next = record_exit(&cluster, &worker, exit);
    follow_up(&cluster, next).await;
}

/// Starts the process and serves its channel until it has exited and every packet it sent has
/// been read.
async fn run(cluster: &Cluster, worker: &WorkerHandle) -> ExitInfo {
    match spawn::spawn(cluster, worker).await {
        Ok(spawned) => ipc::serve(cluster, worker, spawned.child, spawned.channel).await,
        Err(e) => {
            tracing::error!(worker = worker.id(), error = %e, "could not start worker");
            cluster.inner.events.emit(Event::WorkerError {
                worker: worker.clone(),
                error: format!("could not start: {e}"),
            });
            ExitInfo {
                code: Some(127),
                signal: None,
            }
        }
    }
}

/// Records the exit — the slot's decision first, so an `exit` handler that forks finds the
/// slot free — then Node's `disconnect` (if the channel was still open) and `exit` events.
fn record_exit(cluster: &Cluster, worker: &WorkerHandle, exit: ExitInfo) -> OnExit {
    let _ = worker.shared.exit.set(exit);
    worker.set_state(WorkerState::Exited);
    let pid = worker.pid();
    if pid != 0 {
        // Whatever the worker started goes with it.
        let _ = crate::sys::signal_group(pid, Signal::SIGKILL);
        if let Some(keeper) = &cluster.inner.keeper {
            keeper.forget(pid);
        }
        // Reaped by tokio by now: the orphan reaper may take that pid's next zombie.
        crate::primary::lifecycle::reaper::registry().remove(pid);
    }
    cluster
        .inner
        .dispatcher
        .remove_target(worker, worker.shared.worker_end.get().map(|fd| &**fd));
    cluster.inner.proxy.remove(worker);
    let planned = worker.exited_after_disconnect();
    let next = {
        let mut state = cluster.inner.state();
        state.live.remove(&worker.unique_id());
        let facts = ExitFacts {
            uptime: worker.uptime(),
            failed: exit.failed(),
            planned,
            reason: restart_reason(worker, exit),
        };
        state
            .slots
            .on_exit(worker.id(), worker.unique_id(), facts, Instant::now())
    };
    let restarting = matches!(next, OnExit::Restart { .. });
    let released =
        cluster
            .inner
            .listeners
            .release_after_exit(worker.unique_id(), worker.id(), restarting);
    forget_listeners(cluster, released);
    if !planned && exit.failed() {
        tracing::warn!(worker = worker.id(), pid, code = ?exit.code, signal = ?exit.signal, "worker died");
    } else {
        tracing::info!(worker = worker.id(), pid, code = ?exit.code, signal = ?exit.signal, "worker exited");
    }
    if worker.is_connected() {
        ipc::disconnected(cluster, worker);
    }
    cluster.inner.events.emit(Event::Exit {
        worker: worker.clone(),
        code: exit.code,
        signal: exit.signal,
        exited_after_disconnect: planned,
    });
    cluster.inner.changed.notify_waiters();
    next
}

/// What a restart after `worker`'s exit is counted as: why the primary killed it, if it did;
/// else how it ended.
fn restart_reason(worker: &WorkerHandle, exit: ExitInfo) -> RestartReason {
    match (worker.shared.kill_reason.get(), exit.signal, exit.code) {
        (Some(reason), _, _) => *reason,
        (None, Some(_), _) => RestartReason::Signal,
        (None, None, Some(0)) => RestartReason::Exit,
        (None, None, _) => RestartReason::Crash,
    }
}

/// Does what the slot state decided about an exit.
async fn follow_up(cluster: &Cluster, next: OnExit) {
    match next {
        OnExit::Restart {
            slot,
            delay,
            ticket,
            failures,
            crash_loop,
        } => {
            if crash_loop {
                tracing::error!(slot, failures, ?delay, "worker is crash-looping");
            }
            cluster.inner.events.emit(Event::Restarting {
                id: slot,
                delay,
                failures,
                crash_loop,
            });
            if !delay.is_zero() {
                // The slot's reuseport socket must not hold connections nobody will accept.
                release_slot_sockets(cluster, slot);
                let mut stop = cluster.inner.stop_accepting.subscribe();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            // A booking cancelled meanwhile (scale-down, a committed replacement, shutdown)
            // starts nothing.
            let _ = start_worker(cluster, Start::Restart { slot, ticket });
        }
        OnExit::GaveUp { slot, failures } => {
            tracing::error!(slot, failures, "worker keeps dying; giving up on this slot");
            release_slot_sockets(cluster, slot);
            cluster
                .inner
                .events
                .emit(Event::GaveUp { id: slot, failures });
        }
        OnExit::Released { slot } => release_slot_sockets(cluster, slot),
        OnExit::CandidateFailed { .. } | OnExit::Retired => {}
    }
}

/// Sets the number of slots: starts the new ones, stops the workers of those that go away.
pub(crate) fn rescale(cluster: &Cluster, workers: usize) -> Result<()> {
    let (grow, shrink, old_target) = {
        let mut state = cluster.inner.state();
        if state.slots.is_stopping() {
            return Err(Error::ShutDown);
        }
        let old_target = state.slots.target();
        let rescale = state.slots.set_target(workers);
        let shrink: Vec<WorkerHandle> = rescale
            .shrink
            .iter()
            .filter_map(|seq| state.live.get(seq).cloned())
            .collect();
        (rescale.grow, shrink, old_target)
    };
    tracing::info!(workers, "scaling");
    for slot in grow {
        start_worker(cluster, Start::Slot(slot))?;
    }
    for worker in shrink {
        let slot = worker.id();
        stop_worker(cluster, &worker);
        release_slot_sockets(cluster, slot);
    }
    for slot in workers..old_target {
        forget_listeners(cluster, cluster.inner.listeners.release_awaiting(slot));
    }
    Ok(())
}

/// The primary stops routing to listeners that were released.
pub(crate) fn forget_listeners(cluster: &Cluster, released: Vec<std::sync::Arc<BoundListener>>) {
    for listener in released {
        tracing::info!(address = %listener.local, "no worker listens any more; socket closed");
        cluster.inner.dispatcher.forget_listener(listener.id);
    }
}

/// Stops `worker` on purpose: no new connections, a graceful `disconnect` (SIGTERM to its
/// group for a program that does not speak the protocol), and SIGKILL to its group if it is
/// still running after the graceful timeout. Never restarted.
pub(crate) fn stop_worker(cluster: &Cluster, worker: &WorkerHandle) {
    cluster.inner.dispatcher.stop_new(worker);
    worker.disconnect();
    let grace = cluster.inner.opts.graceful_timeout;
    let (cluster, worker) = (cluster.clone(), worker.clone());
    task::spawn("stop", async move {
        if !wait_exit(&cluster, &worker, Instant::now() + grace).await {
            tracing::warn!(
                worker = worker.id(),
                pid = worker.pid(),
                "graceful timeout reached; sending SIGKILL"
            );
            let _ = worker.signal_group(Signal::SIGKILL);
        }
    });
}

/// Waits until `worker` has exited; false if `deadline` passed first.
pub(crate) async fn wait_exit(cluster: &Cluster, worker: &WorkerHandle, deadline: Instant) -> bool {
    cluster
        .inner
        .wait_until(deadline, || worker.is_dead())
        .await
}

/// Forgets the reuseport sockets of `slot` (no immediate replacement will accept on them).
pub(crate) fn release_slot_sockets(cluster: &Cluster, slot: usize) {
    for listener in cluster.inner.listeners.all() {
        if listener.mode.socket_per_worker() {
            listener.release_slot(slot);
        }
    }
}
