//! Stopping the whole cluster: stop accepting, ask every worker to finish (a worker still
//! starting gets its `disconnect` right after its handshake), SIGKILL every process group left
//! after the graceful timeout, then release the listeners, remove the control socket's file and
//! end the event streams.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use std::sync::Arc;

use crate::primary::core::Core;
use crate::primary::handle::WorkerHandle;
use crate::primary::status::Shutdown;
use crate::primary::task;

/// How long to wait for the exits of SIGKILLed workers before reporting anyway.
const AFTER_KILL: Duration = Duration::from_secs(10);

/// Begins a graceful shutdown: workers get the graceful timeout to finish.
pub(crate) fn graceful(core: &Core) {
    begin(core, core.opts().graceful_timeout);
}

/// A stop asked for by SIGTERM/SIGINT: with a shutdown delay, the cluster first becomes a lame
/// duck — not ready (`/readyz` 503), still serving — for the delay, then stops gracefully; a
/// second ask during the delay stops gracefully at once.
pub(crate) fn after_delay(core: &Core) {
    let delay = core.opts().shutdown_delay;
    if delay.is_zero() || core.lame_duck().send_replace(true) {
        graceful(core);
        return;
    }
    tracing::info!(
        delay = ?delay,
        "stopping after the shutdown delay: /readyz answers 503, the workers keep serving"
    );
    core.changed().notify_waiters();
    let core = core.arc();
    task::spawn("shutdown-delay", async move {
        let mut stopping = core.stop_accepting().subscribe();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopping.wait_for(|s| *s) => {}
        }
        graceful(&core);
    });
}

/// Stops at once: workers get SIGKILL.
pub(crate) fn now(core: &Core) {
    begin(core, Duration::ZERO);
}

/// Begins a shutdown with `grace` for workers to finish (zero: SIGKILL at once). Only the first
/// call does anything.
pub(crate) fn begin(core: &Core, grace: Duration) {
    let workers = {
        let mut state = core.state();
        if state.slots.is_stopping() {
            return;
        }
        state.slots.begin_stop();
        state.live.values().cloned().collect::<Vec<_>>()
    };
    tracing::info!(workers = workers.len(), grace = ?grace, "shutting down");
    core.stop_accepting().send_replace(true);
    core.changed().notify_waiters();
    for worker in &workers {
        worker.stop_for(crate::control::ExitReason::Stop);
        core.dispatcher().stop_new(worker);
        if grace.is_zero() {
            kill(worker);
        } else {
            worker.disconnect();
        }
    }
    core.proxy().sync();
    task::spawn("shutdown", finish(core.arc(), grace));
}

fn kill(worker: &WorkerHandle) {
    let _ = worker.kill(Signal::SIGKILL);
    let _ = worker.signal_group(Signal::SIGKILL);
}

async fn finish(core: Arc<Core>, grace: Duration) {
    let mut killed = Vec::new();
    if !wait_all_exited(&core, Instant::now() + grace).await {
        // What each worker left was doing, all at once (each bounded in time).
        let recorded: Vec<_> = core
            .workers()
            .into_iter()
            .map(|worker| {
                let core = core.clone();
                tokio::spawn(async move {
                    crate::primary::lifecycle::forensics::before_kill(
                        &core,
                        &worker,
                        "graceful timeout",
                    )
                    .await
                })
            })
            .collect();
        for done in recorded {
            let _ = done.await;
        }
        for worker in core.workers() {
            tracing::warn!(
                worker = worker.id(),
                pid = worker.pid(),
                "graceful timeout reached; sending SIGKILL"
            );
            killed.push(worker.id());
            kill(&worker);
        }
        wait_all_exited(&core, Instant::now() + AFTER_KILL).await;
    }
    core.dispatcher().drop_pending();
    // Files another primary serves (the new one after an upgrade, the old one while a new one
    // has not taken over) stay; otherwise they go before anyone hears the cluster stopped.
    let owns_files = core.upgrades().owns_files();
    core.listeners().close_all(!owns_files);
    if let Some(path) = core.opts().control.as_ref().filter(|_| owns_files) {
        let _ = std::fs::remove_file(path);
    }
    killed.sort();
    let result = Shutdown {
        clean: killed.is_empty() && !grace.is_zero(),
        killed,
    };
    tracing::info!(clean = result.clean, "cluster stopped");
    core.events().close();
    core.finished().send_replace(Some(result));
}

async fn wait_all_exited(core: &Core, deadline: Instant) -> bool {
    core.wait_until(deadline, || core.state().live.is_empty())
        .await
}
