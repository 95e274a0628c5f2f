//! Keeping a keeper: starts the cluster's keeper, and, should it die (killed by an operator, the
//! OOM killer), starts another, tells it every live worker's process group, and says so in the
//! log — so the no-orphans guarantee does not lapse silently.

use std::time::Duration;

use crate::primary::core::Core;
use crate::primary::lifecycle::keeper::Keeper;
use crate::primary::lifecycle::reaper;
use crate::primary::task;

/// How often the keeper is checked (a `waitpid(WNOHANG)`).
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Starts the keeper and the task that replaces it if it dies, until the cluster has stopped.
pub(crate) fn start(core: &Core) {
    let Some(keeper) = start_keeper() else {
        return;
    };
    core.set_keeper(Some(keeper.into()));
    let core = core.arc();
    task::spawn("keeper-watch", async move {
        let mut finished = core.finished().subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CHECK_EVERY) => {}
                _ = finished.wait_for(|f| f.is_some()) => return,
            }
            let Some(old) = core.keeper() else { return };
            if !old.exited() {
                continue;
            }
            reaper::registry().remove(old.pid());
            let Some(fresh) = start_keeper() else {
                tracing::error!(pid = old.pid(), "the keeper died and no other could start: processes a worker starts may outlive a killed primary");
                core.set_keeper(None);
                return;
            };
            tracing::warn!(
                old = old.pid(),
                new = fresh.pid(),
                "the keeper died; started another"
            );
            let fresh = std::sync::Arc::new(fresh);
            core.set_keeper(Some(fresh.clone()));
            for worker in core.workers() {
                if worker.pid() != 0 && !worker.is_dead() {
                    fresh.watch(worker.pid());
                }
            }
        }
    });
}

/// Starts a keeper, registered so the orphan reaper leaves it to the `Keeper`. Without one the
/// cluster still runs; only what workers start could outlive a killed primary.
fn start_keeper() -> Option<Keeper> {
    let registry = reaper::registry();
    let mut registered = registry.lock();
    match Keeper::start() {
        Ok(keeper) => {
            registered.insert(keeper.pid());
            Some(keeper)
        }
        Err(error) => {
            tracing::warn!(%error, "could not start the keeper: processes a worker starts may outlive a killed primary");
            None
        }
    }
}
