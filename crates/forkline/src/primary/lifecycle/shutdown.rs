//! Stopping the whole cluster: stop accepting, ask every worker to finish (a worker still
//! starting gets its `disconnect` right after its handshake), SIGKILL every process group left
//! after the graceful timeout, then release the listeners, remove the control socket's file and
//! end the event streams.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::primary::cluster::{Cluster, Shutdown};
use crate::primary::handle::WorkerHandle;
use crate::primary::task;

/// How long to wait for the exits of SIGKILLed workers before reporting anyway.
const AFTER_KILL: Duration = Duration::from_secs(10);

/// Begins a shutdown with `grace` for workers to finish (zero: SIGKILL at once). Only the first
/// call does anything.
pub(crate) fn begin(cluster: &Cluster, grace: Duration) {
    let workers = {
        let mut state = cluster.inner.state();
        if state.slots.is_stopping() {
            return;
        }
        state.slots.begin_stop();
        state.live.values().cloned().collect::<Vec<_>>()
    };
    tracing::info!(workers = workers.len(), grace = ?grace, "shutting down");
    cluster.inner.stop_accepting.send_replace(true);
    cluster.inner.changed.notify_waiters();
    for worker in &workers {
        cluster.inner.dispatcher.stop_new(worker);
        if grace.is_zero() {
            kill(worker);
        } else {
            worker.disconnect();
        }
    }
    task::spawn("shutdown", finish(cluster.clone(), grace));
}

fn kill(worker: &WorkerHandle) {
    let _ = worker.kill(Signal::SIGKILL);
    let _ = worker.signal_group(Signal::SIGKILL);
}

async fn finish(cluster: Cluster, grace: Duration) {
    let mut killed = Vec::new();
    if !wait_all_exited(&cluster, Instant::now() + grace).await {
        for worker in cluster.workers() {
            tracing::warn!(
                worker = worker.id(),
                pid = worker.pid(),
                "graceful timeout reached; sending SIGKILL"
            );
            killed.push(worker.id());
            kill(&worker);
        }
        wait_all_exited(&cluster, Instant::now() + AFTER_KILL).await;
    }
    cluster.inner.dispatcher.drop_pending();
    // Files another primary serves (the new one after an upgrade, the old one while a new one
    // has not taken over) stay; otherwise they go before anyone hears the cluster stopped.
    let owns_files = cluster.inner.upgrades.owns_files();
    cluster.inner.listeners.close_all(!owns_files);
    if let Some(path) = cluster.inner.opts.control.as_ref().filter(|_| owns_files) {
        let _ = std::fs::remove_file(path);
    }
    killed.sort();
    let result = Shutdown {
        clean: killed.is_empty() && !grace.is_zero(),
        killed,
    };
    tracing::info!(clean = result.clean, "cluster stopped");
    cluster.inner.events.close();
    cluster.inner.finished.send_replace(Some(result));
}

async fn wait_all_exited(cluster: &Cluster, deadline: Instant) -> bool {
    cluster
        .inner
        .wait_until(deadline, || cluster.inner.state().live.is_empty())
        .await
}
