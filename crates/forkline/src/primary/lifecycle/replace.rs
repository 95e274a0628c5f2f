//! Replacing a slot's worker with a new one, the one path for rolling reloads and recycling:
//! start the replacement beside the current worker, wait until it is ready and has stayed
//! alive for the settle time — meanwhile the primary gives it no connections (round-robin,
//! proxy), so a replacement that dies on trial drops none — then commit (stop routing to the old worker, let its
//! connections finish, stop it). A replacement that exits, or is not ready in time, is stopped
//! with no restart booked and the old worker stays current: a failed replacement never leaves
//! the slot worse off than it was.

use std::time::{Duration, Instant};

use crate::control::ExitReason;
use crate::primary::core::Core;
use crate::primary::event::{Event, ReplaceFailure, Replacement};
use crate::primary::handle::WorkerHandle;
use crate::primary::lifecycle::readiness::{self, Waited};
use crate::primary::lifecycle::slots::{Refused, RestartReason, Seq};
use crate::primary::lifecycle::supervisor;

/// How long a reload waits for another replacement of the same slot (recycling) to end.
const BUSY_WAIT: Duration = Duration::from_millis(50);

/// Replaces the current worker of `slot` (only if it is `expected`, when given). `Ok` when the
/// slot was replaced or had nothing to replace.
pub(crate) async fn replace(
    core: &Core,
    slot: usize,
    purpose: Replacement,
    expected: Option<Seq>,
) -> Result<(), ReplaceFailure> {
    let (fresh, old) = loop {
        match supervisor::start_candidate(core, slot, expected) {
            Ok(pair) => break pair,
            Err(Refused::NothingToReplace) => return Ok(()),
            Err(Refused::Stopping) => return Err(ReplaceFailure::Cancelled),
            // Recycling is trying this slot: a reload waits its turn, a recycle gives way.
            Err(Refused::Busy) if purpose == Replacement::Reload => {
                tokio::time::sleep(BUSY_WAIT).await;
            }
            Err(Refused::Busy) => return Ok(()),
        }
    };
    tracing::info!(
        slot,
        purpose = purpose.name(),
        old_pid = old.pid(),
        "starting a replacement"
    );
    let outcome = match trial(core, &fresh).await {
        Ok(()) => commit(core, slot, &fresh, purpose).await,
        Err(reason) => Err(reason),
    };
    if let Err(reason) = outcome {
        core.state().slots.rollback(slot, fresh.unique_id());
        supervisor::stop_worker(core, &fresh);
        let purpose_name = purpose.name();
        if reason == ReplaceFailure::Cancelled {
            tracing::info!("{purpose_name} stopped at slot {slot}: the new worker {reason}");
        } else {
            tracing::error!(
                "{purpose_name} failed: slot {slot}: the new worker {reason}; the old worker \
                 keeps serving"
            );
        }
        core.events().emit(Event::ReplaceFailed {
            slot,
            purpose,
            reason,
        });
        return Err(reason);
    }
    tracing::info!(
        slot,
        purpose = purpose.name(),
        pid = fresh.pid(),
        "worker replaced"
    );
    Ok(())
}

/// The trial: ready within the ready timeout, then alive for the settle time.
async fn trial(core: &Core, fresh: &WorkerHandle) -> Result<(), ReplaceFailure> {
    let opts = &core.opts();
    match readiness::wait_ready(core, fresh, Instant::now() + opts.ready_timeout).await {
        Waited::Ready => {}
        Waited::Stopping => return Err(ReplaceFailure::Cancelled),
        Waited::TimedOut => {
            return Err(ReplaceFailure::NotReady {
                within: opts.ready_timeout,
            })
        }
        Waited::Gone => {
            // It exited (or was asked to stop, then exits): say how, once known.
            supervisor::wait_exit(core, fresh, Instant::now() + opts.graceful_timeout).await;
            return Err(exited(core, fresh));
        }
    }
    let settled = Instant::now() + opts.settle_time;
    if supervisor::wait_exit(core, fresh, settled).await {
        return Err(exited(core, fresh));
    }
    if core.is_stopping() {
        return Err(ReplaceFailure::Cancelled);
    }
    Ok(())
}

/// Why a replacement that is gone failed: how it exited, unless the cluster is stopping.
fn exited(core: &Core, fresh: &WorkerHandle) -> ReplaceFailure {
    match fresh.exit_info() {
        Some(exit) if !core.is_stopping() => ReplaceFailure::Exited {
            code: exit.code,
            signal: exit.signal,
        },
        _ => ReplaceFailure::Cancelled,
    }
}

/// The replacement passed: it becomes current; the old worker stops taking connections,
/// finishes those it has (proxy mode waits for its relays), and is stopped.
async fn commit(
    core: &Core,
    slot: usize,
    fresh: &WorkerHandle,
    purpose: Replacement,
) -> Result<(), ReplaceFailure> {
    let reason = match purpose {
        Replacement::Reload => RestartReason::Reload,
        Replacement::Recycle => RestartReason::Recycle,
    };
    let old = {
        let mut state = core.state();
        match state.slots.commit(slot, fresh.unique_id(), reason) {
            Ok(old) => state.worker(old),
            Err(()) => return Err(ReplaceFailure::Cancelled),
        }
    };
    fresh.set_on_trial(false);
    core.dispatcher().wake();
    core.proxy().sync();
    if let Some(old) = old {
        old.stop_for(match purpose {
            Replacement::Reload => ExitReason::Reload,
            Replacement::Recycle => old
                .shared
                .recycle_for
                .lock()
                .unwrap()
                .unwrap_or(ExitReason::RecycleRequests),
        });
        core.dispatcher().stop_new(&old);
        core.proxy()
            .retire(&old, core.opts().graceful_timeout)
            .await;
        supervisor::stop_worker(core, &old);
    }
    Ok(())
}
