//! The supervision loop of every worker, read top to bottom: start it in its slot, run the
//! process and serve its channel until it exits, record the exit, then ask the slot state
//! (`slots`) what happens next — restart after a backoff delay, release the slot, give up —
//! and do it. Also the two ways workers are stopped on purpose: scaling down, and a graceful
//! stop that ends in SIGKILL after the graceful timeout.

use std::time::Instant;

use nix::sys::signal::Signal;

use crate::error::{Error, Result};
use std::sync::Arc;

use crate::control::{ExitReason, LastExit};
use crate::primary::core::Core;
use crate::primary::core::State;
use crate::primary::event::Event;
use crate::primary::handle::{ExitInfo, WorkerHandle, WorkerState};
use crate::primary::lifecycle::notice::WorkerNotice;
use crate::primary::lifecycle::slots::{ExitFacts, OnExit, Refused, RestartReason, Seq};
use crate::primary::lifecycle::spawn::Channel;
use crate::primary::options::check_steered_workers;
use crate::primary::options::Readiness;
use crate::primary::{
    lifecycle::forensics, lifecycle::ipc, lifecycle::node_ipc, lifecycle::readiness,
    lifecycle::spawn, task,
};

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
pub(crate) fn start_worker(core: &Core, start: Start) -> Result<WorkerHandle> {
    let worker = {
        let mut state = core.state();
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
        register(core, &mut state, slot, seq)
    };
    task::spawn("worker", live(core.arc(), worker.clone()));
    Ok(worker)
}

/// Starts a replacement on trial beside `slot`'s current worker (`expected`, if given, must be
/// that worker). Returns the replacement and the worker it would replace.
pub(crate) fn start_candidate(
    core: &Core,
    slot: usize,
    expected: Option<Seq>,
) -> std::result::Result<(WorkerHandle, WorkerHandle), Refused> {
    let (fresh, old) = {
        let mut state = core.state();
        let old = state
            .worker(state.slots.current(slot))
            .filter(|w| !w.is_dead() && expected.is_none_or(|seq| seq == w.unique_id()))
            .ok_or(Refused::NothingToReplace)?;
        let seq = state.next_seq + 1;
        state.slots.begin_replace(slot, old.unique_id(), seq)?;
        let fresh = register(core, &mut state, slot, seq);
        fresh.set_on_trial(true);
        (fresh, old)
    };
    task::spawn("worker", live(core.arc(), fresh.clone()));
    Ok((fresh, old))
}

fn register(core: &Core, state: &mut State, slot: usize, seq: Seq) -> WorkerHandle {
    state.next_seq = seq;
    let speaks = core.expect_protocol() || core.opts().node_ipc;
    let worker = WorkerHandle::new(slot, seq, speaks);
    state.live.insert(seq, worker.clone());
    worker
}

/// The whole life of one worker process.
async fn live(core: Arc<Core>, worker: WorkerHandle) {
    let exit = tokio::select! {
        exit = run(&core, &worker) => exit,
        never = heed(&core, &worker) => match never {},
    };
    let next = record_exit(&core, &worker, exit);
    follow_up(&core, next).await;
}

/// Acts on what the rest of the primary learns about `worker` from the side (its notify
/// socket, the proxy's probe of its port): the one place those become state changes.
async fn heed(core: &Core, worker: &WorkerHandle) -> std::convert::Infallible {
    let Some(mut notices) = worker.take_notices() else {
        return std::future::pending().await;
    };
    // The handle holds the sender, so the queue never closes while the worker runs.
    while let Some(notice) = notices.recv().await {
        match notice {
            WorkerNotice::Ready => readiness::set_ready(core, worker),
            WorkerNotice::PortUp if core.opts().readiness == Readiness::Listen => {
                readiness::set_ready(core, worker)
            }
            WorkerNotice::PortUp => {}
            WorkerNotice::Stopping => {
                core.transition(worker, WorkerState::Draining);
            }
            WorkerNotice::Failed(error) => {
                if worker.shared.stopped_for.get() == Some(&ExitReason::Watchdog) {
                    forensics::before_kill(core, worker, "watchdog").await;
                }
                ipc::worker_error(core, worker, error)
            }
        }
    }
    std::future::pending().await
}

/// Starts the process and serves its channel until it has exited and every packet it sent has
/// been read.
async fn run(core: &Core, worker: &WorkerHandle) -> ExitInfo {
    match spawn::spawn(core, worker).await {
        Ok(spawned) => match spawned.channel {
            Channel::Forkline(channel) => ipc::serve(core, worker, spawned.child, channel).await,
            Channel::Node(stream) => node_ipc::serve(core, worker, spawned.child, stream).await,
        },
        Err(e) => {
            tracing::error!(worker = worker.id(), error = %e, "could not start worker");
            core.events().emit(Event::WorkerError {
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
fn record_exit(core: &Core, worker: &WorkerHandle, exit: ExitInfo) -> OnExit {
    let _ = worker.shared.exit.set(exit);
    core.transition(worker, WorkerState::Exited);
    let pid = worker.pid();
    if pid != 0 {
        // Whatever the worker started goes with it.
        let _ = crate::sys::signal_group(pid, Signal::SIGKILL);
        if let Some(keeper) = &core.keeper() {
            keeper.forget(pid);
        }
        // Reaped by tokio by now: the orphan reaper may take that pid's next zombie.
        crate::primary::lifecycle::reaper::registry().remove(pid);
    }
    core.dispatcher()
        .remove_target(worker, worker.shared.worker_end.get().map(|fd| &**fd));
    core.proxy().remove(worker);
    let planned = worker.exited_after_disconnect();
    let reason = exit_reason(worker, exit, planned);
    let next = {
        let mut state = core.state();
        state.live.remove(&worker.unique_id());
        state.slots.record_exit(
            worker.id(),
            LastExit::new(reason, pid, exit.code, exit.signal),
        );
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
    let released = core
        .listeners()
        .release_after_exit(worker.unique_id(), worker.id(), restarting);
    core.forget_listeners(released);
    let reason_name = reason.name();
    if !planned && exit.failed() {
        tracing::warn!(worker = worker.id(), pid, code = ?exit.code, signal = ?exit.signal, reason = reason_name, "worker died");
    } else {
        tracing::info!(worker = worker.id(), pid, code = ?exit.code, signal = ?exit.signal, reason = reason_name, "worker exited");
    }
    if worker.is_connected() {
        ipc::disconnected(core, worker);
    }
    core.events().emit(Event::Exit {
        worker: worker.clone(),
        code: exit.code,
        signal: exit.signal,
        exited_after_disconnect: planned,
        reason,
    });
    core.changed().notify_waiters();
    next
}

/// Why `worker` ended (see `ExitReason::of_exit`): an OOM kill is a SIGKILL the primary did not
/// send while the kernel's count of OOM kills went up.
fn exit_reason(worker: &WorkerHandle, exit: ExitInfo, planned: bool) -> ExitReason {
    let oom_killed = match (
        worker.shared.oom_kills_at_start.get(),
        crate::primary::procfs::oom_kills(),
    ) {
        (Some(before), Some(now)) => now > *before,
        _ => false,
    };
    ExitReason::of_exit(
        worker.shared.stopped_for.get().copied(),
        planned,
        exit.code,
        exit.signal,
        oom_killed,
    )
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
async fn follow_up(core: &Core, next: OnExit) {
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
            core.events().emit(Event::Restarting {
                slot,
                delay,
                failures,
                crash_loop,
            });
            if !delay.is_zero() {
                // The slot's reuseport socket must not hold connections nobody will accept.
                release_slot_sockets(core, slot);
                let mut stop = core.stop_accepting().subscribe();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            // A booking cancelled meanwhile (scale-down, a committed replacement, shutdown)
            // starts nothing.
            let _ = start_worker(core, Start::Restart { slot, ticket });
        }
        OnExit::GaveUp { slot, failures } => {
            tracing::error!(slot, failures, "worker keeps dying; giving up on this slot");
            release_slot_sockets(core, slot);
            core.events().emit(Event::GaveUp { slot, failures });
        }
        OnExit::Released { slot } => release_slot_sockets(core, slot),
        OnExit::CandidateFailed { .. } | OnExit::Retired => {}
    }
}

/// Sets the number of slots (`Cluster::scale`): starts the new ones, stops the workers of those
/// that go away.
pub(crate) fn scale(core: &Core, workers: usize) -> Result<()> {
    if workers == 0 {
        return Err(Error::InvalidOption {
            field: "workers",
            reason: "must be at least 1".into(),
        });
    }
    check_steered_workers(core.opts().mode, core.opts().balance, workers)?;
    let (grow, shrink, old_target) = {
        let mut state = core.state();
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
        start_worker(core, Start::Slot(slot))?;
    }
    for worker in shrink {
        let slot = worker.id();
        worker.stop_for(crate::control::ExitReason::Scale);
        stop_worker(core, &worker);
        release_slot_sockets(core, slot);
    }
    for slot in workers..old_target {
        core.forget_listeners(core.listeners().release_awaiting(slot));
    }
    Ok(())
}

/// Stops `worker` on purpose: no new connections, a graceful `disconnect` (SIGTERM to its
/// group for a program that does not speak the protocol), and SIGKILL to its group if it is
/// still running after the graceful timeout. Never restarted.
pub(crate) fn stop_worker(core: &Core, worker: &WorkerHandle) {
    core.dispatcher().stop_new(worker);
    worker.disconnect();
    // Draining now: out of the kernel's turns at once (proxy mode).
    core.proxy().sync();
    let grace = core.opts().graceful_timeout;
    let (core, worker) = (core.arc(), worker.clone());
    task::spawn("stop", async move {
        if !wait_exit(&core, &worker, Instant::now() + grace).await {
            forensics::before_kill(&core, &worker, "graceful timeout").await;
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
pub(crate) async fn wait_exit(core: &Core, worker: &WorkerHandle, deadline: Instant) -> bool {
    core.wait_until(deadline, || worker.is_dead()).await
}

/// Forgets the reuseport sockets of `slot` (no immediate replacement will accept on them).
pub(crate) fn release_slot_sockets(core: &Core, slot: usize) {
    for listener in core.listeners().all() {
        if listener.mode.socket_per_worker() {
            listener.release_slot(slot);
        }
    }
}
