//! Recycling: a worker that handled `max_requests` connections (plus its jitter) or whose
//! resident memory stays above `max_memory` is replaced — the new worker first, then the old one
//! drains — like gunicorn's `max_requests` and PM2's `max_memory_restart`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::primary::cluster::Cluster;
use crate::primary::handle::{WorkerHandle, WorkerState};

/// How often limits are checked.
const CHECK_EVERY: Duration = Duration::from_millis(200);
/// Memory is sampled this often; a worker must be over the limit this many samples in a row.
const MEMORY_EVERY: Duration = Duration::from_secs(1);
const MEMORY_STRIKES: u32 = 3;

/// The connection limit of one worker: `max_requests` plus a per-worker share of the jitter.
pub(crate) fn request_limit(max_requests: u64, jitter: u64, worker: &WorkerHandle) -> u64 {
    if jitter == 0 {
        return max_requests;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (worker.unique_id(), worker.pid()).hash(&mut hasher);
    max_requests + hasher.finish() % (jitter + 1)
}

/// Resident memory of `pid` in bytes, from `/proc/PID/statm`.
pub(crate) fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    Some(pages * page)
}

/// Watches the limits until the cluster stops.
pub(crate) async fn watch(cluster: Cluster) {
    let opts = cluster.options().clone();
    let mut strikes: HashMap<u64, u32> = HashMap::new();
    let mut last_memory = Instant::now();
    let mut stop = cluster.inner.stop_accepting.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = cluster.inner.limit_reached.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let sample_memory = last_memory.elapsed() >= MEMORY_EVERY;
        if sample_memory {
            last_memory = Instant::now();
        }
        for worker in cluster.workers() {
            if worker.state() != WorkerState::Ready
                || worker.shared.recycling.load(Ordering::Acquire)
            {
                continue;
            }
            if opts.max_requests.is_some() {
                let limit = worker.shared.request_limit.load(Ordering::Relaxed);
                if worker.connections_accepted() >= limit {
                    recycle(&cluster, worker, format!("handled {limit} connections"));
                    continue;
                }
            }
            if let (Some(max), true) = (opts.max_memory, sample_memory) {
                let over = resident_bytes(worker.pid()).is_some_and(|rss| rss > max);
                let count = strikes.entry(worker.unique_id()).or_default();
                *count = if over { *count + 1 } else { 0 };
                if *count >= MEMORY_STRIKES {
                    strikes.remove(&worker.unique_id());
                    recycle(
                        &cluster,
                        worker,
                        format!("resident memory above {max} bytes"),
                    );
                }
            }
        }
        if sample_memory {
            let live: Vec<u64> = cluster.workers().iter().map(|w| w.unique_id()).collect();
            strikes.retain(|seq, _| live.contains(seq));
        }
    }
}

/// How long a worker whose replacement failed keeps serving before recycling is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// Replaces `old` through the one replace path: the new worker must be ready and settle before
/// the old one drains; if it fails, the old worker keeps serving and is tried again later.
pub(crate) fn recycle(cluster: &Cluster, old: WorkerHandle, why: String) {
    tracing::info!(worker = old.id(), pid = old.pid(), %why, "recycling worker");
    // Never picked twice while its replacement is on trial.
    old.shared.recycling.store(true, Ordering::Release);
    let cluster = cluster.clone();
    crate::primary::task::spawn("recycle", async move {
        let replaced = crate::primary::lifecycle::replace::replace(
            &cluster,
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
