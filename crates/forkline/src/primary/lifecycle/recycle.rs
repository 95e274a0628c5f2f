//! Recycling: a worker that handled `max_requests` connections (plus its jitter) or whose
//! resident memory stays above `max_memory` is replaced — the new worker first, then the old one
//! drains — like gunicorn's `max_requests` and PM2's `max_memory_restart`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use std::sync::Arc;

use crate::control::ExitReason;
use crate::primary::core::Core;
use crate::primary::handle::{WorkerHandle, WorkerState};
use crate::primary::procfs::resident_bytes;

/// How often limits are checked.
const CHECK_EVERY: Duration = Duration::from_millis(200);
/// Memory is sampled this often; a worker must be over the limit this many samples in a row.
const MEMORY_EVERY: Duration = Duration::from_secs(1);
const MEMORY_STRIKES: u32 = 3;

/// Watches the limits until the cluster stops.
pub(crate) async fn watch(core: Arc<Core>) {
    let opts = core.opts().clone();
    let mut strikes: HashMap<u64, u32> = HashMap::new();
    let mut last_memory = Instant::now();
    let mut stop = core.stop_accepting().subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = core.limit_reached().notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let sample_memory = last_memory.elapsed() >= MEMORY_EVERY;
        if sample_memory {
            last_memory = Instant::now();
        }
        for worker in core.workers() {
            if worker.state() != WorkerState::Ready
                || worker.shared.recycling.load(Ordering::Acquire)
            {
                continue;
            }
            if opts.max_requests.is_some() {
                let limit = worker.shared.request_limit.load(Ordering::Relaxed);
                if worker.connections_accepted() >= limit {
                    let why = format!("handled {limit} connections");
                    recycle(&core, worker, ExitReason::RecycleRequests, why);
                    continue;
                }
            }
            if let (Some(max), true) = (opts.max_memory, sample_memory) {
                let over = resident_bytes(worker.pid()).is_some_and(|rss| rss > max);
                let count = strikes.entry(worker.unique_id()).or_default();
                *count = if over { *count + 1 } else { 0 };
                if *count >= MEMORY_STRIKES {
                    strikes.remove(&worker.unique_id());
                    let why = format!("resident memory above {max} bytes");
                    recycle(&core, worker, ExitReason::RecycleMemory, why);
                }
            }
        }
        if sample_memory {
            let live: Vec<u64> = core.workers().iter().map(|w| w.unique_id()).collect();
            strikes.retain(|seq, _| live.contains(seq));
        }
    }
}

/// How long a worker whose replacement failed keeps serving before recycling is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// Replaces `old` through the one replace path: the new worker must be ready and settle before
/// the old one drains; if it fails, the old worker keeps serving and is tried again later.
pub(crate) fn recycle(core: &Core, old: WorkerHandle, reason: ExitReason, why: String) {
    tracing::info!(worker = old.id(), pid = old.pid(), %why, "recycling worker");
    *old.shared.recycle_for.lock().unwrap() = Some(reason);
    // Never picked twice while its replacement is on trial.
    old.shared.recycling.store(true, Ordering::Release);
    let core = core.arc();
    crate::primary::task::spawn("recycle", async move {
        let replaced = crate::primary::lifecycle::replace::replace(
            &core,
            old.id(),
            crate::primary::event::Replacement::Recycle,
            Some(old.unique_id()),
        )
        .await;
        if replaced.is_err() {
            tokio::time::sleep(RETRY_AFTER).await;
            old.shared.recycling.store(false, Ordering::Release);
        }
    });
}
