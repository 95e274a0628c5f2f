//! The primary's signals, gunicorn's conventions: TERM/INT graceful stop, QUIT quick stop, HUP
//! rolling reload, TTIN/TTOU one worker more/less, USR2 upgrade (a new primary takes over). The handler only notes the signal; this
//! task's loop acts on it.

use tokio::signal::unix::{signal, SignalKind};

use crate::error::Result;
use std::sync::Arc;

use crate::primary::core::Core;
use crate::primary::lifecycle::{reload, shutdown, supervisor};
use crate::primary::ops::upgrade;
use crate::primary::task;

/// Starts the task that acts on the primary's signals.
pub(crate) fn handle(core: Arc<Core>) -> Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut ttin = signal(SignalKind::from_raw(libc::SIGTTIN))?;
    let mut ttou = signal(SignalKind::from_raw(libc::SIGTTOU))?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    task::spawn("signals", async move {
        loop {
            tokio::select! {
                _ = term.recv() => shutdown::after_delay(&core),
                _ = int.recv() => shutdown::after_delay(&core),
                _ = quit.recv() => shutdown::now(&core),
                _ = hup.recv() => {
                    let core = core.arc();
                    task::spawn("reload", async move {
                        // A failed replacement is logged and reported where it happens.
                        let _ = reload::reload(&core).await;
                    });
                }
                _ = usr2.recv() => {
                    let core = core.arc();
                    task::spawn("upgrade", async move {
                        // A failed upgrade is logged and reported where it happens.
                        let _ = upgrade::upgrade(&core).await;
                    });
                }
                _ = ttin.recv() => {
                    let _ = supervisor::scale(&core, core.target() + 1);
                }
                _ = ttou.recv() => {
                    let n = core.target();
                    if n > 1 {
                        let _ = supervisor::scale(&core, n - 1);
                    }
                }
            }
        }
    });
    Ok(())
}
