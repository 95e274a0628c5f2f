//! The rolling reload: every slot in turn through the one replace path (`replace.rs`), stopping
//! at the first slot whose replacement fails. One reload at a time.

use std::sync::atomic::Ordering::Relaxed;

use crate::error::{Error, Result};
use crate::primary::core::Core;
use crate::primary::event::{Event, Replacement};
use crate::primary::lifecycle::replace;

/// Replaces every slot's worker, one after the other (see `Cluster::reload`).
pub(crate) async fn reload(core: &Core) -> Result<()> {
    let _one_at_a_time = core.reload_lock().lock().await;
    let slots: Vec<usize> = {
        let state = core.state();
        if state.slots.is_stopping() {
            return Err(Error::ShutDown);
        }
        state.slots.all().map(|(slot, _)| slot).collect()
    };
    tracing::info!(slots = slots.len(), "rolling reload started");
    core.emit(Event::ReloadStarted);
    for slot in slots {
        if let Err(reason) = replace::replace(core, slot, Replacement::Reload, None).await {
            core.counters().reloads_failed.fetch_add(1, Relaxed);
            core.emit(Event::ReloadFinished { ok: false });
            return Err(Error::ReloadFailed { slot, reason });
        }
    }
    core.counters().reloads_ok.fetch_add(1, Relaxed);
    tracing::info!("rolling reload finished");
    core.emit(Event::ReloadFinished { ok: true });
    Ok(())
}
